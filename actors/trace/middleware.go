package trace

import (
	"crypto/rand"
	"encoding/hex"
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
// "SENT|SPAN|PARENT_SPAN|TRACE|SENDER_PID_ID", where SENT is the send time
// in nanoseconds of this process's trace clock (see Now).
const HeaderKey = "vmsup-trace"

// clockBase anchors the trace clock: times are clockBase plus the
// monotonic time elapsed since, which costs one clock read instead of the
// two of time.Now and never jumps with the wall clock.
var clockBase = time.Now()

// Now is the time on the trace clock: the wall clock at process start plus
// the monotonic time since. The middleware stamps its times with it; use
// it for the times of job, QMP and API records too, so that they line up
// with the messages.
func Now() time.Time {
	return clockBase.Add(time.Since(clockBase))
}

func clockNanos() int64 { return max(int64(time.Since(clockBase)), 1) } // 0 means unknown

func clockTime(nanos int64) time.Time { return clockBase.Add(time.Duration(nanos)) }

// stamp is the decoded HeaderKey value.
type stamp struct {
	enqueued int64 // nanoseconds on the trace clock; 0 when unknown
	span     string
	parent   string
	trace    string
	sender   string // protoactor id of the sending actor
}

// encode returns the header value of s. When s.span is empty, a new span
// id is written into it, and s.span is set to that part of the value, so
// that the id and the value share one allocation.
func (s *stamp) encode() string {
	var buf [192]byte
	b := strconv.AppendInt(buf[:0], s.enqueued, 10)
	b = append(b, '|')
	spanAt := len(b)
	if s.span == "" {
		b = appendSpanID(b)
	} else {
		b = append(b, s.span...)
	}
	spanEnd := len(b)
	for _, f := range [...]string{s.parent, s.trace, s.sender} {
		b = append(b, '|')
		b = append(b, f...)
	}
	v := string(b)
	s.span = v[spanAt:spanEnd]
	return v
}

// Span ids are a random prefix per process and a counter, like
// actors.NewID, with "s" before the counter so that they never equal a
// request id: "a1b2c3-s42".
var (
	spanPrefix = func() string {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "000000"
		}
		return hex.EncodeToString(b[:])
	}()
	spanCounter atomic.Uint64
)

func appendSpanID(b []byte) []byte {
	b = append(b, spanPrefix...)
	b = append(b, "-s"...)
	return strconv.AppendUint(b, spanCounter.Add(1), 10)
}

// NewSpanID returns a new process-unique span id, for the records of jobs
// and QMP commands.
func NewSpanID() string {
	var buf [32]byte
	return string(appendSpanID(buf[:0]))
}

// parseStamp decodes a HeaderKey value. The parts are substrings of v.
func parseStamp(v string) stamp {
	return parseStampTime(v, true)
}

func parseStampTime(v string, withTime bool) (s stamp) {
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
	if sent := field(); withTime {
		s.enqueued, _ = strconv.ParseInt(sent, 10, 64)
	}
	s.span = field()
	s.parent = field()
	s.trace = field()
	s.sender = v // the rest: an actor id may hold any character
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
	return resolve(msg, parseStampTime(stampOf(c.MessageHeader(), msg), false))
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
// A message that is a pointer to a struct embedding actors.Request keeps
// its stamp itself (actors.Request.TraceStamp), which saves the header map;
// such a message must go to one actor at a time. Other messages get a
// header: an envelope without one was made for this send and gets it in
// place; an envelope with a header may be shared (Forward), so it is copied
// and the copy is sent.
func SenderMiddleware(rec *Recorder) actor.SenderMiddleware {
	return func(next actor.SenderFunc) actor.SenderFunc {
		if rec == nil {
			return next
		}
		return func(c actor.SenderContext, target *actor.PID, env *actor.MessageEnvelope) {
			if !rec.enabled.Load() || isReplyAddress(target) {
				next(c, target, env)
				return
			}
			next(c, target, stampEnvelope(c, env))
		}
	}
}

// isReplyAddress reports a one-shot reply process (actors.ReplyPrefix):
// it records nothing, so a stamp would be wasted.
func isReplyAddress(target *actor.PID) bool {
	return target != nil && strings.HasPrefix(target.Id, actors.ReplyPrefix)
}

// stampCarrier is a message that carries its own stamp: every pointer to a
// message that embeds actors.Request.
type stampCarrier interface{ TraceStamp() *string }

// stampOf returns the stamp of the message in env: its header, else the
// one the message carries.
func stampOf(header actor.ReadonlyMessageHeader, msg any) string {
	if header != nil {
		if v := header.Get(HeaderKey); v != "" {
			return v
		}
	}
	if c, ok := msg.(stampCarrier); ok {
		return *c.TraceStamp()
	}
	return ""
}

// isCurrent reports whether msg is the message c is handling.
func isCurrent(c actor.SenderContext, msg stampCarrier) bool {
	cur, ok := c.Message().(stampCarrier)
	return ok && cur == msg
}

func stampEnvelope(c actor.SenderContext, env *actor.MessageEnvelope) *actor.MessageEnvelope {
	cur := Current(c)
	st := stamp{enqueued: clockNanos()}
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
	// A request message carries its stamp itself, unless it is the very
	// message this actor is handling (sent on again: its stamp is still
	// read) or its envelope already has a header.
	if carrier, ok := env.Message.(stampCarrier); ok && env.Header == nil && !isCurrent(c, carrier) {
		*carrier.TraceStamp() = st.encode()
		return env
	}
	return withStamp(env, &st)
}

// withStamp returns env with st in its header. An envelope without a
// header was made for this send (WrapEnvelope, Request) and gets the
// header in place; one with a header may be shared (Forward), so it is
// copied.
func withStamp(env *actor.MessageEnvelope, st *stamp) *actor.MessageEnvelope {
	if env.Header == nil {
		env.Header = map[string]string{HeaderKey: st.encode()}
		return env
	}
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
			st := parseStamp(stampOf(env.Header, env.Message))
			if st.span == "" {
				// Unstamped (its sender has no middleware): give it a span
				// in a header of its own, for Current and onward sends.
				sc := resolve(env.Message, st)
				st.trace, st.parent = sc.TraceID, sc.ParentSpanID
				env = withStamp(&actor.MessageEnvelope{Header: env.Header, Message: env.Message, Sender: env.Sender}, &st)
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
				r.Enqueued = clockTime(st.enqueued)
			}
			r.Started = Now()
			done := false
			defer func() {
				r.Ended = Now()
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

// nameCache remembers actor names by protoactor id, up to a bound. Reads
// take no lock: the map is replaced, never changed, when a name is added.
type nameCache struct {
	fn    func(*actor.PID) string
	names atomic.Pointer[map[string]string] // id → name
	mu    sync.Mutex                        // serialises additions
}

const maxCachedNames = 4096

func newNameCache(fn func(*actor.PID) string) *nameCache {
	if fn == nil {
		fn = func(pid *actor.PID) string { return pid.GetId() }
	}
	c := &nameCache{fn: fn}
	c.names.Store(&map[string]string{})
	return c
}

func (c *nameCache) of(pid *actor.PID) string {
	if pid == nil {
		return ""
	}
	if name, ok := (*c.names.Load())[pid.Id]; ok {
		return name
	}
	return c.store(pid.Id, c.fn(pid))
}

func (c *nameCache) ofID(address, id string) string {
	if name, ok := (*c.names.Load())[id]; ok {
		return name
	}
	return c.store(id, c.fn(actor.NewPID(address, id)))
}

func (c *nameCache) store(id, name string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.names.Load()
	if _, ok := old[id]; ok || len(old) >= maxCachedNames {
		return name
	}
	names := make(map[string]string, len(old)+1)
	for k, v := range old {
		names[k] = v
	}
	names[id] = name
	c.names.Store(&names)
	return name
}
