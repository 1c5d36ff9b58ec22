package record_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors/trace/record"
)

func TestName(t *testing.T) {
	for _, c := range []struct {
		r    record.Record
		want string
	}{
		{record.Record{Kind: record.KindMessage, MessageType: "domain.StartRequest"}, "domain.StartRequest"},
		{record.Record{Kind: record.KindJob, JobID: 7, Note: "start"}, "job 7 start"},
		{record.Record{Kind: record.KindJob, JobID: 7}, "job 7"},
		{record.Record{Kind: record.KindQMP, QMP: &record.QMPRecord{Command: "cont"}}, "cont"},
		{record.Record{Kind: record.KindQMP}, "qmp"},
		{record.Record{Kind: record.KindAPI, TraceID: "r-1"}, "api r-1"},
		{record.Record{Kind: "other"}, "other"},
	} {
		if got := c.r.Name(); got != c.want {
			t.Errorf("%+v: Name = %q, want %q", c.r, got, c.want)
		}
	}
}

func TestWaitDurationSort(t *testing.T) {
	t0 := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	r := record.Record{Enqueued: t0, Started: t0.Add(time.Millisecond), Ended: t0.Add(3 * time.Millisecond)}
	if r.Wait() != time.Millisecond || r.Duration() != 2*time.Millisecond {
		t.Errorf("Wait %s, Duration %s", r.Wait(), r.Duration())
	}
	if (record.Record{Started: t0}).Wait() != 0 || (record.Record{Started: t0}).Duration() != 0 {
		t.Error("an unknown time must give zero")
	}
	recs := []record.Record{
		{SpanID: "c", Started: t0.Add(2)},
		{SpanID: "a", Started: t0, Enqueued: t0.Add(-1)},
		{SpanID: "b1", Started: t0.Add(1)},
		{SpanID: "a0", Started: t0, Enqueued: t0.Add(-2)},
		{SpanID: "b2", Started: t0.Add(1)},
	}
	record.Sort(recs)
	var got string
	for _, r := range recs {
		got += r.SpanID + " "
	}
	if got != "a0 a b1 b2 c " {
		t.Errorf("Sort: %s", got)
	}
}

// TestJSON pins the JSON names of a record, which the API and the trace
// log use.
func TestJSON(t *testing.T) {
	t0 := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	r := record.Record{TraceID: "r", SpanID: "s", ParentSpanID: "p", Kind: record.KindQMP, Actor: "monitor/web1",
		MessageType: "m", Sender: "x", Enqueued: t0, Started: t0, Ended: t0, JobID: 3,
		QMP: &record.QMPRecord{Command: "cont", Duration: 5, Outcome: record.OutcomeOK}, Note: "n"}
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"trace_id":"r","span_id":"s","parent_span_id":"p","kind":"qmp","actor":"monitor/web1","message_type":"m","sender":"x",` +
		`"enqueued":"2024-05-01T10:00:00Z","started":"2024-05-01T10:00:00Z","ended":"2024-05-01T10:00:00Z","job_id":3,` +
		`"qmp":{"command":"cont","duration_ns":5,"outcome":"ok"},"note":"n"}`
	if string(data) != want {
		t.Errorf("JSON\n got %s\nwant %s", data, want)
	}
	if data, _ := json.Marshal(record.Record{SpanID: "s", Kind: record.KindMessage}); string(data) != `{"span_id":"s","kind":"message","actor":""}` {
		t.Errorf("empty fields are not omitted: %s", data)
	}
}
