package actors

import (
	"github.com/asynkron/protoactor-go/actor"
)

// Explain answers who holds the lane that the jobs of requestID wait for.
// First the request's queued jobs whose caller gave up leave the queue,
// now rather than when their context watcher's message arrives, so that
// the caller's next look at the lane no longer shows them.
func (l *Lane[T]) Explain(c actor.Context, requestID string) *Explanation {
	for {
		j := l.Find(func(j *Job[T]) bool {
			return j.state == jobQueued && !j.preempt && j.info.RequestID == requestID && j.reqCtx != nil && j.reqCtx.Err() != nil
		})
		if j == nil {
			break
		}
		l.remove(j)
		l.finish(c, j, nil, l.leftErr(j), false)
	}
	l.pump(c)
	x := &Explanation{Lane: l.cfg.Name, Queued: l.Len(), Paused: l.paused}
	if info, ok := l.Holder(); ok {
		x.Holder = &info
		x.Running = requestID != "" && info.RequestID == requestID
	}
	return x
}
