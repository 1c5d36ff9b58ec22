package actors

import (
	"context"
	"fmt"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors/jobinfo"
)

// The lane's plain data, from package jobinfo (see there).
type (
	// JobKind classifies a job, as libvirt's job types do.
	JobKind = jobinfo.JobKind
	// JobMask is a set of job kinds: those that may start beside an async job.
	JobMask = jobinfo.JobMask
	// JobInfo describes a job that is active, queued or recently ended.
	JobInfo = jobinfo.JobInfo
	// Call is a command a job has sent and waits on.
	Call = jobinfo.Call
	// Progress is what a long job reports of itself (Run.Report).
	Progress = jobinfo.Progress
	// Explanation says what a request's job waits for.
	Explanation = jobinfo.Explanation
	// JobWaitError is the error of a caller whose context ended while its
	// job was still waiting in a lane.
	JobWaitError = jobinfo.JobWaitError
)

// The job kinds, in libvirt's order (jobinfo's).
const (
	JobQuery       = jobinfo.JobQuery
	JobDestroy     = jobinfo.JobDestroy
	JobSuspend     = jobinfo.JobSuspend
	JobModify      = jobinfo.JobModify
	JobAbort       = jobinfo.JobAbort
	JobMigrationOp = jobinfo.JobMigrationOp
	JobAsync       = jobinfo.JobAsync
)

// The masks of DESIGN.md (jobinfo's).
const (
	DefaultAsyncMask   = jobinfo.DefaultAsyncMask
	SnapshotAsyncMask  = jobinfo.SnapshotAsyncMask
	MigrationAsyncMask = jobinfo.MigrationAsyncMask
)

// MaskOf returns the mask of the given kinds.
func MaskOf(kinds ...JobKind) JobMask { return jobinfo.MaskOf(kinds...) }

// JobDone is the reply to a job that succeeded without a value of its own.
type JobDone struct {
	Job JobInfo
}

// Step is one named step of a job. Exactly one of Do and InActor is set.
type Step[T any] struct {
	// Name is shown in JobInfo.Steps and as the current step.
	Name string
	// Call is the command this step sends and waits on, shown in
	// JobInfo.Call while the step runs; empty for none.
	Call string
	// Async makes the job give the lane back before this step: from here
	// on it waits as the lane's async job, and the jobs its plan's mask
	// allows may start beside it.
	Async bool
	// Do runs in a goroutine the lane owns. It may wait (on QEMU, on an
	// ask to an actor below, on a timer), bounded by ctx, which ends when
	// the job is cancelled (Cause says why).
	Do func(ctx context.Context, r Run[T]) error
	// InActor runs in the owning actor's handler, for a step that changes
	// the actor's own state (spawning a child, say). It must not block.
	InActor func(c actor.Context, r Run[T]) error
}

// Plan is what a kind of job does: a named list of steps, and the actor's
// own work at the job's start and end. Make it once (NewPlan) and share
// it by every job of that kind; it must not change afterwards.
type Plan[T any] struct {
	// Name is the job's name ("start", "reset").
	Name string
	// Kind classifies its jobs.
	Kind JobKind
	// Mask is what may start beside a job of this plan in its async phase
	// (DefaultAsyncMask when zero).
	Mask JobMask
	// Via names the channel of the steps' Calls ("QMP" when empty).
	Via string
	// Steps run in order. A plan without steps makes jobs that the actor
	// ends itself with Lane.Finish.
	Steps []Step[T]
	// Retries bounds how often a job of this plan goes back to an earlier
	// step when a step returns the error of Retry.
	Retries int
	// Start runs in the actor when a job takes the lane, before its first
	// step: the place for preconditions and for copying the actor's state
	// into the job's Data. An error ends the job with it: it never runs.
	Start func(c actor.Context, j *Job[T]) error
	// End runs in the actor when a job that started ends, before its
	// waiters hear of it, with the job's value and error; what it returns
	// is what they get (the actor applies the job's state change here).
	End func(c actor.Context, j *Job[T], value any, err error) (any, error)

	names []string
	owner string // "api NAME", the owner of a job whose request names none
}

// NewPlan returns a plan of the given steps. Set Mask, Via, Start and End
// on it before the first job uses it.
func NewPlan[T any](name string, kind JobKind, steps ...Step[T]) *Plan[T] {
	p := &Plan[T]{Name: name, Kind: kind, Steps: steps, owner: "api " + name}
	p.names = make([]string, len(steps))
	for i, s := range steps {
		if (s.Do == nil) == (s.InActor == nil) {
			panic(fmt.Sprintf("actors: plan %q: step %q must have exactly one of Do and InActor", name, s.Name))
		}
		p.names[i] = s.Name
	}
	return p
}

// stepIndex is the index of the step called name, or -1.
func (p *Plan[T]) stepIndex(name string) int {
	for i := range p.Steps {
		if p.Steps[i].Name == name {
			return i
		}
	}
	return -1
}

func (p *Plan[T]) mask() JobMask {
	if p.Mask == 0 {
		return DefaultAsyncMask
	}
	return p.Mask
}

// Waiter is who hears the end of a job: an actor or reply address (a
// PID), or a function (for a job that the actor itself started). The
// zero Waiter hears nothing.
type Waiter struct {
	pid *actor.PID
	fn  func(reply any)
}

// ReplyTo makes a waiter of pid (typically the sender of the request).
func ReplyTo(pid *actor.PID) Waiter { return Waiter{pid: pid} }

// ReplyFunc makes a waiter of fn, called in the owning actor with the
// job's reply (its value, a *JobDone, or an error). It must not block.
func ReplyFunc(fn func(reply any)) Waiter { return Waiter{fn: fn} }

// IsZero reports whether nobody waits.
func (w Waiter) IsZero() bool { return w.pid == nil && w.fn == nil }

func (w Waiter) send(c actor.SenderContext, reply any) {
	switch {
	case w.fn != nil:
		w.fn(reply)
	case w.pid != nil:
		c.Send(w.pid, reply)
	}
}

// asyncMask is the mask a job of the plan shows: its mask for an async
// plan, none for the others.
func (p *Plan[T]) asyncMask() JobMask {
	if p.Kind != JobAsync {
		return 0
	}
	return p.mask()
}

// MaskDecision says why the mask of async, an async job, keeps a job
// named name of kind k waiting, or "" when it allows it:
// `reset waits: snapshot-save allows query, suspend, destroy, abort`.
func MaskDecision(name string, k JobKind, async *JobInfo) string {
	if async == nil || async.Mask == 0 || async.Mask.Allows(k) {
		return ""
	}
	return fmt.Sprintf("%s waits: %s allows %s", name, async.Name, async.Mask.List())
}
