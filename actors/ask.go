package actors

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// DefaultTimeout bounds an ask whose context has no deadline, as libvirt
// bounds its job wait.
const DefaultTimeout = 30 * time.Second

// ReplyPrefix starts the process id of every one-shot reply address
// (Ask's, and the domain's per-job QMP reply). Such a process is no actor:
// the trace middleware does not stamp messages sent to it.
const ReplyPrefix = "reply-"

// ErrNoActor is returned when the target actor has stopped or never existed.
var ErrNoActor = errors.New("actor not found")

// Ask sends msg to pid as a request and waits for the reply, bounded by ctx
// (DefaultTimeout when ctx has no deadline). A reply that is an error is
// returned as the error. When the wait ends, Ask returns ctx.Err() itself,
// unwrapped, so callers can tell "I gave up" from an error of the callee.
// The reply address lives only for the call: nothing outlives it.
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
	replies := make(chan any, 1) // the address delivers once: never blocks
	replyTo, err := ReplyAddress(sender.ActorSystem(), "ask", func(msg any) { replies <- msg })
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", pid.Id, err)
	}
	defer sender.ActorSystem().ProcessRegistry.Remove(replyTo)
	sender.RequestWithCustomSender(pid, msg, replyTo)

	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case v := <-replies:
		switch v := v.(type) {
		case *actor.DeadLetterResponse:
			return nil, ErrNoActor
		case error:
			return nil, v
		default:
			return v, nil
		}
	}
}

// ReplyAddress registers a one-shot reply address under ReplyPrefix+kind.
// The first message sent to it is unwrapped from its envelope and handed
// to deliver, on the sender's goroutine (deliver must not block); later
// ones are dropped. The caller removes the address from the registry when
// it no longer waits. protoactor's own futures race when stopped while a
// reply arrives, so Ask and the domain's one-command jobs use this.
func ReplyAddress(system *actor.ActorSystem, kind string, deliver func(msg any)) (*actor.PID, error) {
	registry := system.ProcessRegistry
	pid, ok := registry.Add(&replyProcess{deliver: deliver}, ReplyPrefix+kind+registry.NextId())
	if !ok {
		return nil, fmt.Errorf("cannot register a %s reply address", kind)
	}
	return pid, nil
}

// replyProcess is the process behind a ReplyAddress.
type replyProcess struct {
	fired   atomic.Bool
	deliver func(msg any)
}

func (r *replyProcess) SendUserMessage(_ *actor.PID, message any) {
	if r.fired.Swap(true) {
		return // a second reply is dropped; the first one wins
	}
	_, msg, _ := actor.UnwrapEnvelope(message)
	r.deliver(msg)
}

func (r *replyProcess) SendSystemMessage(*actor.PID, any) {}

func (r *replyProcess) Stop(*actor.PID) {}

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
