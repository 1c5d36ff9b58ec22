package actors

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

type jobState uint8

const (
	jobQueued jobState = iota
	jobActive
	jobAsync
	jobEnded
)

// Job is one job of a Lane. The owning actor holds it from Enqueue to
// the job's end; its methods are for the actor's handlers only. A step
// sees the job through Run.
type Job[T any] struct {
	// Data is the actor's own data for this job, given at Enqueue. Steps
	// read it through Run.Data; while a step goroutine runs, the actor
	// must leave it alone.
	Data T

	lane *Lane[T]
	plan *Plan[T]
	info JobInfo // holds the request's id and owner
	// reqCtx, expires and parent are the rest of the request that
	// queued the job.
	reqCtx  context.Context
	expires time.Time
	parent  string
	span    string
	waiter  Waiter
	more    []Waiter
	state   jobState
	preempt bool // placed by Preempt: it ignores its caller's context
	holding bool // between the Started and the Released hook
	refused bool // the Refused hook has been called
	watch   func() bool
	ctx     context.Context
	cancel  context.CancelCauseFunc

	// Owned by the job's goroutine while a segment runs, and by the actor
	// between segments (the mailbox orders the two).
	next     int
	cleanups []cleanup
	value    any
	err      error
	retries  int

	// seg is the message that ends each goroutine segment: posted without
	// an allocation.
	seg jobEvent[T]
}

type cleanup struct {
	name string
	fn   func(jobErr error) error
}

// ID is the job's id, given at enqueue.
func (j *Job[T]) ID() uint64 { return j.info.ID }

// Name is the plan's name.
func (j *Job[T]) Name() string { return j.info.Name }

// Kind is the plan's kind.
func (j *Job[T]) Kind() JobKind { return j.info.Kind }

// Plan is the job's plan.
func (j *Job[T]) Plan() *Plan[T] { return j.plan }

// Info is a copy of what the job shows.
func (j *Job[T]) Info() JobInfo { return j.info }

// Request is the request that queued the job.
func (j *Job[T]) Request() Request {
	return Request{Ctx: j.reqCtx, RequestID: j.info.RequestID, ParentID: j.parent, Owner: j.info.Owner, Expires: j.expires}
}

// callerGone says why a queued job's caller has stopped waiting by now:
// its context's error, or context.DeadlineExceeded once the request's
// Expires has passed. It is nil while the caller waits, and for a
// preempting job, which ignores its caller.
func (j *Job[T]) callerGone(now time.Time) error {
	if j.preempt {
		return nil
	}
	if j.reqCtx != nil {
		if err := j.reqCtx.Err(); err != nil {
			return err
		}
	}
	if !j.expires.IsZero() && !now.Before(j.expires) {
		return context.DeadlineExceeded
	}
	return nil
}

// Context is the job's own context, from its start: it ends when the job
// is cancelled or ends. It is nil for a job that has not started.
func (j *Job[T]) Context() context.Context { return j.ctx }

// Ended reports whether the job has ended.
func (j *Job[T]) Ended() bool { return j.state == jobEnded }

// Running reports whether the job has started and not ended.
func (j *Job[T]) Running() bool { return j.state == jobActive || j.state == jobAsync }

// SetSpan names the job's trace span: the messages the job posts to its
// actor, and Run.Header, have it as their parent. Set it before the job
// starts (at Enqueue, or in the plan's Start).
func (j *Job[T]) SetSpan(span string) { j.span = span }

// SetCall shows cmd as the command the job's current step waits on (an
// empty cmd clears it), for a step whose command comes from the request.
// Call it from the plan's Start or an actor step.
func (j *Job[T]) SetCall(cmd string) {
	if cmd == "" {
		j.info.Call = Call{}
		return
	}
	j.info.Call = Call{Via: j.plan.Via, Command: cmd, Since: time.Now()}
}

// Run is a step's handle on its job. Its methods are safe in the step's
// goroutine (and in an InActor step).
type Run[T any] struct{ j *Job[T] }

// Data is the job's Data.
func (r Run[T]) Data() T { return r.j.Data }

// ID is the job's id.
func (r Run[T]) ID() uint64 { return r.j.info.ID }

// Name is the job's name.
func (r Run[T]) Name() string { return r.j.info.Name }

// Context is the job's context.
func (r Run[T]) Context() context.Context { return r.j.ctx }

// Header is the request header for messages the step sends on the job's
// behalf: the caller's trace, the job's span as parent, the job's context.
func (r Run[T]) Header() Request {
	return Request{Ctx: r.j.ctx, RequestID: r.j.info.RequestID, ParentID: r.j.span, Owner: r.j.info.Owner}
}

// Self is the owning actor.
func (r Run[T]) Self() *actor.PID { return r.j.lane.self }

// Root is the root context the job sends with.
func (r Run[T]) Root() *actor.RootContext { return r.j.lane.root }

// Tell sends msg to the owning actor.
func (r Run[T]) Tell(msg any) { r.j.lane.root.Send(r.j.lane.self, msg) }

// Defer pushes a cleanup. When the job ends, however it ends (an error, a
// panic, cancellation, the lane closing), its cleanups run once, in
// reverse order, in a goroutine the lane owns, each with the job's error
// so far (nil on success). A cleanup's error is joined to the job's.
func (r Run[T]) Defer(name string, fn func(jobErr error) error) {
	r.j.cleanups = append(r.j.cleanups, cleanup{name: name, fn: fn})
}

// SetValue sets the job's value, the reply its waiters get on success
// (after the plan's End). Without one they get a *JobDone.
func (r Run[T]) SetValue(v any) { r.j.value = v }

// Calling shows cmd as the command the step waits on, from now; an empty
// cmd clears it. The actor learns it by a message, so JobInfo and the
// wait errors show it.
func (r Run[T]) Calling(cmd string) {
	j := r.j
	e := &jobEvent[T]{job: j, what: evCall, call: cmd, at: time.Now()}
	j.lane.root.Send(j.lane.self, e)
}

// Report records p as the job's progress (its At set to now when zero).
// The actor learns it by a message, so JobInfo, Jobs and the wait errors
// show it.
func (r Run[T]) Report(p Progress) {
	if p.At.IsZero() {
		p.At = time.Now()
	}
	j := r.j
	j.lane.root.Send(j.lane.self, &jobEvent[T]{job: j, what: evProgress, report: &p, at: p.At})
}

type eventKind uint8

const (
	evStep      eventKind = iota + 1 // the goroutine moved on to step n
	evCall                           // the step's call in flight changed
	evActorStep                      // the goroutine stopped at an InActor step
	evDone                           // the job's goroutine finished it
	evLeft                           // the caller's context ended while queued
	evProgress                       // the job reported its progress
)

// jobEvent is what a job tells its lane, through the owning actor's
// mailbox; Lane.Handle takes it.
type jobEvent[T any] struct {
	job    *Job[T]
	what   eventKind
	step   int
	call   string
	report *Progress
	at     time.Time
	stamp  string // the trace middleware's stamp of this send
}

// Header puts the event in the job's trace, under the job's span. It
// reads only what does not change once the job has started.
func (e *jobEvent[T]) Header() Request {
	j := e.job
	return Request{RequestID: j.info.RequestID, ParentID: j.span, Owner: j.info.Owner}
}

// TraceStamp lets the trace middleware stamp the event itself.
func (e *jobEvent[T]) TraceStamp() *string { return &e.stamp }

// runSegment runs the job's goroutine steps from j.next until an InActor
// step or the end; at the end it runs the cleanups. Then it tells the
// actor.
func (j *Job[T]) runSegment() {
	l := j.lane
	defer l.wg.Done()
	steps := j.plan.Steps
	first := true
	for j.next < len(steps) && j.err == nil {
		s := &steps[j.next]
		if s.InActor != nil {
			j.post(evActorStep)
			return
		}
		if !first {
			l.root.Send(l.self, &jobEvent[T]{job: j, what: evStep, step: j.next, at: time.Now()})
		}
		first = false
		if err := j.ctx.Err(); err != nil {
			j.err = j.stoppedBefore(s.Name)
			break
		}
		err := j.doStep(s)
		j.next++
		if err != nil && !j.retry(err) {
			j.err = j.withCause(err)
		}
	}
	j.next = len(steps)
	j.runCleanups()
	j.post(evDone)
}

func (j *Job[T]) post(what eventKind) {
	j.seg = jobEvent[T]{job: j, what: what, step: j.next}
	j.lane.root.Send(j.lane.self, &j.seg)
}

func (j *Job[T]) doStep(s *Step[T]) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%s: job %d %q: step %q panicked: %v", j.lane.cfg.Name, j.info.ID, j.info.Name, s.Name, p)
		}
	}()
	return s.Do(j.ctx, Run[T]{j})
}

func (j *Job[T]) doActorStep(c actor.Context, s *Step[T]) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%s: job %d %q: step %q panicked: %v", j.lane.cfg.Name, j.info.ID, j.info.Name, s.Name, p)
		}
	}()
	return s.InActor(c, Run[T]{j})
}

// RetryError asks the lane to run a job again from the step named From,
// up to its plan's Retries; once they are used up, or when the job has
// been cancelled, the job ends with Err. Make it with Retry.
type RetryError struct {
	From string
	Err  error
}

func (e *RetryError) Error() string { return e.Err.Error() }

// Unwrap returns the step's error.
func (e *RetryError) Unwrap() error { return e.Err }

// Retry is the error a step returns to run its job again from the step
// named from (the cleanups pushed so far stay on the stack).
func Retry(from string, err error) error { return &RetryError{From: from, Err: err} }

// retry moves the job back to the step a RetryError names and reports
// whether it did. An error that asks for no retry, or one too many, is
// unwrapped into j.err's place by the caller.
func (j *Job[T]) retry(err error) bool {
	var re *RetryError
	if !errors.As(err, &re) {
		return false
	}
	i := j.plan.stepIndex(re.From)
	if i < 0 || i >= j.next || j.retries >= j.plan.Retries || j.ctx.Err() != nil {
		return false
	}
	j.retries++
	j.next = i
	return true
}

// stoppedBefore is the error of a job cancelled before step name.
func (j *Job[T]) stoppedBefore(name string) error {
	return fmt.Errorf("%w (job %d %q stopped before step %q)", context.Cause(j.ctx), j.info.ID, j.info.Name, name)
}

// withCause puts the reason the job was cancelled in front of an error a
// step returned while the job was being cancelled: "destroyed by job 5"
// says more than "context canceled".
func (j *Job[T]) withCause(err error) error {
	cause := context.Cause(j.ctx)
	if cause == nil || errors.Is(cause, context.Canceled) || errors.Is(err, cause) {
		return err
	}
	return fmt.Errorf("%w (%v)", cause, err)
}

// runCleanups runs the cleanup stack once, in reverse.
func (j *Job[T]) runCleanups() {
	cs := j.cleanups
	j.cleanups = nil
	for i := len(cs) - 1; i >= 0; i-- {
		if err := runCleanup(cs[i], j.err); err != nil {
			j.err = errors.Join(j.err, fmt.Errorf("%s: job %d %q: cleanup %q: %w", j.lane.cfg.Name, j.info.ID, j.info.Name, cs[i].name, err))
		}
		cs[i] = cleanup{}
	}
}

func runCleanup(c cleanup, jobErr error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panicked: %v", p)
		}
	}()
	return c.fn(jobErr)
}
