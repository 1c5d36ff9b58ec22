package monitor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/digitalocean/go-qemu/qmp"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
)

// Link is a domain's road to its QMP connection. The monitor actor owns
// the connection (dial, handshake, reconnect, close) and puts it in the
// link while it is up; a job step of the domain runs its commands on the
// link directly, in the step's goroutine, so that the reply goes from the
// transport's reader straight to the step that waits for it, with no
// actor between. The domain's job lane already runs one job at a time, so
// the link adds no queue of its own. A Link is safe for concurrent use.
type Link struct {
	domain string
	trace  *trace.Recorder

	mu    sync.Mutex
	conn  Conn
	gen   uint64 // the monitor's connection generation of conn
	epoch uint64 // counts the connections put in the link
	err   error  // why the monitor is broken; Run fails at once
	ready chan struct{}
	// tell reaches the monitor actor (set when it starts).
	tell func(msg any)
}

// NewLink returns the link of domain's monitor, not connected yet. Put it
// in the monitor's Config. rec records each command in the trace (nil:
// none).
func NewLink(domain string, rec *trace.Recorder) *Link {
	return &Link{domain: domain, trace: rec, ready: make(chan struct{})}
}

// commandTimedOut tells the monitor actor that a command on the link of
// generation gen timed out: QEMU may be stopped or hung.
type commandTimedOut struct {
	gen uint64
	err error
}

// connecting makes Run wait for the connection.
func (l *Link) connecting(tell func(any)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tell = tell
	l.conn, l.err = nil, nil
	select {
	case <-l.ready:
		l.ready = make(chan struct{})
	default:
	}
}

// up puts the connection of generation gen in the link.
func (l *Link) up(conn Conn, gen uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.conn, l.gen, l.err = conn, gen, nil
	l.epoch++
	l.open()
}

// down makes Run fail at once with err until the next connection.
func (l *Link) down(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.conn, l.err = nil, err
	l.open()
}

func (l *Link) open() {
	select {
	case <-l.ready:
	default:
		close(l.ready)
	}
}

// Command is one QMP command, checked by whoever built it (ParseCommand
// at the edge, or the domain's own code): its name, and its arguments or
// its whole wire form. The connection writes it with its id without
// decoding it again.
type Command struct {
	// Execute is the command's name, for its deadline, errors and trace.
	Execute string
	// Arguments is the command's "arguments", a JSON object, or empty.
	// It is not used when Wire is set.
	Arguments json.RawMessage
	// Wire, when set, is the whole command, a JSON object without "id"
	// (one that go-qemu built, say); otherwise the connection writes
	// {"execute":Execute,"arguments":Arguments}.
	Wire []byte
	// File, when set, is sent with the command as an SCM_RIGHTS control
	// message on the unix socket (for add-fd and getfd, which take the
	// fd that comes with the command). Only a Transport sends it.
	File *os.File
}

// AppendWire appends the command as a JSON object without "id".
func (c Command) AppendWire(dst []byte) []byte {
	if c.Wire != nil {
		return append(dst, c.Wire...)
	}
	return AppendCommand(dst, c.Execute, c.Arguments)
}

// Call is one command to run on a link.
type Call struct {
	Command
	// Req is the job's request: the trace and the parent span of the
	// command's record.
	Req actors.Request
	// JobID is the domain job the command runs for, for the trace.
	JobID uint64
	// Timeout overrides CommandTimeout(Execute).
	Timeout time.Duration
}

// Run runs one command and returns the "return" member of its reply. It
// waits, bounded by ctx, while the monitor connects, and fails at once
// while the monitor is broken. The command's deadline is its Timeout or
// CommandTimeout(Execute), or ctx's if sooner; when the command's own
// deadline passes, the monitor is marked broken: QEMU may be stopped or
// hung, and the commands behind would only wait for their own deadlines.
// Errors name the domain and the command.
func (l *Link) Run(ctx context.Context, c Call) (json.RawMessage, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = CommandTimeout(c.Execute)
	}
	if ctx.Err() != nil {
		// The job ended (its caller gave up, a destroy): send nothing.
		return nil, fmt.Errorf("domain %q: QMP command %q %w: %w", l.domain, c.Execute, ErrNotSent, context.Cause(ctx))
	}
	deadline := time.Now().Add(timeout)
	var ret json.RawMessage
	var start time.Time
	var took time.Duration
	var gen uint64
	for attempt := 0; ; attempt++ {
		conn, g, epoch, err := l.await(ctx, c.Execute, deadline)
		if err != nil {
			return nil, err
		}
		gen, start = g, time.Now()
		ret, err = runRecovered(ctx, conn, c, deadline)
		took = time.Since(start)
		// A connection that the monitor replaced (it restarted, or
		// reconnected) under a command that was not sent, or under a
		// query whose reply the closing connection lost (a query changes
		// nothing, so running it twice is harmless): send it on the new
		// one.
		resend := errors.Is(err, ErrNotSent) || (errors.Is(err, ErrClosed) && strings.HasPrefix(c.Execute, "query-"))
		if err == nil || attempt >= 2 || !resend || !l.replaced(epoch) {
			l.record(c, took, err)
			if err != nil {
				return l.failed(ctx, c, gen, err)
			}
			return ret, nil
		}
	}
}

// runRecovered runs one command on conn; a panic in the Conn (a custom
// one, say) becomes the command's error instead of ending the process or
// leaving the command without a reply.
func runRecovered(ctx context.Context, conn Conn, c Call, deadline time.Time) (ret json.RawMessage, err error) {
	defer func() {
		if r := recover(); r != nil {
			ret, err = nil, fmt.Errorf("QMP command %q: the connection panicked: %v", c.Execute, r)
		}
	}()
	if cr, ok := conn.(CommandRunner); ok {
		return cr.RunCommand(ctx, c.Command, deadline)
	}
	if c.File != nil {
		return nil, fmt.Errorf("QMP command %q: %w: this connection cannot pass a file", c.Execute, ErrNotSent)
	}
	cctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	reply, err := conn.RunContext(cctx, c.AppendWire(nil))
	if err != nil {
		return nil, err
	}
	if ret, err = replyReturn(reply); err != nil {
		return nil, fmt.Errorf("QMP command %q: malformed reply: %w", c.Execute, err)
	}
	return ret, nil
}

// CommandRunner is a Conn that runs a command its caller has checked
// until deadline or ctx's end, without decoding it again and without a
// context of its own, and returns the reply's "return" member, cut out of
// the reply by its reader (Transport and Simulated are). The link prefers
// RunCommand to RunContext, so a wrapper that changes RunContext must
// change RunCommand too.
type CommandRunner interface {
	RunCommand(ctx context.Context, cmd Command, deadline time.Time) (json.RawMessage, error)
}

// replaced reports whether the connection of epoch is no longer the link's.
func (l *Link) replaced(epoch uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.epoch != epoch || l.conn == nil
}

// failed is the error of a command that failed on the connection of gen.
func (l *Link) failed(ctx context.Context, c Call, gen uint64, err error) (json.RawMessage, error) {
	if !strings.Contains(err.Error(), strconv.Quote(c.Execute)) {
		// The Conn did not say which command failed (a bare
		// context.DeadlineExceeded, say); the error must.
		err = fmt.Errorf("QMP command %q: %w", c.Execute, err)
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		err = fmt.Errorf("domain %q: %w; monitor marked broken", l.domain, err)
		l.timedOut(gen, err)
		return nil, err
	}
	return nil, fmt.Errorf("domain %q: %w", l.domain, err)
}

// await returns the connection, once there is one, waiting at most
// until deadline.
func (l *Link) await(ctx context.Context, execute string, deadline time.Time) (conn Conn, gen, epoch uint64, err error) {
	for {
		l.mu.Lock()
		conn, gen, epoch, err, ready := l.conn, l.gen, l.epoch, l.err, l.ready
		l.mu.Unlock()
		switch {
		case err != nil:
			return nil, 0, 0, fmt.Errorf("QMP command %q %w: %w", execute, ErrNotSent, err)
		case conn != nil:
			return conn, gen, epoch, nil
		}
		if err := l.waitReady(ctx, ready, deadline); err != nil {
			return nil, 0, 0, fmt.Errorf("domain %q: QMP command %q %w: the monitor did not connect: %w", l.domain, execute, ErrNotSent, err)
		}
	}
}

// waitReady waits for ready until deadline or ctx's end.
func (l *Link) waitReady(ctx context.Context, ready <-chan struct{}, deadline time.Time) error {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-timer.C:
		return context.DeadlineExceeded
	}
}

func (l *Link) timedOut(gen uint64, err error) {
	l.mu.Lock()
	tell := l.tell
	l.mu.Unlock()
	if tell != nil {
		tell(commandTimedOut{gen: gen, err: err})
	}
}

// record puts a command in the trace, as the monitor's.
func (l *Link) record(c Call, took time.Duration, err error) {
	if !l.trace.Enabled() {
		return
	}
	end := trace.Now()
	l.trace.Record(trace.Record{
		TraceID: c.Req.RequestID, SpanID: trace.NewSpanID(), ParentSpanID: c.Req.ParentID, Kind: trace.KindQMP,
		Actor: "monitor/" + l.domain, MessageType: c.Execute, Started: end.Add(-took), Ended: end,
		JobID: c.JobID, QMP: &trace.QMPRecord{Command: c.Execute, Duration: took, Outcome: trace.Outcome(err)},
	})
}

// replyReturn is the "return" member of a reply object.
func replyReturn(reply []byte) (json.RawMessage, error) {
	var body struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(reply, &body); err != nil {
		return nil, err
	}
	return body.Return, nil
}

// Monitor returns a go-qemu qmp.Monitor whose Run runs each command on the
// link for the job of req, bounded by ctx, so that go-qemu's typed
// commands (raw.NewMonitor) work on vmsup's connection. It neither
// connects nor disconnects, and has no events: the monitor actor sends
// those to the domain.
func (l *Link) Monitor(ctx context.Context, req actors.Request, jobID uint64) qmp.Monitor {
	return &linkMonitor{l: l, ctx: ctx, req: req, job: jobID}
}

type linkMonitor struct {
	l   *Link
	ctx context.Context
	req actors.Request
	job uint64
}

func (m *linkMonitor) Connect() error    { return nil }
func (m *linkMonitor) Disconnect() error { return nil }

func (m *linkMonitor) Events(context.Context) (<-chan qmp.Event, error) {
	return nil, fmt.Errorf("domain %q: the monitor actor sends QMP events to the domain", m.l.domain)
}

// Run runs cmd and returns the whole reply object, as qmp.Monitor does.
func (m *linkMonitor) Run(cmd []byte) ([]byte, error) {
	// go-qemu built it; read only its name and whether it has an id.
	obj := bytes.TrimSpace(cmd)
	name, hasID, err := commandHeader(obj)
	execute := jsonString(name)
	switch {
	case err != nil || execute == "":
		return nil, fmt.Errorf("%w: no \"execute\" string member: %s", ErrBadCommand, quoteLine(cmd))
	case hasID:
		return nil, fmt.Errorf("%w: command %q already has an \"id\" member; the transport sets ids itself", ErrBadCommand, execute)
	}
	ret, err := m.l.Run(m.ctx, Call{Command: Command{Execute: execute, Wire: obj}, Req: m.req, JobID: m.job})
	if err != nil {
		return nil, err
	}
	if len(ret) == 0 {
		ret = json.RawMessage("{}")
	}
	return append(append([]byte(`{"return":`), ret...), '}'), nil
}

// tellActor makes a tell function of the monitor actor's PID.
func tellActor(root *actor.RootContext, pid *actor.PID) func(any) {
	return func(msg any) { root.Send(pid, msg) }
}

func (l *Link) tellFunc() func(any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tell
}
