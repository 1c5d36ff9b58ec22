package daemon

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/tests/testkit"
)

// runDaemon runs the daemon in-process on a fresh state dir and returns
// its socket; cleanup stops it.
func runDaemon(t *testing.T, cfg Config) string {
	t.Helper()
	dir := testkit.ShortDir(t)
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(dir, "state")
	}
	cfg.Socket = filepath.Join(dir, "sock", "v.sock")
	if os.Geteuid() == 0 {
		cfg.QEMUUser = testkit.QEMUUserName()
		if err := os.Chmod(dir, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Logger = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
	ready := make(chan struct{})
	cfg.OnReady = func() { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("daemon: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("daemon did not stop within 30s")
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("daemon not ready within 30s")
	}
	return cfg.Socket
}

func dial(t *testing.T, socket string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip writes a raw request on c and reads the response.
func roundTrip(t *testing.T, c net.Conn, req string) *http.Response {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func body(resp *http.Response) string {
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return string(b)
}

// TestConnectionLimit holds as many idle connections as the limit allows:
// the next one gets a 503 that says why, at once, and a slot freed by a
// closed connection is served again.
func TestConnectionLimit(t *testing.T) {
	const max = 4
	socket := runDaemon(t, Config{MaxConnections: max})
	held := make([]net.Conn, max)
	for i := range held {
		held[i] = dial(t, socket)
	}
	// A served connection answers: the limit counts only accepted ones.
	resp := roundTrip(t, held[0], "GET /v1/ping HTTP/1.1\r\nHost: v\r\n\r\n")
	if resp.StatusCode != 200 {
		t.Fatalf("ping within the limit: %d %s", resp.StatusCode, body(resp))
	}
	body(resp)
	began := time.Now()
	extra := dial(t, socket)
	resp = roundTrip(t, extra, "GET /v1/ping HTTP/1.1\r\nHost: v\r\n\r\n")
	b := body(resp)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(b, "too many connections (limit 4, --max-connections)") {
		t.Fatalf("past the limit: %d %s, want 503 naming the limit", resp.StatusCode, b)
	}
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("the refusal took %s; it must not wait for a slot", took)
	}
	held[1].Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := dial(t, socket)
		resp = roundTrip(t, c, "GET /v1/ping HTTP/1.1\r\nHost: v\r\n\r\n")
		code := resp.StatusCode
		body(resp)
		c.Close()
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a freed slot was not served again within 10s (last %d)", code)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBodyTimeout: a client that sends a header and never its body gets a
// 408 once the body deadline passes, and the connection is closed.
func TestBodyTimeout(t *testing.T) {
	socket := runDaemon(t, Config{BodyTimeout: 300 * time.Millisecond})
	c := dial(t, socket)
	began := time.Now()
	resp := roundTrip(t, c, "POST /v1/domains HTTP/1.1\r\nHost: v\r\nContent-Length: 100\r\n\r\nname: x\n")
	b := body(resp)
	if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(b, "did not arrive within 300ms") {
		t.Fatalf("slow body: %d %s, want 408", resp.StatusCode, b)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("408 after %s", took)
	}
	// A body the handler does not read (a GET with a body) is bounded too.
	c2 := dial(t, socket)
	_ = c2.SetDeadline(time.Now().Add(20 * time.Second))
	fmt.Fprint(c2, "GET /v1/ping HTTP/1.1\r\nHost: v\r\nContent-Length: 10000000\r\n\r\n")
	r := bufio.NewReader(c2)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	body(resp)
	if _, err := r.ReadByte(); err != io.EOF {
		t.Errorf("after a body that never came: read %v, want EOF (connection closed)", err)
	}
}

// TestRefuseOpenDirs: a socket dir or state dir that others may write is
// refused with the reason.
func TestRefuseOpenDirs(t *testing.T) {
	dir := testkit.ShortDir(t)
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Run(ctx, Config{StateDir: filepath.Join(dir, "state"), Socket: filepath.Join(open, "v.sock"), Logger: zerolog.Nop()})
	if err == nil || !strings.Contains(err.Error(), "socket dir "+open+" has mode -rwxrwxrwx: others may write it") {
		t.Errorf("world-writable socket dir: %v", err)
	}
	err = Run(ctx, Config{StateDir: open, Socket: filepath.Join(dir, "s", "v.sock"), Logger: zerolog.Nop()})
	if err == nil || !strings.Contains(err.Error(), "state dir "+open+" has mode") {
		t.Errorf("world-writable state dir: %v", err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Mkdir(filepath.Join(dir, "target"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "target"), link); err != nil {
		t.Fatal(err)
	}
	err = Run(ctx, Config{StateDir: link, Socket: filepath.Join(dir, "s2", "v.sock"), Logger: zerolog.Nop()})
	if err == nil || !strings.Contains(err.Error(), "is a symlink") {
		t.Errorf("symlinked state dir: %v", err)
	}
}

// TestSocketBoundWithoutWindow: under a umask of 0, the socket still
// appears with its final mode, and no private bind dir is left behind.
func TestSocketBoundWithoutWindow(t *testing.T) {
	dir := testkit.ShortDir(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	ln, err := Listen(ctx, filepath.Join(dir, "v.sock"), SocketMode, SocketDirMode, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Lstat(filepath.Join(dir, "v.sock"))
	if err != nil || st.Mode().Perm() != SocketMode {
		t.Fatalf("socket %v, mode %v; want %s", err, st.Mode(), SocketMode)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("dir holds %d entries, want the socket only", len(entries))
	}
	ln.Close()
	if _, err := os.Lstat(filepath.Join(dir, "v.sock")); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
}
