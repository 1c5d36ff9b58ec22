package trace

import "github.com/asynkron/protoactor-go/actor"

// PropsOptions returns the props options that put the trace middleware on
// an actor: the receiver middleware (named by ActorName) and the sender
// middleware. A nil recorder returns none, so an untraced driver pays
// nothing.
func PropsOptions(rec *Recorder) []actor.PropsOption {
	if rec == nil {
		return nil
	}
	return []actor.PropsOption{
		actor.WithReceiverMiddleware(ReceiverMiddleware(rec, ActorName)),
		actor.WithSenderMiddleware(SenderMiddleware(rec)),
	}
}
