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
	registry := sender.ActorSystem().ProcessRegistry
	reply := &replyProcess{ch: make(chan any, 1)}
	replyTo, ok := registry.Add(reply, ReplyPrefix+"ask"+registry.NextId())
	if !ok {
		return nil, fmt.Errorf("ask %s: cannot register a reply address", pid.Id)
	}
	defer registry.Remove(replyTo)
	sender.RequestWithCustomSender(pid, msg, replyTo)

	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case v := <-reply.ch:
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

// replyProcess is the one-shot reply address of an Ask. protoactor's own
// futures race when stopped while a reply arrives, so Ask uses this instead.
type replyProcess struct {
	ch chan any
}

func (r *replyProcess) SendUserMessage(_ *actor.PID, message any) {
	_, msg, _ := actor.UnwrapEnvelope(message)
	select {
	case r.ch <- msg:
	default: // a second reply is dropped; the first one wins
	}
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
