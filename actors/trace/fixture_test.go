package trace_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors/trace"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// fixtureTrace is the request id of the fixture.
const fixtureTrace = "5f3a1c-1"

var t0 = time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

// startRequest is a hand-built trace of one "start web1" call: the API asks
// the driver, which tells the domain; the domain runs job 1 "start", whose
// goroutine asks the monitor for query-status and cont. The records are in
// the order they would be recorded (by end), not by start.
func startRequest() []trace.Record {
	us, ms := time.Microsecond, time.Millisecond
	return []trace.Record{
		{TraceID: fixtureTrace, SpanID: "5f3a1c-2", ParentSpanID: fixtureTrace, Kind: trace.KindMessage,
			Actor: "driver", MessageType: "driver.StartRequest",
			Enqueued: at(10 * us), Started: at(25 * us), Ended: at(40 * us)},
		{TraceID: fixtureTrace, SpanID: "5f3a1c-3", ParentSpanID: "5f3a1c-2", Kind: trace.KindMessage,
			Actor: "domain/web1", MessageType: "domain.StartRequest", Sender: "driver",
			Enqueued: at(35 * us), Started: at(75 * us), Ended: at(110 * us)},
		{TraceID: fixtureTrace, SpanID: "5f3a1c-4", ParentSpanID: "job-1", Kind: trace.KindMessage,
			Actor: "monitor/web1", MessageType: "monitor.Command", JobID: 1,
			Enqueued: at(80 * ms), Started: at(80*ms + 30*us), Ended: at(80*ms + 50*us)},
		{TraceID: fixtureTrace, SpanID: "5f3a1c-5", ParentSpanID: "5f3a1c-4", Kind: trace.KindQMP,
			Actor: "monitor/web1", JobID: 1, Started: at(80*ms + 60*us), Ended: at(81*ms + 300*us),
			QMP: &trace.QMPRecord{Command: "query-status", Duration: 1200 * us, Outcome: "ok"}},
		{TraceID: fixtureTrace, SpanID: "5f3a1c-6", ParentSpanID: "job-1", Kind: trace.KindMessage,
			Actor: "monitor/web1", MessageType: "monitor.Command", JobID: 1,
			Enqueued: at(81*ms + 500*us), Started: at(81*ms + 520*us), Ended: at(81*ms + 540*us)},
		{TraceID: fixtureTrace, SpanID: "5f3a1c-7", ParentSpanID: "5f3a1c-6", Kind: trace.KindQMP,
			Actor: "monitor/web1", JobID: 1, Started: at(81*ms + 560*us), Ended: at(84 * ms),
			QMP: &trace.QMPRecord{Command: "cont", Duration: 2400 * us, Outcome: "ok"}},
		{TraceID: fixtureTrace, SpanID: "job-1", ParentSpanID: "5f3a1c-3", Kind: trace.KindJob,
			Actor: "domain/web1", JobID: 1, Note: "start",
			Enqueued: at(100 * us), Started: at(120 * us), Ended: at(84*ms + 200*us)},
		{TraceID: fixtureTrace, SpanID: fixtureTrace, Kind: trace.KindAPI, Actor: "api", Note: "ok",
			Started: at(0), Ended: at(84*ms + 400*us)},
	}
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test -run %s -update rewrites it)\n--- got\n%s\n--- want\n%s", path, t.Name(), got, want)
	}
}

// sameRecords compares records through their JSON encoding, so that times
// compare by instant.
func sameRecords(t *testing.T, got, want []trace.Record) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if !bytes.Equal(g, w) {
		t.Fatalf("records differ\n got: %s\nwant: %s", g, w)
	}
}
