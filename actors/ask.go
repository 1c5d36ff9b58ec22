package actors

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// DefaultTimeout bounds an ask whose context has no deadline, as libvirt
// bounds its job wait.
const DefaultTimeout = 30 * time.Second

// ErrNoActor is returned when the target actor has stopped or never existed.
var ErrNoActor = errors.New("actor not found")

// Ask sends msg to pid as a request and waits for the reply, bounded by ctx
// (DefaultTimeout when ctx has no deadline). A reply that is an error is
// returned as the error. Ask never waits past ctx: on cancellation it stops
// the reply future, so no goroutine outlives the call.
func Ask(ctx context.Context, sender actor.SenderContext, pid *actor.PID, msg any) (any, error) {
	if pid == nil {
		return nil, ErrNoActor
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	deadline, _ := ctx.Deadline()
	// The future's own timeout is a backstop a little past ctx; ctx.Done
	// normally fires first and stops the future.
	future := sender.RequestFuture(pid, msg, time.Until(deadline)+time.Second)

	type result struct {
		value any
		err   error
	}
	done := make(chan result, 1)
	go func() {
		v, err := future.Result()
		done <- result{v, err}
	}()

	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		// Completing the future releases the goroutine above at once.
		sender.ActorSystem().Root.Stop(future.PID())
		<-done
		return nil, ctx.Err()
	}
	switch {
	case errors.Is(r.err, actor.ErrDeadLetter):
		return nil, ErrNoActor
	case errors.Is(r.err, actor.ErrTimeout):
		return nil, fmt.Errorf("no reply from %s: %w", pid.Id, context.DeadlineExceeded)
	case r.err != nil:
		return nil, r.err
	}
	if err, ok := r.value.(error); ok {
		return nil, err
	}
	return r.value, nil
}

// AskAs is Ask with the reply converted to T. A reply of another type is an
// error that names both types.
func AskAs[T any](ctx context.Context, sender actor.SenderContext, pid *actor.PID, msg any) (T, error) {
	var zero T
	v, err := Ask(ctx, sender, pid, msg)
	if err != nil {
		return zero, err
	}
	t, ok := v.(T)
	if !ok {
		return zero, fmt.Errorf("unexpected reply %T to %T from %s", v, msg, pid.Id)
	}
	return t, nil
}
