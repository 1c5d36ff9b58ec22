package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/digitalocean/go-qemu/qmp"
	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/supervision"
)

// Conn is what the monitor actor needs from a QMP connection: go-qemu's
// qmp.Monitor plus context-aware connect and run, and a way to learn that
// the connection ended. *Transport implements it.
type Conn interface {
	qmp.Monitor
	ConnectContext(ctx context.Context) error
	RunContext(ctx context.Context, command []byte) ([]byte, error)
	Done() <-chan struct{}
	Err() error
}

// Config configures one monitor actor.
type Config struct {
	// Domain names the VM, for error messages and the trace.
	Domain string
	// SocketPath is QEMU's QMP unix socket.
	SocketPath string
	// Transport tunes the default connection.
	Transport TransportOptions
	// Dial makes the connection; nil means NewTransport(SocketPath, Transport).
	// Unit tests put a scripted monitor here.
	Dial func() Conn
	// Reconnect is the backoff between attempts to reconnect a broken
	// monitor (zero values: 1s doubling to 30s).
	Reconnect supervision.Backoff
	// NoReconnect leaves a broken monitor broken.
	NoReconnect bool
	// Logger receives the monitor's own events (broken, reconnected).
	Logger zerolog.Logger
	// Trace records each QMP command (and, through the middleware, each
	// message); nil leaves tracing out.
	Trace *trace.Recorder
	// Dispatcher runs the actor's turns; nil means protoactor's default.
	Dispatcher actor.Dispatcher
}

// Props returns the props of a monitor actor. Spawn it as a child of the
// domain actor: events, Connected and Disconnected go to the parent.
func Props(cfg Config) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor { return &monitorActor{cfg: cfg} },
		append(trace.PropsOptions(cfg.Trace), actors.PropsOption(cfg.Dispatcher)...)...)
}

// Command asks the monitor actor to run one QMP command. It is a job of the
// monitor: commands run one at a time, in FIFO order, each bounded by its
// Timeout (CommandTimeout(Execute) when zero). The reply is a *Result or an
// error that names the domain and the command.
type Command struct {
	actors.Request
	// JobID is the domain job this command runs for, for the trace.
	JobID uint64
	// Execute is the QMP command name, for example "query-status".
	Execute string
	// Arguments is the JSON object of arguments, or empty.
	Arguments json.RawMessage
	// Timeout overrides the per-command deadline table.
	Timeout time.Duration
}

// Result is the reply to a successful Command.
type Result struct {
	// Return is the "return" member of QEMU's reply.
	Return json.RawMessage
	// Took is how long QEMU took to answer.
	Took time.Duration
}

// StatusRequest asks what the monitor is doing. It is answered at once, even
// while a command is in flight, with a Status.
type StatusRequest struct{}

// Status describes the monitor's connection and its command in flight.
type Status struct {
	Connected bool
	// Err is why the connection failed or ended; nil while healthy.
	Err error
	// InFlight is the command QEMU has not answered yet, or nil.
	InFlight *InFlight
	// Queued is the number of commands waiting behind it.
	Queued int
}

// InFlight is a command that QEMU has not answered yet.
type InFlight struct {
	Command   string
	JobID     uint64
	RequestID string
	Since     time.Time
}

// Event is a QMP event, told to the domain actor.
type Event struct {
	// ID identifies the event in the trace.
	ID string
	// Name is QEMU's event name, for example "SHUTDOWN".
	Name string
	// Data is the event's data member.
	Data map[string]any
	// Time is QEMU's timestamp of the event.
	Time time.Time
}

// Header makes each QMP event the root of a trace of its own, whose id is
// the event's ID: the lifecycle events it causes name it as their Cause, so
// `vmsup trace --request CAUSE` shows how it was handled.
func (e *Event) Header() actors.Request {
	return actors.Request{RequestID: e.ID, Owner: "qmp event " + e.Name}
}

// Connected tells the domain that QMP is ready.
type Connected struct {
	Version string
}

// Disconnected tells the domain that the QMP connection failed or ended.
type Disconnected struct {
	Err error
}

type pending struct {
	span      string // the span of the Command message, parent of the QMP record
	cmd       Command
	seq       uint64
	sender    *actor.PID
	started   time.Time
	stopWatch func() bool
}

// The messages below come from goroutines and callbacks of one actor
// instance. After a restart (a panic) the mailbox still holds those of the
// old instance, so each one names its instance and the others are dropped.
// Header puts the reply of a command in the command's trace.
func (c commandDone) Header() actors.Request { return c.req }

// TraceStamp lets the trace middleware stamp the message itself.
func (c *commandDone) TraceStamp() *string { return c.req.TraceStamp() }

type connectDone struct {
	from *monitorActor
	gen  uint64
	err  error
}
type reconnectNow struct {
	from *monitorActor
	gen  uint64
}
type commandDone struct {
	req   actors.Request // the command's trace, for the middleware
	from  *monitorActor
	seq   uint64
	reply []byte
	err   error
	took  time.Duration
}
type connLost struct {
	from *monitorActor
	gen  uint64
	err  error
}
type queuedCancelled struct {
	from *monitorActor
	seq  uint64
}

type monitorActor struct {
	cfg       Config
	owner     *actor.PID
	conn      Conn
	connected bool
	err       error
	lane      actors.Lane[*pending]
	seq       uint64
	stop      context.CancelFunc // cancels connect and commands in flight
	runCtx    context.Context
	wg        sync.WaitGroup

	fwd      *eventForwarder // counts the events this connection's pump forwarded
	gen      uint64          // connection generation; messages of older ones are stale
	attempt  int             // reconnect attempts since the last good connection
	retry    *time.Timer     // pending reconnect
	stopping bool
}

func (m *monitorActor) Receive(ctx actor.Context) {
	defer supervision.RecoverAndReply(ctx, "monitor/"+m.cfg.Domain)
	switch msg := ctx.Message().(type) {
	case *supervision.InjectPanic:
		panic(fmt.Sprintf("injected panic in the monitor of %q: %s", m.cfg.Domain, msg.Reason))
	case *actor.Started:
		m.start(ctx)
	case connectDone:
		if msg.from == m && msg.gen == m.gen {
			m.onConnect(ctx, msg.err)
		}
	case reconnectNow:
		if msg.from == m && msg.gen == m.gen && !m.stopping {
			m.retry = nil
			m.connect(ctx)
		}
	case *Command:
		m.enqueue(ctx, msg)
	case *commandDone:
		if msg.from == m {
			m.onCommandDone(ctx, *msg)
		}
	case queuedCancelled:
		if msg.from != m {
			return
		}
		if p, ok := m.lane.Remove(func(p *pending) bool { return p.seq == msg.seq }); ok {
			ctx.Send(p.sender, fmt.Errorf("domain %q: QMP command %q left the queue: %w", m.cfg.Domain, p.cmd.Execute, p.cmd.Context().Err()))
		}
	case connLost:
		if msg.from != m || msg.gen != m.gen {
			return
		}
		m.fail(ctx, fmt.Errorf("domain %q: QMP connection lost: %w", m.cfg.Domain, msg.err))
	case StatusRequest, *StatusRequest:
		ctx.Respond(m.status())
	case *actor.Stopping, *actor.Restarting:
		// A restarted instance starts afresh: close the old connection
		// (QEMU serves one QMP client at a time) and end its goroutines.
		m.shutdown(ctx)
	}
}

func (m *monitorActor) start(ctx actor.Context) {
	m.owner = ctx.Parent()
	m.runCtx, m.stop = context.WithCancel(context.Background())
	m.connect(ctx)
}

// connect makes a new connection in a goroutine owned by this actor; the
// result comes back as connectDone.
func (m *monitorActor) connect(ctx actor.Context) {
	m.gen++
	if m.cfg.Dial != nil {
		m.conn = m.cfg.Dial()
	} else {
		m.conn = NewTransport(m.cfg.SocketPath, m.cfg.Transport)
	}
	timeout := m.cfg.Transport.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	self, root, conn, runCtx, gen := ctx.Self(), ctx.ActorSystem().Root, m.conn, m.runCtx, m.gen
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		cctx, cancel := context.WithTimeout(runCtx, timeout)
		defer cancel()
		root.Send(self, connectDone{from: m, gen: gen, err: conn.ConnectContext(cctx)})
	}()
}

func (m *monitorActor) onConnect(ctx actor.Context, err error) {
	if err != nil {
		m.fail(ctx, fmt.Errorf("domain %q: connect QMP at %s: %w", m.cfg.Domain, m.cfg.SocketPath, err))
		return
	}
	m.connected = true
	if m.err != nil {
		m.cfg.Logger.Info().Str("domain", m.cfg.Domain).Int("attempts", m.attempt).Msg("QMP monitor reconnected")
	}
	m.err, m.attempt = nil, 0
	events, err := m.conn.Events(m.runCtx)
	if err != nil {
		m.fail(ctx, fmt.Errorf("domain %q: QMP events: %w", m.cfg.Domain, err))
		return
	}
	// Connected goes out before the reader starts, so that the parent
	// never gets an event of this connection before it.
	var version string
	if v, ok := m.conn.(interface{ Version() qmp.Version }); ok {
		version = v.Version().String()
	}
	ctx.Send(m.owner, &Connected{Version: version})
	self, owner, root, conn, gen := ctx.Self(), m.owner, ctx.ActorSystem().Root, m.conn, m.gen
	fwd := newEventForwarder()
	m.fwd = fwd
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer fwd.close()
		for ev := range events {
			root.Send(owner, &Event{
				ID:   actors.NewID(),
				Name: ev.Event,
				Data: ev.Data,
				Time: time.Unix(ev.Timestamp.Seconds, ev.Timestamp.Microseconds*1000),
			})
			fwd.done()
		}
		err := conn.Err()
		if err == nil {
			err = ErrClosed
		}
		root.Send(self, connLost{from: m, gen: gen, err: err})
	}()
	m.next(ctx)
}

func (m *monitorActor) enqueue(ctx actor.Context, cmd *Command) {
	if cmd.Execute == "" {
		ctx.Respond(fmt.Errorf("domain %q: QMP command without a name", m.cfg.Domain))
		return
	}
	if m.err != nil {
		ctx.Respond(fmt.Errorf("QMP command %q not sent: %w", cmd.Execute, m.err))
		return
	}
	m.seq++
	p := &pending{cmd: *cmd, seq: m.seq, sender: ctx.Sender()}
	if m.cfg.Trace.Enabled() {
		p.span = trace.Current(ctx).SpanID
	}
	self, root, seq := ctx.Self(), ctx.ActorSystem().Root, p.seq
	p.stopWatch = context.AfterFunc(cmd.Context(), func() { root.Send(self, queuedCancelled{from: m, seq: seq}) })
	m.lane.Enqueue(p)
	m.next(ctx)
}

// next starts the command at the head of the lane when the connection is up
// and nothing is in flight. The command runs in a goroutine owned by this
// actor; its reply comes back as a commandDone message.
func (m *monitorActor) next(ctx actor.Context) {
	if !m.connected {
		return
	}
	for {
		p, ok := m.lane.Next(nil)
		if !ok {
			return
		}
		p.stopWatch()
		if err := p.cmd.Context().Err(); err != nil {
			m.lane.End()
			ctx.Send(p.sender, fmt.Errorf("domain %q: QMP command %q left the queue: %w", m.cfg.Domain, p.cmd.Execute, err))
			continue
		}
		wire, err := encodeCommand(p.cmd)
		if err != nil {
			m.lane.End()
			ctx.Send(p.sender, fmt.Errorf("domain %q: %w", m.cfg.Domain, err))
			continue
		}
		timeout := p.cmd.Timeout
		if timeout <= 0 {
			timeout = CommandTimeout(p.cmd.Execute)
		}
		p.started = time.Now()
		self, root, conn, runCtx, seq := ctx.Self(), ctx.ActorSystem().Root, m.conn, m.runCtx, p.seq
		fwd, log, name, execute := m.fwd, m.cfg.Logger, m.cfg.Domain, p.cmd.Execute
		req := actors.Request{RequestID: p.cmd.RequestID, ParentID: p.span, Owner: p.cmd.Owner}
		m.wg.Add(1)
		m.goOwned(func() {
			defer m.wg.Done()
			cctx, cancel := context.WithTimeout(runCtx, timeout)
			defer cancel()
			start := time.Now()
			reply, err := runRecovered(cctx, conn, wire, execute)
			// The events QEMU sent before this reply reach the domain
			// before the reply does.
			if ec, ok := conn.(EventCounter); ok && fwd != nil && !fwd.waitFor(ec.EventsQueued()) {
				log.Warn().Str("domain", name).Str("command", execute).Msg("QMP events before a reply were not forwarded in time; the domain may see them after it")
			}
			root.Send(self, &commandDone{req: req, from: m, seq: seq, reply: reply, err: err, took: time.Since(start)})
		})
		return
	}
}

// runRecovered runs one command on conn; a panic in the Conn (a custom
// one, say) becomes the command's error instead of ending the process or
// leaving the command without a reply.
func runRecovered(ctx context.Context, conn Conn, wire []byte, execute string) (reply []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			reply, err = nil, fmt.Errorf("QMP command %q: the connection panicked: %v", execute, r)
		}
	}()
	return conn.RunContext(ctx, wire)
}

// goOwned runs fn, a goroutine this actor owns (m.wg tracks it), on the
// dispatcher's pooled workers when there is one: a command goroutine
// then starts with a grown stack.
func (m *monitorActor) goOwned(fn func()) {
	if m.cfg.Dispatcher != nil {
		m.cfg.Dispatcher.Schedule(fn)
		return
	}
	go fn()
}

func (m *monitorActor) onCommandDone(ctx actor.Context, done commandDone) {
	p, ok := m.lane.Active()
	if !ok || p.seq != done.seq {
		return
	}
	m.lane.End()
	m.recordQMP(p, done)
	if done.err != nil {
		err := done.err
		if !strings.Contains(err.Error(), strconv.Quote(p.cmd.Execute)) {
			// The Conn did not say which command failed (a bare
			// context.DeadlineExceeded, say); the reply must.
			err = fmt.Errorf("QMP command %q: %w", p.cmd.Execute, err)
		}
		if errors.Is(err, context.DeadlineExceeded) && m.runCtx.Err() == nil && m.connected {
			// QEMU did not answer in time: it may be stopped or hung, and
			// the commands behind would only wait for their own deadlines.
			err = fmt.Errorf("domain %q: %w; monitor marked broken", m.cfg.Domain, err)
			ctx.Send(p.sender, err)
			m.fail(ctx, err)
			return
		}
		ctx.Send(p.sender, fmt.Errorf("domain %q: %w", m.cfg.Domain, err))
	} else {
		var body struct {
			Return json.RawMessage `json:"return"`
		}
		if err := json.Unmarshal(done.reply, &body); err != nil {
			ctx.Send(p.sender, fmt.Errorf("domain %q: QMP command %q: malformed reply: %w", m.cfg.Domain, p.cmd.Execute, err))
		} else {
			ctx.Send(p.sender, &Result{Return: body.Return, Took: done.took})
		}
	}
	m.next(ctx)
}

// fail marks the monitor broken: the connection is closed, every waiting
// command fails, the domain is told (control: error), and a reconnect is
// scheduled with backoff. The command in flight fails on its own when the
// connection closes.
func (m *monitorActor) fail(ctx actor.Context, err error) {
	first := m.err == nil
	m.connected = false
	m.err = err
	if m.conn != nil {
		_ = m.conn.Disconnect()
	}
	m.failQueued(ctx, err)
	if first {
		level := zerolog.WarnLevel
		if errors.Is(err, io.EOF) {
			// QEMU closed the connection, which it does when it exits;
			// the domain decides whether that was expected.
			level = zerolog.DebugLevel
		}
		m.cfg.Logger.WithLevel(level).Err(err).Str("domain", m.cfg.Domain).Msg("QMP monitor broken")
		ctx.Send(m.owner, &Disconnected{Err: err})
	}
	if m.cfg.NoReconnect || m.stopping || m.retry != nil {
		return
	}
	delay := m.cfg.Reconnect.Delay(m.attempt)
	m.attempt++
	self, root, gen := ctx.Self(), ctx.ActorSystem().Root, m.gen
	m.retry = time.AfterFunc(delay, func() { root.Send(self, reconnectNow{from: m, gen: gen}) })
}

func (m *monitorActor) status() *Status {
	s := &Status{Connected: m.connected, Err: m.err, Queued: m.lane.Len()}
	if p, ok := m.lane.Active(); ok {
		s.InFlight = &InFlight{Command: p.cmd.Execute, JobID: p.cmd.JobID, RequestID: p.cmd.RequestID, Since: p.started}
	}
	return s
}

// shutdown closes the connection and waits for the goroutines this actor
// owns; closing the connection makes each of them return promptly.
func (m *monitorActor) shutdown(ctx actor.Context) {
	m.stopping = true
	if m.retry != nil {
		m.retry.Stop()
		m.retry = nil
	}
	if m.stop != nil {
		m.stop()
	}
	if m.conn != nil {
		_ = m.conn.Disconnect()
	}
	m.wg.Wait()
	closed := fmt.Errorf("domain %q: monitor stopped: %w", m.cfg.Domain, ErrClosed)
	if p, ok := m.lane.End(); ok {
		ctx.Send(p.sender, fmt.Errorf("QMP command %q: %w", p.cmd.Execute, closed))
	}
	m.failQueued(ctx, closed)
}

// failQueued answers every command still waiting in the lane with err.
func (m *monitorActor) failQueued(ctx actor.Context, err error) {
	for _, p := range m.lane.Drain() {
		p.stopWatch()
		ctx.Send(p.sender, fmt.Errorf("QMP command %q not sent: %w", p.cmd.Execute, err))
	}
}

func encodeCommand(c Command) ([]byte, error) {
	wire := struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments,omitempty"`
	}{Execute: c.Execute, Arguments: c.Arguments}
	if len(c.Arguments) > 0 {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(c.Arguments, &obj); err != nil {
			return nil, fmt.Errorf("QMP command %q: arguments must be a JSON object: %w", c.Execute, err)
		}
		if obj == nil { // null decodes into a nil map without error
			return nil, fmt.Errorf("QMP command %q: arguments must be a JSON object, not null", c.Execute)
		}
	}
	b, err := json.Marshal(wire)
	if err != nil {
		return nil, fmt.Errorf("QMP command %q: %w", c.Execute, errors.Unwrap(err))
	}
	return b, nil
}

// recordQMP puts a finished QMP command in the trace.
func (m *monitorActor) recordQMP(p *pending, done commandDone) {
	if !m.cfg.Trace.Enabled() {
		return
	}
	end := trace.Now()
	m.cfg.Trace.Record(trace.Record{
		TraceID: p.cmd.RequestID, SpanID: trace.NewSpanID(), ParentSpanID: p.span, Kind: trace.KindQMP,
		Actor: "monitor/" + m.cfg.Domain, MessageType: p.cmd.Execute, Started: end.Add(-done.took), Ended: end,
		JobID: p.cmd.JobID, QMP: &trace.QMPRecord{Command: p.cmd.Execute, Duration: done.took, Outcome: trace.Outcome(done.err)},
	})
}
