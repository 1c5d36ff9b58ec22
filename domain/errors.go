package domain

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrNotRunning is returned by jobs that need a running QEMU.
var ErrNotRunning = errors.New("domain is not running")

// ErrUndefining is returned for jobs sent to a domain that is being undefined.
var ErrUndefining = errors.New("domain is being undefined")

// ErrWrongState is wrapped by errors about a request that the domain's
// state refuses: start while running, pause while paused, resume while
// running, undefine while running.
var ErrWrongState = errors.New("wrong state")

// ErrShutdownTimeout is wrapped when the guest did not power off within
// the shutdown timeout.
var ErrShutdownTimeout = errors.New("shutdown timed out")

// ErrNoConsole is wrapped when the domain's serial port is not a socket.
var ErrNoConsole = errors.New("no console socket")

// JobWaitError is returned when a caller's context ended while its job was
// still waiting in the lane. It names the holder, as libvirt does.
type JobWaitError struct {
	Domain string
	Job    string // the job that waited
	Waited time.Duration
	Holder *JobInfo
	// Decision says why an async job's mask kept the job waiting, if it
	// did: `reset waits: snapshot-save allows query, destroy, suspend, abort`.
	Decision string
	At       time.Time
	Cause    error // context.DeadlineExceeded or context.Canceled
}

func (e *JobWaitError) Error() string {
	verb := "timed out"
	if errors.Is(e.Cause, context.Canceled) {
		verb = "cancelled"
	}
	s := fmt.Sprintf("domain %q: %s after %s waiting for job %q", e.Domain, verb, e.Waited.Round(100*time.Millisecond), e.Job)
	if e.Holder != nil {
		s += ": held by " + e.Holder.Holder(e.At)
	}
	if e.Decision != "" {
		s += "; " + e.Decision
	}
	return s
}

// Unwrap returns the context error.
func (e *JobWaitError) Unwrap() error { return e.Cause }

// WaitExplanation says whether a request's job ran, and who held the job.
type WaitExplanation struct {
	// Running is set when the request's own job is the active one.
	Running bool
	// Holder is the job that held the domain, or nil.
	Holder *JobInfo
	// Decision says why an async job's mask kept the job waiting, if it did.
	Decision string `json:",omitempty"`
}

// ErrNoSnapshot is wrapped when a domain has no snapshot of the name given.
var ErrNoSnapshot = errors.New("no such snapshot")

// ErrNoDevice is returned by a detach whose target names no device of
// the definition it acts on.
var ErrNoDevice = errors.New("no such device")

// ErrDetachTimeout is returned by a detach whose device QEMU did not
// remove (no DEVICE_DELETED event) before the deadline: the guest did
// not release it. The device stays attached.
var ErrDetachTimeout = errors.New("device not removed by the guest before the deadline")
