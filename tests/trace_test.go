package tests

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/actors/trace/render"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
)

// TestTraceChain: one start and one qmp call each leave a complete chain
// in the trace, API → domain → job → monitor → QMP, with one trace id and
// consistent span and parent ids, in time order; the driver is on no
// job's path. A define shows the driver where it acts: API → driver →
// define job.
func TestTraceChain(t *testing.T) {
	rec := trace.New(trace.Options{})
	d := openDriver(t, func(c *driver.Config) { c.Trace = rec })
	vm := d.define(t, "traced", "none")

	ctx := actors.WithRequestID(ctxT(t, 30*time.Second), "trace-define")
	spec := &domain.Spec{Name: "traced-define", Machine: "none", Accel: "tcg", Memory: 64 << 20}
	if _, err := d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	checkDefineChain(t, rec.ByTrace("trace-define"))

	ctx = actors.WithRequestID(ctxT(t, 30*time.Second), "trace-start")
	if err := vm.Start(ctx, driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	checkChain(t, rec.ByTrace("trace-start"), "domain.StartRequest", []string{"query-status", "cont"})

	ctx = actors.WithRequestID(ctxT(t, 30*time.Second), "trace-qmp")
	if _, err := vm.QMP(ctx, json.RawMessage(`{"execute":"query-status"}`)); err != nil {
		t.Fatal(err)
	}
	records := rec.ByTrace("trace-qmp")
	checkChain(t, records, "domain.QMPRequest", []string{"query-status"})

	var chrome bytes.Buffer
	if err := render.WriteChrome(&chrome, records); err != nil {
		t.Fatal(err)
	}
	var parsed struct {
		TraceEvents []map[string]any `json:"traceEvents"`
	}
	if err := json.Unmarshal(chrome.Bytes(), &parsed); err != nil || len(parsed.TraceEvents) < len(records) {
		t.Fatalf("chrome export: %d events for %d records, %v", len(parsed.TraceEvents), len(records), err)
	}
	// A QMP event is a trace of its own, named by the lifecycle event it
	// causes.
	events := recordEvents(t, vm.Subscribe(ctxT(t, time.Minute), 0))
	if _, err := vm.QMP(ctxT(t, 10*time.Second), json.RawMessage(`{"execute":"stop"}`)); err != nil {
		t.Fatal(err)
	}
	paused := events.waitFor(t, domain.EventPaused, 2*time.Second)
	var handled bool
	for _, r := range rec.ByTrace(paused.Cause) {
		if r.Actor == "domain/traced" && r.MessageType == "monitor.Event" {
			handled = true
		}
	}
	if !handled {
		t.Fatalf("no record of the QMP event %s that paused the domain: %s", paused.Cause, dump(rec.ByTrace(paused.Cause)))
	}

	var mermaid bytes.Buffer
	if err := render.WriteMermaid(&mermaid, records); err != nil || !bytes.Contains(mermaid.Bytes(), []byte("query-status")) {
		t.Fatalf("mermaid: %v\n%s", err, mermaid.String())
	}
}

// checkChain checks one request's records: the API root, the request in
// the domain (sent by the API itself), its job, the monitor commands and
// their QMP records, linked by parent span ids and ordered in time. No
// record is the driver's.
func checkChain(t *testing.T, records []trace.Record, request string, commands []string) {
	t.Helper()
	if len(records) == 0 {
		t.Fatal("no records for the request")
	}
	traceID := records[0].TraceID
	for _, r := range records {
		if r.TraceID != traceID {
			t.Fatalf("record of another trace in the chain: %+v", r)
		}
		if r.SpanID == "" {
			t.Fatalf("record without a span: %+v", r)
		}
	}
	find := func(what string, ok func(trace.Record) bool) trace.Record {
		t.Helper()
		for _, r := range records {
			if ok(r) {
				return r
			}
		}
		t.Fatalf("no %s record in %s", what, dump(records))
		return trace.Record{}
	}
	api := find("api", func(r trace.Record) bool { return r.Kind == trace.KindAPI })
	if api.SpanID != traceID || api.Note != "ok" {
		t.Fatalf("api record %+v", api)
	}
	for _, r := range records {
		if r.Actor == "driver" || r.Sender == "driver" {
			t.Errorf("the driver is on the job's path: %+v", r)
		}
	}
	msg := find(request, func(r trace.Record) bool { return r.MessageType == request && r.Actor == "domain/traced" })
	job := find("job", func(r trace.Record) bool { return r.Kind == trace.KindJob })
	for _, c := range []struct {
		name          string
		child, parent trace.Record
	}{{"request", msg, api}, {"job", job, msg}} {
		if c.child.ParentSpanID != c.parent.SpanID {
			t.Errorf("%s: parent %q, want %q (%s)", c.name, c.child.ParentSpanID, c.parent.SpanID, dump(records))
		}
	}
	if msg.Enqueued.IsZero() || msg.Started.Before(msg.Enqueued) {
		t.Errorf("request message has no mailbox wait: %+v", msg)
	}
	order := []time.Time{api.Started, msg.Started, job.Started}
	for _, name := range commands {
		qmp := find("QMP "+name, func(r trace.Record) bool { return r.Kind == trace.KindQMP && r.QMP.Command == name })
		// The job's step runs the command on the monitor's link: the QMP
		// record is the monitor's, under the job.
		if qmp.Actor != "monitor/traced" || qmp.ParentSpanID != job.SpanID {
			t.Errorf("QMP %s: actor %q parent %q, want the monitor's record under job %s", name, qmp.Actor, qmp.ParentSpanID, job.SpanID)
		}
		if qmp.QMP.Outcome != trace.OutcomeOK || qmp.JobID != job.JobID {
			t.Errorf("QMP %s record %+v", name, qmp)
		}
		order = append(order, qmp.Started, qmp.Ended)
	}
	order = append(order, job.Ended, api.Ended)
	for i := 1; i < len(order); i++ {
		if order[i].Before(order[i-1]) {
			t.Errorf("chain out of time order at step %d: %v", i, order)
		}
	}
}

// checkDefineChain checks a define's records: the API root, the request
// in the driver, and the driver's define job with its outcome, in order.
func checkDefineChain(t *testing.T, records []trace.Record) {
	t.Helper()
	var api, msg, job *trace.Record
	for i, r := range records {
		switch {
		case r.Kind == trace.KindAPI:
			api = &records[i]
		case r.Kind == trace.KindMessage && r.Actor == "driver" && r.MessageType == "driver.DefineRequest":
			msg = &records[i]
		case r.Kind == trace.KindJob && r.Actor == "driver":
			job = &records[i]
		}
	}
	if api == nil || msg == nil || job == nil {
		t.Fatalf("define: want the API record, driver.DefineRequest in the driver and the driver's job: %s", dump(records))
	}
	if msg.ParentSpanID != api.SpanID || job.ParentSpanID != msg.SpanID {
		t.Errorf("define chain: request parent %q (want %q), job parent %q (want %q)", msg.ParentSpanID, api.SpanID, job.ParentSpanID, msg.SpanID)
	}
	if job.MessageType != "define" || job.Note != "ok" || job.JobID == 0 {
		t.Errorf("define job record %+v", job)
	}
	if job.Started.Before(job.Enqueued) || job.Ended.Before(job.Started) || api.Ended.Before(job.Ended) {
		t.Errorf("define chain out of time order: %s", dump(records))
	}
}

func dump(records []trace.Record) string {
	b, _ := json.MarshalIndent(records, "", " ")
	return string(b)
}
