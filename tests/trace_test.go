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
// in the trace, API → driver → domain → job → monitor → QMP, with one
// trace id and consistent span and parent ids, in time order.
func TestTraceChain(t *testing.T) {
	rec := trace.New(trace.Options{})
	d := openDriver(t, func(c *driver.Config) { c.Trace = rec })
	vm := d.define(t, "traced", "none")

	ctx := actors.WithRequestID(ctxT(t, 30*time.Second), "trace-start")
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

// checkChain checks one request's records: the API root, the route in
// the driver, the request in the domain, its job, the monitor commands and
// their QMP records, linked by parent span ids and ordered in time.
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
	route := find("driver route", func(r trace.Record) bool { return r.Actor == "driver" && r.MessageType == "driver.RouteRequest" })
	msg := find(request, func(r trace.Record) bool { return r.MessageType == request && r.Actor == "domain/traced" })
	job := find("job", func(r trace.Record) bool { return r.Kind == trace.KindJob })
	for _, c := range []struct {
		name          string
		child, parent trace.Record
	}{{"route", route, api}, {"request", msg, route}, {"job", job, msg}} {
		if c.child.ParentSpanID != c.parent.SpanID {
			t.Errorf("%s: parent %q, want %q (%s)", c.name, c.child.ParentSpanID, c.parent.SpanID, dump(records))
		}
	}
	if msg.Enqueued.IsZero() || msg.Started.Before(msg.Enqueued) {
		t.Errorf("request message has no mailbox wait: %+v", msg)
	}
	order := []time.Time{api.Started, route.Started, msg.Started, job.Started}
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

func dump(records []trace.Record) string {
	b, _ := json.MarshalIndent(records, "", " ")
	return string(b)
}
