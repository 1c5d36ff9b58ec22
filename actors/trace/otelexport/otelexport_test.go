package otelexport_test

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/actors/trace/internal/fixture"
	"github.com/vmsup/vmsup/actors/trace/otelexport"
	"github.com/vmsup/vmsup/actors/trace/record"
)

// spansByVmsupID indexes ended spans by their vmsup.span_id attribute.
func spansByVmsupID(spans []sdktrace.ReadOnlySpan) map[string]sdktrace.ReadOnlySpan {
	out := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		for _, kv := range s.Attributes() {
			if kv.Key == "vmsup.span_id" {
				out[kv.Value.AsString()] = s
			}
		}
	}
	return out
}

// checkOTel checks that the spans mirror the records: one per record, one
// trace, parents linked as ParentSpanID says, times as recorded.
func checkOTel(t *testing.T, spans []sdktrace.ReadOnlySpan, recs []record.Record, rootID string) {
	t.Helper()
	byID := spansByVmsupID(spans)
	if len(spans) != len(recs) || len(byID) != len(recs) {
		t.Fatalf("%d spans (%d distinct ids) for %d records", len(spans), len(byID), len(recs))
	}
	root := byID[rootID]
	if root == nil || root.Parent().IsValid() {
		t.Fatalf("root span %q missing or has a parent", rootID)
	}
	for _, r := range recs {
		s := byID[r.SpanID]
		if s.SpanContext().TraceID() != root.SpanContext().TraceID() {
			t.Errorf("%s: in another trace", r.SpanID)
		}
		if r.SpanID == rootID {
			continue
		}
		parentID := r.ParentSpanID
		if byID[parentID] == nil {
			parentID = rootID
		}
		if got, want := s.Parent().SpanID(), byID[parentID].SpanContext().SpanID(); got != want {
			t.Errorf("%s: parent span %s, want %s (%s)", r.SpanID, got, want, parentID)
		}
		if !s.StartTime().Equal(r.Started) || !s.EndTime().Equal(r.Ended) {
			t.Errorf("%s: span %v–%v, record %v–%v", r.SpanID, s.StartTime(), s.EndTime(), r.Started, r.Ended)
		}
	}
}

func TestExport(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	defer tp.Shutdown(context.Background())
	recs := fixture.StartRequest()
	recs[2].QMP.Outcome = "error: no"
	untraced := record.Record{SpanID: "x", Kind: record.KindMessage, Started: fixture.T0, Ended: fixture.T0}
	if n := otelexport.Export(context.Background(), tp.Tracer("vmsup"), append(recs, untraced)); n != len(recs) {
		t.Fatalf("Export made %d spans, want %d", n, len(recs))
	}
	checkOTel(t, sr.Ended(), recs, fixture.TraceID)
	for _, s := range sr.Ended() {
		if s.Name() == "query-status" && s.Status().Code.String() != "Error" {
			t.Errorf("failed QMP command has status %v", s.Status())
		}
		if s.Name() == "request" && s.SpanKind() != oteltrace.SpanKindServer {
			t.Errorf("API span kind %v", s.SpanKind())
		}
	}

	// Without the API record, a root is made up to hold the trace together.
	sr2 := tracetest.NewSpanRecorder()
	tp2 := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr2))
	defer tp2.Shutdown(context.Background())
	noAPI := fixture.StartRequest()[:6]
	if n := otelexport.Export(context.Background(), tp2.Tracer("vmsup"), noAPI); n != len(noAPI)+1 {
		t.Fatalf("Export made %d spans, want %d", n, len(noAPI)+1)
	}
	madeUp := record.Record{TraceID: fixture.TraceID, SpanID: fixture.TraceID, Started: noAPI[0].Enqueued, Ended: noAPI[5].Ended}
	checkOTel(t, sr2.Ended(), append(noAPI, madeUp), fixture.TraceID)
}

func TestExporterLive(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	defer tp.Shutdown(context.Background())
	rec := trace.New(trace.Options{})
	exp := otelexport.New(rec, tp.Tracer("vmsup"), otelexport.Options{FlushAfter: 50 * time.Millisecond})

	recs := fixture.StartRequest() // the API record comes last and completes the trace
	for _, r := range recs {
		rec.Record(r)
	}
	waitSpans := func(n int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for len(sr.Ended()) < n && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if got := len(sr.Ended()); got != n {
			t.Fatalf("%d spans, want %d", got, n)
		}
	}
	waitSpans(len(recs))
	checkOTel(t, sr.Ended(), recs, fixture.TraceID)

	// A record that comes after its trace was exported finds its parent.
	late := record.Record{TraceID: fixture.TraceID, SpanID: "late", ParentSpanID: "job-1", Kind: record.KindMessage,
		Actor: "domain/web1", MessageType: "domain.jobDone", Started: fixture.At(90e6), Ended: fixture.At(91e6)}
	rec.Record(late)
	waitSpans(len(recs) + 1)
	checkOTel(t, sr.Ended(), append(recs, late), fixture.TraceID)

	// A trace without an API record is exported after FlushAfter.
	orphan := record.Record{TraceID: "orphan", SpanID: "o1", ParentSpanID: "orphan", Kind: record.KindMessage, Actor: "driver", Started: fixture.T0, Ended: fixture.T0}
	rec.Record(orphan)
	waitSpans(len(recs) + 3) // the record and a made-up root
	exp.Close()
	exp.Close()
	if exp.Spans() != uint64(len(recs)+3) || exp.Dropped() != 0 {
		t.Fatalf("Spans = %d, Dropped = %d", exp.Spans(), exp.Dropped())
	}
}
