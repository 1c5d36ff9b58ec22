package actors

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

type echo struct{}

func (echo) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case string:
		switch msg {
		case "fail":
			ctx.Respond(errors.New("failed on purpose"))
		case "silent":
		default:
			ctx.Respond(msg + "!")
		}
	}
}

func TestAsk(t *testing.T) {
	system := NewSystem(nil)
	pid := system.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return echo{} }))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	got, err := AskAs[string](ctx, system.Root, pid, "hi")
	if err != nil || got != "hi!" {
		t.Fatalf("Ask = %q, %v", got, err)
	}
	if _, err := Ask(ctx, system.Root, pid, "fail"); err == nil || err.Error() != "failed on purpose" {
		t.Fatalf("error reply: %v", err)
	}
	if _, err := AskAs[int](ctx, system.Root, pid, "hi"); err == nil {
		t.Fatal("a reply of the wrong type was accepted")
	}

	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancelShort()
	start := time.Now()
	if _, err := Ask(short, system.Root, pid, "silent"); err != context.DeadlineExceeded {
		t.Fatalf("silent actor: err = %v, want the bare context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Ask waited %s past a 50ms context", took)
	}

	system.Root.StopFuture(pid).Wait()
	if _, err := Ask(ctx, system.Root, pid, "hi"); !errors.Is(err, ErrNoActor) {
		t.Fatalf("stopped actor: err = %v, want ErrNoActor", err)
	}
}

func TestNewIDUnique(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewID()
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
	}
}

// holder keeps the sender of every "hold" and answers it only when told
// ("release"), late; each "echo n" is answered with n at once, and "twice
// n" is answered twice.
type holder struct{ held []*actor.PID }

type echoN struct{ n int }
type twiceN struct{ n int }

func (h *holder) Receive(c actor.Context) {
	switch msg := c.Message().(type) {
	case string:
		switch msg {
		case "hold":
			h.held = append(h.held, c.Sender())
		case "release":
			for _, p := range h.held {
				c.Send(p, "late")
			}
			h.held = nil
			c.Respond("released")
		}
	case *echoN:
		c.Respond(msg.n)
	case *twiceN:
		c.Respond(msg.n)
		c.Respond(-msg.n)
	}
}

// TestAskLateReplyDropped: a reply that comes after its Ask gave up, or a
// second reply to one request, reaches no later Ask, though the reply
// waiters are reused.
func TestAskLateReplyDropped(t *testing.T) {
	system := NewSystem(nil)
	defer system.Shutdown()
	pid := system.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return &holder{} }))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 20; i++ {
		short, cancelShort := context.WithTimeout(ctx, 5*time.Millisecond)
		if _, err := Ask(short, system.Root, pid, "hold"); err != context.DeadlineExceeded {
			t.Fatalf("round %d: held ask: err = %v, want context.DeadlineExceeded", i, err)
		}
		cancelShort()
	}
	if got, err := AskAs[string](ctx, system.Root, pid, "release"); err != nil || got != "released" {
		t.Fatalf("release: %q, %v (a late reply reached this ask)", got, err)
	}
	for i := 1; i <= 200; i++ {
		msg := any(&echoN{n: i})
		if i%2 == 0 {
			msg = &twiceN{n: i}
		}
		got, err := AskAs[int](ctx, system.Root, pid, msg)
		if err != nil || got != i {
			t.Fatalf("ask %d: got %d, %v (a reply of another ask)", i, got, err)
		}
	}
}

// slowEcho answers each echoN after a delay that straddles its callers'
// deadlines, from a goroutine of its own, so replies race the callers'
// giving up.
type slowEcho struct{}

func (slowEcho) Receive(c actor.Context) {
	if msg, ok := c.Message().(*echoN); ok {
		sender, root := c.Sender(), c.ActorSystem().Root
		time.AfterFunc(time.Duration(msg.n%7)*100*time.Microsecond, func() { root.Send(sender, msg.n) })
	}
}

// TestAskRepliesRaceDeadlines: many callers at once, their deadlines
// racing the replies: every Ask gets either its own reply or its bare
// context error, never another call's reply. Run it with -race.
func TestAskRepliesRaceDeadlines(t *testing.T) {
	system := NewSystem(nil)
	defer system.Shutdown()
	pid := system.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return slowEcho{} }))
	var wg sync.WaitGroup
	var replied, gaveUp atomic.Int64
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 300; i++ {
				n := g*1000 + i
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%5)*100*time.Microsecond+50*time.Microsecond)
				got, err := AskAs[int](ctx, system.Root, pid, &echoN{n: n})
				cancel()
				switch {
				case err == context.DeadlineExceeded:
					gaveUp.Add(1)
				case err != nil:
					errs <- fmt.Errorf("ask %d: %v", n, err)
					return
				case got != n:
					errs <- fmt.Errorf("ask %d got the reply %d of another call", n, got)
					return
				default:
					replied.Add(1)
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if replied.Load() == 0 || gaveUp.Load() == 0 {
		t.Fatalf("%d replies and %d deadlines: the test did not race the two", replied.Load(), gaveUp.Load())
	}
}

// TestAskDefaultTimeout: with no deadline in the caller's context, Ask
// gives up after DefaultTimeout with the bare context.DeadlineExceeded,
// and a cancelled context without deadline ends the wait with
// context.Canceled.
func TestAskDefaultTimeout(t *testing.T) {
	system := NewSystem(nil)
	defer system.Shutdown()
	pid := system.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return echo{} }))
	defaultTimeout.Store(int64(50 * time.Millisecond))
	defer defaultTimeout.Store(int64(DefaultTimeout))
	for i := 0; i < 3; i++ { // the waiter's timer is reused
		start := time.Now()
		if _, err := Ask(context.Background(), system.Root, pid, "silent"); err != context.DeadlineExceeded {
			t.Fatalf("no deadline: err = %v, want the bare context.DeadlineExceeded", err)
		}
		if took := time.Since(start); took < 40*time.Millisecond || took > 2*time.Second {
			t.Fatalf("no deadline: gave up after %s, want about 50ms", took)
		}
		if got, err := AskAs[string](context.Background(), system.Root, pid, "hi"); err != nil || got != "hi!" {
			t.Fatalf("after a timeout: %q, %v", got, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	if _, err := Ask(ctx, system.Root, pid, "silent"); err != context.Canceled {
		t.Fatalf("cancelled: err = %v, want the bare context.Canceled", err)
	}
}

// TestAskStoppedActorAtOnce: a request to a stopped actor, or to one that
// never existed, ends with ErrNoActor without waiting for the context.
func TestAskStoppedActorAtOnce(t *testing.T) {
	system := NewSystem(nil)
	defer system.Shutdown()
	pid := system.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return echo{} }))
	system.Root.StopFuture(pid).Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, target := range []*actor.PID{pid, actor.NewPID(system.Address(), "never-spawned")} {
		start := time.Now()
		if _, err := Ask(ctx, system.Root, target, "hi"); !errors.Is(err, ErrNoActor) {
			t.Fatalf("%s: err = %v, want ErrNoActor", target.Id, err)
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("%s: ErrNoActor after %s, want at once", target.Id, took)
		}
	}
	if _, err := Ask(ctx, system.Root, nil, "hi"); !errors.Is(err, ErrNoActor) {
		t.Fatalf("nil pid: err = %v, want ErrNoActor", err)
	}
}

// TestAskTwoSystems: asks alternate between two actor systems, each
// with its own reply router, and a stray message to a reply address that
// no call made reaches nobody.
func TestAskTwoSystems(t *testing.T) {
	a, b := NewSystem(nil), NewSystem(nil)
	defer a.Shutdown()
	defer b.Shutdown()
	pa := a.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return &holder{} }))
	pb := b.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return &holder{} }))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 1; i <= 50; i++ {
		for _, s := range []struct {
			sys *actor.ActorSystem
			pid *actor.PID
		}{{a, pa}, {b, pb}} {
			if got, err := AskAs[int](ctx, s.sys.Root, s.pid, &echoN{n: i}); err != nil || got != i {
				t.Fatalf("ask %d: %d, %v", i, got, err)
			}
		}
	}
	ra, err := routerOf(a)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := routerOf(b)
	if err != nil || ra == rb {
		t.Fatalf("routers: %p %p, %v", ra, rb, err)
	}
	// A hand-made PID naming a waiting call's id is not that call's.
	w := waiters.Get().(*waiter)
	real := ra.add(w)
	stray := &actor.PID{Address: real.Address, Id: real.Id, RequestId: real.RequestId}
	a.Root.Send(stray, "stray")
	if !ra.remove(real) {
		t.Fatal("a stray message to a copy of the reply address was handed to the call")
	}
	select {
	case v := <-w.replies:
		t.Fatalf("the call received %v", v)
	default:
	}
	if ra.remove(real) {
		t.Fatal("a call was removed twice")
	}
}

// TestReplyAddress: the first message to a reply address is delivered
// unwrapped, later ones are dropped, and its id starts with ReplyPrefix.
func TestReplyAddress(t *testing.T) {
	system := NewSystem(nil)
	defer system.Shutdown()
	got := make(chan any, 2)
	pid, err := ReplyAddress(system, "test", func(msg any) { got <- msg })
	if err != nil {
		t.Fatal(err)
	}
	defer system.ProcessRegistry.Remove(pid)
	if !strings.HasPrefix(pid.Id, ReplyPrefix+"test$") {
		t.Fatalf("id %q", pid.Id)
	}
	other, err := ReplyAddress(system, "test", func(any) {})
	if err != nil || other.Id == pid.Id {
		t.Fatalf("second address %v, %v", other, err)
	}
	system.ProcessRegistry.Remove(other)
	system.Root.RequestWithCustomSender(pid, "first", nil)
	system.Root.Send(pid, "second")
	if v := <-got; v != "first" {
		t.Fatalf("delivered %v", v)
	}
	select {
	case v := <-got:
		t.Fatalf("a second message was delivered: %v", v)
	default:
	}
}
