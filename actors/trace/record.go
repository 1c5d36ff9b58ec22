package trace

import (
	"context"
	"errors"
	"path"
	"reflect"
	"strings"
	"sync"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors/trace/record"
)

// The data of a trace lives in package record, which needs no actor
// runtime; these names are the same types and values.
type (
	// Record is one span of a trace (record.Record).
	Record = record.Record
	// QMPRecord describes one QMP command (record.QMPRecord).
	QMPRecord = record.QMPRecord
	// Kind says what a Record describes (record.Kind).
	Kind = record.Kind
)

// The kinds of record.
const (
	KindMessage = record.KindMessage
	KindJob     = record.KindJob
	KindQMP     = record.KindQMP
	KindAPI     = record.KindAPI
)

// Outcomes of a QMP command other than an error.
const (
	OutcomeOK      = record.OutcomeOK
	OutcomeTimeout = record.OutcomeTimeout
)

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
// domain/internal/protocol.StartRequest is "domain.StartRequest". A
// TraceNamer is named by its TraceName.
func TypeName(msg any) string {
	if msg == nil {
		return "<nil>"
	}
	if n, ok := msg.(TraceNamer); ok {
		return n.TraceName()
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

// TraceNamer is a message that names itself in the trace, in place of its
// Go type (a generic type's name is long and says little).
type TraceNamer interface {
	TraceName() string
}

// protocolNames caches the names TypeName gives protocol messages.
var protocolNames sync.Map // reflect.Type → string

// Sort orders records by Started, then Enqueued, keeping the given order
// of equal records (record.Sort).
func Sort(records []Record) { record.Sort(records) }

// ActorName names vmsup's actors after their protoactor ids: "driver" is
// the driver, "driver/NAME@GEN" the domain NAME ("domain/NAME") and
// "driver/NAME@GEN/monitor-PID" its monitor ("monitor/NAME") and
// ".../agent-PID" its guest agent ("agent/NAME"). Other ids are
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
	case strings.HasPrefix(child, "agent"):
		return "agent/" + dom
	default:
		return id
	}
}
