// Package jobinfo is the plain data of vmsup's job lanes (actors.Lane):
// job kinds and masks, a job's record, who holds a lane and the error of
// a caller that waited too long. It has no actors in it, so the model
// (package domain) can name these types without compiling protoactor;
// package actors re-exports each of them.
package jobinfo

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
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
		return nil, fmt.Errorf("jobinfo: unknown job kind %d", k)
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
	return fmt.Errorf("jobinfo: unknown job kind %q", b)
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
