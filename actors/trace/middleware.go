package trace

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
)

// HeaderKey is the message envelope header in which the sender middleware
// stamps the send time and the trace context of a message. Its value is
// "ENQUEUED_UNIX_NANOS|SPAN|PARENT_SPAN|TRACE|SENDER_PID_ID".
const HeaderKey = "vmsup-trace"

// stamp is the decoded HeaderKey value.
type stamp struct {
	enqueued int64
	span     string
	parent   string
	trace    string
	sender   string // protoactor id of the sending actor
}

func (s stamp) encode() string {
	var buf [160]byte
	b := strconv.AppendInt(buf[:0], s.enqueued, 10)
	for _, f := range [...]string{s.span, s.parent, s.trace, s.sender} {
		b = append(b, '|')
		b = append(b, f...)
	}
	return string(b)
}

func parseStamp(v string) (s stamp) {
	if v == "" {
		return s
	}
	field := func() string {
		i := strings.IndexByte(v, '|')
		if i < 0 {
			f := v
			v = ""
			return f
		}
		f := v[:i]
		v = v[i+1:]
		return f
	}
	s.enqueued, _ = strconv.ParseInt(field(), 10, 64)
	s.span = field()
	s.parent = field()
	s.trace = field()
	s.sender = field()
	return s
}

// requestOf returns the trace id and parent id a message carries itself.
func requestOf(msg any) (traceID, parentID string) {
	if env, ok := msg.(actors.Envelope); ok {
		h := env.Header()
		return h.RequestID, h.ParentID
	}
	return "", ""
}

// resolve combines what the message says about its trace with its stamp:
// the message's own RequestID and ParentID win; then the stamp; a message
// of a trace with no known parent hangs under the trace's root span, whose
// id is the trace id.
func resolve(msg any, st stamp) SpanContext {
	sc := SpanContext{SpanID: st.span}
	sc.TraceID, sc.ParentSpanID = requestOf(msg)
	if sc.TraceID == "" {
		sc.TraceID = st.trace
	}
	if sc.ParentSpanID == "" && st.trace == sc.TraceID {
		sc.ParentSpanID = st.parent
	}
	if sc.ParentSpanID == "" && sc.TraceID != "" && sc.SpanID != sc.TraceID {
		sc.ParentSpanID = sc.TraceID
	}
	return sc
}

// MessageContext is the part of an actor context that Current reads;
// actor.Context and actor.SenderContext have it.
type MessageContext interface {
	Message() any
	MessageHeader() actor.ReadonlyMessageHeader
}

// Current returns the trace position of the message c is handling: its
// trace id, its span id (empty unless the receiver middleware is on) and
// its parent span. An actor uses it to give the job or command it starts
// for this message the right parent, for example
//
//	rec.Record(trace.Record{Kind: trace.KindJob, ParentSpanID: trace.Current(ctx).SpanID, ...})
func Current(c MessageContext) SpanContext {
	msg := c.Message()
	if msg == nil {
		return SpanContext{}
	}
	var st stamp
	if h := c.MessageHeader(); h != nil {
		st = parseStamp(h.Get(HeaderKey))
	}
	return resolve(msg, st)
}

// SenderMiddleware returns a protoactor sender middleware that stamps into
// each message's envelope header (HeaderKey) when it was sent, a new span id
// for it, the trace it belongs to and the span that sent it, so that the
// receiver middleware can record its mailbox wait and its place in the
// trace. The trace is the message's own RequestID when it carries an
// actors.Request, otherwise the trace of the message the sending actor is
// handling.
//
// Use it on the props of every actor (actor.WithSenderMiddleware) and on
// the root contexts that send on behalf of API calls and jobs
// (actor.NewRootContext or RootContext.WithSenderMiddleware). With the
// recorder off it costs one atomic load; a nil recorder adds nothing.
//
// It never modifies the envelope it is given: it sends a copy, because an
// envelope may be shared (Forward).
func SenderMiddleware(rec *Recorder) actor.SenderMiddleware {
	return func(next actor.SenderFunc) actor.SenderFunc {
		if rec == nil {
			return next
		}
		return func(c actor.SenderContext, target *actor.PID, env *actor.MessageEnvelope) {
			if !rec.enabled.Load() {
				next(c, target, env)
				return
			}
			next(c, target, stampEnvelope(c, env, time.Now()))
		}
	}
}

func stampEnvelope(c actor.SenderContext, env *actor.MessageEnvelope, now time.Time) *actor.MessageEnvelope {
	cur := Current(c)
	st := stamp{enqueued: now.UnixNano(), span: actors.NewID()}
	if trace, _ := requestOf(env.Message); trace != "" {
		st.trace = trace
		if cur.TraceID == trace {
			st.parent = cur.SpanID
		}
	} else {
		st.trace, st.parent = cur.TraceID, cur.SpanID
	}
	if self := c.Self(); self != nil {
		st.sender = self.Id
	}
	return withStamp(env, st)
}

// withStamp returns a copy of env whose header holds st.
func withStamp(env *actor.MessageEnvelope, st stamp) *actor.MessageEnvelope {
	header := make(map[string]string, len(env.Header)+1)
	for k, v := range env.Header {
		header[k] = v
	}
	header[HeaderKey] = st.encode()
	return &actor.MessageEnvelope{Header: header, Message: env.Message, Sender: env.Sender}
}

// isLifecycle reports protoactor's own system and lifecycle messages,
// which are not recorded.
func isLifecycle(msg any) bool {
	switch msg.(type) {
	case actor.SystemMessage, actor.AutoReceiveMessage, *actor.ReceiveTimeout:
		return true
	}
	return false
}

// ReceiverMiddleware returns a protoactor receiver middleware that records,
// for each user message an actor handles, a KindMessage Record: the actor
// (actorName of its PID; the PID's id when actorName is nil), the message
// type, the sender, and when the message was enqueued (stamped by
// SenderMiddleware), when its handling began and when it ended. A record
// is written when the handling ends, also when the handler panics (with
// Note "panicked"). protoactor's lifecycle messages (*actor.Started,
// *actor.Stopping, ...) are not recorded. Messages of an actor whose name
// is "" are not recorded but still get a span, so that what they cause
// stays linked.
//
// A message that arrives without a span (its sender had no
// SenderMiddleware) gets one here, so that Current and the messages the
// handler sends know it. With the recorder off it costs one atomic load; a
// nil recorder adds nothing.
func ReceiverMiddleware(rec *Recorder, actorName func(*actor.PID) string) actor.ReceiverMiddleware {
	names := newNameCache(actorName)
	return func(next actor.ReceiverFunc) actor.ReceiverFunc {
		if rec == nil {
			return next
		}
		return func(c actor.ReceiverContext, env *actor.MessageEnvelope) {
			if !rec.enabled.Load() || isLifecycle(env.Message) {
				next(c, env)
				return
			}
			st := parseStamp(env.GetHeader(HeaderKey))
			if st.span == "" {
				st.span = actors.NewID()
				sc := resolve(env.Message, st)
				st.trace, st.parent = sc.TraceID, sc.ParentSpanID
				env = withStamp(env, st)
			}
			self := c.Self()
			name := names.of(self)
			if name == "" {
				next(c, env)
				return
			}
			sc := resolve(env.Message, st)
			r := Record{
				TraceID:      sc.TraceID,
				SpanID:       sc.SpanID,
				ParentSpanID: sc.ParentSpanID,
				Kind:         KindMessage,
				Actor:        name,
				MessageType:  TypeName(env.Message),
			}
			if st.sender != "" {
				r.Sender = names.ofID(self.Address, st.sender)
			}
			if st.enqueued != 0 {
				r.Enqueued = time.Unix(0, st.enqueued)
			}
			r.Started = time.Now()
			done := false
			defer func() {
				r.Ended = time.Now()
				if !done {
					r.Note = "panicked"
				}
				rec.Record(r)
			}()
			next(c, env)
			done = true
		}
	}
}

// nameCache remembers actor names by protoactor id, up to a bound.
type nameCache struct {
	fn    func(*actor.PID) string
	names sync.Map // id → name
	n     atomic.Int32
}

const maxCachedNames = 4096

func newNameCache(fn func(*actor.PID) string) *nameCache {
	if fn == nil {
		fn = func(pid *actor.PID) string { return pid.GetId() }
	}
	return &nameCache{fn: fn}
}

func (c *nameCache) of(pid *actor.PID) string {
	if pid == nil {
		return ""
	}
	if v, ok := c.names.Load(pid.Id); ok {
		return v.(string)
	}
	return c.store(pid.Id, c.fn(pid))
}

func (c *nameCache) ofID(address, id string) string {
	if v, ok := c.names.Load(id); ok {
		return v.(string)
	}
	return c.store(id, c.fn(actor.NewPID(address, id)))
}

func (c *nameCache) store(id, name string) string {
	if c.n.Add(1) <= maxCachedNames {
		c.names.Store(id, name)
	}
	return name
}
