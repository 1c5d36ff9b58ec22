package actors

import (
	"context"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// The benchmarks time a one-step job round trip through a real actor: a
// caller asks, the actor queues the job, its step runs on a pooled
// worker and sets a value, the step's end comes back to the actor, and
// the actor replies. Two baselines beside it say what the engine itself
// costs: "direct" (the actor replies at once: the protoactor floor) and
// "goroutine" (the actor hands the request to a pooled worker that posts
// the result back, and replies: the same hand-offs without the lane).

type benchReq struct {
	Request
}

type benchTask struct {
	self  *actor.PID
	root  *actor.RootContext
	reply *actor.PID
}

type benchDone struct{ t *benchTask }

func (t *benchTask) runSegment() {
	t.root.Send(t.self, &benchDone{t})
}

type benchActor struct {
	mode string
	disp *Dispatcher
	lane *Lane[struct{}]
	plan *Plan[struct{}]
}

var benchValue any = "ok" // a value that needs no allocation to reply

func (a *benchActor) Receive(c actor.Context) {
	if a.lane.Handle(c, c.Message()) {
		return
	}
	switch m := c.Message().(type) {
	case *benchReq:
		switch a.mode {
		case "direct":
			c.Respond(benchValue)
		case "goroutine":
			a.disp.goTask(&benchTask{self: c.Self(), root: c.ActorSystem().Root, reply: c.Sender()})
		default:
			a.lane.Enqueue(c, a.plan, m.Request, struct{}{}, ReplyTo(c.Sender()))
		}
	case *benchDone:
		c.Send(m.t.reply, benchValue)
	}
}

func benchJobRoundTrip(b *testing.B, mode string, parallel bool) {
	disp, err := NewDispatcher()
	if err != nil {
		b.Fatal(err)
	}
	sys := NewSystem(nil)
	defer sys.Shutdown()
	defer disp.Close(5 * time.Second)
	plan := NewPlan("qmp", JobQuery, Step[struct{}]{Name: "qmp query-status", Call: "query-status",
		Do: func(_ context.Context, r Run[struct{}]) error { r.SetValue(benchValue); return nil }})
	pid := sys.Root.Spawn(actor.PropsFromProducer(func() actor.Actor {
		return &benchActor{mode: mode, disp: disp, plan: plan,
			lane: NewLane(LaneConfig[struct{}]{Name: `domain "bench"`, Dispatcher: disp})}
	}, actor.WithDispatcher(disp)))
	call := func() {
		// As the API does: a caller context with a deadline.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		v, err := Ask(ctx, sys.Root, pid, &benchReq{Request: Request{Ctx: ctx, RequestID: "bench"}})
		cancel()
		if err != nil || v != benchValue {
			b.Errorf("reply %v, %v", v, err)
		}
	}
	for range 100 {
		call()
	}
	b.ReportAllocs()
	b.ResetTimer()
	if parallel {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				call()
			}
		})
		return
	}
	for b.Loop() {
		call()
	}
}

func BenchmarkJobRoundTrip(b *testing.B) {
	for _, mode := range []string{"direct", "goroutine", "lane"} {
		b.Run(mode, func(b *testing.B) { benchJobRoundTrip(b, mode, false) })
	}
	// Parallel callers: jobs queue, so the lane watches their contexts.
	for _, mode := range []string{"goroutine", "lane"} {
		b.Run(mode+"-parallel", func(b *testing.B) { benchJobRoundTrip(b, mode, true) })
	}
}

// BenchmarkLaneBookkeeping is the lane's own cost per job, without
// any hand-off: in one handler, a job of a plan without steps is queued,
// started, finished and replied to (to a function), b.N times.
func BenchmarkLaneBookkeeping(b *testing.B) {
	sys := NewSystem(nil)
	defer sys.Shutdown()
	plan := NewPlan[struct{}]("reset", JobModify)
	var replies int
	w := ReplyFunc(func(any) { replies++ })
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	req := Request{Ctx: ctx, RequestID: "bench"}
	run := func(c actor.Context) {
		lane := NewLane(LaneConfig[struct{}]{Name: `domain "bench"`})
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			j := lane.Enqueue(c, plan, req, struct{}{}, w)
			lane.Finish(c, j, benchValue, nil)
		}
		b.StopTimer()
	}
	pid := sys.Root.Spawn(actor.PropsFromFunc(func(c actor.Context) {
		if _, ok := c.Message().(*benchReq); ok {
			run(c)
			c.Respond(true)
		}
	}))
	if _, err := Ask(context.Background(), sys.Root, pid, &benchReq{}); err != nil {
		b.Fatal(err)
	}
	if replies != b.N {
		b.Fatalf("%d replies for %d jobs", replies, b.N)
	}
}
