package actors

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// Explanation says what a request's job waits for. It is plain data, the
// reply to a query that an API caller sends when its wait ended.
type Explanation struct {
	// Lane is the lane's name, such as `domain "web1"`.
	Lane string `json:"lane"`
	// Running is set when the request's own job holds the lane (or is the
	// async job): it was not waiting for another one.
	Running bool `json:"running,omitempty"`
	// Holder is the job that holds the lane, or nil.
	Holder *JobInfo `json:"holder,omitempty"`
	// Queued is the number of jobs still queued.
	Queued int `json:"queued"`
	// Paused says why the lane starts no job, when it is paused.
	Paused string `json:"paused,omitempty"`
	// Async is the lane's async job, when one runs; Decision says why its
	// mask kept the request's job waiting, when it did (MaskDecision).
	Async    *JobInfo `json:"async,omitempty"`
	Decision string   `json:"decision,omitempty"`
}

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
	x.Queued, x.Paused = l.Len(), l.paused
	if info, ok := l.Holder(); ok {
		x.Holder = &info
		x.Running = requestID != "" && info.RequestID == requestID
	}
	return x
}

// Err is the error of a caller whose wait for its job (named job, begun
// waited ago) ended with cause at now: a *JobWaitError that names the
// holder, or, when the caller's own job was running, an error that says
// which step it was in.
func (x *Explanation) Err(job string, waited time.Duration, now time.Time, cause error) error {
	if x.Running && x.Holder != nil {
		return fmt.Errorf("%s: %s: gave up after %s while its job %d was running (step %q): %w",
			x.Lane, job, waited.Round(100*time.Millisecond), x.Holder.ID, x.Holder.Step, cause)
	}
	return &JobWaitError{Lane: x.Lane, Job: job, Waited: waited, Holder: x.Holder, Paused: x.Paused, Decision: x.Decision, At: now, Cause: cause}
}

// JobWaitError is returned when a caller's context ended while its job
// was still waiting in a lane. It names the holder, as libvirt does:
//
//	domain "web1": timed out after 30s waiting for job "reset": held by job 17 "shutdown" (api shutdown, trace 1a2b3c-17) for 31.2s, in QMP "system_powerdown" for 31.0s
type JobWaitError struct {
	// Lane names the lane, such as `domain "web1"`.
	Lane string
	// Job is the job that waited.
	Job    string
	Waited time.Duration
	// Holder is the job that held the lane, or nil.
	Holder *JobInfo
	// Paused says why the lane started nothing, when no job held it.
	Paused string
	// Decision says why the async job's mask kept the job waiting, if it
	// did: `reset waits: snapshot-save allows query, destroy, suspend, abort`.
	Decision string
	At       time.Time
	// Cause is context.DeadlineExceeded or context.Canceled.
	Cause error
}

func (e *JobWaitError) Error() string {
	verb := "timed out"
	if errors.Is(e.Cause, context.Canceled) {
		verb = "cancelled"
	}
	s := fmt.Sprintf("%s: %s after %s waiting for job %q", e.Lane, verb, e.Waited.Round(100*time.Millisecond), e.Job)
	switch {
	case e.Holder != nil:
		s += ": held by " + e.Holder.Holder(e.At)
	case e.Paused != "":
		s += ": the lane is paused: " + e.Paused
	}
	if e.Decision != "" {
		s += "; " + e.Decision
	}
	return s
}

// Unwrap returns the context error.
func (e *JobWaitError) Unwrap() error { return e.Cause }

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
