package trace_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/tests/testkit"
)

func TestLogSink(t *testing.T) {
	rec := trace.New(trace.Options{})
	var out testkit.SyncBuffer
	sink := trace.NewLogSink(rec, zerolog.New(&out).With().Timestamp().Logger())
	want := startRequest()
	for _, r := range want {
		rec.Record(r)
	}
	sink.Close() // writes what it received, then stops
	sink.Close()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), out.String())
	}
	if !strings.Contains(lines[3], `"qmp":{"command":"query-status","duration_ns":1200000,"outcome":"ok"}`) {
		t.Errorf("QMP line: %s", lines[3])
	}
	got, err := trace.DecodeJSONLines(strings.NewReader(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	sameRecords(t, got, want)
	if sink.Dropped() != 0 {
		t.Errorf("Dropped = %d", sink.Dropped())
	}
	rec.Record(want[0]) // after Close: not written, no panic
}

func TestWriteTo(t *testing.T) {
	rec := trace.New(trace.Options{})
	for _, r := range startRequest() {
		rec.Record(r)
	}
	var buf bytes.Buffer
	n, err := rec.WriteTo(&buf)
	if err != nil || n != int64(buf.Len()) {
		t.Fatalf("WriteTo = %d, %v; wrote %d bytes", n, err, buf.Len())
	}
	got, err := trace.DecodeJSONLines(&buf)
	if err != nil {
		t.Fatal(err)
	}
	sameRecords(t, got, rec.Snapshot())
}

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
func checkOTel(t *testing.T, spans []sdktrace.ReadOnlySpan, recs []trace.Record, rootID string) {
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

func TestExportOTel(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	defer tp.Shutdown(context.Background())
	recs := startRequest()
	recs[3].QMP.Outcome = "error: no"
	untraced := trace.Record{SpanID: "x", Kind: trace.KindMessage, Started: t0, Ended: t0}
	if n := trace.ExportOTel(context.Background(), tp.Tracer("vmsup"), append(recs, untraced)); n != len(recs) {
		t.Fatalf("ExportOTel made %d spans, want %d", n, len(recs))
	}
	checkOTel(t, sr.Ended(), recs, fixtureTrace)
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
	noAPI := startRequest()[:7]
	if n := trace.ExportOTel(context.Background(), tp2.Tracer("vmsup"), noAPI); n != len(noAPI)+1 {
		t.Fatalf("ExportOTel made %d spans, want %d", n, len(noAPI)+1)
	}
	madeUp := trace.Record{TraceID: fixtureTrace, SpanID: fixtureTrace, Started: noAPI[0].Enqueued, Ended: noAPI[6].Ended}
	checkOTel(t, sr2.Ended(), append(noAPI, madeUp), fixtureTrace)
}

func TestOTelExporterLive(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	defer tp.Shutdown(context.Background())
	rec := trace.New(trace.Options{})
	exp := trace.NewOTelExporter(rec, tp.Tracer("vmsup"), trace.OTelOptions{FlushAfter: 50 * time.Millisecond})

	recs := startRequest() // the API record comes last and completes the trace
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
	checkOTel(t, sr.Ended(), recs, fixtureTrace)

	// A record that comes after its trace was exported finds its parent.
	late := trace.Record{TraceID: fixtureTrace, SpanID: "late", ParentSpanID: "job-1", Kind: trace.KindMessage,
		Actor: "domain/web1", MessageType: "domain.jobDone", Started: at(90e6), Ended: at(91e6)}
	rec.Record(late)
	waitSpans(len(recs) + 1)
	checkOTel(t, sr.Ended(), append(recs, late), fixtureTrace)

	// A trace without an API record is exported after FlushAfter.
	orphan := trace.Record{TraceID: "orphan", SpanID: "o1", ParentSpanID: "orphan", Kind: trace.KindMessage, Actor: "driver", Started: t0, Ended: t0}
	rec.Record(orphan)
	waitSpans(len(recs) + 3) // the record and a made-up root
	exp.Close()
	exp.Close()
	if exp.Spans() != uint64(len(recs)+3) || exp.Dropped() != 0 {
		t.Fatalf("Spans = %d, Dropped = %d", exp.Spans(), exp.Dropped())
	}
}
