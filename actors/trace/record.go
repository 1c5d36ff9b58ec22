package trace

import (
	"context"
	"errors"
	"path"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
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
// Recorder.Enabled first.
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

// Outcome turns the error of a QMP command into a QMPRecord outcome: "ok"
// for nil, "timeout" for a deadline, "error: ..." otherwise.
func Outcome(err error) string {
	switch {
	case err == nil:
		return OutcomeOK
	case errors.Is(err, context.DeadlineExceeded):
		return OutcomeTimeout
	default:
		return "error: " + err.Error()
	}
}

// SpanContext is the trace position of a message being handled.
type SpanContext struct {
	// TraceID is the request id of the API call, or "".
	TraceID string
	// SpanID is the message's span; "" unless the middleware is on.
	SpanID string
	// ParentSpanID is the span that caused the message.
	ParentSpanID string
}

// TypeName is the Go type name of msg without its package path and
// pointer star, such as "domain.StartRequest". A message of an
// internal/protocol package is named after the package that owns it:
// domain/internal/protocol.StartRequest is "domain.StartRequest".
func TypeName(msg any) string {
	if msg == nil {
		return "<nil>"
	}
	t := reflect.TypeOf(msg)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if owner, ok := strings.CutSuffix(t.PkgPath(), "/internal/protocol"); ok {
		if name, ok := protocolNames.Load(t); ok {
			return name.(string)
		}
		name := path.Base(owner) + "." + t.Name()
		protocolNames.Store(t, name)
		return name
	}
	return strings.TrimPrefix(reflect.TypeOf(msg).String(), "*")
}

// protocolNames caches the names TypeName gives protocol messages.
var protocolNames sync.Map // reflect.Type → string

// Sort orders records by Started, then Enqueued, keeping the given order
// of equal records.
func Sort(records []Record) {
	slices.SortStableFunc(records, compareRecords)
}

func compareRecords(a, b Record) int {
	if c := a.Started.Compare(b.Started); c != 0 {
		return c
	}
	return a.Enqueued.Compare(b.Enqueued)
}

// ActorName names vmsup's actors after their protoactor ids: "driver" is
// the driver, "driver/NAME@GEN" the domain NAME ("domain/NAME") and
// "driver/NAME@GEN/monitor-PID" its monitor ("monitor/NAME"). Other ids are
// returned as they are. It follows the spawn names of driver and domain;
// pass your own function to ReceiverMiddleware when they change.
func ActorName(pid *actor.PID) string {
	if pid == nil {
		return ""
	}
	id := pid.Id
	rest, ok := strings.CutPrefix(id, "driver/")
	if !ok {
		return id
	}
	dom, child, hasChild := strings.Cut(rest, "/")
	if at := strings.LastIndexByte(dom, '@'); at >= 0 {
		dom = dom[:at]
	}
	switch {
	case !hasChild:
		return "domain/" + dom
	case strings.HasPrefix(child, "monitor"):
		return "monitor/" + dom
	default:
		return id
	}
}
