package trace_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/actors/trace/internal/fixture"
	"github.com/vmsup/vmsup/actors/trace/render"
)

// The chain under test: the API asks A with a call (it carries an
// actors.Request); A asks B with an inner message (no Request: its trace
// travels in the envelope header) and B answers A; A then answers the API.
// A also tells B a jobCmd whose Request names its parent, as a job does.
type call struct{ actors.Request }
type inner struct{ N int }
type innerReply struct{ N int }
type callReply struct{ N int }
type jobCmd struct{ actors.Request }

type actorA struct {
	b      *actor.PID
	caller *actor.PID
}

func (a *actorA) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *call:
		a.caller = ctx.Sender()
		ctx.Send(a.b, &jobCmd{Request: msg.Child(context.Background(), "job-7")})
		ctx.Request(a.b, &inner{N: 1})
	case *innerReply:
		ctx.Send(a.caller, &callReply{N: msg.N})
	}
}

type actorB struct {
	seen chan<- seen
}

// seen is what B saw of a message: its span (trace.Current) and its
// stamp, from the envelope header or, for a message that embeds an
// actors.Request, from the message itself.
type seen struct {
	span       trace.SpanContext
	header     string
	fromHeader bool // the stamp came in the envelope header
}

func (b *actorB) Receive(ctx actor.Context) {
	switch ctx.Message().(type) {
	case *inner:
		time.Sleep(2 * time.Millisecond) // the next message waits in the mailbox
		b.report(ctx)
		ctx.Respond(&innerReply{N: 2})
	case *jobCmd:
		b.report(ctx)
	}
}

func (b *actorB) report(ctx actor.Context) {
	s := seen{span: trace.Current(ctx)}
	if h := ctx.MessageHeader(); h != nil {
		s.header = h.Get(trace.HeaderKey)
		s.fromHeader = s.header != ""
	}
	if c, ok := ctx.Message().(interface{ TraceStamp() *string }); ok && s.header == "" {
		s.header = *c.TraceStamp()
	}
	b.seen <- s
}

type chain struct {
	system *actor.ActorSystem
	root   *actor.RootContext
	a, b   *actor.PID
	seen   chan seen
}

// newChain spawns A and B with the trace middleware of rec (none when
// rec is nil).
func newChain(t testing.TB, rec *trace.Recorder) *chain {
	c := &chain{system: actors.NewSystem(nil), seen: make(chan seen, 16)}
	c.root = actor.NewRootContext(c.system, nil, trace.SenderMiddleware(rec))
	names := func(pid *actor.PID) string { return pid.Id }
	opts := []actor.PropsOption{
		actor.WithReceiverMiddleware(trace.ReceiverMiddleware(rec, names)),
		actor.WithSenderMiddleware(trace.SenderMiddleware(rec)),
	}
	var err error
	c.b, err = c.root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return &actorB{seen: c.seen} }, opts...), "B")
	if err != nil {
		t.Fatal(err)
	}
	c.a, err = c.root.SpawnNamed(actor.PropsFromProducer(func() actor.Actor { return &actorA{b: c.b} }, opts...), "A")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.system.Shutdown() })
	return c
}

// waitRecords waits until the recorder holds n records of the trace: a
// record is written when the handling ends, after the reply went out.
func waitRecords(t *testing.T, rec *trace.Recorder, traceID string, n int) []trace.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := rec.ByTrace(traceID)
		if len(got) >= n || time.Now().After(deadline) {
			if len(got) != n {
				t.Fatalf("trace %s has %d records, want %d: %+v", traceID, len(got), n, got)
			}
			return got
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMiddlewareAskChain(t *testing.T) {
	rec := trace.New(trace.Options{})
	c := newChain(t, rec)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	req := actors.NewRequest(ctx, "api test")
	start := time.Now()
	reply, err := actors.AskAs[*callReply](ctx, c.root, c.a, &call{Request: req})
	if err != nil || reply.N != 2 {
		t.Fatalf("ask = %v, %v", reply, err)
	}
	rec.Record(trace.Record{TraceID: req.RequestID, SpanID: req.RequestID, Kind: trace.KindAPI, Actor: "api",
		Started: start, Ended: time.Now(), Note: "ok"})

	recs := waitRecords(t, rec, req.RequestID, 5) // api, call, jobCmd, inner, innerReply
	byType := map[string]trace.Record{}
	spans := map[string]bool{}
	for _, r := range recs {
		if r.TraceID != req.RequestID {
			t.Errorf("%s: trace %q, want %q", r.MessageType, r.TraceID, req.RequestID)
		}
		if r.SpanID == "" || spans[r.SpanID] {
			t.Errorf("%s: span id %q is empty or not unique", r.MessageType, r.SpanID)
		}
		spans[r.SpanID] = true
		if r.Kind == trace.KindAPI {
			continue
		}
		byType[r.MessageType] = r
		if r.Enqueued.IsZero() || r.Wait() <= 0 {
			t.Errorf("%s: mailbox wait %v (enqueued %v, started %v), want > 0", r.MessageType, r.Wait(), r.Enqueued, r.Started)
		}
		if r.Ended.Before(r.Started) {
			t.Errorf("%s: ended before it started", r.MessageType)
		}
	}
	callRec, innerRec, replyRec, jobRec := byType["trace_test.call"], byType["trace_test.inner"], byType["trace_test.innerReply"], byType["trace_test.jobCmd"]
	checks := []struct {
		name                  string
		r                     trace.Record
		actor, sender, parent string
	}{
		{"call", callRec, "A", "", req.RequestID}, // from the API: under the root span
		{"inner", innerRec, "B", "A", callRec.SpanID},
		{"innerReply", replyRec, "A", "B", innerRec.SpanID},
		{"jobCmd", jobRec, "B", "A", "job-7"}, // the Request's ParentID wins
	}
	for _, c := range checks {
		if c.r.Actor != c.actor || c.r.Sender != c.sender || c.r.ParentSpanID != c.parent || c.r.Kind != trace.KindMessage {
			t.Errorf("%s: actor %q sender %q parent %q kind %s, want actor %q sender %q parent %q",
				c.name, c.r.Actor, c.r.Sender, c.r.ParentSpanID, c.r.Kind, c.actor, c.sender, c.parent)
		}
	}
	// What B's handler saw of its messages matches their records.
	for range 2 {
		s := <-c.seen
		var want trace.Record
		switch s.span.SpanID {
		case innerRec.SpanID:
			want = innerRec
		case jobRec.SpanID:
			want = jobRec
		default:
			t.Fatalf("B saw span %+v, which has no record", s.span)
		}
		if s.span.TraceID != want.TraceID || s.span.ParentSpanID != want.ParentSpanID || s.header == "" {
			t.Errorf("Current in B = %+v (header %q), record has trace %q parent %q", s.span, s.header, want.TraceID, want.ParentSpanID)
		}
		// A message that embeds an actors.Request carries its stamp
		// itself: its send allocates no header map.
		if carries := want.SpanID == jobRec.SpanID; carries == s.fromHeader {
			t.Errorf("%s: stamp from the header = %v, want %v", want.MessageType, s.fromHeader, !carries)
		}
	}
	for _, r := range rec.Snapshot() {
		if r.MessageType == "actor.Started" || r.MessageType == "actor.Stopping" {
			t.Errorf("lifecycle message %s was recorded", r.MessageType)
		}
	}

	// The records of a real chain export to a valid Chrome trace.
	var buf bytes.Buffer
	if err := render.WriteChrome(&buf, recs); err != nil {
		t.Fatal(err)
	}
	fixture.ValidChrome(t, buf.Bytes())
}

func TestMiddlewareMailboxWait(t *testing.T) {
	rec := trace.New(trace.Options{})
	c := newChain(t, rec)
	// Two messages at once: the second waits while B sleeps on the first.
	c.root.Send(c.b, &inner{N: 1})
	c.root.Send(c.b, &inner{N: 2})
	<-c.seen
	<-c.seen
	var recs []trace.Record
	deadline := time.Now().Add(5 * time.Second)
	for len(recs) < 2 && time.Now().Before(deadline) {
		recs = rec.Filter(func(r trace.Record) bool { return r.MessageType == "trace_test.inner" })
		time.Sleep(time.Millisecond)
	}
	if len(recs) != 2 {
		t.Fatalf("%d records of inner, want 2", len(recs))
	}
	if w := recs[1].Wait(); w < time.Millisecond {
		t.Fatalf("the second message waited %v in the mailbox, want at least the 2ms the first one took", w)
	}
	if recs[0].TraceID != "" || recs[0].ParentSpanID != "" {
		t.Fatalf("a message outside any request got trace %q parent %q", recs[0].TraceID, recs[0].ParentSpanID)
	}
}

func TestMiddlewareDisabled(t *testing.T) {
	rec := trace.New(trace.Options{Disabled: true})
	c := newChain(t, rec)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := actors.Ask(ctx, c.root, c.a, &call{Request: actors.NewRequest(ctx, "api test")}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if s := <-c.seen; s.header != "" || s.span.SpanID != "" {
			t.Fatalf("tracing off, but B saw header %q span %+v", s.header, s.span)
		}
	}
	if n := len(rec.Snapshot()); n != 0 {
		t.Fatalf("tracing off, but %d records", n)
	}
}

// A receiver whose senders have no middleware (a plain root context) still
// gives each message a span, so that what its handler sends is linked.
func TestReceiverWithoutSenderMiddleware(t *testing.T) {
	rec := trace.New(trace.Options{})
	c := newChain(t, rec)
	plain := actor.NewRootContext(c.system, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req := actors.NewRequest(ctx, "api test")
	if _, err := actors.Ask(ctx, plain, c.a, &call{Request: req}); err != nil {
		t.Fatal(err)
	}
	recs := waitRecords(t, rec, req.RequestID, 4)
	var callRec, innerRec trace.Record
	for _, r := range recs {
		switch r.MessageType {
		case "trace_test.call":
			callRec = r
		case "trace_test.inner":
			innerRec = r
		}
	}
	if callRec.SpanID == "" || !callRec.Enqueued.IsZero() || callRec.ParentSpanID != req.RequestID {
		t.Fatalf("unstamped call: span %q enqueued %v parent %q", callRec.SpanID, callRec.Enqueued, callRec.ParentSpanID)
	}
	if innerRec.ParentSpanID != callRec.SpanID || innerRec.TraceID != req.RequestID {
		t.Fatalf("inner: parent %q trace %q, want %q %q", innerRec.ParentSpanID, innerRec.TraceID, callRec.SpanID, req.RequestID)
	}
}

type panicky struct{}

func (panicky) Receive(ctx actor.Context) {
	if s, ok := ctx.Message().(string); ok && s == "boom" {
		panic("boom")
	}
}

func TestMiddlewareRecordsPanic(t *testing.T) {
	rec := trace.New(trace.Options{})
	system := actors.NewSystem(nil)
	defer system.Shutdown()
	system.Root.WithSenderMiddleware(trace.SenderMiddleware(rec)) // the shared root context stamps too
	pid := system.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return panicky{} },
		actor.WithReceiverMiddleware(trace.ReceiverMiddleware(rec, nil))))
	system.Root.Send(pid, "boom")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if got := rec.Snapshot(); len(got) == 1 {
			if got[0].Note != "panicked" || got[0].MessageType != "string" || got[0].Ended.IsZero() || got[0].Enqueued.IsZero() {
				t.Fatalf("record of a panicking handler: %+v", got[0])
			}
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no record of the panicking handler")
}

func TestActorName(t *testing.T) {
	for id, want := range map[string]string{
		"driver":                     "driver",
		"driver/web1@3":              "domain/web1",
		"driver/web.1@12/monitor-77": "monitor/web.1",
		"driver/web1":                "domain/web1",
		"ask$12":                     "ask$12",
	} {
		if got := trace.ActorName(actor.NewPID("nonhost", id)); got != want {
			t.Errorf("ActorName(%q) = %q, want %q", id, got, want)
		}
	}
}

func TestTypeNameAndOutcome(t *testing.T) {
	if got := trace.TypeName(&call{}); got != "trace_test.call" {
		t.Errorf("TypeName(*call) = %q", got)
	}
	if got := trace.TypeName(inner{}); got != "trace_test.inner" {
		t.Errorf("TypeName(inner) = %q", got)
	}
	if got := trace.TypeName(named{}); got != "trace.named" {
		t.Errorf("TypeName(named) = %q, want its TraceName", got)
	}
	if trace.Outcome(nil) != "ok" || trace.Outcome(context.DeadlineExceeded) != "timeout" || trace.Outcome(context.Canceled) != "error: context canceled" {
		t.Error("Outcome")
	}
}

type named struct{}

func (named) TraceName() string { return "trace.named" }
