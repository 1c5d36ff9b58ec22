package monitor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/tests/testkit"
)

// fakeWait bounds every wait in the scripted-server tests.
const fakeWait = testkit.QMPWait

// shortSocketPath returns a unix socket path short enough for sun_path.
func shortSocketPath(t *testing.T) string { return testkit.ShortSocketPath(t) }

// newFakeQMP is a scripted QMP server on a fresh socket that checks the
// transport's command ids.
func newFakeQMP(t *testing.T) *testkit.QMPServer {
	return testkit.NewQMPServer(t, shortSocketPath(t), idPrefix)
}

// newFakeQMPAt is newFakeQMP on path.
func newFakeQMPAt(t *testing.T, path string) *testkit.QMPServer {
	return testkit.NewQMPServer(t, path, idPrefix)
}

// connectFake connects a transport to f, whose script must start with
// handshake. The transport is disconnected when the test ends.
func connectFake(t *testing.T, f *testkit.QMPServer, opts TransportOptions) *Transport {
	t.Helper()
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = fakeWait
	}
	tr := NewTransport(f.Path(), opts)
	t.Cleanup(func() { _ = tr.Disconnect() })
	if err := tr.Connect(); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	return tr
}

// runCtx runs cmd with a bounded context.
func runCtx(tr *Transport, cmd string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), fakeWait)
	defer cancel()
	return tr.RunContext(ctx, []byte(cmd))
}

// nextEvent receives one event within fakeWait.
func nextEvent(t *testing.T, ch <-chan qmp.Event) qmp.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatalf("events channel closed")
		}
		return ev
	case <-time.After(fakeWait):
		t.Fatalf("no event within %s", fakeWait)
	}
	return qmp.Event{}
}

// waitDone waits for the transport to end.
func waitDone(t *testing.T, tr *Transport) {
	t.Helper()
	select {
	case <-tr.Done():
	case <-time.After(fakeWait):
		t.Fatalf("transport did not end within %s", fakeWait)
	}
}

// waitEventsClosed drains the events channel until it is closed.
func waitEventsClosed(t *testing.T, tr *Transport) {
	t.Helper()
	ch, _ := tr.Events(context.Background())
	timeout := time.After(fakeWait)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("events channel not closed within %s", fakeWait)
		}
	}
}

// decodeReturn decodes the "return" member of a reply.
func decodeReturn(reply []byte, v any) error {
	var r struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(reply, &r); err != nil {
		return fmt.Errorf("reply %q: %w", reply, err)
	}
	if err := json.Unmarshal(r.Return, v); err != nil {
		return fmt.Errorf("return of %q: %w", reply, err)
	}
	return nil
}

// returnOf decodes the "return" member of a reply or fails the test.
func returnOf(t *testing.T, reply []byte, v any) {
	t.Helper()
	if err := decodeReturn(reply, v); err != nil {
		t.Fatal(err)
	}
}

func TestTransportHandshakeAndRawQueryStatus(t *testing.T) {
	f := newFakeQMP(t)
	capID := make(chan string, 1)
	f.Serve(func(c *testkit.QMPConn) {
		c.Greet()
		cmd := c.Expect("qmp_capabilities")
		capID <- cmd.ID
		c.Reply(cmd, "{}")
		q := c.Expect("query-status")
		c.Reply(q, `{"status": "prelaunch", "singlestep": false, "running": false}`)
	})
	tr := connectFake(t, f, TransportOptions{})

	if id := <-capID; !strings.HasPrefix(id, "vmsup-") {
		t.Errorf("qmp_capabilities id = %q, want vmsup-N", id)
	}
	if v := tr.Version(); v.String() != "7.2.1" || v.Package != "fake" {
		t.Errorf("Version = %s %q, want 7.2.1 \"fake\"", v, v.Package)
	}
	if err := tr.Err(); err != nil {
		t.Errorf("Err on a healthy transport = %v", err)
	}
	st, err := raw.NewMonitor(tr).QueryStatus()
	if err != nil {
		t.Fatalf("QueryStatus: %v", err)
	}
	if st.Status != raw.RunStatePrelaunch || st.Running {
		t.Errorf("QueryStatus = %+v, want prelaunch, not running", st)
	}
	f.Wait()
}

func TestTransportEventBeforeCapabilitiesReply(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Greet()
		cmd := c.Expect("qmp_capabilities")
		// An event with no id lands before the reply: it must not be
		// taken for the reply.
		c.Send(`{"timestamp": {"seconds": 1700000000, "microseconds": 42}, "event": "STOP"}`)
		c.Send(`{"event": "RESUME", "data": {"reason": "x"}, "timestamp": {"seconds": 1700000001, "microseconds": 0}}`)
		c.Reply(cmd, "{}")
		c.Reply(c.Expect("query-status"), `{"status": "running", "singlestep": false, "running": true}`)
	})
	tr := connectFake(t, f, TransportOptions{})
	ch, err := tr.Events(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, ch)
	if ev.Event != "STOP" || ev.Timestamp.Seconds != 1700000000 || ev.Timestamp.Microseconds != 42 {
		t.Errorf("first event = %+v, want STOP at 1700000000.000042", ev)
	}
	ev = nextEvent(t, ch)
	if ev.Event != "RESUME" || ev.Data["reason"] != "x" {
		t.Errorf("second event = %+v, want RESUME with reason x", ev)
	}
	if ch2, _ := tr.Events(context.Background()); ch2 != ch {
		t.Errorf("Events returned a different channel on the second call")
	}
	st, err := raw.NewMonitor(tr).QueryStatus()
	if err != nil || !st.Running {
		t.Fatalf("QueryStatus = %+v, %v", st, err)
	}
	f.Wait()
}

func TestTransportOutOfOrderRepliesMatchedByID(t *testing.T) {
	const n = 4
	f := newFakeQMP(t)
	seen := make(chan testkit.QMPCommand, n)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		var cmds []testkit.QMPCommand
		for range n {
			cmd := c.Expect("echo")
			seen <- cmd
			cmds = append(cmds, cmd)
		}
		// Reply in reverse order, with an event in between.
		for i := len(cmds) - 1; i >= 0; i-- {
			c.Send(`{"event": "TICK", "timestamp": {"seconds": 1, "microseconds": 2}}`)
			c.Reply(cmds[i], string(cmds[i].Arguments))
		}
	})
	tr := connectFake(t, f, TransportOptions{})

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := fmt.Sprintf(`{"execute": "echo", "arguments": {"n": %d, "s": "x,}\"y"}}`, i)
			reply, err := runCtx(tr, cmd)
			if err != nil {
				errs <- fmt.Errorf("command %d: %w", i, err)
				return
			}
			var got struct {
				Return struct {
					N int    `json:"n"`
					S string `json:"s"`
				} `json:"return"`
				ID string `json:"id"`
			}
			if err := json.Unmarshal(reply, &got); err != nil {
				errs <- fmt.Errorf("command %d: reply %q: %w", i, reply, err)
				return
			}
			if got.Return.N != i || got.Return.S != "x,}\"y" || !strings.HasPrefix(got.ID, idPrefix) {
				errs <- fmt.Errorf("command %d got reply %s", i, reply)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	f.Wait()
	close(seen)
	ids := map[string]bool{}
	for cmd := range seen {
		if ids[cmd.ID] {
			t.Errorf("id %q used twice", cmd.ID)
		}
		ids[cmd.ID] = true
		// Only the id is added; the rest of the command is untouched.
		var args struct{ N int }
		if err := json.Unmarshal(cmd.Arguments, &args); err != nil {
			t.Errorf("arguments %s: %v", cmd.Arguments, err)
		}
		orig := fmt.Sprintf(`{"execute": "echo", "arguments": {"n": %d, "s": "x,}\"y"}}`, args.N)
		if want := strings.TrimSuffix(orig, "}") + fmt.Sprintf(`,"id":%q}`, cmd.ID); cmd.Line != want {
			t.Errorf("server got %q, want %q", cmd.Line, want)
		}
	}
}

// Lines over MaxLineBytes pass only while a command that answers big
// (query-qmp-schema) is in flight; otherwise they break the connection.
func TestTransportBigLinesOnlyForBigCommands(t *testing.T) {
	big := strings.Repeat("a", 2<<20)
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		c.Reply(c.Expect("query-qmp-schema"), fmt.Sprintf(`[{"blob": %q}]`, big))
		cmd := c.Expect("query-big")
		_ = c.Conn().SetWriteDeadline(time.Now().Add(fakeWait))
		_, _ = c.Conn().Write([]byte(fmt.Sprintf(`{"return": {"blob": %q}, "id": %q}`+"\r\n", strings.Repeat("b", 1<<20), cmd.ID)))
	})
	tr := connectFake(t, f, TransportOptions{})
	reply, err := runCtx(tr, `{"execute":"query-qmp-schema"}`)
	if err != nil {
		t.Fatalf("query-qmp-schema: %v", err)
	}
	var ret []struct{ Blob string }
	returnOf(t, reply, &ret)
	if len(ret) != 1 || ret[0].Blob != big {
		t.Fatalf("schema reply of %d entries, want one blob of %d bytes", len(ret), len(big))
	}
	_, err = runCtx(tr, `{"execute":"query-big"}`)
	if !errors.Is(err, ErrLineTooLong) || !strings.Contains(err.Error(), "more than 1048576 bytes") || !strings.Contains(err.Error(), "query-qmp-schema") {
		t.Fatalf("a 1 MiB reply to an ordinary command: %v, want ErrLineTooLong naming the limit", err)
	}
	waitDone(t, tr)
	f.Wait()
}

// A flood of events past the rate limit fails the connection with
// ErrEventFlood; events within it flow.
func TestTransportEventFloodFailsConnection(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		// The flood follows a command, so that it comes after Connect
		// has returned (else Connect itself may see the flood).
		c.Expect("query-status")
		var b bytes.Buffer
		for i := range 1000 {
			fmt.Fprintf(&b, `{"timestamp": {"seconds": %d, "microseconds": 0}, "event": "STOP"}`+"\r\n", i)
		}
		_ = c.Conn().SetWriteDeadline(time.Now().Add(fakeWait))
		_, _ = c.Conn().Write(b.Bytes())
	})
	tr := connectFake(t, f, TransportOptions{EventRate: 10, EventBurst: 100, EventBuffer: 1000})
	if _, err := runCtx(tr, `{"execute":"query-status"}`); !errors.Is(err, ErrEventFlood) {
		t.Errorf("the command under the flood: %v, want ErrEventFlood", err)
	}
	waitDone(t, tr)
	if !errors.Is(tr.Err(), ErrEventFlood) || !strings.Contains(tr.Err().Error(), "faster than 10 a second (burst 100)") {
		t.Fatalf("Err = %v, want ErrEventFlood with the limit", tr.Err())
	}
	ch, _ := tr.Events(context.Background())
	n := 0
	for range ch {
		n++
	}
	if n < 100 || n > 110 {
		t.Errorf("%d events delivered before the flood broke the connection, want the burst (100) and a few", n)
	}
	f.Wait()
}

func TestTransportLineTooLongFailsConnection(t *testing.T) {
	const limit = 64 << 10
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		cmd := c.Expect("query-huge")
		// Write without waiting for the client to read it all: it stops
		// reading at the limit.
		_ = c.Conn().SetWriteDeadline(time.Now().Add(fakeWait))
		_, _ = c.Conn().Write([]byte(fmt.Sprintf(`{"return": %q, "id": %q}`+"\r\n", strings.Repeat("b", 100<<10), cmd.ID)))
	})
	tr := connectFake(t, f, TransportOptions{MaxLineBytes: limit})
	_, err := runCtx(tr, `{"execute":"query-huge"}`)
	if !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("query-huge error = %v, want ErrLineTooLong", err)
	}
	if !strings.Contains(err.Error(), `"query-huge"`) || !strings.Contains(err.Error(), "65536") {
		t.Errorf("error %q does not name the command and the limit", err)
	}
	waitDone(t, tr)
	if !errors.Is(tr.Err(), ErrLineTooLong) {
		t.Errorf("Err = %v, want ErrLineTooLong", tr.Err())
	}
	waitEventsClosed(t, tr)
	if _, err := runCtx(tr, `{"execute":"query-status"}`); !errors.Is(err, ErrLineTooLong) {
		t.Errorf("command after failure: %v, want an error wrapping ErrLineTooLong", err)
	}
	f.Wait()
}

func TestReadQMPLineLimit(t *testing.T) {
	const limit = 40
	for _, tc := range []struct {
		name    string
		in      string
		want    string
		wantErr error
	}{
		{"short", "abc\n", "abc\n", nil},
		{"exactly the limit", strings.Repeat("x", limit) + "\n", strings.Repeat("x", limit) + "\n", nil},
		{"one over the limit", strings.Repeat("x", limit+1) + "\n", "", ErrLineTooLong},
		{"far over the limit", strings.Repeat("x", 10*limit) + "\n", "", ErrLineTooLong},
		{"unterminated", "abc", "", io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tc.in), 16) // smaller than the lines
			got, err := readQMPLine(br, limit)
			if !errors.Is(err, tc.wantErr) || string(got) != tc.want {
				t.Errorf("readQMPLine = %q, %v; want %q, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestTransportUnknownIDReplyIgnored(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		cmd := c.Expect("query-x")
		c.Send(`{"return": {"who": "stranger"}, "id": "vmsup-999999"}`)
		c.Send(`{"return": {"who": "number"}, "id": 7}`)
		c.Send(`{"error": {"class": "GenericError", "desc": "not yours"}, "id": "someone-else"}`)
		c.Reply(cmd, `{"who": "me"}`)
	})
	tr := connectFake(t, f, TransportOptions{})
	reply, err := runCtx(tr, `{"execute":"query-x"}`)
	if err != nil {
		t.Fatalf("query-x: %v", err)
	}
	var ret struct{ Who string }
	returnOf(t, reply, &ret)
	if ret.Who != "me" {
		t.Errorf("got reply %s, want the one with our id", reply)
	}
	f.Wait()
}

func TestTransportEOFFailsPendingCommands(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		c.ReadCommand()
		c.ReadCommand()
		c.Close()
	})
	tr := connectFake(t, f, TransportOptions{})

	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, name := range []string{"query-a", "query-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = runCtx(tr, fmt.Sprintf(`{"execute":%q}`, name))
		}()
	}
	wg.Wait()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("pending commands failed after %s, want at once", took)
	}
	for i, name := range []string{"query-a", "query-b"} {
		if !errors.Is(errs[i], io.EOF) || !strings.Contains(errs[i].Error(), fmt.Sprintf("%q", name)) {
			t.Errorf("%s error = %v, want EOF naming the command", name, errs[i])
		}
	}
	waitDone(t, tr)
	if !errors.Is(tr.Err(), io.EOF) {
		t.Errorf("Err = %v, want io.EOF", tr.Err())
	}
	waitEventsClosed(t, tr)
	f.Wait()
}

func TestTransportFullEventsChannelDoesNotBlockReply(t *testing.T) {
	const events = 5000
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		cmd := c.Expect("query-status")
		var b bytes.Buffer
		for i := range events {
			fmt.Fprintf(&b, `{"timestamp": {"seconds": %d, "microseconds": 0}, "event": "SPAM", "data": {"i": %d}}`+"\r\n", i, i)
		}
		c.SendRaw(b.Bytes())
		c.Reply(cmd, `{"status": "running", "singlestep": false, "running": true}`)
	})
	tr := connectFake(t, f, TransportOptions{EventBurst: 2 * events})
	// Nobody reads the events.
	if _, err := runCtx(tr, `{"execute":"query-status"}`); err != nil {
		t.Fatalf("query-status behind %d unread events: %v", events, err)
	}
	if got, want := tr.DroppedEvents(), uint64(events-DefaultEventBuffer); got != want {
		t.Errorf("DroppedEvents = %d, want %d", got, want)
	}
	ch, _ := tr.Events(context.Background())
	if len(ch) != DefaultEventBuffer {
		t.Errorf("events buffered = %d, want %d", len(ch), DefaultEventBuffer)
	}
	// The buffered events are the first ones, in order.
	if ev := nextEvent(t, ch); ev.Data["i"] != float64(0) {
		t.Errorf("first buffered event = %+v, want i=0", ev)
	}
	f.Wait()
}

func TestTransportConnectTimesOutWithoutGreeting(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.WaitStop() // accept, then say nothing
	})
	tr := NewTransport(f.Path(), TransportOptions{ConnectTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { _ = tr.Disconnect() })
	start := time.Now()
	err := tr.Connect()
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "greeting") {
		t.Fatalf("Connect error = %v, want a deadline error about the greeting", err)
	}
	if took < 300*time.Millisecond || took > 2*time.Second {
		t.Errorf("Connect failed after %s, want about 300ms", took)
	}
	waitDone(t, tr)
	if tr.Err() == nil {
		t.Errorf("Err = nil after a failed Connect")
	}
	waitEventsClosed(t, tr)
	if err := tr.Connect(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Connect = %v, want ErrClosed", err)
	}
}

func TestTransportConnectTimesOutWithoutCapabilitiesReply(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Greet()
		c.Expect("qmp_capabilities")
		c.WaitStop() // never answers
	})
	tr := NewTransport(f.Path(), TransportOptions{ConnectTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { _ = tr.Disconnect() })
	start := time.Now()
	err := tr.Connect()
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `"qmp_capabilities"`) {
		t.Fatalf("Connect error = %v, want a deadline error naming qmp_capabilities", err)
	}
	if took < 300*time.Millisecond || took > 2*time.Second {
		t.Errorf("Connect failed after %s, want about 300ms", took)
	}
}

func TestTransportBadGreetingFailsConnect(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Send(`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 0}}`)
		c.WaitStop()
	})
	tr := NewTransport(f.Path(), TransportOptions{ConnectTimeout: fakeWait})
	t.Cleanup(func() { _ = tr.Disconnect() })
	start := time.Now()
	err := tr.Connect()
	if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "greeting") {
		t.Fatalf("Connect error = %v, want ErrProtocol about the greeting", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Connect failed after %s, want at once", took)
	}
}

func TestTransportCapabilitiesErrorFailsConnect(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Greet()
		cmd := c.Expect("qmp_capabilities")
		c.Send(fmt.Sprintf(`{"error": {"class": "CommandNotFound", "desc": "nope"}, "id": %q}`, cmd.ID))
		c.WaitStop()
	})
	tr := NewTransport(f.Path(), TransportOptions{ConnectTimeout: fakeWait})
	t.Cleanup(func() { _ = tr.Disconnect() })
	err := tr.Connect()
	var qerr *QMPError
	if !errors.As(err, &qerr) || qerr.Command != "qmp_capabilities" {
		t.Fatalf("Connect error = %v, want a QMPError for qmp_capabilities", err)
	}
}

func TestTransportQMPErrorReply(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		cmd := c.Expect("cont")
		c.Send(fmt.Sprintf(`{"error": {"class": "GenericError", "desc": "Resetting the Virtual Machine is required"}, "id": %q}`, cmd.ID))
		cmd = c.Expect("stop")
		c.Send(fmt.Sprintf(`{"error": "not an object", "id": %q}`, cmd.ID))
	})
	tr := connectFake(t, f, TransportOptions{})
	_, err := runCtx(tr, `{"execute":"cont"}`)
	var qerr *QMPError
	if !errors.As(err, &qerr) {
		t.Fatalf("cont error = %v (%T), want *QMPError", err, err)
	}
	if qerr.Command != "cont" || qerr.Class != "GenericError" || qerr.Desc != "Resetting the Virtual Machine is required" {
		t.Errorf("QMPError = %+v", qerr)
	}
	if want := `QMP command "cont" failed: GenericError: Resetting the Virtual Machine is required`; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
	// raw commands see the same error.
	_, err = runCtx(tr, `{"execute":"stop"}`)
	if !errors.As(err, &qerr) || qerr.Command != "stop" || !strings.Contains(qerr.Desc, "not an object") {
		t.Errorf("stop error = %v, want a QMPError carrying the odd error member", err)
	}
	if tr.Err() != nil {
		t.Errorf("QMP error replies must not end the connection: Err = %v", tr.Err())
	}
	f.Wait()
}

func TestTransportCommandTimeoutDiscardsLateReply(t *testing.T) {
	f := newFakeQMP(t)
	release := make(chan struct{})
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		slow := c.Expect("query-slow")
		select {
		case <-release:
		case <-time.After(fakeWait):
			c.Abort("not released")
		}
		c.Reply(slow, `{"from": "slow"}`) // late: its command timed out
		c.Reply(c.Expect("query-fast"), `{"from": "fast"}`)
	})
	tr := connectFake(t, f, TransportOptions{})

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := tr.RunContext(ctx, []byte(`{"execute":"query-slow"}`))
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) || !timeoutMessage.MatchString(err.Error()) || !strings.Contains(err.Error(), `"query-slow"`) {
		t.Fatalf("query-slow error = %v, want a timeout naming the command", err)
	}
	if took > 2*time.Second {
		t.Errorf("timed out after %s, want about 200ms", took)
	}
	close(release)
	reply, err := runCtx(tr, `{"execute":"query-fast"}`)
	if err != nil {
		t.Fatalf("query-fast: %v", err)
	}
	var ret struct{ From string }
	returnOf(t, reply, &ret)
	if ret.From != "fast" {
		t.Errorf("query-fast got the late reply %s", reply)
	}
	if tr.Err() != nil {
		t.Errorf("a timeout must not end the connection: Err = %v", tr.Err())
	}
	f.Wait()
}

func TestTransportReplyWithoutID(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		// One pending command: an id-less reply (as QEMU sends for JSON
		// parse errors) goes to it.
		c.Expect("query-one")
		c.Send(`{"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword"}}`)
		// Two pending commands: an id-less reply is ambiguous and dropped.
		a := c.Expect("query-two")
		b := c.Expect("query-two")
		c.Send(`{"return": {"who": "nobody"}}`)
		c.Reply(b, `{"who": "b"}`)
		c.Reply(a, `{"who": "a"}`)
	})
	tr := connectFake(t, f, TransportOptions{})
	_, err := runCtx(tr, `{"execute":"query-one"}`)
	var qerr *QMPError
	if !errors.As(err, &qerr) || qerr.Command != "query-one" {
		t.Fatalf("query-one error = %v, want the id-less QMPError", err)
	}

	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reply, err := runCtx(tr, `{"execute":"query-two"}`)
			if err != nil {
				t.Errorf("query-two: %v", err)
				return
			}
			if bytes.Contains(reply, []byte("nobody")) {
				t.Errorf("query-two took the ambiguous id-less reply %s", reply)
			}
		}()
	}
	wg.Wait()
	f.Wait()
}

// timeoutMessage matches a command timeout error of about 200ms or 500ms
// (the budget is measured when the command starts, a moment after the test
// made its context).
var timeoutMessage = regexp.MustCompile(`^QMP command "[a-z-]+" timed out after (1\d\d|200|4\d\d|500)ms: context deadline exceeded$`)

func TestTransportHostileInput(t *testing.T) {
	hostile := []string{
		`[1, 2, 3]`,
		`null`,
		`"a string"`,
		`42`,
		`garbage{`,
		`{"unterminated": `,
		`{}`,
		"\xff\xfe{}",
		`{"a": ` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`,
		`{"QMP": {"version": "again"}}`,
		`{"event": 5}`,
		`{"event": ""}`,
		`{"event": {"name": "X"}}`,
		`{"event": "ODD_DATA", "data": [1, 2], "timestamp": "yesterday"}`,
		`{"event": "ODD_TS", "data": "x", "timestamp": {"seconds": "one"}}`,
		`{"event": "GOOD", "data": {"a": 1}, "timestamp": {"seconds": 3, "microseconds": 4}}`,
		`{"return": {}, "id": 5}`,
		`{"return": {}, "id": {"x": 1}}`,
		`{"return": {}, "id": "vmsup-0"}`,
		`{"error": 17, "id": [1]}`,
		`{"neither": "reply nor event"}`,
		"   \t ",
		"",
	}
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		cmd := c.Expect("query-x")
		for _, line := range hostile {
			c.Send(line)
		}
		c.Reply(cmd, `{"ok": true}`)
		c.Reply(c.Expect("query-y"), `{"ok": true}`)
	})
	var logs testkit.SyncBuffer
	logger := zerolog.New(&logs)
	tr := connectFake(t, f, TransportOptions{Logger: &logger})
	for _, name := range []string{"query-x", "query-y"} {
		reply, err := runCtx(tr, fmt.Sprintf(`{"execute":%q}`, name))
		if err != nil {
			t.Fatalf("%s after hostile input: %v", name, err)
		}
		var ret struct{ OK bool }
		returnOf(t, reply, &ret)
		if !ret.OK {
			t.Errorf("%s reply = %s", name, reply)
		}
	}
	if tr.Err() != nil {
		t.Errorf("hostile input ended the connection: %v", tr.Err())
	}
	ch, _ := tr.Events(context.Background())
	var names []string
	for len(ch) > 0 {
		ev := <-ch
		names = append(names, ev.Event)
		switch ev.Event {
		case "ODD_DATA", "ODD_TS":
			if ev.Data != nil {
				t.Errorf("%s: odd data decoded as %v, want nil", ev.Event, ev.Data)
			}
		case "GOOD":
			if ev.Data["a"] != float64(1) || ev.Timestamp.Seconds != 3 || ev.Timestamp.Microseconds != 4 {
				t.Errorf("GOOD event = %+v", ev)
			}
		}
	}
	if got := strings.Join(names, ","); got != "ODD_DATA,ODD_TS,GOOD" {
		t.Errorf("events = %s, want ODD_DATA,ODD_TS,GOOD", got)
	}
	if !strings.Contains(logs.String(), "not a JSON object") {
		t.Errorf("hostile lines were not logged; log:\n%s", logs.String())
	}
	f.Wait()
}

func TestTransportDisconnect(t *testing.T) {
	f := newFakeQMP(t)
	got := make(chan struct{})
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		c.Expect("query-never")
		close(got)
		c.WaitStop() // never answers
	})
	tr := connectFake(t, f, TransportOptions{})

	errc := make(chan error, 1)
	go func() {
		_, err := runCtx(tr, `{"execute":"query-never"}`)
		errc <- err
	}()
	select {
	case <-got:
	case <-time.After(fakeWait):
		t.Fatal("server did not get the command")
	}
	if err := tr.Disconnect(); err != nil {
		t.Errorf("Disconnect: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), `"query-never"`) {
			t.Errorf("pending command error = %v, want ErrClosed naming the command", err)
		}
	case <-time.After(fakeWait):
		t.Fatal("pending command not failed by Disconnect")
	}
	if err := tr.Disconnect(); err != nil {
		t.Errorf("second Disconnect: %v", err)
	}
	select {
	case <-tr.Done():
	default:
		t.Error("Done not closed after Disconnect")
	}
	if !errors.Is(tr.Err(), ErrClosed) {
		t.Errorf("Err = %v, want ErrClosed", tr.Err())
	}
	ch, _ := tr.Events(context.Background())
	select {
	case _, ok := <-ch:
		if ok {
			t.Error("events channel still open after Disconnect")
		}
	default:
		t.Error("events channel still open after Disconnect")
	}
	if _, err := tr.Run([]byte(`{"execute":"query-status"}`)); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Disconnect = %v, want ErrClosed", err)
	}
	if err := tr.Connect(); !errors.Is(err, ErrClosed) {
		t.Errorf("Connect after Disconnect = %v, want ErrClosed", err)
	}
}

func TestTransportDisconnectAbortsConnect(t *testing.T) {
	path := shortSocketPath(t) // nothing listens: Connect keeps retrying
	tr := NewTransport(path, TransportOptions{ConnectTimeout: 30 * time.Second})
	errc := make(chan error, 1)
	go func() { errc <- tr.Connect() }()
	time.Sleep(100 * time.Millisecond)
	_ = tr.Disconnect()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Connect error = %v, want ErrClosed", err)
		}
	case <-time.After(fakeWait):
		t.Fatal("Disconnect did not abort Connect")
	}
}

func TestTransportDisconnectBeforeConnect(t *testing.T) {
	tr := NewTransport(shortSocketPath(t), TransportOptions{})
	if _, err := tr.Run([]byte(`{"execute":"query-status"}`)); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Run before Connect = %v, want ErrNotConnected", err)
	}
	if err := tr.Disconnect(); err != nil {
		t.Errorf("Disconnect: %v", err)
	}
	waitDone(t, tr)
	waitEventsClosed(t, tr)
	if err := tr.Connect(); !errors.Is(err, ErrClosed) {
		t.Errorf("Connect after Disconnect = %v, want ErrClosed", err)
	}
}

func TestTransportDialRetriesUntilSocketIsReady(t *testing.T) {
	path := shortSocketPath(t)
	// A stale socket file nobody listens on: dial gets ECONNREFUSED.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	_ = stale.Close()

	tr := NewTransport(path, TransportOptions{ConnectTimeout: fakeWait})
	t.Cleanup(func() { _ = tr.Disconnect() })
	errc := make(chan error, 1)
	go func() { errc <- tr.Connect() }()

	time.Sleep(150 * time.Millisecond)
	if err := os.Remove(path); err != nil { // now ENOENT
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	f := newFakeQMPAt(t, path)
	f.Serve(func(c *testkit.QMPConn) { c.Handshake() })

	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Connect: %v", err)
		}
	case <-time.After(2 * fakeWait):
		t.Fatal("Connect did not return")
	}
	f.Wait()
}

func TestTransportDialTimesOutWithoutSocket(t *testing.T) {
	tr := NewTransport(shortSocketPath(t), TransportOptions{ConnectTimeout: 300 * time.Millisecond})
	start := time.Now()
	err := tr.Connect()
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("Connect error = %v, want a deadline error with ENOENT as last error", err)
	}
	if took < 300*time.Millisecond || took > 2*time.Second {
		t.Errorf("Connect failed after %s, want about 300ms", took)
	}
}

func TestTransportRejectsBadCommands(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) { c.Handshake() })
	tr := connectFake(t, f, TransportOptions{})
	for _, cmd := range []string{
		``,
		`not json`,
		`[1]`,
		`null`,
		`{}`,
		`{"arguments": {}}`,
		`{"execute": 5}`,
		`{"execute": ""}`,
		`{"execute": "query-status", "id": "mine"}`,
		`{"execute": "query-status"} {"execute": "quit"}`,
	} {
		if _, err := runCtx(tr, cmd); !errors.Is(err, ErrBadCommand) {
			t.Errorf("Run(%q) = %v, want ErrBadCommand", cmd, err)
		}
	}
	f.Wait()
}

func TestTransportPrepareAddsOnlyID(t *testing.T) {
	tr := NewTransport("unused", TransportOptions{})
	for _, tc := range []struct{ in, name, want string }{
		{`{"execute":"query-status"}`, "query-status", `{"execute":"query-status","id":"vmsup-1"}` + "\n"},
		{" {\"execute\": \"x\",\n \"arguments\": {\"a\": [1, {\"b\": \"}\"}]}} \n", "x", "{\"execute\": \"x\",\n \"arguments\": {\"a\": [1, {\"b\": \"}\"}]},\"id\":\"vmsup-2\"}\n"},
		{`{"exec-oob":"migrate-pause"}`, "migrate-pause", `{"exec-oob":"migrate-pause","id":"vmsup-3"}` + "\n"},
	} {
		name, id, wire, err := tr.prepare([]byte(tc.in))
		if err != nil || name != tc.name || string(wire) != tc.want || !strings.Contains(tc.want, id) {
			t.Errorf("prepare(%q) = %q, %q, %q, %v; want %q, %q", tc.in, name, id, wire, err, tc.name, tc.want)
		}
	}
}

func TestTransportConcurrentCommandsAndEvents(t *testing.T) {
	const workers, perWorker = 8, 50
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		// A reader goroutine feeds commands; the script answers them in
		// small batches, newest first, with an event before each reply.
		cmds := make(chan testkit.QMPCommand)
		go func() {
			defer close(cmds)
			for range workers * perWorker {
				cmd, err := c.ReadCommandErr()
				if err != nil {
					return
				}
				select {
				case cmds <- cmd:
				case <-c.Stopped():
					return
				}
			}
		}()
		for i := 0; ; {
			cmd, ok := <-cmds
			if !ok {
				break
			}
			batch := []testkit.QMPCommand{cmd}
			timeout := time.After(5 * time.Millisecond)
		collect:
			for len(batch) < 3 {
				select {
				case cmd, ok := <-cmds:
					if !ok {
						break collect
					}
					batch = append(batch, cmd)
				case <-timeout:
					break collect
				}
			}
			for j := len(batch) - 1; j >= 0; j-- {
				c.Send(fmt.Sprintf(`{"event": "TICK", "data": {"i": %d}, "timestamp": {"seconds": 0, "microseconds": 0}}`, i))
				c.Reply(batch[j], string(batch[j].Arguments))
				i++
			}
		}
	})
	tr := connectFake(t, f, TransportOptions{EventBuffer: 16})
	ch, _ := tr.Events(context.Background())
	stopEvents := make(chan struct{})
	eventsDone := make(chan struct{})
	go func() { // a slow reader
		defer close(eventsDone)
		for {
			select {
			case <-ch:
				time.Sleep(time.Millisecond)
			case <-stopEvents:
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				ctx, cancel := context.WithTimeout(context.Background(), 2*fakeWait)
				reply, err := tr.RunContext(ctx, fmt.Appendf(nil, `{"execute":"echo","arguments":{"w":%d,"i":%d}}`, w, i))
				cancel()
				if err != nil {
					t.Errorf("worker %d command %d: %v", w, i, err)
					return
				}
				var ret struct{ W, I int }
				if err := decodeReturn(reply, &ret); err != nil || ret.W != w || ret.I != i {
					t.Errorf("worker %d command %d got %s", w, i, reply)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stopEvents)
	<-eventsDone
	f.Wait()
}

func TestCommandTimeoutTable(t *testing.T) {
	for _, tc := range []struct {
		name string
		want time.Duration
	}{
		{"query-status", 5 * time.Second},
		{"no-such-command", DefaultCommandTimeout},
		{"query-qmp-schema", 30 * time.Second},
		{"system_powerdown", 5 * time.Second},
	} {
		if got := CommandTimeout(tc.name); got != tc.want {
			t.Errorf("CommandTimeout(%q) = %s, want %s", tc.name, got, tc.want)
		}
	}
	if CommandTimeout("migrate") <= DefaultCommandTimeout || CommandTimeout("migrate-incoming") <= DefaultCommandTimeout {
		t.Errorf("migration commands must have longer deadlines than %s", DefaultCommandTimeout)
	}
	for name, d := range commandTimeouts {
		if d <= 0 || d > 5*time.Minute {
			t.Errorf("CommandTimeout(%q) = %s, want within (0, 5m]", name, d)
		}
	}
}

func TestTransportImplementsQMPMonitor(t *testing.T) {
	var _ qmp.Monitor = NewTransport("x", TransportOptions{})
}

// Malformed lines are logged, at most MalformedLogBurst a second, and the
// connection keeps working.
func TestTransportMalformedQMPLoggedWithRateLimit(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		cmd := c.Expect("query-status")
		for i := range 100 {
			c.Send(fmt.Sprintf(`not json %d`, i))
		}
		c.Reply(cmd, `{"status": "running", "singlestep": false, "running": true}`)
	})
	var logs testkit.SyncBuffer
	logger := zerolog.New(&logs)
	tr := connectFake(t, f, TransportOptions{Logger: &logger})
	if _, err := runCtx(tr, `{"execute":"query-status"}`); err != nil {
		t.Fatalf("query-status after malformed lines: %v", err)
	}
	n := strings.Count(logs.String(), "ignoring a line that is not a JSON object")
	if n < 1 || n > MalformedLogBurst {
		t.Fatalf("%d warnings logged for 100 malformed lines, want 1 to %d:\n%s", n, MalformedLogBurst, logs.String())
	}
	if !strings.Contains(logs.String(), `not json 0`) {
		t.Errorf("the first malformed line is not quoted in the log:\n%s", logs.String())
	}
	f.Wait()
}
