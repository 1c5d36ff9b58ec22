package render_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/vmsup/vmsup/actors/trace/internal/fixture"
	"github.com/vmsup/vmsup/actors/trace/record"
	"github.com/vmsup/vmsup/actors/trace/render"
)

func TestChromeExport(t *testing.T) {
	recs := fixture.StartRequest()
	var buf bytes.Buffer
	if err := render.WriteChrome(&buf, recs); err != nil {
		t.Fatal(err)
	}
	fixture.ValidChrome(t, buf.Bytes())

	var tr render.ChromeTrace
	if err := json.Unmarshal(buf.Bytes(), &tr); err != nil {
		t.Fatal(err)
	}
	tracks := map[int]string{}
	var complete, flowStarts int
	for _, ev := range tr.TraceEvents {
		switch ev.Ph {
		case "M":
			if ev.Name == "thread_name" {
				tracks[ev.Tid] = ev.Args["name"].(string)
			}
		case "X":
			complete++
		case "s":
			flowStarts++
		}
	}
	var names []string
	for tid := 1; tid <= len(tracks); tid++ {
		names = append(names, tracks[tid])
	}
	if got, want := strings.Join(names, ","), "api,domain/web1,domain/web1 jobs,monitor/web1,monitor/web1 qmp"; got != want {
		t.Errorf("tracks %s, want %s", got, want)
	}
	if complete != len(recs) {
		t.Errorf("%d complete events, want one per record (%d)", complete, len(recs))
	}
	// Every record but the root has a cause on another track or earlier.
	if flowStarts != len(recs)-1 {
		t.Errorf("%d flows, want %d", flowStarts, len(recs)-1)
	}
	if tr.OtherData["start_time"] != fixture.T0.Format("2006-01-02T15:04:05Z07:00") {
		t.Errorf("start_time = %v", tr.OtherData["start_time"])
	}
}

// Jobs that overlap (an async job and a query job) go to two tracks, since
// the complete events of one track must nest.
func TestChromeOverlapSplitsTracks(t *testing.T) {
	recs := []record.Record{
		{TraceID: "a", SpanID: "job-1", Kind: record.KindJob, Actor: "domain/web1", JobID: 1, Started: fixture.At(0), Ended: fixture.At(100)},
		{TraceID: "b", SpanID: "job-2", Kind: record.KindJob, Actor: "domain/web1", JobID: 2, Started: fixture.At(50), Ended: fixture.At(150)},
		{TraceID: "b", SpanID: "job-3", Kind: record.KindJob, Actor: "domain/web1", JobID: 3, Started: fixture.At(160), Ended: fixture.At(170)},
	}
	var buf bytes.Buffer
	if err := render.WriteChrome(&buf, recs); err != nil {
		t.Fatal(err)
	}
	fixture.ValidChrome(t, buf.Bytes())
	if !strings.Contains(buf.String(), `"domain/web1 jobs 2"`) {
		t.Errorf("no second job track in %s", buf.String())
	}
}

func TestChromeEmpty(t *testing.T) {
	var buf bytes.Buffer
	if err := render.WriteChrome(&buf, nil); err != nil {
		t.Fatal(err)
	}
	fixture.ValidChrome(t, buf.Bytes())
}
