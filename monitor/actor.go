package monitor

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	// Link is where the actor puts the connection while it is up, for the
	// domain's job steps to run commands on; nil means one of its own.
	Link *Link
}

// Props returns the props of a monitor actor. Spawn it as a child of the
// domain actor: events, Connected and Disconnected go to the parent.
func Props(cfg Config) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor {
		m := &monitorActor{cfg: cfg, link: cfg.Link}
		if m.link == nil {
			m.link = NewLink(cfg.Domain, cfg.Trace)
		}
		return m
	},
		append(trace.PropsOptions(cfg.Trace), actors.PropsOption(cfg.Dispatcher)...)...)
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

// EventRouter is a Conn that hands its events to a function on its reader
// goroutine, each before any reply read after it reaches its command
// (Transport and Simulated are). The monitor then sends each event to the
// domain from there, so that the domain gets events and the replies of its
// commands in QEMU's order: QEMU sends RESUME before the reply to the cont
// that caused it. The events of a Conn without it are pumped from its
// Events channel, and may reach the domain after a later reply.
type EventRouter interface {
	RouteEvents(fn func(qmp.Event))
}

func newEvent(ev qmp.Event) *Event {
	return &Event{
		ID:   actors.NewID(),
		Name: ev.Event,
		Data: ev.Data,
		Time: time.Unix(ev.Timestamp.Seconds, ev.Timestamp.Microseconds*1000),
	}
}

// Connected tells the domain that QMP is ready.
type Connected struct {
	Version string
}

// Disconnected tells the domain that the QMP connection failed or ended.
type Disconnected struct {
	Err error
}

// The messages below come from goroutines and callbacks of one actor
// instance. After a restart (a panic) the mailbox still holds those of the
// old instance, so each one names its instance and the others are dropped.
// inspect reads the actor's state in its handler and answers what it
// returns; the package's tests use it.
type inspect func(m *monitorActor) any

type connectDone struct {
	from *monitorActor
	gen  uint64
	err  error
}
type reconnectNow struct {
	from *monitorActor
	gen  uint64
}
type connLost struct {
	from *monitorActor
	gen  uint64
	err  error
}

type monitorActor struct {
	cfg       Config
	owner     *actor.PID
	conn      Conn
	connected bool
	err       error
	link      *Link
	stop      context.CancelFunc // cancels connect and commands in flight
	runCtx    context.Context
	wg        actors.Inflight

	gen      uint64      // connection generation; messages of older ones are stale
	attempt  int         // reconnect attempts since the last stable connection
	upSince  time.Time   // when the current connection came up
	retry    *time.Timer // pending reconnect
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
	case connLost:
		if msg.from != m || msg.gen != m.gen || !m.connected {
			return // an old connection, or the end of one this actor failed
		}
		m.fail(ctx, fmt.Errorf("domain %q: QMP connection lost: %w", m.cfg.Domain, msg.err))
	case commandTimedOut:
		if msg.gen == m.gen && m.connected {
			m.fail(ctx, msg.err)
		}
	case inspect:
		ctx.Respond(msg(m))
	case *actor.Stopping:
		m.shutdown(ctx, false)
	case *actor.Restarting:
		// A restarted instance starts afresh: close the old connection
		// (QEMU serves one QMP client at a time) and end its goroutines.
		// The link waits for the new instance's connection.
		m.shutdown(ctx, true)
	}
}

func (m *monitorActor) start(ctx actor.Context) {
	m.owner = ctx.Parent()
	m.runCtx, m.stop = context.WithCancel(context.Background())
	m.link.connecting(tellActor(ctx.ActorSystem().Root, ctx.Self()))
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
	// The backoff is reset once this connection has stayed up for a while
	// (fail): a QEMU that breaks every connection at once (an event flood)
	// is retried ever more slowly.
	m.err, m.upSince = nil, time.Now()
	// Connected goes out before any event of this connection, so that
	// the parent never gets an event before it.
	var version string
	if v, ok := m.conn.(interface{ Version() qmp.Version }); ok {
		version = v.Version().String()
	}
	// From Connected on, a command waits for the link to come up instead
	// of failing on the broken one: the parent may act on Connected
	// before the link is up below.
	m.link.connecting(m.link.tellFunc())
	ctx.Send(m.owner, &Connected{Version: version})
	self, owner, root, conn, gen := ctx.Self(), m.owner, ctx.ActorSystem().Root, m.conn, m.gen
	lost := func() {
		err := conn.Err()
		if err == nil {
			err = ErrClosed
		}
		root.Send(self, connLost{from: m, gen: gen, err: err})
	}
	if r, ok := conn.(EventRouter); ok {
		// One road: the connection's reader sends each event to the
		// domain itself, before it hands over any later reply.
		r.RouteEvents(func(ev qmp.Event) { root.Send(owner, newEvent(ev)) })
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			<-conn.Done()
			lost()
		}()
	} else {
		events, err := conn.Events(m.runCtx)
		if err != nil {
			m.fail(ctx, fmt.Errorf("domain %q: QMP events: %w", m.cfg.Domain, err))
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			for ev := range events {
				root.Send(owner, newEvent(ev))
			}
			lost()
		}()
	}
	// Only now may job steps run commands on the connection: the events
	// their commands cause already take the road to the domain.
	m.link.up(m.conn, m.gen)
}

// stableConnection is how long a connection must have stayed up for the
// reconnect backoff to start again from its first delay.
const stableConnection = 10 * time.Second

// fail marks the monitor broken: the connection is closed, every waiting
// command fails, the domain is told (control: error), and a reconnect is
// scheduled with backoff. The command in flight fails on its own when the
// connection closes.
func (m *monitorActor) fail(ctx actor.Context, err error) {
	first := m.err == nil
	if m.connected && time.Since(m.upSince) >= stableConnection {
		m.attempt = 0
	}
	m.connected = false
	m.err = err
	if m.conn != nil {
		_ = m.conn.Disconnect()
	}
	m.link.down(err)
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

// shutdown closes the connection and waits for the goroutines this actor
// owns; closing the connection makes each of them return promptly.
func (m *monitorActor) shutdown(ctx actor.Context, restarting bool) {
	m.stopping = true
	if m.retry != nil {
		m.retry.Stop()
		m.retry = nil
	}
	if m.stop != nil {
		m.stop()
	}
	// The link first, so that a command that fails on the closed
	// connection before it was sent knows to wait for the next one.
	closed := fmt.Errorf("domain %q: monitor stopped: %w", m.cfg.Domain, ErrClosed)
	if restarting {
		m.link.connecting(m.link.tellFunc())
	} else {
		m.link.down(closed)
	}
	if m.conn != nil {
		_ = m.conn.Disconnect()
	}
	if !m.wg.Wait(DefaultConnectTimeout + 5*time.Second) {
		m.cfg.Logger.Error().Str("domain", m.cfg.Domain).Msg("monitor goroutines still running after the stop deadline")
	}
}
