package actors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

func TestLaneFIFOOneAtATime(t *testing.T) {
	f := newFixture(t, nil)
	a := f.submit("block", "a", 0)
	f.eventually("a runs", func() bool { return f.noteIndex("run a") >= 0 })
	var rest []<-chan reply
	for _, n := range []string{"b", "c", "d", "e"} {
		rest = append(rest, f.submit("block", n, 0))
	}
	s := f.snapshot()
	if s.Active == nil || s.Active.ID != 1 || len(s.Queued) != 4 {
		t.Fatalf("snapshot = %+v, want job 1 active and 4 queued", s)
	}
	for i, q := range s.Queued {
		if q.ID != uint64(i+2) || !q.Started.IsZero() {
			t.Fatalf("queued[%d] = %+v", i, q)
		}
	}
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		f.open(n)
	}
	if r := f.get(a); r.err != nil || r.v != "done a" {
		t.Fatalf("a: %+v", r)
	}
	for i, ch := range rest {
		want := "done " + string(rune('b'+i))
		if r := f.get(ch); r.err != nil || r.v != want {
			t.Fatalf("reply %d = %+v, want %q", i, r, want)
		}
	}
	if got := f.startedIDs(); !slices.Equal(got, []uint64{1, 2, 3, 4, 5}) {
		t.Fatalf("start order %v, want 1..5", got)
	}
	if m := f.maxHolders.Load(); m != 1 {
		t.Fatalf("%d jobs held the lane at once", m)
	}
	var runs []string
	for _, n := range f.noted() {
		if strings.HasPrefix(n, "run ") {
			runs = append(runs, n)
		}
	}
	if !slices.Equal(runs, []string{"run a", "run b", "run c", "run d", "run e"}) {
		t.Fatalf("runs %v", runs)
	}
}

func TestLaneCancelWhileQueuedLeavesTheQueue(t *testing.T) {
	f := newFixture(t, nil)
	a := f.submit("block", "a", 0)
	b := f.submit("block", "b", 0)
	c := f.submit("modify", "c", 0)
	f.cancel("b")
	if r := f.get(b); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("b: %+v, want context.Canceled", r)
	}
	// The watcher's message takes b out of the queue, not a's end.
	f.eventually("b leaves the queue", func() bool {
		s := f.snapshot()
		return len(s.Queued) == 1 && s.Queued[0].Name == "modify"
	})
	s := f.snapshot()
	if len(s.Recent) != 1 || s.Recent[0].ID != 2 || !s.Recent[0].Started.IsZero() ||
		s.Recent[0].Error != `domain "t": job 2 "block" left the queue: context canceled` {
		t.Fatalf("recent = %+v", s.Recent)
	}
	f.open("a")
	f.open("b")
	if r := f.get(a); r.err != nil {
		t.Fatal(r.err)
	}
	if r := f.get(c); r.v != "done c" {
		t.Fatalf("c: %+v", r)
	}
	if f.noteIndex("run b") >= 0 || f.noteIndex("start b") >= 0 {
		t.Fatalf("b ran after it left the queue: %v", f.noted())
	}
	if got := f.startedIDs(); !slices.Equal(got, []uint64{1, 3}) {
		t.Fatalf("started %v", got)
	}
}

func TestLaneDeadHeadIsDropped(t *testing.T) {
	f := newFixture(t, nil)
	m := f.submit("manual", "m", 0)
	b := f.submit("block", "b", 0)
	c := f.submit("modify", "c", 0)
	// In one handler: b's caller gives up, then m ends. b reaches the head
	// before its watcher's message arrives, and must be dropped there.
	if v, err := f.ask(&cancelThenFinish{Cancel: "b", Finish: "m"}); err != nil || v != true {
		t.Fatalf("cancelThenFinish = %v, %v", v, err)
	}
	if r := f.get(m); r.v != "finished" {
		t.Fatalf("m: %+v", r)
	}
	if r := f.get(c); r.v != "done c" {
		t.Fatalf("c: %+v", r)
	}
	f.get(b)
	s := f.snapshot()
	var bInfo *JobInfo
	for i := range s.Recent {
		if s.Recent[i].ID == 2 {
			bInfo = &s.Recent[i]
		}
	}
	if bInfo == nil || !bInfo.Started.IsZero() || !strings.Contains(bInfo.Error, "left the queue") {
		t.Fatalf("b's record = %+v", bInfo)
	}
	if f.noteIndex("start b") >= 0 {
		t.Fatal("a dead job started")
	}
	if n := len(s.Recent); n != 3 {
		t.Fatalf("%d jobs recorded, want 3 (the watcher's late message must not end b twice): %+v", n, s.Recent)
	}
}

func TestLaneExpiredRequestLeavesTheQueue(t *testing.T) {
	f := newFixture(t, nil)
	m := f.submit("manual", "m", 0)
	// Two callers bounded by Request.Expires only (their contexts never
	// end, so no watcher fires): x is dropped when its caller asks who
	// holds the lane, y when it reaches the head.
	expires := time.Now().Add(50 * time.Millisecond)
	x := f.send(&runMsg{Plan: "modify", Name: "x", Request: Request{Expires: expires}}, 0)
	y := f.send(&runMsg{Plan: "modify", Name: "y", Request: Request{Expires: expires}}, 0)
	time.Sleep(time.Until(expires) + 10*time.Millisecond)
	v, err := f.ask(&explainMsg{RequestID: "req-x"})
	if err != nil {
		t.Fatal(err)
	}
	if xp := v.(*Explanation); xp.Holder == nil || xp.Holder.Name != "manual" || xp.Queued != 1 {
		t.Fatalf("explanation %+v: want m holding and only y queued", xp)
	}
	if r := f.get(x); !errors.Is(r.err, context.DeadlineExceeded) || !strings.Contains(r.err.Error(), `job 2 "modify" left the queue`) {
		t.Fatalf("x: %+v", r)
	}
	if _, err := f.ask(&finishMsg{Name: "m", Value: "finished"}); err != nil {
		t.Fatal(err)
	}
	if r := f.get(m); r.v != "finished" {
		t.Fatalf("m: %+v", r)
	}
	if r := f.get(y); !errors.Is(r.err, context.DeadlineExceeded) || !strings.Contains(r.err.Error(), `job 3 "modify" left the queue`) {
		t.Fatalf("y: %+v", r)
	}
	if f.noteIndex("run x") >= 0 || f.noteIndex("run y") >= 0 {
		t.Fatalf("an expired job started: %v", f.noted())
	}
	// A request that has not expired runs as before.
	z := f.send(&runMsg{Plan: "modify", Name: "z", Request: Request{Expires: time.Now().Add(time.Minute)}}, 0)
	if r := f.get(z); r.v != "done z" {
		t.Fatalf("z: %+v", r)
	}
}

func TestLaneAsyncMaskKeepsFIFO(t *testing.T) {
	f := newFixture(t, nil)
	sd := f.submit("shutdown", "sd", 0)
	f.eventually("shutdown waits", func() bool { return f.noteIndex("wait sd") >= 0 })
	f.eventually("shutdown in its async phase", func() bool {
		s := f.snapshot()
		return s.Async != nil && s.Active == nil
	})
	// A query runs beside the async job.
	if r := f.get(f.submit("query", "q1", 0)); r.v != "done q1" {
		t.Fatalf("q1: %+v", r)
	}
	// A modify does not, and a query behind it waits too: FIFO.
	mod := f.submit("modify", "m1", 0)
	q2 := f.submit("query", "q2", 0)
	time.Sleep(20 * time.Millisecond)
	s := f.snapshot()
	if len(s.Queued) != 2 || s.Queued[0].Name != "modify" || s.Queued[1].Name != "query" {
		t.Fatalf("queue = %+v, want modify then query waiting", s.Queued)
	}
	if f.noteIndex("run m1") >= 0 || f.noteIndex("run q2") >= 0 {
		t.Fatal("a job behind a refused head started")
	}
	// Destroy is in the default mask: it starts beside the async job.
	if r := f.get(f.send(&runMsg{Plan: "destroy", Name: "x", Preempt: true, Verb: "destroyed"}, 0)); r.v != "done x" {
		t.Fatalf("destroy: %+v", r)
	}
	r := f.get(sd)
	if r.err == nil || r.err.Error() != `domain "t": destroyed by job 5 (api destroy) (context canceled)` {
		t.Fatalf("shutdown's error = %v, want it destroyed by job 5", r.err)
	}
	if r := f.get(mod); r.v != "done m1" {
		t.Fatalf("m1: %+v", r)
	}
	if r := f.get(q2); r.v != "done q2" {
		t.Fatalf("q2: %+v", r)
	}
	if i, j := f.noteIndex("run m1"), f.noteIndex("run q2"); i < 0 || j < i {
		t.Fatalf("order %v: m1 must run before q2", f.noted())
	}
	if got := f.startedIDs(); !slices.Equal(got, []uint64{1, 2, 5, 3, 4}) {
		t.Fatalf("started %v", got)
	}
}

func TestLaneSnapshotMaskAllowsSuspend(t *testing.T) {
	for _, tc := range []struct {
		plan    string
		suspend bool
	}{{"shutdown", false}, {"snapshot", true}} {
		t.Run(tc.plan, func(t *testing.T) {
			f := newFixture(t, nil)
			job := f.submit(tc.plan, "as", 0)
			f.eventually("async phase", func() bool { s := f.snapshot(); return s.Async != nil })
			sus := f.submit("suspend", "s", 0)
			time.Sleep(20 * time.Millisecond)
			ran := f.noteIndex("run s") >= 0
			if ran != tc.suspend {
				t.Fatalf("suspend ran beside %s: %v, want %v", tc.plan, ran, tc.suspend)
			}
			// A second async job waits: one async job at a time.
			second := f.submit(tc.plan, "as2", 0)
			time.Sleep(10 * time.Millisecond)
			if f.noteIndex("powerdown as2") >= 0 {
				t.Fatal("a second async job started beside the first")
			}
			f.open("as")
			f.open("as2")
			for _, ch := range []<-chan reply{job, sus, second} {
				if r := f.get(ch); r.err != nil {
					t.Fatal(r.err)
				}
			}
		})
	}
}

func TestLanePreemptCancelsAndGoesFirst(t *testing.T) {
	f := newFixture(t, func(f *fixture) {
		// "hold" is a step that ends only when its gate opens, as a QMP
		// command ends only when QEMU dies; it then fails.
		f.plans["hold"] = NewPlan("hold", JobModify, Step[*tdata]{Name: "work", Do: func(ctx context.Context, r Run[*tdata]) error {
			f.note("run " + r.Data().name)
			<-f.gate(r.Data().name)
			return errors.New("connection reset")
		}})
	})
	a := f.submit("hold", "a", 0)
	f.eventually("a runs", func() bool { return f.noteIndex("run a") >= 0 })
	b := f.submit("modify", "b", 0)
	d1 := f.send(&runMsg{Plan: "destroy", Name: "d", Preempt: true, Verb: "destroyed"}, 0)
	d2 := f.send(&runMsg{Plan: "destroy", Name: "d2", Preempt: true, Verb: "destroyed"}, 0) // joins d
	if s := f.snapshot(); s.Active == nil || s.Active.ID != 1 || len(s.Queued) != 2 || s.Queued[0].ID != 3 {
		t.Fatalf("snapshot %+v: a still active, destroy at the head", s)
	}
	f.open("a")
	ra := f.get(a)
	if ra.err == nil || ra.err.Error() != `domain "t": destroyed by job 3 (api destroy) (connection reset)` {
		t.Fatalf("a: %v", ra.err)
	}
	for _, ch := range []<-chan reply{d1, d2} {
		if r := f.get(ch); r.v != "done d" {
			t.Fatalf("destroy waiter: %+v", r)
		}
	}
	if r := f.get(b); r.v != "done b" {
		t.Fatalf("b: %+v", r)
	}
	if got := f.startedIDs(); !slices.Equal(got, []uint64{1, 3, 2}) {
		t.Fatalf("started %v, want a, destroy, b", got)
	}
	if m := f.maxHolders.Load(); m != 1 {
		t.Fatalf("destroy started while the job it preempted still held the lane (%d holders)", m)
	}
	// A preempting job ignores its caller's context.
	f.submit("hold", "h", 0)
	f.eventually("h runs", func() bool { return f.noteIndex("run h") >= 0 })
	d3 := f.send(&runMsg{Plan: "destroy", Name: "d3", Preempt: true}, 50*time.Millisecond)
	if r := f.get(d3); !errors.Is(r.err, context.DeadlineExceeded) {
		t.Fatalf("d3's caller: %+v", r)
	}
	f.open("h")
	f.eventually("d3 ran although its caller left", func() bool { return f.noteIndex("run d3") >= 0 })
}

func TestLaneCleanupsRunOnceInReverse(t *testing.T) {
	type rec struct {
		mu  sync.Mutex
		got []string
	}
	var r rec
	add := func(s string) { r.mu.Lock(); r.got = append(r.got, s); r.mu.Unlock() }
	push := func(run Run[*tdata], name string) {
		run.Defer(name, func(jobErr error) error {
			add(fmt.Sprintf("%s %s err=%v", run.Data().name, name, jobErr != nil))
			if name == "bad" {
				return errors.New("cleanup failed")
			}
			return nil
		})
	}
	f := newFixture(t, func(f *fixture) {
		step := func(name string, then func(ctx context.Context, run Run[*tdata]) error) Step[*tdata] {
			return Step[*tdata]{Name: name, Do: func(ctx context.Context, run Run[*tdata]) error {
				push(run, name)
				return then(ctx, run)
			}}
		}
		ok := func(context.Context, Run[*tdata]) error { return nil }
		f.plans["ok"] = NewPlan("ok", JobModify, step("one", ok), step("two", ok), step("three", ok))
		f.plans["fail"] = NewPlan("fail", JobModify, step("one", ok),
			step("two", func(context.Context, Run[*tdata]) error { return errors.New("step two failed") }),
			step("never", ok))
		f.plans["panic"] = NewPlan("panic", JobModify, step("one", ok),
			step("two", func(context.Context, Run[*tdata]) error { panic("kaboom") }))
		f.plans["cancel"] = NewPlan("cancel", JobModify, step("one", ok),
			step("two", func(ctx context.Context, run Run[*tdata]) error {
				f.note("in two " + run.Data().name)
				return f.wait(ctx, run.Data().name)
			}),
			step("never", ok))
		f.plans["badcleanup"] = NewPlan("badcleanup", JobModify, step("one", ok), step("bad", ok))
		// An actor step between goroutine steps: the stack spans them.
		f.plans["mixed"] = NewPlan("mixed", JobModify, step("one", ok),
			Step[*tdata]{Name: "here", InActor: func(c actor.Context, run Run[*tdata]) error { push(run, "here"); return nil }},
			step("three", ok))
	})
	check := func(name string, want ...string) {
		t.Helper()
		f.eventually(name+" cleanups", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.got) >= len(want) })
		time.Sleep(5 * time.Millisecond) // a second run of the stack would show here
		r.mu.Lock()
		got := slices.Clone(r.got)
		r.got = nil
		r.mu.Unlock()
		if !slices.Equal(got, want) {
			t.Fatalf("%s: cleanups %q, want %q", name, got, want)
		}
	}

	if res := f.get(f.submit("ok", "ok", 0)); res.err != nil {
		t.Fatal(res.err)
	}
	check("ok", "ok three err=false", "ok two err=false", "ok one err=false")

	res := f.get(f.submit("fail", "fail", 0))
	if res.err == nil || res.err.Error() != "step two failed" {
		t.Fatalf("fail: %v", res.err)
	}
	check("fail", "fail two err=true", "fail one err=true")

	res = f.get(f.submit("panic", "panic", 0))
	if res.err == nil || res.err.Error() != `domain "t": job 3 "panic": step "two" panicked: kaboom` {
		t.Fatalf("panic: %v", res.err)
	}
	check("panic", "panic two err=true", "panic one err=true")

	ch := f.submit("cancel", "cancel", 0)
	f.eventually("cancel's step two runs", func() bool { return f.noteIndex("in two cancel") >= 0 })
	if _, err := f.ask(&cancelMsg{Name: "cancel", Cause: "stop it"}); err != nil {
		t.Fatal(err)
	}
	res = f.get(ch)
	if res.err == nil || res.err.Error() != "stop it (context canceled)" {
		t.Fatalf("cancel: %v", res.err)
	}
	check("cancel", "cancel two err=true", "cancel one err=true")

	res = f.get(f.submit("badcleanup", "bc", 0))
	if res.err == nil || res.err.Error() != `domain "t": job 5 "badcleanup": cleanup "bad": cleanup failed` {
		t.Fatalf("badcleanup: %v", res.err)
	}
	// A cleanup sees the job's error so far, a failed cleanup's included.
	check("badcleanup", "bc bad err=false", "bc one err=true")

	if res := f.get(f.submit("mixed", "mx", 0)); res.err != nil {
		t.Fatal(res.err)
	}
	check("mixed", "mx three err=false", "mx here err=false", "mx one err=false")
}

func TestLaneCloseLetsRunningJobsClean(t *testing.T) {
	var cleaned atomic.Int32
	f := newFixture(t, func(f *fixture) {
		// "stubborn" ignores cancellation, then reaches an actor step
		// after the lane has closed: its cleanups must still run.
		f.plans["stubborn"] = NewPlan("stubborn", JobModify,
			Step[*tdata]{Name: "work", Do: func(ctx context.Context, run Run[*tdata]) error {
				run.Defer("c", func(error) error { cleaned.Add(1); return nil })
				f.note("run " + run.Data().name)
				<-f.gate(run.Data().name)
				return nil
			}},
			Step[*tdata]{Name: "here", InActor: func(actor.Context, Run[*tdata]) error {
				t.Error("an actor step ran after the lane closed")
				return nil
			}})
	})
	s := f.submit("stubborn", "s", 0)
	f.eventually("stubborn runs", func() bool { return f.noteIndex("run s") >= 0 })
	q := f.submit("modify", "q", 0)
	if _, err := f.ask(&closeMsg{Reason: "lane closed for the test"}); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []<-chan reply{s, q} {
		if r := f.get(ch); r.err == nil || !strings.Contains(r.err.Error(), "lane closed for the test") {
			t.Fatalf("reply after close: %+v", r)
		}
	}
	late := f.get(f.submit("modify", "late", 0))
	if late.err == nil || late.err.Error() != `domain "t": job 3 "modify": lane closed for the test` {
		t.Fatalf("enqueue after close: %v", late.err)
	}
	f.open("s")
	f.eventually("the orphaned job's cleanup", func() bool { return cleaned.Load() == 1 })
	time.Sleep(10 * time.Millisecond)
	if n := cleaned.Load(); n != 1 {
		t.Fatalf("cleanup ran %d times", n)
	}
}

func TestLaneRestartedActorRunsOldJobsCleanups(t *testing.T) {
	var cleaned, actorSteps atomic.Int32
	f := newFixture(t, func(f *fixture) {
		f.plans["old"] = NewPlan("old", JobModify,
			Step[*tdata]{Name: "work", Do: func(ctx context.Context, run Run[*tdata]) error {
				run.Defer("c", func(error) error { cleaned.Add(1); return nil })
				f.note("run " + run.Data().name)
				<-f.gate(run.Data().name) // ignores cancellation
				return nil
			}},
			Step[*tdata]{Name: "here", InActor: func(actor.Context, Run[*tdata]) error { actorSteps.Add(1); return nil }})
	})
	old := f.submit("old", "o", 0)
	f.eventually("old runs", func() bool { return f.noteIndex("run o") >= 0 })
	f.sys.Root.Send(f.pid, &boomMsg{}) // restart: the new instance has a new lane
	if r := f.get(old); r.err == nil || !strings.Contains(r.err.Error(), "test actor restarting") {
		t.Fatalf("old job's waiter: %+v", r)
	}
	f.open("o") // the old job now reaches its actor step, in the new instance
	f.eventually("old job's cleanup", func() bool { return cleaned.Load() == 1 })
	if r := f.get(f.submit("modify", "new", 0)); r.v != "done new" {
		t.Fatalf("new instance: %+v", r)
	}
	if s := f.snapshot(); len(s.Recent) != 1 || s.Recent[0].ID != 1 || s.Recent[0].Name != "modify" {
		t.Fatalf("new lane's recent = %+v: the old job must not show", s.Recent)
	}
	if n := actorSteps.Load(); n != 0 {
		t.Fatalf("the old job's actor step ran %d times in the new instance", n)
	}
}

func TestLaneRepliesToEveryWaiter(t *testing.T) {
	f := newFixture(t, nil)
	a := f.submit("block", "a", 0)
	f.eventually("a runs", func() bool { return f.noteIndex("run a") >= 0 })
	var joined []<-chan reply
	for range 3 {
		ch := make(chan reply, 1)
		go func() {
			v, err := f.ask(&joinMsg{Name: "a"})
			ch <- reply{v, err}
		}()
		joined = append(joined, ch)
	}
	time.Sleep(20 * time.Millisecond) // the joins reach the actor
	f.open("a")
	for _, ch := range append(joined, a) {
		if r := f.get(ch); r.err != nil || r.v != "done a" {
			t.Fatalf("waiter got %+v", r)
		}
	}
	// A job without a value replies with *JobDone; an error goes to all.
	m := f.submit("manual", "m", 0)
	j2 := make(chan reply, 1)
	go func() { v, err := f.ask(&joinMsg{Name: "m"}); j2 <- reply{v, err} }()
	time.Sleep(10 * time.Millisecond)
	if v, _ := f.ask(&finishMsg{Name: "m", Err: "manual failure"}); v != true {
		t.Fatal("Finish refused a running manual job")
	}
	for _, ch := range []<-chan reply{m, j2} {
		if r := f.get(ch); r.err == nil || r.err.Error() != "manual failure" {
			t.Fatalf("waiter of a failed job got %+v", r)
		}
	}
	if v, _ := f.ask(&finishMsg{Name: "m"}); v != false {
		t.Fatal("Finish ended a job twice")
	}
}

func TestLaneJobDoneReply(t *testing.T) {
	f := newFixture(t, func(f *fixture) {
		f.plans["novalue"] = NewPlan("novalue", JobModify, Step[*tdata]{Name: "s", Do: func(context.Context, Run[*tdata]) error { return nil }})
	})
	r := f.get(f.submit("novalue", "n", 0))
	d, ok := r.v.(*JobDone)
	if !ok || d.Job.ID != 1 || d.Job.Name != "novalue" || d.Job.Ended.IsZero() || d.Job.Owner != "api novalue" {
		t.Fatalf("reply %+v, want *JobDone of job 1", r)
	}
}

func TestLaneManualJobs(t *testing.T) {
	f := newFixture(t, nil)
	m := f.submit("manual", "m", 0)
	q := f.submit("modify", "q", 0)
	if s := f.snapshot(); s.Active == nil || s.Active.Name != "manual" || len(s.Queued) != 1 {
		t.Fatalf("snapshot %+v", s)
	}
	if _, err := f.ask(&cancelMsg{Name: "m", Cause: "aborted"}); err != nil {
		t.Fatal(err)
	}
	if r := f.get(m); r.err == nil || r.err.Error() != `aborted (job 1 "manual")` {
		t.Fatalf("cancelled manual job: %+v", r)
	}
	if r := f.get(q); r.v != "done q" {
		t.Fatalf("q: %+v", r)
	}
	// Cancel of a queued job: it never runs.
	h := f.submit("manual", "h", 0)
	w := f.submit("modify", "w", 0)
	f.ask(&cancelMsg{Name: "w", Cause: "not wanted"})
	if r := f.get(w); r.err == nil || r.err.Error() != `domain "t": job 4 "modify" cancelled before it started: not wanted` {
		t.Fatalf("w: %+v", r)
	}
	f.ask(&finishMsg{Name: "h", Value: "ok"})
	if r := f.get(h); r.v != "ok" {
		t.Fatalf("h: %+v", r)
	}
	if f.noteIndex("run w") >= 0 {
		t.Fatal("a cancelled queued job ran")
	}
}

func TestLaneStartHookRefuses(t *testing.T) {
	var ended atomic.Int32
	f := newFixture(t, func(f *fixture) {
		p := NewPlan("picky", JobModify, Step[*tdata]{Name: "s", Do: func(context.Context, Run[*tdata]) error {
			t.Error("a refused job ran")
			return nil
		}})
		p.Start = func(c actor.Context, j *Job[*tdata]) error {
			return fmt.Errorf("picky: %s is not welcome", j.Data.name)
		}
		p.End = func(actor.Context, *Job[*tdata], any, error) (any, error) { ended.Add(1); return nil, nil }
		f.plans["picky"] = p
	})
	r := f.get(f.submit("picky", "x", 0))
	if r.err == nil || r.err.Error() != "picky: x is not welcome" {
		t.Fatalf("picky: %+v", r)
	}
	if r := f.get(f.submit("modify", "next", 0)); r.v != "done next" {
		t.Fatalf("the job after a refused one: %+v", r)
	}
	if ended.Load() != 0 {
		t.Fatal("End ran for a job that never started")
	}
	if h, m := f.holders.Load(), f.maxHolders.Load(); h != 0 || m != 1 {
		t.Fatalf("holders %d (max %d): Started and Released must pair, and a refused job takes no lane", h, m)
	}
	s := f.snapshot()
	if s.Recent[0].Step != "" || s.Recent[0].Error != "picky: x is not welcome" {
		t.Fatalf("refused job's record %+v", s.Recent[0])
	}
}

func TestLaneEndAppliesAndReplaces(t *testing.T) {
	f := newFixture(t, func(f *fixture) {
		p := NewPlan("apply", JobModify, Step[*tdata]{Name: "s", Do: func(_ context.Context, r Run[*tdata]) error {
			r.SetValue(21)
			return nil
		}})
		p.End = func(c actor.Context, j *Job[*tdata], v any, err error) (any, error) {
			return v.(int) * 2, err
		}
		f.plans["apply"] = p
	})
	if r := f.get(f.submit("apply", "a", 0)); r.v != 42 {
		t.Fatalf("reply %+v, want End's 42", r)
	}
}

func TestLaneStepsAreShown(t *testing.T) {
	f := newFixture(t, func(f *fixture) {
		gated := func(step string) func(ctx context.Context, r Run[*tdata]) error {
			return func(ctx context.Context, r Run[*tdata]) error { return f.wait(ctx, r.Data().name+"/"+step) }
		}
		f.plans["start"] = NewPlan("start", JobModify,
			Step[*tdata]{Name: "spawn", Do: gated("spawn")},
			Step[*tdata]{Name: "connect", Do: gated("connect")},
			Step[*tdata]{Name: "query-status", Call: "query-status", Do: gated("query-status")},
			Step[*tdata]{Name: "attach", InActor: func(c actor.Context, r Run[*tdata]) error {
				c.Self() // an actor step may use the actor's context
				return nil
			}},
			Step[*tdata]{Name: "cont", Call: "cont", Do: func(ctx context.Context, r Run[*tdata]) error {
				r.Calling("cont-now")
				return f.wait(ctx, r.Data().name+"/cont")
			}})
	})
	ch := f.submit("start", "s", 0)
	expect := func(step, call, progress string) {
		t.Helper()
		f.eventually("step "+step, func() bool {
			s := f.snapshot()
			return s.Active != nil && s.Active.Step == step && s.Active.Call.Command == call
		})
		if got := f.snapshot().Active.Progress(); got != progress {
			t.Fatalf("progress %q, want %q", got, progress)
		}
	}
	expect("spawn", "", "start: [spawn] → connect → query-status → attach → cont")
	f.open("s/spawn")
	expect("connect", "", "start: spawn → [connect] → query-status → attach → cont")
	f.open("s/connect")
	expect("query-status", "query-status", "start: spawn → connect → [query-status] → attach → cont")
	if a := f.snapshot().Active; a.Call.Since.Before(a.Started) || a.Call.Via != "" {
		t.Fatalf("call %+v", a.Call)
	}
	f.open("s/query-status")
	expect("cont", "cont-now", "start: spawn → connect → query-status → attach → [cont]")
	f.open("s/cont")
	if r := f.get(ch); r.err != nil {
		t.Fatal(r.err)
	}
	last := f.snapshot().Recent[0]
	if !last.Call.IsZero() || last.Step != "cont" || last.Progress() != "start: spawn → connect → query-status → attach → cont" {
		t.Fatalf("ended job %+v progress %q", last, last.Progress())
	}
}

func TestLaneActorStepsRunInTheHandler(t *testing.T) {
	type seen struct {
		self *actor.PID
		msg  string
	}
	got := make(chan seen, 2)
	here := func(c actor.Context, r Run[*tdata]) error {
		got <- seen{c.Self(), fmt.Sprintf("%T", c.Message())}
		return nil
	}
	f := newFixture(t, func(f *fixture) {
		f.plans["here"] = NewPlan("here", JobModify,
			Step[*tdata]{Name: "first", InActor: here},
			Step[*tdata]{Name: "then", Do: func(_ context.Context, r Run[*tdata]) error { return nil }},
			Step[*tdata]{Name: "last", InActor: here})
	})
	if r := f.get(f.submit("here", "h", 0)); r.err != nil {
		t.Fatal(r.err)
	}
	first, last := <-got, <-got
	// The first actor step runs as the job starts, in the handler of the
	// request; the last in the handler of the lane's own message.
	if !first.self.Equal(f.pid) || first.msg != "*actors.runMsg" || !last.self.Equal(f.pid) || !strings.HasPrefix(last.msg, "*actors.jobEvent[") {
		t.Fatalf("actor steps ran in %+v and %+v", first, last)
	}
}

func TestLaneExplainNamesTheHolder(t *testing.T) {
	f := newFixture(t, nil)
	sd := f.submit("shutdown", "sd", 0)
	f.eventually("shutdown waits", func() bool { return f.noteIndex("wait sd") >= 0 })
	// The async job holds; a modify job queues behind it, its caller gives up.
	began := time.Now()
	m := f.submit("modify", "m", 100*time.Millisecond)
	r := f.get(m)
	if !errors.Is(r.err, context.DeadlineExceeded) {
		t.Fatalf("m: %+v", r)
	}
	v, err := f.ask(&explainMsg{RequestID: "req-m"})
	if err != nil {
		t.Fatal(err)
	}
	x := v.(*Explanation)
	if x.Running || x.Holder == nil || x.Holder.ID != 1 || x.Queued != 0 {
		t.Fatalf("explanation %+v: holder must be job 1, and m gone from the queue", x)
	}
	werr := x.Err("modify", time.Since(began), time.Now(), context.DeadlineExceeded)
	re := regexp.MustCompile(`^domain "t": timed out after 100ms waiting for job "modify": held by job 1 "shutdown" \(api shutdown, trace req-sd\) for 0\.\ds; modify waits: shutdown allows query, destroy, abort$`)
	if !re.MatchString(werr.Error()) {
		t.Fatalf("error %q does not match %s", werr, re)
	}
	var we *JobWaitError
	if !errors.As(werr, &we) || !errors.Is(werr, context.DeadlineExceeded) {
		t.Fatalf("%T is not a *JobWaitError wrapping the deadline", werr)
	}
	// The caller's own job running: a different message.
	v, _ = f.ask(&explainMsg{RequestID: "req-sd"})
	own := v.(*Explanation).Err("shutdown", time.Second, time.Now(), context.Canceled)
	if own.Error() != `domain "t": shutdown: gave up after 1s while its job 1 was running (step "wait for power-off"): context canceled` {
		t.Fatalf("own job: %q", own)
	}
	f.open("sd")
	f.get(sd)
	// A paused lane says so.
	f.ask(&pauseMsg{Reason: "monitor not connected"})
	p := f.submit("modify", "p", 50*time.Millisecond)
	f.get(p)
	v, _ = f.ask(&explainMsg{RequestID: "req-none"})
	perr := v.(*Explanation).Err("modify", 50*time.Millisecond, time.Now(), context.DeadlineExceeded)
	if perr.Error() != `domain "t": timed out after 100ms waiting for job "modify": the lane is paused: monitor not connected` {
		t.Fatalf("paused: %q", perr)
	}
	q := f.submit("modify", "q", 0)
	f.ask(&resumeMsg{})
	if r := f.get(q); r.v != "done q" {
		t.Fatalf("after resume: %+v", r)
	}
}

func TestJobWaitErrorText(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	holder := &JobInfo{ID: 17, Name: "shutdown", Kind: JobAsync, Owner: "api shutdown", RequestID: "1a2b3c-17",
		Started: at.Add(-31200 * time.Millisecond), Call: Call{Command: "system_powerdown", Since: at.Add(-31 * time.Second)}}
	e := &JobWaitError{Lane: `domain "web1"`, Job: "reset", Waited: 30 * time.Second, Holder: holder, At: at, Cause: context.DeadlineExceeded}
	want := `domain "web1": timed out after 30s waiting for job "reset": held by job 17 "shutdown" (api shutdown, trace 1a2b3c-17) for 31.2s, in QMP "system_powerdown" for 31.0s`
	if e.Error() != want {
		t.Fatalf("got  %s\nwant %s", e, want)
	}
	holder.Call.Via = "guest agent"
	e.Cause = context.Canceled
	if !strings.Contains(e.Error(), `cancelled after 30s`) || !strings.Contains(e.Error(), `in guest agent "system_powerdown"`) {
		t.Fatalf("got %s", e)
	}
	e.Holder = nil
	if e.Error() != `domain "web1": cancelled after 30s waiting for job "reset"` {
		t.Fatalf("no holder: %s", e)
	}
}

func TestLaneRecentIsBounded(t *testing.T) {
	f := newFixture(t, func(f *fixture) { f.cfg.Recent = 4 })
	for i := range 10 {
		if r := f.get(f.submit("modify", fmt.Sprint(i), 0)); r.err != nil {
			t.Fatal(r.err)
		}
	}
	s := f.snapshot()
	var ids []uint64
	for _, j := range s.Recent {
		ids = append(ids, j.ID)
	}
	if !slices.Equal(ids, []uint64{7, 8, 9, 10}) {
		t.Fatalf("recent ids %v, want the last 4, oldest first", ids)
	}
}

func TestJobInfoIsPlainData(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	in := LaneSnapshot{
		Active: &JobInfo{ID: 3, Name: "start", Kind: JobModify, Owner: "api start", RequestID: "r", Enqueued: now, Started: now,
			Steps: []string{"spawn", "cont"}, Step: "cont", Call: Call{Command: "cont", Since: now}},
		Queued: []JobInfo{{ID: 4, Name: "shutdown", Kind: JobAsync, Enqueued: now}},
		Recent: []JobInfo{{ID: 2, Name: "qmp", Kind: JobQuery, Error: "boom", Enqueued: now, Ended: now}},
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"kind":"modify"`) || strings.Contains(string(b), `"call":{"command":""`) {
		t.Fatalf("json %s", b)
	}
	var back LaneSnapshot
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Active.Kind != JobModify || back.Queued[0].Kind != JobAsync || back.Active.Call != in.Active.Call ||
		!slices.Equal(back.Active.Steps, in.Active.Steps) || back.Recent[0].Error != "boom" {
		t.Fatalf("round trip %+v", back)
	}
	var k JobKind
	if err := k.UnmarshalText([]byte("nonsense")); err == nil {
		t.Fatal("unknown kind accepted")
	}
	if _, err := JobKind(99).MarshalText(); err == nil {
		t.Fatal("unknown kind marshalled")
	}
	var m JobMask
	if err := m.UnmarshalText([]byte(SnapshotAsyncMask.String())); err != nil || m != SnapshotAsyncMask {
		t.Fatalf("mask round trip %v %v", m, err)
	}
	if DefaultAsyncMask.String() != "query|destroy|abort" || SnapshotAsyncMask.String() != "query|destroy|suspend|abort" ||
		MigrationAsyncMask.String() != "query|destroy|suspend|abort|migration-op" {
		t.Fatalf("masks %v %v %v", DefaultAsyncMask, SnapshotAsyncMask, MigrationAsyncMask)
	}
	if MaskOf(JobQuery, JobDestroy, JobAbort) != DefaultAsyncMask || DefaultAsyncMask.Allows(JobModify) || !DefaultAsyncMask.Allows(JobDestroy) {
		t.Fatal("MaskOf / Allows")
	}
	x, _ := json.Marshal(&Explanation{Lane: "l", Holder: in.Active, Queued: 1})
	var xb Explanation
	if err := json.Unmarshal(x, &xb); err != nil || xb.Holder.ID != 3 {
		t.Fatalf("explanation round trip %s %v", x, err)
	}
}

func TestNewPlanRejectsBadSteps(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("a step with neither Do nor InActor was accepted")
		}
	}()
	NewPlan("bad", JobModify, Step[int]{Name: "nothing"})
}

// TestLaneInvariantUnderChurn queues many jobs of every kind from many
// callers, some of whom give up, with destroys and async jobs among them,
// and checks the contract: one holder at a time, FIFO start order outside
// preemption, every caller hears back, no job runs after its caller left.
func TestLaneInvariantUnderChurn(t *testing.T) {
	var running atomic.Int32
	f := newFixture(t, func(f *fixture) {
		sleepy := func(ctx context.Context, r Run[*tdata]) error {
			if n := running.Add(1); n > 2 { // the active job plus one async job
				t.Errorf("%d job steps ran at once", n)
			}
			defer running.Add(-1)
			f.note("run " + r.Data().name)
			select {
			case <-time.After(time.Duration(rand.IntN(300)) * time.Microsecond):
			case <-ctx.Done():
				return ctx.Err()
			}
			return nil
		}
		f.plans["m"] = NewPlan("m", JobModify, Step[*tdata]{Name: "a", Do: sleepy}, Step[*tdata]{Name: "b", Do: sleepy})
		f.plans["q"] = NewPlan("q", JobQuery, Step[*tdata]{Name: "a", Do: sleepy})
		f.plans["as"] = NewPlan("as", JobAsync, Step[*tdata]{Name: "a", Do: sleepy}, Step[*tdata]{Name: "wait", Async: true, Do: sleepy})
		f.plans["k"] = NewPlan("k", JobDestroy, Step[*tdata]{Name: "a", Do: sleepy})
	})
	const callers = 40
	const jobsEach = 25
	var wg sync.WaitGroup
	var replies, gaveUp atomic.Int32
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobsEach {
				name := fmt.Sprintf("c%d-%d", c, i)
				plan := []string{"m", "m", "q", "q", "as", "k"}[rand.IntN(6)]
				timeout := time.Duration(1+rand.IntN(20)) * time.Millisecond
				r := f.get(f.send(&runMsg{Plan: plan, Name: name, Preempt: plan == "k", Verb: "destroyed"}, timeout))
				replies.Add(1)
				if r.err != nil && (errors.Is(r.err, context.DeadlineExceeded) && !strings.Contains(r.err.Error(), "left")) {
					gaveUp.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := replies.Load(); n != callers*jobsEach {
		t.Fatalf("%d replies for %d jobs", n, callers*jobsEach)
	}
	f.eventually("lane drains", func() bool {
		s := f.snapshot()
		return s.Active == nil && s.Async == nil && len(s.Queued) == 0
	})
	if m := f.maxHolders.Load(); m > 1 {
		t.Fatalf("%d jobs held the lane at once", m)
	}
	if h := f.holders.Load(); h != 0 {
		t.Fatalf("holders = %d after the lane drained: Started and Released do not pair", h)
	}
	infos := f.endedInfos()
	ran := map[string]bool{}
	for _, n := range f.noted() {
		if name, ok := strings.CutPrefix(n, "run "); ok {
			ran[name] = true
		}
	}
	var left int
	for name, info := range infos {
		if info.Started.IsZero() {
			left++
			if ran[name] {
				t.Fatalf("job %s ran although it never started: %+v", name, info)
			}
		}
	}
	// Outside preemption, jobs start in the order they were queued.
	var last uint64
	for _, id := range f.startedIDs() {
		if k := f.kindOf(id); k == JobDestroy {
			continue
		}
		if id <= last {
			t.Fatalf("job %d started after job %d", id, last)
		}
		last = id
	}
	t.Logf("%d jobs; %d callers gave up; %d jobs never started", len(infos), gaveUp.Load(), left)
}

func TestLaneRetryGoesBackToAStep(t *testing.T) {
	var spawns, checks atomic.Int32
	var actorSteps atomic.Int32
	f := newFixture(t, func(f *fixture) {
		p := NewPlan("start", JobModify,
			Step[*tdata]{Name: "spawn", Do: func(context.Context, Run[*tdata]) error { spawns.Add(1); return nil }},
			Step[*tdata]{Name: "attach", InActor: func(actor.Context, Run[*tdata]) error { actorSteps.Add(1); return nil }},
			Step[*tdata]{Name: "check", Do: func(_ context.Context, r Run[*tdata]) error {
				if checks.Add(1) <= 5 {
					return Retry("spawn", fmt.Errorf("handshake %d failed", checks.Load()))
				}
				return nil
			}})
		p.Retries = 2
		f.plans["start"] = p
	})
	r := f.get(f.submit("start", "s", 0))
	if r.err == nil || !strings.Contains(r.err.Error(), "handshake 3 failed") {
		t.Fatalf("err %v, want the third attempt's error", r.err)
	}
	if spawns.Load() != 3 || actorSteps.Load() != 3 || checks.Load() != 3 {
		t.Fatalf("spawns %d, actor steps %d, checks %d; want 3 each (1 + 2 retries)", spawns.Load(), actorSteps.Load(), checks.Load())
	}
	var re *RetryError
	if !errors.As(r.err, &re) || re.From != "spawn" {
		t.Fatalf("err %v is not the RetryError", r.err)
	}
}

func TestLaneRecentRingKeepsTheLastJobsOldestFirst(t *testing.T) {
	f := newFixture(t, func(f *fixture) { f.cfg.Recent = 3 })
	for i, n := range []string{"a", "b", "c", "d", "e"} {
		if r := f.get(f.submit("modify", n, 0)); r.err != nil {
			t.Fatalf("%s: %+v", n, r)
		}
		s := f.snapshot()
		var ids []uint64
		for _, ji := range s.Recent {
			ids = append(ids, ji.ID)
		}
		var want []uint64
		for id := max(1, i-1); id <= i+1; id++ {
			want = append(want, uint64(id))
		}
		if !slices.Equal(ids, want) {
			t.Fatalf("after job %d: recent %v, want %v", i+1, ids, want)
		}
	}
}
