package actors

import (
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// Explain answers who holds the lane that the jobs of requestID wait for.
// First the request's queued jobs whose caller gave up leave the queue,
// now rather than when their context watcher's message arrives, so that
// the caller's next look at the lane no longer shows them.
func (l *Lane[T]) Explain(c actor.Context, requestID string) *Explanation {
	x := &Explanation{Lane: l.cfg.Name}
	if l.async != nil {
		ai := l.async.info
		x.Async = &ai
		if mine := l.Find(func(j *Job[T]) bool { return j.state == jobQueued && j.info.RequestID == requestID }); mine != nil {
			x.Decision = MaskDecision(mine.info.Name, mine.info.Kind, &ai)
		} else if left, ok := l.leftQueue(requestID); ok {
			x.Decision = MaskDecision(left.Name, left.Kind, &ai)
		}
	}
	now := time.Now()
	for {
		var cause error
		j := l.Find(func(j *Job[T]) bool {
			if j.state != jobQueued || j.info.RequestID != requestID {
				return false
			}
			cause = j.callerGone(now)
			return cause != nil
		})
		if j == nil {
			break
		}
		l.remove(j)
		if j.watch != nil {
			j.watch()
			j.watch = nil
		}
		l.finish(c, j, nil, leftErr(l, j, cause), false)
	}
	l.pump(c)
	x.Queued, x.Paused = l.Len(), l.paused
	if info, ok := l.Holder(); ok {
		x.Holder = &info
		x.Running = requestID != "" && info.RequestID == requestID
	}
	return x
}

// leftQueue finds, among the recent jobs, the last one of requestID that
// ended without starting (its caller gave up while it was queued).
func (l *Lane[T]) leftQueue(requestID string) (JobInfo, bool) {
	if requestID == "" {
		return JobInfo{}, false
	}
	for i := 1; i <= l.recentLen; i++ {
		ji := &l.recent[(l.recentNext-i+len(l.recent))%len(l.recent)]
		if ji.RequestID == requestID && ji.Started.IsZero() {
			return *ji, true
		}
	}
	return JobInfo{}, false
}
