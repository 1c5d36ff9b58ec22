package monitor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/digitalocean/go-qemu/qmp"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/supervision"
	"github.com/vmsup/vmsup/tests/testkit"
)

// The monitor actor tests drive the actor through a scripted Conn (fakeConn)
// injected with Config.Dial, and once through the real Transport against the
// scripted unix-socket server of transport_test.go. The actor is always the
// child of a small parent actor (testParent), because it tells its parent
// about Connected, Disconnected and events. Every wait is bounded by fakeWait.

// okReply is the reply fakeConn gives when a test does not script one.
const okReply = `{"return": {}}`

// fakeRun is a command as it reached fakeConn.RunContext.
type fakeRun struct {
	Name string
	Wire string
	// Budget is how long RunContext's context had left when the command
	// arrived; zero when it had no deadline.
	Budget time.Duration
}

// fakeConn is a scripted Conn. It records every command that reaches it and
// how many ran at once. The connection ends with end (or Disconnect): Done
// is closed, Err returns the cause and the events channel is closed, as the
// Transport does.
type fakeConn struct {
	// connect plays ConnectContext; nil connects at once.
	connect func(ctx context.Context) error
	// run plays RunContext for the command named name; nil answers okReply.
	run func(ctx context.Context, name string) ([]byte, error)
	// versionPanics makes Version panic, so the monitor actor panics
	// right after it connected (Version is called in its handler).
	versionPanics bool

	events chan qmp.Event
	done   chan struct{}
	// started receives the name of every command as it reaches RunContext.
	started chan string

	mu       sync.Mutex
	err      error
	received []fakeRun

	emitMu sync.Mutex // serializes emit with closing events

	running         atomic.Int32
	maxRunning      atomic.Int32
	returned        atomic.Int32
	disconnects     atomic.Int32
	connectReturned atomic.Int32
}

func newFakeConn(t *testing.T) *fakeConn {
	f := &fakeConn{
		events:  make(chan qmp.Event), // unbuffered: the actor must keep reading
		done:    make(chan struct{}),
		started: make(chan string, 1024),
	}
	// After the actor is gone (harness cleanup runs first), end the
	// connection so nothing a failed test left behind keeps running.
	t.Cleanup(func() { f.end(ErrClosed) })
	return f
}

// dial is a Config.Dial that returns f.
func (f *fakeConn) dial() Conn { return f }

// end ends the connection with cause, once.
func (f *fakeConn) end(cause error) {
	f.mu.Lock()
	if f.err != nil {
		f.mu.Unlock()
		return
	}
	f.err = cause
	close(f.done)
	f.mu.Unlock()
	// done is closed, so an emit in progress returns and releases emitMu.
	f.emitMu.Lock()
	close(f.events)
	f.emitMu.Unlock()
}

// emit delivers one event to whoever reads the events channel (the actor).
func (f *fakeConn) emit(ev qmp.Event) error {
	f.emitMu.Lock()
	defer f.emitMu.Unlock()
	select {
	case <-f.done:
		return fmt.Errorf("event %s: connection ended", ev.Event)
	default:
	}
	timer := time.NewTimer(fakeWait)
	defer timer.Stop()
	select {
	case f.events <- ev:
		return nil
	case <-f.done:
		return fmt.Errorf("event %s: connection ended", ev.Event)
	case <-timer.C:
		return fmt.Errorf("event %s: nobody read the events channel within %s", ev.Event, fakeWait)
	}
}

// hold plays a QEMU that does not answer: it returns okReply when release
// is closed, ctx's error when ctx ends, and the cause (which does not name
// the command) when the connection ends.
func (f *fakeConn) hold(ctx context.Context, release <-chan struct{}) ([]byte, error) {
	select {
	case <-release:
		return []byte(okReply), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-f.done:
		return nil, f.Err()
	}
}

func (f *fakeConn) Connect() error { return f.ConnectContext(context.Background()) }

func (f *fakeConn) ConnectContext(ctx context.Context) error {
	defer f.connectReturned.Add(1)
	if f.connect == nil {
		return nil
	}
	if err := f.connect(ctx); err != nil {
		f.end(err) // a failed connect ends the Transport too
		return err
	}
	return nil
}

func (f *fakeConn) Disconnect() error {
	f.disconnects.Add(1)
	f.end(ErrClosed)
	return nil
}

func (f *fakeConn) Run(cmd []byte) ([]byte, error) {
	return f.RunContext(context.Background(), cmd)
}

func (f *fakeConn) RunContext(ctx context.Context, cmd []byte) ([]byte, error) {
	n := f.running.Add(1)
	for {
		m := f.maxRunning.Load()
		if n <= m || f.maxRunning.CompareAndSwap(m, n) {
			break
		}
	}
	defer func() {
		f.running.Add(-1)
		f.returned.Add(1)
	}()
	var hdr struct {
		Execute string `json:"execute"`
	}
	_ = json.Unmarshal(cmd, &hdr)
	r := fakeRun{Name: hdr.Execute, Wire: string(cmd)}
	if deadline, ok := ctx.Deadline(); ok {
		r.Budget = time.Until(deadline)
	}
	f.mu.Lock()
	f.received = append(f.received, r)
	f.mu.Unlock()
	select {
	case f.started <- hdr.Execute:
	default:
	}
	select {
	case <-f.done: // as the Transport does on an ended connection
		return nil, fmt.Errorf("not sent: %w", f.Err())
	default:
	}
	if f.run != nil {
		return f.run(ctx, hdr.Execute)
	}
	return []byte(okReply), nil
}

func (f *fakeConn) Events(context.Context) (<-chan qmp.Event, error) { return f.events, nil }

func (f *fakeConn) Done() <-chan struct{} { return f.done }

func (f *fakeConn) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

func (f *fakeConn) Version() qmp.Version {
	if f.versionPanics {
		panic("fakeConn: Version panics on purpose")
	}
	var v qmp.Version
	v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro = 9, 1, 2
	return v
}

// names returns the names of the commands that reached RunContext, in order.
func (f *fakeConn) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, len(f.received))
	for i, r := range f.received {
		names[i] = r.Name
	}
	return names
}

func (f *fakeConn) runs() []fakeRun {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRun(nil), f.received...)
}

// waitStarted waits until the command named name reaches RunContext.
func (f *fakeConn) waitStarted(t *testing.T, name string) {
	t.Helper()
	timeout := time.After(fakeWait)
	for {
		select {
		case got := <-f.started:
			if got == name {
				return
			}
		case <-timeout:
			t.Fatalf("command %q did not reach the connection within %s (got %q)", name, fakeWait, f.names())
		}
	}
}

// testParent spawns the monitor actor as its child and forwards what the
// monitor tells it to out.
type testParent struct {
	props *actor.Props
	pids  chan<- *actor.PID
	out   chan<- any
	quit  <-chan struct{}
}

func (p *testParent) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		p.pids <- ctx.Spawn(p.props)
	case *Event, *Connected, *Disconnected:
		select {
		case p.out <- msg:
		case <-p.quit:
		}
	}
}

// monitorHarness is a monitor actor under test, child of a testParent.
type monitorHarness struct {
	t      *testing.T
	system *actor.ActorSystem
	parent *actor.PID
	mon    *actor.PID
	out    chan any
}

// startMonitor spawns a parent that spawns a monitor actor for cfg. What
// the monitor tells its parent arrives on h.out, a channel of outBuffer
// slots; while it is full, the parent blocks, as a slow domain would.
func startMonitor(t *testing.T, cfg Config, outBuffer int) *monitorHarness {
	t.Helper()
	system := actors.NewSystem(nil)
	pids := make(chan *actor.PID, 1)
	out := make(chan any, outBuffer)
	quit := make(chan struct{})
	props := Props(cfg)
	parent := system.Root.Spawn(actor.PropsFromProducer(func() actor.Actor {
		return &testParent{props: props, pids: pids, out: out, quit: quit}
	}))
	t.Cleanup(func() {
		close(quit)
		if err := system.Root.StopFuture(parent).Wait(); err != nil {
			t.Errorf("stopping the parent (and the monitor): %v", err)
		}
	})
	h := &monitorHarness{t: t, system: system, parent: parent, out: out}
	select {
	case h.mon = <-pids:
	case <-time.After(fakeWait):
		t.Fatalf("monitor not spawned within %s", fakeWait)
	}
	return h
}

// command builds a Command whose caller context lives as long as the test.
func (h *monitorHarness) command(name string) *Command {
	return &Command{Request: actors.NewRequest(h.t.Context(), "test"), Execute: name}
}

// ask sends cmd and waits for the reply, bounded by twice fakeWait (the
// held commands of these tests end by fakeWait at the latest).
func (h *monitorHarness) ask(cmd *Command) (*Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*fakeWait)
	defer cancel()
	return actors.AskAs[*Result](ctx, h.system.Root, h.mon, cmd)
}

type askResult struct {
	res *Result
	err error
}

// askAsync sends cmd from a new goroutine; the reply comes on the channel.
func (h *monitorHarness) askAsync(cmd *Command) <-chan askResult {
	ch := make(chan askResult, 1)
	go func() {
		res, err := h.ask(cmd)
		ch <- askResult{res, err}
	}()
	return ch
}

// await receives the reply of an askAsync.
func (h *monitorHarness) await(ch <-chan askResult, what string) askResult {
	h.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(3 * fakeWait):
		h.t.Fatalf("no reply to %s", what)
	}
	return askResult{}
}

// Status is what the tests read of a monitor actor: its connection and
// its lane.
type Status struct {
	Connected bool
	Err       error
	InFlight  *InFlight
	Queued    int
}

// InFlight is the command in flight.
type InFlight struct {
	Command   string
	JobID     uint64
	RequestID string
	Since     time.Time
}

func (h *monitorHarness) status() *Status {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fakeWait)
	defer cancel()
	st, err := actors.AskAs[*Status](ctx, h.system.Root, h.mon, inspect(func(m *monitorActor) any {
		st := &Status{Connected: m.connected, Err: m.err, Queued: m.lane.Len()}
		if j := m.lane.Active(); j != nil {
			info := j.Info()
			st.InFlight = &InFlight{Command: info.Call.Command, JobID: j.Data.cmd.JobID, RequestID: info.RequestID, Since: info.Call.Since}
		}
		return st
	}))
	if err != nil {
		h.t.Fatalf("status: %v", err)
	}
	return st
}

// waitStatus polls the status until ok accepts it.
func (h *monitorHarness) waitStatus(what string, ok func(*Status) bool) *Status {
	h.t.Helper()
	deadline := time.Now().Add(fakeWait)
	for {
		st := h.status()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("status never showed %s; last %+v", what, st)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitMsg returns the next message of type T that the parent received,
// skipping messages of other types.
func waitMsg[T any](h *monitorHarness) T {
	h.t.Helper()
	timeout := time.After(fakeWait)
	for {
		select {
		case msg := <-h.out:
			if m, ok := msg.(T); ok {
				return m
			}
		case <-timeout:
			var zero T
			h.t.Fatalf("parent got no %T within %s", zero, fakeWait)
			return zero
		}
	}
}

// expectErr checks that err is not nil and mentions every part.
func expectErr(t *testing.T, what string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error", what)
		return
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not mention %s", what, err, p)
		}
	}
}

func TestMonitorActorRunsCommandsOneAtATimeInFIFOOrder(t *testing.T) {
	f := newFakeConn(t)
	gate := make(chan struct{})
	f.run = func(ctx context.Context, name string) ([]byte, error) {
		if strings.HasPrefix(name, "gate") {
			return f.hold(ctx, gate)
		}
		time.Sleep(100 * time.Microsecond) // give an overlap the chance to show
		return []byte(okReply), nil
	}
	h := startMonitor(t, Config{Domain: "vm1", SocketPath: "/run/vmsup/vm1/qmp.sock", Dial: f.dial}, 16)
	if c := waitMsg[*Connected](h); c.Version != "9.1.2" {
		t.Errorf("Connected.Version = %q, want 9.1.2", c.Version)
	}

	// 50 goroutines at once, all queued behind a held command.
	const n = 50
	first := h.askAsync(h.command("gate-1"))
	f.waitStarted(t, "gate-1")
	replies := make([]<-chan askResult, n)
	for i := range n {
		replies[i] = h.askAsync(h.command(fmt.Sprintf("concurrent-%d", i)))
	}
	h.waitStatus("50 queued", func(s *Status) bool { return s.Queued == n })
	close(gate)
	if r := h.await(first, "gate-1"); r.err != nil {
		t.Fatalf("gate-1: %v", r.err)
	}
	for i, ch := range replies {
		r := h.await(ch, fmt.Sprintf("concurrent-%d", i))
		if r.err != nil || r.res == nil || string(r.res.Return) != "{}" {
			t.Errorf("concurrent-%d: %+v, %v", i, r.res, r.err)
		}
	}
	if got := f.maxRunning.Load(); got != 1 {
		t.Errorf("at most %d commands ran at once, want 1", got)
	}
	if got := len(f.names()); got != n+1 {
		t.Errorf("%d commands reached the connection, want %d", got, n+1)
	}

	// From one goroutine, without waiting for replies in between: the
	// commands reach QEMU in the order they were sent.
	gate = make(chan struct{})
	before := len(f.names())
	held := h.askAsync(h.command("gate-2"))
	f.waitStarted(t, "gate-2")
	const seq = 20
	futures := make([]*actor.Future, seq)
	for i := range seq {
		futures[i] = h.system.Root.RequestFuture(h.mon, h.command(fmt.Sprintf("seq-%d", i)), 2*fakeWait)
	}
	h.waitStatus("20 queued", func(s *Status) bool { return s.Queued == seq })
	close(gate)
	if r := h.await(held, "gate-2"); r.err != nil {
		t.Fatalf("gate-2: %v", r.err)
	}
	for i, fut := range futures {
		if v, err := fut.Result(); err != nil {
			t.Errorf("seq-%d: %v", i, err)
		} else if _, ok := v.(*Result); !ok {
			t.Errorf("seq-%d: reply %T %v", i, v, v)
		}
	}
	got := f.names()[before+1:]
	for i := range seq {
		if i >= len(got) || got[i] != fmt.Sprintf("seq-%d", i) {
			t.Fatalf("commands reached the connection in the order %q, want seq-0 ... seq-%d", got, seq-1)
		}
	}
	if got := f.maxRunning.Load(); got != 1 {
		t.Errorf("at most %d commands ran at once, want 1", got)
	}
}

func TestMonitorActorStatusAnsweredWhileCommandInFlight(t *testing.T) {
	f := newFakeConn(t)
	release := make(chan struct{})
	f.run = func(ctx context.Context, name string) ([]byte, error) {
		if name == "block-me" {
			return f.hold(ctx, release)
		}
		return []byte(okReply), nil
	}
	h := startMonitor(t, Config{Domain: "vm1", SocketPath: "/run/vmsup/vm1/qmp.sock", Dial: f.dial}, 16)
	waitMsg[*Connected](h)

	blocked := h.command("block-me")
	blocked.JobID = 7
	sent := time.Now()
	first := h.askAsync(blocked)
	f.waitStarted(t, "block-me")
	w1 := h.askAsync(h.command("waiter-1"))
	w2 := h.askAsync(h.command("waiter-2"))
	h.waitStatus("2 queued", func(s *Status) bool { return s.Queued == 2 })

	var slowest time.Duration
	var st *Status
	for range 20 {
		start := time.Now()
		st = h.status()
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("slowest of 20 status answers while a command was in flight: %s", slowest)
	if slowest >= 100*time.Millisecond {
		t.Errorf("slowest status answer took %s while a command was in flight, want well under 100ms", slowest)
	}
	if !st.Connected || st.Err != nil || st.Queued != 2 {
		t.Errorf("status = %+v, want connected, no error, 2 queued", st)
	}
	if in := st.InFlight; in == nil {
		t.Errorf("status has no command in flight")
	} else {
		if in.Command != "block-me" || in.JobID != 7 || in.RequestID != blocked.RequestID {
			t.Errorf("in flight = %+v, want block-me, job 7, request %s", in, blocked.RequestID)
		}
		if in.Since.Before(sent) || in.Since.After(time.Now()) {
			t.Errorf("in flight since %s, want after %s", in.Since, sent)
		}
	}

	close(release)
	for _, c := range []struct {
		name string
		ch   <-chan askResult
	}{{"block-me", first}, {"waiter-1", w1}, {"waiter-2", w2}} {
		if r := h.await(c.ch, c.name); r.err != nil {
			t.Errorf("%s: %v", c.name, r.err)
		}
	}
	if st := h.status(); st.InFlight != nil || st.Queued != 0 {
		t.Errorf("status after all replies = %+v, want idle", st)
	}
}

func TestMonitorActorForwardsEventsToParent(t *testing.T) {
	const burst = 10000
	f := newFakeConn(t)
	f.run = func(ctx context.Context, name string) ([]byte, error) {
		if name == "burst" {
			for i := range burst {
				ev := qmp.Event{Event: "SPAM", Data: map[string]any{"i": i}}
				if err := f.emit(ev); err != nil {
					return nil, err
				}
			}
		}
		return []byte(`{"return": {"status": "running"}}`), nil
	}
	// The parent takes 64 messages, then blocks until the test reads: a
	// slow domain must not hold up the monitor.
	h := startMonitor(t, Config{Domain: "vm1", SocketPath: "/run/vmsup/vm1/qmp.sock", Dial: f.dial}, 64)
	waitMsg[*Connected](h)

	var shutdown qmp.Event
	shutdown.Event = "SHUTDOWN"
	shutdown.Data = map[string]any{"guest": true, "reason": "guest-shutdown"}
	shutdown.Timestamp.Seconds, shutdown.Timestamp.Microseconds = 1700000000, 123456
	if err := f.emit(shutdown); err != nil {
		t.Fatal(err)
	}
	ev := waitMsg[*Event](h)
	if ev.Name != "SHUTDOWN" || ev.Data["guest"] != true || ev.Data["reason"] != "guest-shutdown" {
		t.Errorf("event = %+v, want SHUTDOWN with its data", ev)
	}
	if ev.ID == "" {
		t.Error("event has no ID")
	}
	if want := time.Unix(1700000000, 123456000); !ev.Time.Equal(want) {
		t.Errorf("event time = %s, want %s", ev.Time, want)
	}

	start := time.Now()
	res, err := h.ask(h.command("burst"))
	if err != nil {
		t.Fatalf("command behind %d events: %v", burst, err)
	}
	if string(res.Return) != `{"status": "running"}` {
		t.Errorf("Return = %s", res.Return)
	}
	t.Logf("reply behind %d events (parent not reading) after %s", burst, time.Since(start))

	ids := make(map[string]bool, burst)
	for i := range burst {
		ev := waitMsg[*Event](h)
		if ev.Name != "SPAM" || ev.Data["i"] != i {
			t.Fatalf("event %d = %+v, want SPAM i=%d: events lost or out of order", i, ev, i)
		}
		if ev.ID == "" || ids[ev.ID] {
			t.Fatalf("event %d has a missing or repeated ID %q", i, ev.ID)
		}
		ids[ev.ID] = true
	}
}

func TestMonitorActorConnectionLost(t *testing.T) {
	f := newFakeConn(t)
	f.run = func(ctx context.Context, name string) ([]byte, error) {
		if name == "hang" {
			return f.hold(ctx, nil)
		}
		return []byte(okReply), nil
	}
	h := startMonitor(t, Config{Domain: "vm1", SocketPath: "/run/vmsup/vm1/qmp.sock", Dial: f.dial}, 16)
	waitMsg[*Connected](h)

	inFlight := h.askAsync(h.command("hang"))
	f.waitStarted(t, "hang")
	q1 := h.askAsync(h.command("queued-1"))
	q2 := h.askAsync(h.command("queued-2"))
	h.waitStatus("2 queued", func(s *Status) bool { return s.Queued == 2 })

	lost := time.Now()
	f.end(fmt.Errorf("QMP connection closed by QEMU: %w", io.EOF))
	for _, c := range []struct {
		name string
		ch   <-chan askResult
	}{{"hang", inFlight}, {"queued-1", q1}, {"queued-2", q2}} {
		r := h.await(c.ch, c.name)
		expectErr(t, c.name, r.err, `domain "vm1"`, fmt.Sprintf("%q", c.name))
		if !errors.Is(r.err, io.EOF) {
			t.Errorf("%s: error %v does not wrap the cause io.EOF", c.name, r.err)
		}
	}
	if took := time.Since(lost); took > time.Second {
		t.Errorf("commands failed %s after the connection was lost, want at once", took)
	}

	d := waitMsg[*Disconnected](h)
	if !errors.Is(d.Err, io.EOF) {
		t.Errorf("Disconnected.Err = %v, want the cause io.EOF", d.Err)
	}
	expectErr(t, "Disconnected", d.Err, `domain "vm1"`)

	start := time.Now()
	_, err := h.ask(h.command("later"))
	expectErr(t, "later", err, `"later"`, "connection lost")
	if !errors.Is(err, io.EOF) {
		t.Errorf("later: error %v does not wrap the cause io.EOF", err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("a command after the loss failed after %s, want at once", took)
	}
	if names := f.names(); len(names) == 0 || names[0] != "hang" || len(names) > 3 {
		t.Errorf("commands that reached the connection: %q", names)
	}
	for _, name := range f.names() {
		if name == "later" {
			t.Error("a command sent after the loss reached the connection")
		}
	}
	if st := h.status(); st.Connected || !errors.Is(st.Err, io.EOF) {
		t.Errorf("status = %+v, want disconnected with the cause", st)
	}
}

func TestMonitorActorConnectFailure(t *testing.T) {
	const socket = "/run/vmsup/vm1/qmp.sock"

	t.Run("error", func(t *testing.T) {
		f := newFakeConn(t)
		release := make(chan struct{})
		refused := errors.New("connection refused (scripted)")
		f.connect = func(ctx context.Context) error {
			select {
			case <-release:
				return refused
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		h := startMonitor(t, Config{Domain: "vm1", SocketPath: socket, Transport: TransportOptions{ConnectTimeout: fakeWait}, Dial: f.dial}, 16)
		q1 := h.askAsync(h.command("query-status"))
		q2 := h.askAsync(h.command("cont"))
		h.waitStatus("2 queued while connecting", func(s *Status) bool { return s.Queued == 2 && !s.Connected })
		close(release)
		for _, c := range []struct {
			name string
			ch   <-chan askResult
		}{{"query-status", q1}, {"cont", q2}} {
			r := h.await(c.ch, c.name)
			expectErr(t, c.name, r.err, `domain "vm1"`, socket, fmt.Sprintf("%q", c.name))
			if !errors.Is(r.err, refused) {
				t.Errorf("%s: error %v does not wrap the connect error", c.name, r.err)
			}
		}
		d := waitMsg[*Disconnected](h)
		expectErr(t, "Disconnected", d.Err, socket)
		if !errors.Is(d.Err, refused) {
			t.Errorf("Disconnected.Err = %v, want the connect error", d.Err)
		}
		_, err := h.ask(h.command("later"))
		expectErr(t, "later", err, socket, `"later"`)
		if names := f.names(); len(names) != 0 {
			t.Errorf("commands reached a connection that never connected: %q", names)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		f := newFakeConn(t)
		f.connect = func(ctx context.Context) error {
			<-ctx.Done() // a QEMU that accepts and never greets
			return ctx.Err()
		}
		const timeout = 200 * time.Millisecond
		h := startMonitor(t, Config{Domain: "vm1", SocketPath: socket, Transport: TransportOptions{ConnectTimeout: timeout}, Dial: f.dial}, 16)
		start := time.Now()
		_, err := h.ask(h.command("query-status"))
		took := time.Since(start)
		expectErr(t, "query-status", err, socket, `"query-status"`)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v does not wrap context.DeadlineExceeded", err)
		}
		if took > timeout+2*time.Second {
			t.Errorf("queued command failed after %s, want about the connect timeout %s", took, timeout)
		}
		d := waitMsg[*Disconnected](h)
		expectErr(t, "Disconnected", d.Err, socket)
		if names := f.names(); len(names) != 0 {
			t.Errorf("commands reached a connection that never connected: %q", names)
		}
	})
}

func TestMonitorActorCancelledWhileQueued(t *testing.T) {
	f := newFakeConn(t)
	release := make(chan struct{})
	f.run = func(ctx context.Context, name string) ([]byte, error) {
		if name == "hold" {
			return f.hold(ctx, release)
		}
		return []byte(okReply), nil
	}
	h := startMonitor(t, Config{Domain: "vm1", SocketPath: "/run/vmsup/vm1/qmp.sock", Dial: f.dial}, 16)
	waitMsg[*Connected](h)

	held := h.askAsync(h.command("hold"))
	f.waitStarted(t, "hold")

	ctx, cancel := context.WithCancel(context.Background())
	victim := &Command{Request: actors.NewRequest(ctx, "test"), Execute: "victim"}
	gone := make(chan error, 1)
	go func() {
		_, err := actors.AskAs[*Result](ctx, h.system.Root, h.mon, victim)
		gone <- err
	}()
	h.waitStatus("victim queued", func(s *Status) bool { return s.Queued == 1 })
	after := h.askAsync(h.command("after"))
	h.waitStatus("after queued", func(s *Status) bool { return s.Queued == 2 })

	cancel()
	select {
	case err := <-gone:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("victim: %v, want context.Canceled", err)
		}
	case <-time.After(fakeWait):
		t.Fatal("the cancelled caller is still waiting")
	}
	h.waitStatus("victim gone from the queue", func(s *Status) bool { return s.Queued == 1 })

	close(release)
	for _, c := range []struct {
		name string
		ch   <-chan askResult
	}{{"hold", held}, {"after", after}} {
		if r := h.await(c.ch, c.name); r.err != nil {
			t.Errorf("%s: %v", c.name, r.err)
		}
	}
	if got := strings.Join(f.names(), " "); got != "hold after" {
		t.Errorf("commands that reached the connection: %s, want hold after", got)
	}

	// A command whose caller gave up before the monitor took it never runs
	// either, even when the lane is idle.
	dead, cancelDead := context.WithCancel(context.Background())
	cancelDead()
	_, err := h.ask(&Command{Request: actors.NewRequest(dead, "test"), Execute: "too-late"})
	expectErr(t, "too-late", err, `"too-late"`, "left the queue")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("too-late: %v, want context.Canceled in the chain", err)
	}
	if got := strings.Join(f.names(), " "); got != "hold after" {
		t.Errorf("commands that reached the connection: %s, want hold after", got)
	}
}

// TestMonitorActorCommandTimeout: a command QEMU does not answer fails at
// its deadline, naming it; the monitor is then marked broken (the command
// queued behind fails at once), the parent is told, and the monitor
// reconnects with backoff on a fresh connection.
func TestMonitorActorCommandTimeout(t *testing.T) {
	f := newFakeConn(t)
	f.run = func(ctx context.Context, name string) ([]byte, error) {
		if name == "stuck" {
			<-ctx.Done() // QEMU never answers
			return nil, ctx.Err()
		}
		return []byte(okReply), nil
	}
	second := newFakeConn(t)
	var dials atomic.Int32
	dial := func() Conn {
		if dials.Add(1) == 1 {
			return f
		}
		return second
	}
	h := startMonitor(t, Config{Domain: "vm1", SocketPath: "/run/vmsup/vm1/qmp.sock", Dial: dial,
		Reconnect: supervision.Backoff{Initial: 50 * time.Millisecond, Max: 50 * time.Millisecond}}, 16)
	waitMsg[*Connected](h)

	const timeout = 100 * time.Millisecond
	cmd := h.command("stuck")
	cmd.Timeout = timeout
	next := h.command("after") // sent while "stuck" runs, so it queues
	start := time.Now()
	stuck := h.askAsync(cmd)
	f.waitStarted(t, "stuck")
	after := h.askAsync(next)

	r := h.await(stuck, "stuck")
	took := time.Since(start)
	expectErr(t, "stuck", r.err, `domain "vm1"`, `"stuck"`)
	if !errors.Is(r.err, context.DeadlineExceeded) {
		t.Errorf("stuck: %v, want context.DeadlineExceeded in the chain", r.err)
	}
	if took < timeout || took > timeout+2*time.Second {
		t.Errorf("stuck failed after %s, want about %s", took, timeout)
	}
	r = h.await(after, "after")
	expectErr(t, "after", r.err, `"after"`, "not sent", "monitor marked broken")
	if d := waitMsg[*Disconnected](h); !strings.Contains(d.Err.Error(), "monitor marked broken") {
		t.Errorf("Disconnected: %v", d.Err)
	}
	if runs := f.runs(); len(runs) != 1 || runs[0].Name != "stuck" {
		t.Fatalf("commands that reached the first connection: %+v", runs)
	} else if b := runs[0].Budget; b <= 0 || b > timeout {
		t.Errorf("stuck ran with a deadline %s away, want at most %s", b, timeout)
	}
	if f.disconnects.Load() == 0 {
		t.Error("the broken connection was not closed")
	}

	waitMsg[*Connected](h) // the reconnect
	r = h.await(h.askAsync(h.command("again")), "again")
	if r.err != nil {
		t.Fatalf("command after the reconnect: %v", r.err)
	}
	if runs := second.runs(); len(runs) != 1 || runs[0].Name != "again" {
		t.Fatalf("commands that reached the second connection: %+v", runs)
	} else if b := runs[0].Budget; b <= timeout || b > DefaultCommandTimeout {
		t.Errorf("again ran with a deadline %s away, want the table's %s", b, DefaultCommandTimeout)
	}
}

func TestMonitorActorStop(t *testing.T) {
	t.Run("in flight and queued", func(t *testing.T) {
		f := newFakeConn(t)
		f.run = func(ctx context.Context, name string) ([]byte, error) {
			return f.hold(ctx, nil)
		}
		h := startMonitor(t, Config{Domain: "vm1", SocketPath: "/run/vmsup/vm1/qmp.sock", Dial: f.dial}, 16)
		waitMsg[*Connected](h)

		inFlight := h.askAsync(h.command("hang"))
		f.waitStarted(t, "hang")
		q1 := h.askAsync(h.command("queued-1"))
		q2 := h.askAsync(h.command("queued-2"))
		h.waitStatus("2 queued", func(s *Status) bool { return s.Queued == 2 })

		start := time.Now()
		if err := h.system.Root.StopFuture(h.mon).Wait(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		// Checked at once: the actor waits for its goroutines before it stops.
		if n := f.running.Load(); n != 0 {
			t.Errorf("%d RunContext calls still running after the monitor stopped", n)
		}
		if n := f.returned.Load(); n != 1 {
			t.Errorf("%d RunContext calls returned, want 1", n)
		}
		if n := f.disconnects.Load(); n != 1 {
			t.Errorf("Disconnect called %d times, want 1", n)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("stop took %s", took)
		}
		for _, c := range []struct {
			name string
			ch   <-chan askResult
		}{{"hang", inFlight}, {"queued-1", q1}, {"queued-2", q2}} {
			r := h.await(c.ch, c.name)
			expectErr(t, c.name, r.err, `domain "vm1"`, fmt.Sprintf("%q", c.name))
			if !errors.Is(r.err, ErrClosed) {
				t.Errorf("%s: %v, want ErrClosed in the chain", c.name, r.err)
			}
		}
		if got := strings.Join(f.names(), " "); got != "hang" {
			t.Errorf("commands that reached the connection: %s, want hang", got)
		}
		if _, err := h.ask(h.command("later")); !errors.Is(err, actors.ErrNoActor) {
			t.Errorf("command to the stopped monitor: %v, want ErrNoActor", err)
		}
	})

	t.Run("while connecting", func(t *testing.T) {
		f := newFakeConn(t)
		f.connect = func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}
		h := startMonitor(t, Config{Domain: "vm1", SocketPath: "/run/vmsup/vm1/qmp.sock", Transport: TransportOptions{ConnectTimeout: time.Minute}, Dial: f.dial}, 16)
		queued := h.askAsync(h.command("query-status"))
		h.waitStatus("1 queued", func(s *Status) bool { return s.Queued == 1 })
		if err := h.system.Root.StopFuture(h.mon).Wait(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if n := f.connectReturned.Load(); n != 1 {
			t.Errorf("ConnectContext returned %d times when the monitor stopped, want 1", n)
		}
		if n := f.disconnects.Load(); n != 1 {
			t.Errorf("Disconnect called %d times, want 1", n)
		}
		r := h.await(queued, "query-status")
		expectErr(t, "query-status", r.err, `"query-status"`)
		if !errors.Is(r.err, ErrClosed) {
			t.Errorf("query-status: %v, want ErrClosed in the chain", r.err)
		}
	})
}

func TestMonitorActorRejectsBadCommands(t *testing.T) {
	f := newFakeConn(t)
	h := startMonitor(t, Config{Domain: "vm1", SocketPath: "/run/vmsup/vm1/qmp.sock", Dial: f.dial}, 16)
	waitMsg[*Connected](h)

	for _, args := range []string{`[1, 2]`, `"rng0"`, `42`, `true`, `null`, `{"driver":`, `{"a":1}{"b":2}`, ` `} {
		cmd := h.command("device_add")
		cmd.Arguments = json.RawMessage(args)
		_, err := h.ask(cmd)
		expectErr(t, fmt.Sprintf("arguments %s", args), err, `domain "vm1"`, `"device_add"`, "arguments must be a JSON object")
	}
	_, err := h.ask(h.command(""))
	expectErr(t, "empty Execute", err, `domain "vm1"`, "without a name")
	if names := f.names(); len(names) != 0 {
		t.Errorf("bad commands reached the connection: %q", names)
	}

	// The monitor is still healthy, and good arguments go through as they are.
	cmd := h.command("device_add")
	cmd.Arguments = json.RawMessage(`{"driver": "virtio-rng-pci", "id": "rng0"}`)
	if _, err := h.ask(cmd); err != nil {
		t.Fatalf("good command: %v", err)
	}
	runs := f.runs()
	want := `{"execute":"device_add","arguments":{"driver":"virtio-rng-pci","id":"rng0"}}`
	if len(runs) != 1 || runs[0].Wire != want {
		t.Errorf("the connection got %+v, want one command %s", runs, want)
	}
}

// panicCtx is a caller context whose Err panics. The monitor actor calls
// Err in its handler when a command reaches the head of the queue, so a
// command carrying it makes the actor panic while connected.
type panicCtx struct{ context.Context }

func (panicCtx) Err() error { panic("panicCtx: Err panics on purpose") }

func TestMonitorActorRestartReconnects(t *testing.T) {
	// The parent's default strategy restarts a panicking monitor. The new
	// instance must find the old connection closed (QEMU serves one QMP
	// client at a time), dial a new one, and not take what the old
	// connection's goroutines left in the mailbox for news of the new one.
	start := func(t *testing.T, first *fakeConn) (*monitorHarness, *fakeConn) {
		second := newFakeConn(t)
		var dials atomic.Int32
		dial := func() Conn {
			if dials.Add(1) == 1 {
				return first
			}
			return second
		}
		return startMonitor(t, Config{Domain: "vm1", SocketPath: "/run/vmsup/vm1/qmp.sock", Dial: dial}, 16), second
	}
	healthy := func(t *testing.T, h *monitorHarness, first, second *fakeConn) {
		t.Helper()
		if n := first.disconnects.Load(); n != 1 {
			t.Errorf("the connection of the crashed monitor was disconnected %d times, want 1", n)
		}
		if _, err := h.ask(h.command("query-status")); err != nil {
			t.Fatalf("command after the restart: %v", err)
		}
		if got := strings.Join(second.names(), " "); got != "query-status" {
			t.Errorf("new connection got %q, want query-status", got)
		}
		if st := h.status(); !st.Connected || st.Err != nil {
			t.Errorf("status after the restart = %+v, want connected", st)
		}
		select {
		case msg := <-h.out:
			t.Errorf("parent got %T %+v after the restart, want nothing", msg, msg)
		default:
		}
	}

	t.Run("panic while connecting", func(t *testing.T) {
		first := newFakeConn(t)
		first.versionPanics = true
		h, second := start(t, first)
		waitMsg[*Connected](h) // from the second connection
		healthy(t, h, first, second)
	})

	t.Run("panic while connected", func(t *testing.T) {
		first := newFakeConn(t)
		h, second := start(t, first)
		waitMsg[*Connected](h)
		ctx, cancel := context.WithTimeout(context.Background(), fakeWait)
		defer cancel()
		cmd := &Command{Request: actors.NewRequest(panicCtx{context.Background()}, "test"), Execute: "boom"}
		_, err := actors.AskAs[*Result](ctx, h.system.Root, h.mon, cmd)
		var pe *supervision.PanicError
		if !errors.As(err, &pe) || pe.Actor != "monitor/vm1" {
			t.Errorf("the command the monitor panicked on: %v, want a *supervision.PanicError naming the monitor", err)
		}
		waitMsg[*Connected](h)
		if names := first.names(); len(names) != 0 {
			t.Errorf("old connection got %q", names)
		}
		healthy(t, h, first, second)
	})
}

func TestMonitorActorOverTransport(t *testing.T) {
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		c.Send(`{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "RESUME"}`)
		c.Reply(c.Expect("query-status"), `{"status": "running", "singlestep": false, "running": true}`)
		cmd := c.Expect("cont")
		c.Send(fmt.Sprintf(`{"error": {"class": "GenericError", "desc": "no"}, "id": %q}`, cmd.ID))
		c.Close()
	})
	h := startMonitor(t, Config{Domain: "vm1", SocketPath: f.Path(), Transport: TransportOptions{ConnectTimeout: fakeWait}}, 16)
	if c := waitMsg[*Connected](h); c.Version != "7.2.1" {
		t.Errorf("Connected.Version = %q, want 7.2.1", c.Version)
	}
	if ev := waitMsg[*Event](h); ev.Name != "RESUME" || ev.ID == "" || !ev.Time.Equal(time.Unix(1700000000, 5000)) {
		t.Errorf("event = %+v", ev)
	}
	res, err := h.ask(h.command("query-status"))
	if err != nil {
		t.Fatalf("query-status: %v", err)
	}
	var st struct{ Status string }
	if err := json.Unmarshal(res.Return, &st); err != nil || st.Status != "running" {
		t.Errorf("query-status returned %s (%v)", res.Return, err)
	}
	_, err = h.ask(h.command("cont"))
	var qerr *QMPError
	if !errors.As(err, &qerr) || qerr.Class != "GenericError" {
		t.Errorf("cont: %v, want a *QMPError", err)
	}
	expectErr(t, "cont", err, `domain "vm1"`, `"cont"`)
	if strings.Count(err.Error(), `"cont"`) != 1 {
		t.Errorf("cont: error %q names the command more than once", err)
	}

	d := waitMsg[*Disconnected](h)
	if !errors.Is(d.Err, io.EOF) {
		t.Errorf("Disconnected.Err = %v, want io.EOF", d.Err)
	}
	_, err = h.ask(h.command("query-status"))
	if !errors.Is(err, io.EOF) {
		t.Errorf("command after EOF: %v, want io.EOF in the chain", err)
	}
	f.Wait()

	// No QEMU behind the socket: the connect deadline names the socket.
	path := shortSocketPath(t)
	h = startMonitor(t, Config{Domain: "vm2", SocketPath: path, Transport: TransportOptions{ConnectTimeout: 200 * time.Millisecond}}, 16)
	_, err = h.ask(h.command("query-status"))
	expectErr(t, "query-status without QEMU", err, `domain "vm2"`, path, `"query-status"`)
	d = waitMsg[*Disconnected](h)
	expectErr(t, "Disconnected without QEMU", d.Err, path)
}

// A QEMU that floods events breaks its monitor with a clear reason, and a
// QEMU that floods again on every new connection is retried ever more
// slowly: the backoff starts again only after a stable connection.
func TestMonitorActorEventFloodReconnectsWithBackoff(t *testing.T) {
	f := newFakeQMP(t)
	flood := func(c *testkit.QMPConn) {
		c.Handshake()
		// The flood comes once the monitor is up (Connected), as a
		// guest's would.
		time.Sleep(50 * time.Millisecond)
		var b bytes.Buffer
		for i := range 200 {
			fmt.Fprintf(&b, `{"timestamp": {"seconds": %d, "microseconds": 0}, "event": "STOP"}`+"\r\n", i)
		}
		_ = c.Conn().SetWriteDeadline(time.Now().Add(fakeWait))
		_, _ = c.Conn().Write(b.Bytes())
	}
	const initial = 200 * time.Millisecond
	h := startMonitor(t, Config{Domain: "vm1", SocketPath: f.Path(),
		Transport: TransportOptions{ConnectTimeout: fakeWait, EventRate: 1, EventBurst: 20},
		Reconnect: supervision.Backoff{Initial: initial, Max: 10 * initial, Factor: 2}}, 1024)
	var ups []time.Time
	for i := range 3 {
		f.Serve(flood)
		waitMsg[*Connected](h)
		ups = append(ups, time.Now())
		d := waitMsg[*Disconnected](h)
		if !errors.Is(d.Err, ErrEventFlood) || !strings.Contains(d.Err.Error(), `domain "vm1"`) || !strings.Contains(d.Err.Error(), "faster than 1 a second (burst 20)") {
			t.Fatalf("connection %d: Disconnected.Err = %v, want the event flood named", i, d.Err)
		}
		f.Wait()
	}
	if gap1, gap2 := ups[1].Sub(ups[0]), ups[2].Sub(ups[1]); gap1 < initial || gap2 < 2*initial {
		t.Errorf("reconnects after %s and %s, want at least %s and %s (the backoff grows while every connection breaks at once)", gap1, gap2, initial, 2*initial)
	}
}
