package actors

import (
	"context"
	"errors"
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
