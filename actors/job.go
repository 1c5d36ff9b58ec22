package actors

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// JobKind classifies a job, as libvirt's job types do. The kind decides
// whether a job may start while an async job holds the lane (see JobMask).
type JobKind uint8

// The job kinds, in libvirt's order.
const (
	// JobQuery reads state; it may run alongside an async job.
	JobQuery JobKind = iota + 1
	// JobDestroy is the preempting hard stop.
	JobDestroy
	// JobSuspend pauses the guest's vCPUs.
	JobSuspend
	// JobModify changes state.
	JobModify
	// JobAbort aborts the async job.
	JobAbort
	// JobMigrationOp is an operation on a migration in progress.
	JobMigrationOp
	// JobAsync is a long job (shutdown, snapshot, migration) that, in its
	// async phase, lets the jobs its mask allows start beside it.
	JobAsync
)

var jobKindNames = [...]string{"", "query", "destroy", "suspend", "modify", "abort", "migration-op", "async"}

// String returns the kind's name, such as "query".
func (k JobKind) String() string {
	if int(k) < len(jobKindNames) && k != 0 {
		return jobKindNames[k]
	}
	return "kind-" + strconv.Itoa(int(k))
}

// MarshalText writes the kind's name.
func (k JobKind) MarshalText() ([]byte, error) {
	if k == 0 || int(k) >= len(jobKindNames) {
		return nil, fmt.Errorf("actors: unknown job kind %d", k)
	}
	return []byte(jobKindNames[k]), nil
}

// UnmarshalText reads a kind's name.
func (k *JobKind) UnmarshalText(b []byte) error {
	for i, n := range jobKindNames {
		if i > 0 && n == string(b) {
			*k = JobKind(i)
			return nil
		}
	}
	return fmt.Errorf("actors: unknown job kind %q", b)
}

// JobMask is a set of job kinds: the kinds that may start while an async
// job is in its async phase. It is data, as libvirt's job masks are.
type JobMask uint32

// The masks of DESIGN.md: an async job allows query, destroy and abort; a
// snapshot also allows suspend; a migration also allows suspend and the
// migration operations.
const (
	DefaultAsyncMask   = JobMask(1<<JobQuery | 1<<JobDestroy | 1<<JobAbort)
	SnapshotAsyncMask  = DefaultAsyncMask | 1<<JobSuspend
	MigrationAsyncMask = DefaultAsyncMask | 1<<JobSuspend | 1<<JobMigrationOp
)

// MaskOf returns the mask of the given kinds.
func MaskOf(kinds ...JobKind) JobMask {
	var m JobMask
	for _, k := range kinds {
		m |= 1 << k
	}
	return m
}

// Allows reports whether a job of kind k may start under the mask.
func (m JobMask) Allows(k JobKind) bool { return m&(1<<k) != 0 }

// List names the mask's kinds for people: "query, destroy, abort".
func (m JobMask) List() string { return strings.ReplaceAll(m.String(), "|", ", ") }

// String lists the mask's kinds, such as "query|destroy|abort".
func (m JobMask) String() string {
	var parts []string
	for k := JobQuery; int(k) < len(jobKindNames); k++ {
		if m.Allows(k) {
			parts = append(parts, k.String())
		}
	}
	return strings.Join(parts, "|")
}

// MarshalText writes the mask as its kinds joined by "|".
func (m JobMask) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText reads a mask written by MarshalText.
func (m *JobMask) UnmarshalText(b []byte) error {
	*m = 0
	if len(b) == 0 {
		return nil
	}
	for _, name := range strings.Split(string(b), "|") {
		var k JobKind
		if err := k.UnmarshalText([]byte(name)); err != nil {
			return err
		}
		*m |= 1 << k
	}
	return nil
}

// JobInfo describes a job that is active, queued or recently ended. It is
// plain data: a copy taken by Snapshot shares nothing with the lane.
type JobInfo struct {
	ID        uint64    `json:"id"`
	Name      string    `json:"name"`
	Kind      JobKind   `json:"kind"`
	Owner     string    `json:"owner"`
	RequestID string    `json:"request_id"`
	Enqueued  time.Time `json:"enqueued"`
	Started   time.Time `json:"started,omitzero"`
	Ended     time.Time `json:"ended,omitzero"`
	// Steps are the names of the job's steps, in order (shared with its
	// plan: never modify them). Step is the current (or last) one.
	Steps []string `json:"steps,omitempty"`
	Step  string   `json:"step,omitempty"`
	// Call is the command the job waits on, if any.
	Call Call `json:"call,omitzero"`
	// Mask is what may start beside the job in its async phase: set for
	// a job of kind JobAsync.
	Mask JobMask `json:"mask,omitempty"`
	// Report is what an async job last reported of its progress, or nil.
	Report *Progress `json:"report,omitempty"`
	Error  string    `json:"error,omitempty"`
}

// Progress is what a long job reports of itself: its phase and, where
// the work is measured (QEMU's query-jobs current-progress and
// total-progress), how far it is. It is plain data.
type Progress struct {
	// Phase is what the job is doing now, such as "running" or "saving".
	Phase string `json:"phase,omitempty"`
	// Current and Total are the work done and the work to do, in Unit;
	// Total is zero when unknown.
	Current uint64 `json:"current,omitempty"`
	Total   uint64 `json:"total,omitempty"`
	// Unit names what Current and Total count ("bytes" when empty).
	Unit string    `json:"unit,omitempty"`
	At   time.Time `json:"at"`
}

// Percent is Current of Total in percent, and false when Total is unknown.
func (p *Progress) Percent() (float64, bool) {
	if p == nil || p.Total == 0 {
		return 0, false
	}
	return float64(p.Current) * 100 / float64(p.Total), true
}

// String renders the progress: `saving, 42% (12.0 MiB of 28.5 MiB)`.
func (p *Progress) String() string {
	if p == nil {
		return ""
	}
	s := p.Phase
	if s == "" {
		s = "running"
	}
	pct, ok := p.Percent()
	switch {
	case ok && (p.Unit == "" || p.Unit == "bytes"):
		s += fmt.Sprintf(", %.0f%% (%s of %s)", pct, mib(p.Current), mib(p.Total))
	case ok:
		s += fmt.Sprintf(", %.0f%% (%d of %d %s)", pct, p.Current, p.Total, p.Unit)
	case p.Current > 0:
		s += fmt.Sprintf(", %s done", mib(p.Current))
	}
	return s
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// Call is a command a job has sent and waits on: a QMP command, a guest
// agent command.
type Call struct {
	// Via names the channel: "QMP" (the default) or "guest agent".
	Via     string    `json:"via,omitempty"`
	Command string    `json:"command"`
	Since   time.Time `json:"since"`
}

// IsZero reports whether no call is in flight.
func (c Call) IsZero() bool { return c.Command == "" }

func (c Call) via() string {
	if c.Via == "" {
		return "QMP"
	}
	return c.Via
}

// Holder describes who holds the lane, for wait errors:
// `job 17 "shutdown" (api shutdown, trace 1a2b3c-17) for 31.2s, in QMP "system_powerdown" for 31.0s`.
func (j *JobInfo) Holder(now time.Time) string {
	s := fmt.Sprintf("job %d %q (%s, trace %s) for %.1fs", j.ID, j.Name, j.Owner, j.RequestID, now.Sub(j.Started).Seconds())
	if !j.Call.IsZero() {
		s += fmt.Sprintf(", in %s %q for %.1fs", j.Call.via(), j.Call.Command, now.Sub(j.Call.Since).Seconds())
	}
	if j.Report != nil {
		s += ", at " + j.Report.String()
	}
	return s
}

// Progress renders the job's steps with the current one in brackets:
// `start: spawn → connect → [query-status] → cont`. A job without steps
// shows its name and current step, if any.
func (j *JobInfo) Progress() string {
	var b strings.Builder
	b.WriteString(j.Name)
	if len(j.Steps) == 0 {
		if j.Step != "" {
			b.WriteString(": [")
			b.WriteString(j.Step)
			b.WriteByte(']')
		}
		return b.String()
	}
	b.WriteString(": ")
	for i, s := range j.Steps {
		if i > 0 {
			b.WriteString(" → ")
		}
		if s == j.Step && j.Ended.IsZero() {
			b.WriteByte('[')
			b.WriteString(s)
			b.WriteByte(']')
		} else {
			b.WriteString(s)
		}
	}
	return b.String()
}

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
