// Package record is the data of vmsup's actor trace: the Record of one
// span, as the trace recorder (package actors/trace) keeps it, the API
// serves it and the renderers (package actors/trace/render) draw it. It
// needs nothing but the standard library, so that a client can decode and
// print records without linking the actor runtime.
package record

import (
	"slices"
	"strconv"
	"time"
)

// Kind says what a Record describes.
type Kind string

// The kinds of record.
const (
	// KindMessage is one message handled by an actor.
	KindMessage Kind = "message"
	// KindJob is one job of a domain (or driver) lane, from the moment it
	// took the lane to its end.
	KindJob Kind = "job"
	// KindQMP is one QMP command, from the moment it was written to QEMU to
	// its reply.
	KindQMP Kind = "qmp"
	// KindAPI is one API call, the root span of its trace. Its SpanID is
	// its TraceID.
	KindAPI Kind = "api"
)

// Outcomes of a QMP command other than an error.
const (
	// OutcomeOK is a command that QEMU answered with "return".
	OutcomeOK = "ok"
	// OutcomeTimeout is a command that QEMU did not answer in time.
	OutcomeTimeout = "timeout"
)

// Record is one span of a trace: a message handled by an actor, a job, a
// QMP command or an API call. Code that builds records on a hot path checks
// that the trace recorder is enabled first.
type Record struct {
	// TraceID is the request id of the API call this span belongs to; empty
	// for work done on nobody's behalf (timers, QMP events without cause).
	TraceID string `json:"trace_id,omitempty"`
	// SpanID identifies this span within its trace.
	SpanID string `json:"span_id"`
	// ParentSpanID is the span that caused this one; empty for a root.
	ParentSpanID string `json:"parent_span_id,omitempty"`
	// Kind says what the record describes.
	Kind Kind `json:"kind"`
	// Actor is the actor that handled the message or ran the job or
	// command: "driver", "domain/NAME", "monitor/NAME", or "api".
	Actor string `json:"actor"`
	// MessageType is the Go type of the message, such as
	// "domain.StartRequest"; empty for jobs, QMP commands and API calls.
	MessageType string `json:"message_type,omitempty"`
	// Sender is the actor that sent the message, or "" when it was sent
	// from outside an actor (the API, a job goroutine).
	Sender string `json:"sender,omitempty"`
	// Enqueued is when the message was sent (or the job queued); zero when
	// unknown.
	Enqueued time.Time `json:"enqueued,omitzero"`
	// Started is when handling (or the job, or the command) began.
	Started time.Time `json:"started,omitzero"`
	// Ended is when it ended.
	Ended time.Time `json:"ended,omitzero"`
	// JobID is the job this span is or belongs to; zero when none.
	JobID uint64 `json:"job_id,omitempty"`
	// QMP describes a QMP command; set for KindQMP only.
	QMP *QMPRecord `json:"qmp,omitempty"`
	// Note is free text: a job's name, an API call's outcome, "panicked".
	Note string `json:"note,omitempty"`
}

// QMPRecord describes one QMP command.
type QMPRecord struct {
	// Command is the QMP "execute" name.
	Command string `json:"command"`
	// Duration is how long QEMU took to answer.
	Duration time.Duration `json:"duration_ns"`
	// Outcome is "ok", "timeout" or "error: " followed by the error.
	Outcome string `json:"outcome"`
}

// Wait is how long the message waited in the mailbox (or the job in its
// queue): Started minus Enqueued, or zero when either is unknown.
func (r Record) Wait() time.Duration {
	if r.Enqueued.IsZero() || r.Started.IsZero() {
		return 0
	}
	return r.Started.Sub(r.Enqueued)
}

// Duration is how long the handling, job or command took: Ended minus
// Started, or zero when either is unknown.
func (r Record) Duration() time.Duration {
	if r.Started.IsZero() || r.Ended.IsZero() {
		return 0
	}
	return r.Ended.Sub(r.Started)
}

// Name is the span's short name: the message type, "job N NAME", the QMP
// command, or "api TRACEID".
func (r Record) Name() string {
	switch r.Kind {
	case KindMessage:
		return r.MessageType
	case KindJob:
		s := "job " + strconv.FormatUint(r.JobID, 10)
		if r.Note != "" {
			s += " " + r.Note
		}
		return s
	case KindQMP:
		if r.QMP != nil {
			return r.QMP.Command
		}
		return "qmp"
	case KindAPI:
		return "api " + r.TraceID
	}
	return string(r.Kind)
}

// Sort orders records by Started, then Enqueued, keeping the given order
// of equal records.
func Sort(records []Record) {
	slices.SortStableFunc(records, compare)
}

func compare(a, b Record) int {
	if c := a.Started.Compare(b.Started); c != 0 {
		return c
	}
	return a.Enqueued.Compare(b.Enqueued)
}
