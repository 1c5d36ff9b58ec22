package actors

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// The fixture runs a real protoactor actor that owns a Lane, and talks
// to it with plain-data messages, as the API talks to the domain actor.

type tdata struct{ name string }

type runMsg struct {
	Request
	Plan    string
	Name    string
	Preempt bool
	Verb    string
}

type (
	finishMsg   struct{ Name, Value, Err string }
	cancelMsg   struct{ Name, Cause string }
	joinMsg     struct{ Name string }
	explainMsg  struct{ RequestID string }
	snapshotMsg struct{}
	closeMsg    struct{ Reason string }
	pauseMsg    struct{ Reason string }
	resumeMsg   struct{}
	boomMsg     struct{}
	// cancelThenFinish cancels the caller context named Cancel, then
	// finishes the manual job named Finish, in one handler: the next job
	// reaches the head with its context dead before the watcher's message
	// arrives.
	cancelThenFinish struct{ Cancel, Finish string }
	stateMsg         struct{}
)

type laneActor struct {
	f     *fixture
	lane  *Lane[*tdata]
	state int // changed by InActor steps only
}

func (a *laneActor) Receive(c actor.Context) {
	if a.lane.Handle(c, c.Message()) {
		return
	}
	f := a.f
	switch m := c.Message().(type) {
	case *actor.Restarting:
		a.lane.Close(c, errors.New("test actor restarting"))
	case *actor.Stopping:
		a.lane.Close(c, errors.New("test actor stopping"))
	case *runMsg:
		plan := f.plans[m.Plan]
		if plan == nil {
			c.Respond(fmt.Errorf("no plan %q", m.Plan))
			return
		}
		if m.Preempt {
			if j := a.lane.Find(func(j *Job[*tdata]) bool { return j.Plan() == plan }); j != nil {
				a.lane.Join(j, ReplyTo(c.Sender()))
				return
			}
			a.lane.Preempt(c, plan, m.Request, &tdata{name: m.Name}, ReplyTo(c.Sender()), m.Verb)
			return
		}
		a.lane.Enqueue(c, plan, m.Request, &tdata{name: m.Name}, ReplyTo(c.Sender()))
	case *finishMsg:
		var err error
		if m.Err != "" {
			err = errors.New(m.Err)
		}
		c.Respond(a.lane.Finish(c, a.byName(m.Name), m.Value, err))
	case *cancelMsg:
		a.lane.Cancel(c, a.byName(m.Name), errors.New(m.Cause))
		c.Respond(true)
	case *joinMsg:
		if !a.lane.Join(a.byName(m.Name), ReplyTo(c.Sender())) {
			c.Respond(errors.New("no such job"))
		}
	case *cancelThenFinish:
		f.cancel(m.Cancel)
		c.Respond(a.lane.Finish(c, a.byName(m.Finish), "finished", nil))
	case *explainMsg:
		c.Respond(a.lane.Explain(c, m.RequestID))
	case *snapshotMsg:
		c.Respond(a.lane.Snapshot())
	case *stateMsg:
		c.Respond(a.state)
	case *closeMsg:
		a.lane.Close(c, errors.New(m.Reason))
		c.Respond(true)
	case *pauseMsg:
		a.lane.Pause(m.Reason)
		c.Respond(true)
	case *resumeMsg:
		a.lane.Resume(c)
		c.Respond(true)
	case *boomMsg:
		panic("boom")
	}
}

func (a *laneActor) byName(name string) *Job[*tdata] {
	return a.lane.Find(func(j *Job[*tdata]) bool { return j.Data.name == name })
}

type reply struct {
	v   any
	err error
}

type fixture struct {
	t     *testing.T
	sys   *actor.ActorSystem
	disp  *Dispatcher
	pid   *actor.PID
	plans map[string]*Plan[*tdata]
	cfg   LaneConfig[*tdata]

	mu      sync.Mutex
	notes   []string
	gates   map[string]chan struct{}
	cancels map[string]context.CancelFunc
	started []uint64
	infos   map[string]JobInfo // ended jobs by name
	kinds   map[uint64]JobKind

	holders    atomic.Int32
	maxHolders atomic.Int32
	ended      atomic.Int32
}

// newFixture starts the test actor. setup may add plans and change the
// lane's config before the actor is spawned.
func newFixture(t *testing.T, setup func(f *fixture)) *fixture {
	t.Helper()
	disp, err := NewDispatcher()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, sys: NewSystem(nil), disp: disp, plans: map[string]*Plan[*tdata]{},
		gates: map[string]chan struct{}{}, cancels: map[string]context.CancelFunc{},
		infos: map[string]JobInfo{}, kinds: map[uint64]JobKind{}}
	f.cfg = LaneConfig[*tdata]{
		Name:       `domain "t"`,
		Dispatcher: disp,
		Inflight:   &Inflight{},
		Started: func(j *Job[*tdata]) {
			n := f.holders.Add(1)
			for {
				m := f.maxHolders.Load()
				if n <= m || f.maxHolders.CompareAndSwap(m, n) {
					break
				}
			}
			f.mu.Lock()
			f.started = append(f.started, j.ID())
			f.kinds[j.ID()] = j.Kind()
			f.mu.Unlock()
			f.note("start " + j.Data.name)
		},
		Released: func(j *Job[*tdata]) { f.holders.Add(-1) },
		Ended: func(j *Job[*tdata], err error) {
			f.ended.Add(1)
			f.mu.Lock()
			f.infos[j.Data.name] = j.Info()
			f.mu.Unlock()
		},
	}
	f.addStandardPlans()
	if setup != nil {
		setup(f)
	}
	props := actor.PropsFromProducer(func() actor.Actor {
		return &laneActor{f: f, lane: NewLane(f.cfg)}
	}, actor.WithDispatcher(disp))
	f.pid = f.sys.Root.Spawn(props)
	t.Cleanup(func() {
		f.mu.Lock()
		for name, g := range f.gates {
			select {
			case <-g:
			default:
				close(g)
			}
			delete(f.gates, name)
		}
		f.mu.Unlock()
		if err := f.sys.Root.StopFuture(f.pid).Wait(); err != nil {
			t.Errorf("stop test actor: %v", err)
		}
		if !f.cfg.Inflight.Wait(10 * time.Second) {
			t.Error("job goroutines still running 10s after the actor stopped")
		}
		if err := disp.Close(5 * time.Second); err != nil {
			t.Error(err)
		}
		f.sys.Shutdown()
	})
	return f
}

// wait blocks a step until the gate named name opens or ctx ends.
func (f *fixture) wait(ctx context.Context, name string) error {
	select {
	case <-f.gate(name):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fixture) addStandardPlans() {
	work := func(ctx context.Context, r Run[*tdata]) error {
		f.note("run " + r.Data().name)
		if err := f.wait(ctx, r.Data().name); err != nil {
			return err
		}
		r.SetValue("done " + r.Data().name)
		return nil
	}
	quick := func(ctx context.Context, r Run[*tdata]) error {
		f.note("run " + r.Data().name)
		r.SetValue("done " + r.Data().name)
		return nil
	}
	f.plans["block"] = NewPlan("block", JobModify, Step[*tdata]{Name: "work", Do: work})
	f.plans["modify"] = NewPlan("modify", JobModify, Step[*tdata]{Name: "work", Do: quick})
	f.plans["query"] = NewPlan("query", JobQuery, Step[*tdata]{Name: "work", Do: quick})
	f.plans["suspend"] = NewPlan("suspend", JobSuspend, Step[*tdata]{Name: "work", Do: quick})
	f.plans["destroy"] = NewPlan("destroy", JobDestroy, Step[*tdata]{Name: "kill", Do: quick})
	f.plans["manual"] = NewPlan[*tdata]("manual", JobModify)
	powerdown := func(ctx context.Context, r Run[*tdata]) error {
		f.note("powerdown " + r.Data().name)
		return nil
	}
	waitOff := func(ctx context.Context, r Run[*tdata]) error {
		f.note("wait " + r.Data().name)
		return f.wait(ctx, r.Data().name)
	}
	f.plans["shutdown"] = NewPlan("shutdown", JobAsync,
		Step[*tdata]{Name: "powerdown", Call: "system_powerdown", Do: powerdown},
		Step[*tdata]{Name: "wait for power-off", Async: true, Do: waitOff})
	snap := NewPlan("snapshot", JobAsync,
		Step[*tdata]{Name: "prepare", Do: powerdown},
		Step[*tdata]{Name: "save", Async: true, Do: waitOff})
	snap.Mask = SnapshotAsyncMask
	f.plans["snapshot"] = snap
}

func (f *fixture) gate(name string) chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	g, ok := f.gates[name]
	if !ok {
		g = make(chan struct{})
		f.gates[name] = g
	}
	return g
}

func (f *fixture) open(name string) { close(f.gate(name)) }

func (f *fixture) note(s string) {
	f.mu.Lock()
	f.notes = append(f.notes, s)
	f.mu.Unlock()
}

func (f *fixture) noted() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.notes)
}

func (f *fixture) startedIDs() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.started)
}

func (f *fixture) endedInfos() map[string]JobInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.infos)
}

func (f *fixture) kindOf(id uint64) JobKind {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.kinds[id]
}

func (f *fixture) cancel(name string) {
	f.mu.Lock()
	c := f.cancels[name]
	f.mu.Unlock()
	if c != nil {
		c()
	}
}

// ask sends msg and waits (10 s at most) for the reply.
func (f *fixture) ask(msg any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return Ask(ctx, f.sys.Root, f.pid, msg)
}

func (f *fixture) snapshot() LaneSnapshot {
	f.t.Helper()
	v, err := f.ask(&snapshotMsg{})
	if err != nil {
		f.t.Fatalf("snapshot: %v", err)
	}
	return v.(LaneSnapshot)
}

// submit queues a job of plan named name from a goroutine, with a caller
// context of its own (cancel it with f.cancel(name)), and returns where
// its reply arrives. A zero timeout means 10 s.
func (f *fixture) submit(plan, name string, timeout time.Duration) <-chan reply {
	return f.send(&runMsg{Plan: plan, Name: name}, timeout)
}

func (f *fixture) send(m *runMsg, timeout time.Duration) <-chan reply {
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	f.mu.Lock()
	f.cancels[m.Name] = cancel
	f.mu.Unlock()
	if m.Request.Expires.IsZero() {
		m.Request = Request{Ctx: ctx, RequestID: "req-" + m.Name}
	} else {
		// A caller bounded by Expires alone: the lane sees a context that
		// never ends (ctx still bounds the fixture's own wait).
		m.Request = Request{Ctx: context.Background(), RequestID: "req-" + m.Name, Expires: m.Request.Expires}
	}
	out := make(chan reply, 1)
	// The job is queued before submit returns: the order of submits is
	// the order of enqueues.
	sent := make(chan struct{})
	go func() {
		defer cancel()
		replies := make(chan any, 1)
		to, err := ReplyAddress(f.sys, "test", func(v any) { replies <- v })
		if err != nil {
			out <- reply{err: err}
			close(sent)
			return
		}
		defer f.sys.ProcessRegistry.Remove(to)
		f.sys.Root.RequestWithCustomSender(f.pid, m, to)
		close(sent)
		select {
		case v := <-replies:
			if err, ok := v.(error); ok {
				out <- reply{err: err}
			} else {
				out <- reply{v: v}
			}
		case <-ctx.Done():
			out <- reply{err: ctx.Err()}
		}
	}()
	<-sent
	f.sync() // the actor has handled the run message
	return out
}

// sync returns once the actor has handled every message sent before.
func (f *fixture) sync() {
	f.t.Helper()
	if _, err := f.ask(&stateMsg{}); err != nil {
		f.t.Fatalf("sync: %v", err)
	}
}

func (f *fixture) get(ch <-chan reply) reply {
	f.t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(15 * time.Second):
		f.t.Fatal("no reply within 15s")
		return reply{}
	}
}

// eventually polls cond until it holds (5 s at most).
func (f *fixture) eventually(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("%s: not within 5s (notes %v)", what, f.noted())
		}
		time.Sleep(time.Millisecond)
	}
}

func (f *fixture) noteIndex(s string) int { return slices.Index(f.noted(), s) }
