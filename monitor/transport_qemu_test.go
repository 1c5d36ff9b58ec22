package monitor

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/vmsup/vmsup/tests/testkit"
)

// qemuWait bounds every wait on a real QEMU.
const qemuWait = 10 * time.Second

// testQEMU is a QEMU child process with a QMP socket.
type testQEMU struct {
	cmd    *exec.Cmd
	sock   string
	stderr *testkit.SyncBuffer
}

// startQEMUForTransport starts a paused QEMU with no machine and a QMP
// socket. Cleanup continues it (in case a test stopped it), kills it and
// waits for it, all bounded.
func startQEMUForTransport(t *testing.T) *testQEMU {
	t.Helper()
	bin := testkit.RequireQEMU(t)
	sock := shortSocketPath(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin,
		"-machine", "none", "-S", "-nodefaults", "-no-user-config", "-display", "none",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	q := &testQEMU{cmd: cmd, sock: sock, stderr: &testkit.SyncBuffer{}}
	cmd.Stderr = q.stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", bin, err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		cancel() // kills QEMU
		select {
		case <-waited:
		case <-time.After(qemuWait):
			t.Errorf("QEMU pid %d did not exit within %s", cmd.Process.Pid, qemuWait)
		}
		if t.Failed() {
			t.Logf("QEMU stderr:\n%s", q.stderr.String())
		}
	})
	return q
}

// connect returns a connected transport, disconnected at cleanup.
func (q *testQEMU) connect(t *testing.T, opts TransportOptions) *Transport {
	t.Helper()
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = qemuWait
	}
	tr := NewTransport(q.sock, opts)
	t.Cleanup(func() { _ = tr.Disconnect() })
	if err := tr.Connect(); err != nil {
		t.Fatalf("Connect to QEMU: %v\nQEMU stderr:\n%s", err, q.stderr.String())
	}
	return tr
}

// signal sends sig to QEMU.
func (q *testQEMU) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := q.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to QEMU: %v", sig, err)
	}
}

// waitStopped waits until QEMU is in the stopped (T) state, so that a test
// never races SIGSTOP delivery.
func (q *testQEMU) waitStopped(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(qemuWait)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(q.cmd.Process.Pid) + "/stat")
		if err == nil {
			// The state follows the parenthesised command name.
			if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'T' {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("QEMU did not stop within %s", qemuWait)
}

func TestQEMUTransportRawQueryStatus(t *testing.T) {
	q := startQEMUForTransport(t)
	tr := q.connect(t, TransportOptions{}) // also proves that dial retries until QEMU created the socket
	if v := tr.Version(); v.QEMU.Major < 2 {
		t.Errorf("Version = %s, want the real QEMU version", v)
	}
	st, err := raw.NewMonitor(tr).QueryStatus()
	if err != nil {
		t.Fatalf("QueryStatus: %v", err)
	}
	if st.Status != raw.RunStatePrelaunch || st.Running {
		t.Errorf("QueryStatus = %+v, want prelaunch (-S), not running", st)
	}
	// A QMP error reply from the real QEMU.
	_, err = tr.Run([]byte(`{"execute":"no-such-command"}`))
	var qerr *QMPError
	if !errors.As(err, &qerr) || qerr.Class != "CommandNotFound" || qerr.Command != "no-such-command" {
		t.Errorf("no-such-command error = %v, want a CommandNotFound QMPError", err)
	}
}

func TestQEMUTransportQueryQMPSchemaOver64KiB(t *testing.T) {
	q := startQEMUForTransport(t)
	tr := q.connect(t, TransportOptions{})
	reply, err := tr.Run([]byte(`{"execute":"query-qmp-schema"}`))
	if err != nil {
		t.Fatalf("query-qmp-schema: %v", err)
	}
	if len(reply) <= 64<<10 {
		t.Errorf("query-qmp-schema reply is %d bytes, want more than 64 KiB", len(reply))
	}
	var schema []struct {
		Name     string `json:"name"`
		MetaType string `json:"meta-type"`
	}
	returnOf(t, reply, &schema)
	if len(schema) < 100 {
		t.Errorf("schema has %d entries, want hundreds", len(schema))
	}
	t.Logf("query-qmp-schema: %d bytes, %d entries", len(reply), len(schema))
	// The connection is still in sync afterwards.
	if _, err := raw.NewMonitor(tr).QueryStatus(); err != nil {
		t.Errorf("QueryStatus after the schema: %v", err)
	}
}

func TestQEMUTransportEventsDuringCommands(t *testing.T) {
	q := startQEMUForTransport(t)
	tr := q.connect(t, TransportOptions{})
	events, err := tr.Events(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	// Queries run all along, concurrently with cont and stop.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var queries int
	wg.Add(1)
	go func() {
		defer wg.Done()
		mon := raw.NewMonitor(tr)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := mon.QueryStatus(); err != nil {
				t.Errorf("QueryStatus during cont/stop: %v", err)
				return
			}
			queries++
		}
	}()

	waitEvent := func(name string) qmp.Event {
		t.Helper()
		timeout := time.After(qemuWait)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("events channel closed while waiting for %s: %v", name, tr.Err())
				}
				if ev.Event == name {
					return ev
				}
			case <-timeout:
				t.Fatalf("no %s event within %s", name, qemuWait)
			}
		}
	}
	for range 3 {
		// QEMU sends RESUME before the reply to cont, and STOP before the
		// reply to stop: the events arrive while the command is in flight.
		if _, err := tr.Run([]byte(`{"execute":"cont"}`)); err != nil {
			t.Fatalf("cont: %v", err)
		}
		if ev := waitEvent("RESUME"); ev.Timestamp.Seconds == 0 {
			t.Errorf("RESUME event without timestamp: %+v", ev)
		}
		if _, err := tr.Run([]byte(`{"execute":"stop"}`)); err != nil {
			t.Fatalf("stop: %v", err)
		}
		waitEvent("STOP")
	}
	close(stop)
	wg.Wait()
	if queries == 0 {
		t.Errorf("no query ran alongside cont/stop")
	}
	st, err := raw.NewMonitor(tr).QueryStatus()
	if err != nil || st.Status != raw.RunStatePaused {
		t.Errorf("QueryStatus = %+v, %v; want paused", st, err)
	}
	if n := tr.DroppedEvents(); n != 0 {
		t.Errorf("DroppedEvents = %d, want 0", n)
	}
}

func TestQEMUTransportConnectFailsAgainstStoppedQEMU(t *testing.T) {
	q := startQEMUForTransport(t)
	// Make sure QEMU is up and listening, then let it go.
	first := q.connect(t, TransportOptions{})
	if _, err := raw.NewMonitor(first).QueryStatus(); err != nil {
		t.Fatalf("QueryStatus: %v", err)
	}
	_ = first.Disconnect()

	q.signal(t, syscall.SIGSTOP)
	q.waitStopped(t)
	// The kernel still accepts the connection into the listen backlog,
	// but the greeting never comes.
	tr := NewTransport(q.sock, TransportOptions{ConnectTimeout: time.Second})
	t.Cleanup(func() { _ = tr.Disconnect() })
	start := time.Now()
	err := tr.Connect()
	took := time.Since(start)
	if err == nil {
		t.Fatal("Connect to a stopped QEMU succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Connect error = %v, want one wrapping context.DeadlineExceeded", err)
	}
	if took < time.Second || took > 3*time.Second {
		t.Errorf("Connect failed after %s, want about 1s", took)
	}
	t.Logf("Connect to stopped QEMU: %v (after %s)", err, took.Round(time.Millisecond))
	q.signal(t, syscall.SIGCONT)
}

func TestQEMUTransportCommandTimesOutAgainstStoppedQEMU(t *testing.T) {
	q := startQEMUForTransport(t)
	tr := q.connect(t, TransportOptions{})
	if _, err := raw.NewMonitor(tr).QueryStatus(); err != nil {
		t.Fatalf("QueryStatus: %v", err)
	}

	q.signal(t, syscall.SIGSTOP)
	q.waitStopped(t)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := tr.RunContext(ctx, []byte(`{"execute":"query-status"}`))
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) || !timeoutMessage.MatchString(err.Error()) || !strings.Contains(err.Error(), `"query-status"`) {
		t.Fatalf("query-status against a stopped QEMU: %v, want a timeout naming the command", err)
	}
	if took > 2*time.Second {
		t.Errorf("command failed after %s, want about 500ms", took)
	}
	if tr.Err() != nil {
		t.Errorf("a command timeout must not end the connection: %v", tr.Err())
	}

	// Once QEMU runs again, its late reply to query-status is dropped by
	// id, and the next command gets its own reply.
	q.signal(t, syscall.SIGCONT)
	ctx2, cancel2 := context.WithTimeout(context.Background(), qemuWait)
	defer cancel2()
	reply, err := tr.RunContext(ctx2, []byte(`{"execute":"query-version"}`))
	if err != nil {
		t.Fatalf("query-version after SIGCONT: %v", err)
	}
	var ver struct {
		QEMU *struct{ Major int } `json:"qemu"`
	}
	returnOf(t, reply, &ver)
	if ver.QEMU == nil || ver.QEMU.Major == 0 {
		t.Errorf("query-version got %s, not its own reply", reply)
	}
}

// TestQEMUSocketMonitorFailsOnSchema shows why Transport exists: go-qemu's
// own qmp.SocketMonitor reads with a bufio.Scanner whose 64 KiB token limit
// is smaller than QEMU's query-qmp-schema reply (~200 KB), so the command
// fails with bufio.ErrTooLong and the monitor is unusable afterwards. The
// monitor has no deadlines of its own, so every call is guarded here.
func TestQEMUSocketMonitorFailsOnSchema(t *testing.T) {
	q := startQEMUForTransport(t)
	// Wait until QEMU listens (our transport retries; SocketMonitor does not).
	probe := q.connect(t, TransportOptions{})
	_ = probe.Disconnect()

	guard := func(what string, f func() error) error {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- f() }()
		select {
		case err := <-done:
			return err
		case <-time.After(qemuWait):
			// Cleanup kills QEMU, which unblocks the call.
			t.Fatalf("go-qemu SocketMonitor %s hung for %s", what, qemuWait)
			return nil
		}
	}

	var mon *qmp.SocketMonitor
	err := guard("dial+Connect", func() error {
		var err error
		deadline := time.Now().Add(qemuWait)
		for {
			mon, err = qmp.NewSocketMonitor("unix", q.sock, 2*time.Second)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			return err
		}
		return mon.Connect()
	})
	if err != nil {
		t.Fatalf("go-qemu SocketMonitor Connect: %v", err)
	}
	defer func() { _ = guard("Disconnect", mon.Disconnect) }()

	err = guard("Run(query-qmp-schema)", func() error {
		_, err := mon.Run([]byte(`{"execute":"query-qmp-schema"}`))
		return err
	})
	if err == nil {
		t.Fatal("go-qemu SocketMonitor ran query-qmp-schema; expected its 64 KiB scanner limit to fail it (if go-qemu fixed this, revisit why Transport exists)")
	}
	if !errors.Is(err, bufio.ErrTooLong) {
		t.Errorf("go-qemu SocketMonitor error = %v, want bufio.ErrTooLong", err)
	}
	t.Logf("go-qemu SocketMonitor query-qmp-schema: %v", err)
}

// Against real QEMU, a line over MaxLineBytes passes only as the answer of
// query-qmp-schema: qom-list-types, an ordinary command with a long
// answer, breaks the connection.
func TestQEMUTransportBigLineOnlyForSchema(t *testing.T) {
	q := startQEMUForTransport(t)
	tr := q.connect(t, TransportOptions{MaxLineBytes: 8 << 10})
	reply, err := tr.Run([]byte(`{"execute":"query-qmp-schema"}`))
	if err != nil || len(reply) <= 8<<10 {
		t.Fatalf("query-qmp-schema under an 8 KiB ordinary limit: %d bytes, %v", len(reply), err)
	}
	_, err = tr.Run([]byte(`{"execute":"qom-list-types"}`))
	if !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("qom-list-types under an 8 KiB limit: %v, want ErrLineTooLong", err)
	}
	t.Logf("qom-list-types: %v", err)
}
