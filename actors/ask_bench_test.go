package actors

import (
	"context"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// ping is a request that mirror answers with itself, so that the reply
// allocates nothing and the benchmark counts Ask's own allocations.
type ping struct{ n int }

type mirror struct{}

func (mirror) Receive(c actor.Context) {
	if p, ok := c.Message().(*ping); ok {
		c.Respond(p)
	}
}

// BenchmarkAsk is one Ask round trip to an actor that answers at once:
// with a caller's context that has a deadline, and with one that has none
// (Ask then bounds the wait by DefaultTimeout itself); "parallel" is
// GOMAXPROCS callers at once.
//
//	go test -run '^$' -bench Ask -benchmem ./actors/
func BenchmarkAsk(b *testing.B) {
	system := NewSystem(nil)
	defer system.Shutdown()
	pid := system.Root.Spawn(actor.PropsFromProducer(func() actor.Actor { return mirror{} }))
	deadline, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	msg := &ping{}
	for _, c := range []struct {
		name string
		ctx  context.Context
	}{{"deadline", deadline}, {"no-deadline", context.Background()}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Ask(c.ctx, system.Root, pid, msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := Ask(deadline, system.Root, pid, msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
