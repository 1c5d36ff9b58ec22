package testkit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// QMPWait bounds every wait of the scripted QMP server.
const QMPWait = 5 * time.Second

// ShortSocketPath returns a unix socket path short enough for sun_path
// (108 bytes), in a directory removed when the test ends.
func ShortSocketPath(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if len(dir) > 80 {
		var err error
		dir, err = os.MkdirTemp("", "qmp")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
	}
	return filepath.Join(dir, "qmp.sock")
}

// errAbort stops a server script after it reported an error.
var errAbort = errors.New("fake QMP script aborted")

// QMPServer is a scripted QMP server on a real unix socket. Each Serve call
// accepts one connection and runs a script on it in a goroutine.
type QMPServer struct {
	t        testing.TB
	path     string
	idPrefix string
	ln       *net.UnixListener

	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
	stop   chan struct{}
	done   chan struct{} // closed when the script of the last Serve returned
	served int           // Serve calls so far
}

// NewQMPServer listens on path. A command whose id does not start with
// idPrefix fails the test (an empty idPrefix accepts any id). Cleanup
// closes every connection and waits (bounded) for the scripts.
func NewQMPServer(t testing.TB, path, idPrefix string) *QMPServer {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("listen %s: %v", path, err)
	}
	f := &QMPServer{t: t, path: path, idPrefix: idPrefix, ln: ln, stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(f.close)
	return f
}

// Path is the socket's path.
func (f *QMPServer) Path() string { return f.path }

func (f *QMPServer) close() {
	select {
	case <-f.stop:
		return
	default:
	}
	close(f.stop)
	_ = f.ln.Close()
	f.mu.Lock()
	for _, c := range f.conns {
		_ = c.Close()
	}
	f.mu.Unlock()
	waited := make(chan struct{})
	go func() { f.wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(QMPWait):
		f.t.Errorf("fake QMP scripts did not end within %s", QMPWait)
	}
}

// Serve accepts one connection and runs script on it. After the script
// returns, the connection stays open until the test ends (or the script
// closed it). Wait reports when the script is over. Serve again, after
// Wait, to accept the next connection (a client that reconnects).
func (f *QMPServer) Serve(script func(c *QMPConn)) {
	f.mu.Lock()
	if f.served > 0 {
		f.done = make(chan struct{})
	}
	f.served++
	done := f.done
	f.mu.Unlock()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer close(done)
		_ = f.ln.SetDeadline(time.Now().Add(2 * QMPWait))
		nc, err := f.ln.Accept()
		if err != nil {
			select {
			case <-f.stop:
			default:
				f.t.Errorf("fake QMP accept: %v", err)
			}
			return
		}
		f.mu.Lock()
		f.conns = append(f.conns, nc)
		f.mu.Unlock()
		c := &QMPConn{t: f.t, c: nc, r: bufio.NewReader(nc), stop: f.stop, idPrefix: f.idPrefix}
		defer func() {
			if r := recover(); r != nil && r != errAbort {
				panic(r)
			}
		}()
		script(c)
	}()
}

// Wait waits (bounded) for the script started by Serve to return.
func (f *QMPServer) Wait() {
	f.t.Helper()
	f.mu.Lock()
	done := f.done
	f.mu.Unlock()
	select {
	case <-done:
	case <-time.After(2 * QMPWait):
		f.t.Fatalf("fake QMP script did not finish within %s", 2*QMPWait)
	}
}

// QMPConn is the server side of one connection. Its methods report
// failures with t.Errorf and abort the script.
type QMPConn struct {
	t        testing.TB
	c        net.Conn
	r        *bufio.Reader
	stop     chan struct{}
	idPrefix string
}

// QMPCommand is a command as the fake server received it.
type QMPCommand struct {
	Execute   string          `json:"execute"`
	ID        string          `json:"id"`
	Arguments json.RawMessage `json:"arguments"`
	Line      string          `json:"-"`
}

// Abort reports a failure (unless the test is over) and ends the script.
func (c *QMPConn) Abort(format string, args ...any) {
	select {
	case <-c.stop: // the test is over; errors are expected
	default:
		c.t.Errorf("fake QMP: "+format, args...)
	}
	panic(errAbort)
}

// Send writes one line, adding CRLF as QEMU does.
func (c *QMPConn) Send(line string) {
	c.SendRaw([]byte(line + "\r\n"))
}

// SendRaw writes b as it is.
func (c *QMPConn) SendRaw(b []byte) {
	_ = c.c.SetWriteDeadline(time.Now().Add(QMPWait))
	if _, err := c.c.Write(b); err != nil {
		c.Abort("write: %v", err)
	}
}

// ReadCommand reads the next command line.
func (c *QMPConn) ReadCommand() QMPCommand {
	cmd, err := c.ReadCommandErr()
	if err != nil {
		c.Abort("%v", err)
	}
	return cmd
}

// ReadCommandErr reads the next command line; it is safe in any goroutine.
func (c *QMPConn) ReadCommandErr() (QMPCommand, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(QMPWait))
	line, err := c.r.ReadString('\n')
	if err != nil {
		return QMPCommand{}, fmt.Errorf("read command: %w", err)
	}
	var cmd QMPCommand
	if err := json.Unmarshal([]byte(line), &cmd); err != nil {
		return QMPCommand{}, fmt.Errorf("command %q is not JSON: %w", line, err)
	}
	cmd.Line = strings.TrimSpace(line)
	if !strings.HasPrefix(cmd.ID, c.idPrefix) {
		return QMPCommand{}, fmt.Errorf("command %q has no transport id", line)
	}
	return cmd, nil
}

// Expect reads the next command and checks its name.
func (c *QMPConn) Expect(name string) QMPCommand {
	cmd := c.ReadCommand()
	if cmd.Execute != name {
		c.Abort("got command %q, want %q", cmd.Execute, name)
	}
	return cmd
}

// Reply answers cmd with a return value.
func (c *QMPConn) Reply(cmd QMPCommand, ret string) {
	c.Send(fmt.Sprintf(`{"return": %s, "id": %q}`, ret, cmd.ID))
}

// Greet sends QEMU's greeting.
func (c *QMPConn) Greet() {
	c.Send(`{"QMP": {"version": {"qemu": {"micro": 1, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}`)
}

// Handshake plays QEMU's side of Connect.
func (c *QMPConn) Handshake() {
	c.Greet()
	c.Reply(c.Expect("qmp_capabilities"), "{}")
}

// WaitStop blocks until the test ends.
func (c *QMPConn) WaitStop() {
	<-c.stop
}

// Stopped is closed when the test ends.
func (c *QMPConn) Stopped() <-chan struct{} { return c.stop }

// Conn is the connection itself, for scripts that write past the helpers.
func (c *QMPConn) Conn() net.Conn { return c.c }

// Close closes the connection.
func (c *QMPConn) Close() {
	_ = c.c.Close()
}
