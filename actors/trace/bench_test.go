package trace_test

import (
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/actors/trace/internal/fixture"
)

func benchRecord() trace.Record {
	return trace.Record{TraceID: "a1b2c3-1", SpanID: "a1b2c3-2", ParentSpanID: "a1b2c3-1", Kind: trace.KindMessage,
		Actor: "domain/web1", MessageType: "domain.StartRequest", Started: fixture.T0, Ended: fixture.T0}
}

// warm fills the ring once, so that the benchmarks measure the steady state
// and not the first touch of its pages.
func warm(rec *trace.Recorder) {
	if rec.Enabled() {
		r := benchRecord()
		for range rec.Capacity() {
			rec.Record(r)
		}
	}
}

func BenchmarkRecordDisabled(b *testing.B) {
	rec := trace.New(trace.Options{Disabled: true})
	r := benchRecord()
	b.ReportAllocs()
	for b.Loop() {
		rec.Record(r)
	}
}

func BenchmarkRecordEnabled(b *testing.B) {
	rec := trace.New(trace.Options{})
	warm(rec)
	r := benchRecord()
	b.ReportAllocs()
	for b.Loop() {
		rec.Record(r)
	}
}

func BenchmarkRecordEnabledParallel(b *testing.B) {
	rec := trace.New(trace.Options{})
	warm(rec)
	r := benchRecord()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			rec.Record(r)
		}
	})
}

func BenchmarkRecordStalledSubscriber(b *testing.B) {
	rec := trace.New(trace.Options{})
	warm(rec)
	sub := rec.Subscribe(16, nil) // never read
	defer sub.Close()
	r := benchRecord()
	b.ReportAllocs()
	for b.Loop() {
		rec.Record(r)
	}
}

// The round-trip harness: P asks Q n times in a row (each ask waits for the
// reply), then closes done. Each round trip is two messages, both traced
// when the middleware is on.
type ping struct{ actors.Request }
type pong struct{}
type run struct {
	n    int
	done chan struct{}
}

type pinger struct {
	q    *actor.PID
	req  *ping
	left int
	done chan struct{}
}

func (p *pinger) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case run:
		p.left, p.done = msg.n, msg.done
		ctx.Request(p.q, p.req)
	case *pong:
		p.left--
		if p.left == 0 {
			close(p.done)
			return
		}
		ctx.Request(p.q, p.req)
	}
}

type ponger struct{}

func (ponger) Receive(ctx actor.Context) {
	if _, ok := ctx.Message().(*ping); ok {
		ctx.Respond(&pong{})
	}
}

// pingPong spawns the pair, with the middleware of rec when withMiddleware,
// and returns a function that runs n round trips. With synchronous, both
// actors run on protoactor's synchronized dispatcher (in the sender's
// goroutine), which leaves out goroutine start-up and stack growth and
// measures the CPU cost of the messages alone.
func pingPong(tb testing.TB, rec *trace.Recorder, withMiddleware, synchronous bool) func(n int) {
	system := actors.NewSystem(nil)
	tb.Cleanup(func() { system.Shutdown() })
	var opts []actor.PropsOption
	if synchronous {
		opts = append(opts, actor.WithDispatcher(actor.NewSynchronizedDispatcher(300)))
	}
	if withMiddleware {
		opts = append(opts,
			actor.WithReceiverMiddleware(trace.ReceiverMiddleware(rec, trace.ActorName)),
			actor.WithSenderMiddleware(trace.SenderMiddleware(rec)))
	}
	q := system.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return ponger{} }, opts...))
	req := &ping{Request: actors.Request{RequestID: actors.NewID(), Owner: "bench"}}
	p := system.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return &pinger{q: q, req: req} }, opts...))
	return func(n int) {
		done := make(chan struct{})
		system.Root.Send(p, run{n: n, done: done})
		<-done
	}
}

func benchRoundTrip(b *testing.B, rec *trace.Recorder, withMiddleware, synchronous bool) {
	warm(rec)
	roundTrips := pingPong(b, rec, withMiddleware, synchronous)
	roundTrips(100) // warm up
	b.ReportAllocs()
	b.ResetTimer()
	roundTrips(b.N)
}

// BenchmarkMiddlewareRoundTripOff is a request/response between two actors
// without the trace middleware.
func BenchmarkMiddlewareRoundTripOff(b *testing.B) {
	benchRoundTrip(b, nil, false, false)
}

// BenchmarkMiddlewareRoundTripDisabled has the middleware installed and the
// recorder switched off.
func BenchmarkMiddlewareRoundTripDisabled(b *testing.B) {
	benchRoundTrip(b, trace.New(trace.Options{Disabled: true}), true, false)
}

// BenchmarkMiddlewareRoundTripOn records both messages of each round trip.
func BenchmarkMiddlewareRoundTripOn(b *testing.B) {
	benchRoundTrip(b, trace.New(trace.Options{}), true, false)
}

// BenchmarkMiddlewareRoundTripOnStalled records with a subscriber that never
// reads.
func BenchmarkMiddlewareRoundTripOnStalled(b *testing.B) {
	rec := trace.New(trace.Options{})
	sub := rec.Subscribe(16, nil)
	defer sub.Close()
	benchRoundTrip(b, rec, true, false)
}

// BenchmarkMiddlewareRoundTripSyncOff is RoundTripOff on the synchronized
// dispatcher: the CPU cost of two messages without goroutine hand-offs.
func BenchmarkMiddlewareRoundTripSyncOff(b *testing.B) {
	benchRoundTrip(b, nil, false, true)
}

// BenchmarkMiddlewareRoundTripSyncDisabled is RoundTripDisabled on the
// synchronized dispatcher.
func BenchmarkMiddlewareRoundTripSyncDisabled(b *testing.B) {
	benchRoundTrip(b, trace.New(trace.Options{Disabled: true}), true, true)
}

// BenchmarkMiddlewareRoundTripSyncOn is RoundTripOn on the synchronized
// dispatcher.
func BenchmarkMiddlewareRoundTripSyncOn(b *testing.B) {
	benchRoundTrip(b, trace.New(trace.Options{}), true, true)
}

// TestStalledSubscriberDoesNotSlowActors: round trips between two traced
// actors, with a subscriber that never reads, stay within a generous factor
// of those without one.
func TestStalledSubscriberDoesNotSlowActors(t *testing.T) {
	const n = 5000
	measure := func(rec *trace.Recorder) float64 {
		roundTrips := pingPong(t, rec, true, false)
		roundTrips(200)
		best := time.Duration(1<<63 - 1)
		for range 3 {
			start := time.Now()
			roundTrips(n)
			best = min(best, time.Since(start))
		}
		return float64(best.Nanoseconds()) / n
	}
	free := measure(trace.New(trace.Options{}))
	rec := trace.New(trace.Options{})
	sub := rec.Subscribe(16, nil)
	defer sub.Close()
	stalled := measure(rec)
	t.Logf("traced round trip: %.0f ns without a subscriber, %.0f ns with a stalled one (%.2fx); %d records dropped",
		free, stalled, stalled/free, sub.Dropped())
	if stalled > 3*free {
		t.Errorf("a stalled subscriber slows actors from %.0f to %.0f ns per round trip", free, stalled)
	}
	if sub.Dropped() == 0 {
		t.Error("the stalled subscriber dropped nothing")
	}
}
