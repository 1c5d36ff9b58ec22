// Package otelexport exports vmsup's actor trace (package actors/trace) to
// OpenTelemetry: Export turns recorded spans into OpenTelemetry spans at
// once, and an Exporter does it live from a Recorder. It is a package of
// its own so that a program that records traces without exporting them
// does not build it.
package otelexport

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/actors/trace/record"
)

// Export turns records into OpenTelemetry spans on tracer, with their
// recorded start and end times, and returns how many spans it made. Each
// trace (request id) becomes one OpenTelemetry trace: a record's span is
// the child of the span of its ParentSpanID; a record whose parent is not
// among the records hangs under the trace's root, the KindAPI record, or,
// when there is none, a "request ID" span made up to cover the trace.
// Records without a trace id are not exported. OpenTelemetry gives the
// spans their own ids; vmsup's ids are in the attributes vmsup.trace_id,
// vmsup.span_id and vmsup.parent_span_id.
func Export(ctx context.Context, tracer oteltrace.Tracer, records []record.Record) int {
	byTrace := map[string][]record.Record{}
	var order []string
	for _, r := range records {
		if r.TraceID == "" {
			continue
		}
		if _, ok := byTrace[r.TraceID]; !ok {
			order = append(order, r.TraceID)
		}
		byTrace[r.TraceID] = append(byTrace[r.TraceID], r)
	}
	n := 0
	for _, id := range order {
		n += exportTrace(ctx, tracer, byTrace[id], map[string]oteltrace.SpanContext{})
	}
	return n
}

// exportTrace exports the records of one trace, parents before children.
// known maps vmsup span ids to the span contexts already exported for this
// trace, and receives the new ones; the trace's root is under its trace id.
func exportTrace(ctx context.Context, tracer oteltrace.Tracer, recs []record.Record, known map[string]oteltrace.SpanContext) int {
	if len(recs) == 0 {
		return 0
	}
	recs = slices.Clone(recs)
	record.Sort(recs)
	traceID := recs[0].TraceID
	n := 0

	// The root: the API record, else one made up when the trace has none.
	if _, ok := known[traceID]; !ok {
		if i := slices.IndexFunc(recs, func(r record.Record) bool { return r.SpanID == traceID }); i >= 0 {
			known[traceID] = exportSpan(ctx, tracer, &recs[i], oteltrace.SpanContext{})
			recs = slices.Delete(recs, i, i+1)
		} else {
			start, end := recs[0].Started, recs[0].Ended
			for _, r := range recs {
				if !r.Enqueued.IsZero() && r.Enqueued.Before(start) {
					start = r.Enqueued
				}
				if r.Ended.After(end) {
					end = r.Ended
				}
			}
			root := record.Record{TraceID: traceID, SpanID: traceID, Kind: record.KindAPI, Actor: "api", Started: start, Ended: end, Note: "no API record"}
			known[traceID] = exportSpan(ctx, tracer, &root, oteltrace.SpanContext{})
		}
		n++
	}

	// Then breadth first from the spans whose parent is known; a span
	// whose parent never comes (or a cycle) hangs under the root.
	inSet := map[string]bool{}
	for _, r := range recs {
		inSet[r.SpanID] = true
	}
	done := make([]bool, len(recs))
	for left := len(recs); left > 0; {
		progress := false
		for i := range recs {
			if done[i] {
				continue
			}
			r := &recs[i]
			parent, ok := known[r.ParentSpanID]
			if !ok && inSet[r.ParentSpanID] && r.ParentSpanID != r.SpanID {
				continue // its parent comes in a later round
			}
			if !ok {
				parent = known[traceID]
			}
			sc := exportSpan(ctx, tracer, r, parent)
			if _, dup := known[r.SpanID]; !dup && r.SpanID != "" {
				known[r.SpanID] = sc
			}
			done[i] = true
			left--
			n++
			progress = true
		}
		if !progress { // a cycle: break it at the first record left
			i := slices.Index(done, false)
			inSet[recs[i].ParentSpanID] = false
		}
	}
	return n
}

func exportSpan(ctx context.Context, tracer oteltrace.Tracer, r *record.Record, parent oteltrace.SpanContext) oteltrace.SpanContext {
	start := r.Started
	if start.IsZero() {
		start = r.Enqueued
	}
	end := r.Ended
	if end.Before(start) {
		end = start
	}
	kind := oteltrace.SpanKindInternal
	switch r.Kind {
	case record.KindAPI:
		kind = oteltrace.SpanKindServer
	case record.KindQMP:
		kind = oteltrace.SpanKindClient
	}
	opts := []oteltrace.SpanStartOption{
		oteltrace.WithTimestamp(start),
		oteltrace.WithSpanKind(kind),
		oteltrace.WithAttributes(otelAttributes(r)...),
	}
	if parent.IsValid() {
		ctx = oteltrace.ContextWithSpanContext(ctx, parent)
	} else {
		opts = append(opts, oteltrace.WithNewRoot())
	}
	name := r.Name()
	if r.Kind == record.KindAPI {
		name = "request"
		if r.Note != "" && !strings.HasPrefix(r.Note, "error") && r.Note != "ok" {
			name = r.Note
		}
	}
	_, span := tracer.Start(ctx, name, opts...)
	switch {
	case r.QMP != nil && r.QMP.Outcome != record.OutcomeOK:
		span.SetStatus(codes.Error, r.QMP.Outcome)
	case r.Note == "panicked" || strings.HasPrefix(r.Note, "error"):
		span.SetStatus(codes.Error, r.Note)
	}
	span.End(oteltrace.WithTimestamp(end))
	return span.SpanContext()
}

func otelAttributes(r *record.Record) []attribute.KeyValue {
	a := []attribute.KeyValue{
		attribute.String("vmsup.trace_id", r.TraceID),
		attribute.String("vmsup.span_id", r.SpanID),
		attribute.String("vmsup.kind", string(r.Kind)),
		attribute.String("vmsup.actor", r.Actor),
	}
	if r.ParentSpanID != "" {
		a = append(a, attribute.String("vmsup.parent_span_id", r.ParentSpanID))
	}
	if r.MessageType != "" {
		a = append(a, attribute.String("vmsup.message_type", r.MessageType))
	}
	if r.Sender != "" {
		a = append(a, attribute.String("vmsup.sender", r.Sender))
	}
	if w := r.Wait(); w != 0 {
		a = append(a, attribute.Int64("vmsup.wait_ns", int64(w)))
	}
	if r.JobID != 0 {
		a = append(a, attribute.Int64("vmsup.job_id", int64(r.JobID)))
	}
	if r.QMP != nil {
		a = append(a,
			attribute.String("qmp.command", r.QMP.Command),
			attribute.String("qmp.outcome", r.QMP.Outcome),
			attribute.Int64("qmp.duration_ns", int64(r.QMP.Duration)))
	}
	if r.Note != "" {
		a = append(a, attribute.String("vmsup.note", r.Note))
	}
	return a
}

// Options tune an Exporter.
type Options struct {
	// FlushAfter is how long a trace without its KindAPI record waits for
	// more records before it is exported; 10s when zero.
	FlushAfter time.Duration
	// Buffer is the subscription buffer; trace.DefaultLogSinkBuffer when zero.
	Buffer int
	// MaxPending bounds the records held back until their trace is
	// complete; 65536 when zero. Records beyond it are dropped.
	MaxPending int
	// KeepTraces is how many exported traces are remembered, so that
	// records arriving after their trace was exported still find their
	// parent; 1024 when zero.
	KeepTraces int
}

// Exporter exports the records of a Recorder to an OpenTelemetry
// tracer as they come, in its own goroutine. It holds a trace's records
// back until its KindAPI record arrives (the API call ended) or FlushAfter
// passes without a new record, then exports them as Export does, so
// that parents are exported before their children.
type Exporter struct {
	sub     *trace.Subscription
	tracer  oteltrace.Tracer
	opts    Options
	done    chan struct{}
	once    sync.Once
	dropped atomic.Uint64
	spans   atomic.Uint64

	pending  map[string]*pendingTrace
	held     int
	exported map[string]map[string]oteltrace.SpanContext
	fifo     []string
}

type pendingTrace struct {
	recs []record.Record
	last time.Time
}

// New starts exporting the records of rec to tracer. Close
// stops it.
func New(rec *trace.Recorder, tracer oteltrace.Tracer, opts Options) *Exporter {
	if opts.FlushAfter <= 0 {
		opts.FlushAfter = 10 * time.Second
	}
	if opts.Buffer <= 0 {
		opts.Buffer = trace.DefaultLogSinkBuffer
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 65536
	}
	if opts.KeepTraces <= 0 {
		opts.KeepTraces = 1024
	}
	e := &Exporter{
		sub:      rec.Subscribe(opts.Buffer, func(r record.Record) bool { return r.TraceID != "" }),
		tracer:   tracer,
		opts:     opts,
		done:     make(chan struct{}),
		pending:  map[string]*pendingTrace{},
		exported: map[string]map[string]oteltrace.SpanContext{},
	}
	go e.run()
	return e
}

func (e *Exporter) run() {
	defer close(e.done)
	tick := time.NewTicker(max(e.opts.FlushAfter/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case r, ok := <-e.sub.C:
			if !ok {
				for _, id := range e.pendingOrder() {
					e.flush(id)
				}
				return
			}
			e.add(r)
		case now := <-tick.C:
			for _, id := range e.pendingOrder() {
				if now.Sub(e.pending[id].last) >= e.opts.FlushAfter {
					e.flush(id)
				}
			}
		}
	}
}

func (e *Exporter) pendingOrder() []string {
	ids := make([]string, 0, len(e.pending))
	for id := range e.pending {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (e *Exporter) add(r record.Record) {
	if known, ok := e.exported[r.TraceID]; ok { // a late record
		e.spans.Add(uint64(exportTrace(context.Background(), e.tracer, []record.Record{r}, known)))
		return
	}
	if e.held >= e.opts.MaxPending {
		e.dropped.Add(1)
		return
	}
	p := e.pending[r.TraceID]
	if p == nil {
		p = &pendingTrace{}
		e.pending[r.TraceID] = p
	}
	p.recs = append(p.recs, r)
	p.last = time.Now()
	e.held++
	if r.Kind == record.KindAPI && r.SpanID == r.TraceID {
		e.flush(r.TraceID)
	}
}

func (e *Exporter) flush(traceID string) {
	p := e.pending[traceID]
	if p == nil {
		return
	}
	delete(e.pending, traceID)
	e.held -= len(p.recs)
	known := map[string]oteltrace.SpanContext{}
	e.spans.Add(uint64(exportTrace(context.Background(), e.tracer, p.recs, known)))
	e.exported[traceID] = known
	e.fifo = append(e.fifo, traceID)
	if len(e.fifo) > e.opts.KeepTraces {
		delete(e.exported, e.fifo[0])
		e.fifo = e.fifo[1:]
	}
}

// Spans is the number of spans exported so far.
func (e *Exporter) Spans() uint64 {
	return e.spans.Load()
}

// Dropped is the number of records the exporter lost: it fell behind, or
// too many records waited for their trace to end.
func (e *Exporter) Dropped() uint64 {
	return e.dropped.Load() + e.sub.Dropped()
}

// Close stops the exporter after exporting every record it holds, and
// waits for its goroutine to end.
func (e *Exporter) Close() {
	e.once.Do(e.sub.Close)
	<-e.done
}
