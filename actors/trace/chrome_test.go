package trace_test

import (
	"bytes"
	"encoding/json"
	"math"
	"sort"
	"strings"
	"testing"

	"github.com/vmsup/vmsup/actors/trace"
)

// validateChrome checks data against the rules of the Trace Event Format
// (JSON Object Format) that Perfetto and chrome://tracing rely on:
//
//   - an object with a "traceEvents" array and, if present, a
//     "displayTimeUnit" of "ms" or "ns";
//   - every event has name (string), ph (a known phase), ts (a number of
//     microseconds, not negative), pid and tid (integers);
//   - a complete event ("X") has dur, a number not negative;
//   - flow events ("s", "t", "f") have an id; each flow has one "s" and one
//     "f" with the same cat and name, the "f" not before the "s"; a "bp"
//     is "e" if present;
//   - a metadata event ("M") is one of the known names with its argument
//     (args.name for *_name, args.sort_index for *_sort_index);
//   - every track with events is named by a thread_name event;
//   - the complete events of one track nest (no partial overlap), and each
//     flow event lies inside a complete event of its track (the slice it
//     binds to).
func validateChrome(t *testing.T, data []byte) {
	t.Helper()
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatalf("not a JSON object: %v", err)
	}
	if u, ok := top["displayTimeUnit"]; ok {
		var unit string
		if json.Unmarshal(u, &unit) != nil || unit != "ms" && unit != "ns" {
			t.Errorf("displayTimeUnit = %s, want \"ms\" or \"ns\"", u)
		}
	}
	raw, ok := top["traceEvents"]
	if !ok {
		t.Fatal(`no "traceEvents"`)
	}
	var events []map[string]any
	if err := json.Unmarshal(raw, &events); err != nil {
		t.Fatalf("traceEvents is not an array of objects: %v", err)
	}

	type slice struct{ ts, end float64 }
	type track struct{ pid, tid int }
	slices := map[track][]slice{}
	named := map[track]bool{}
	used := map[track]bool{}
	type flowEnd struct {
		ph, cat, name string
		ts            float64
		tr            track
	}
	flows := map[string][]flowEnd{}

	num := func(i int, ev map[string]any, key string) (float64, bool) {
		v, ok := ev[key].(float64)
		if !ok {
			t.Errorf("event %d %v: %q missing or not a number", i, ev, key)
		}
		return v, ok
	}
	integer := func(i int, ev map[string]any, key string) int {
		v, ok := num(i, ev, key)
		if ok && v != math.Trunc(v) {
			t.Errorf("event %d: %q = %v is not an integer", i, key, v)
		}
		return int(v)
	}
	for i, ev := range events {
		name, ok := ev["name"].(string)
		if !ok || name == "" {
			t.Errorf("event %d %v: no name", i, ev)
		}
		ph, _ := ev["ph"].(string)
		ts, _ := num(i, ev, "ts")
		if ts < 0 {
			t.Errorf("event %d: negative ts %v", i, ts)
		}
		tr := track{integer(i, ev, "pid"), integer(i, ev, "tid")}
		switch ph {
		case "X":
			dur, ok := num(i, ev, "dur")
			if ok && dur < 0 {
				t.Errorf("event %d: negative dur", i)
			}
			slices[tr] = append(slices[tr], slice{ts, ts + dur})
			used[tr] = true
		case "s", "t", "f":
			id, ok := ev["id"]
			if !ok {
				t.Errorf("flow event %d has no id", i)
			}
			if bp, ok := ev["bp"]; ok && bp != "e" {
				t.Errorf("flow event %d: bp %v, want \"e\"", i, bp)
			}
			cat, _ := ev["cat"].(string)
			key, _ := json.Marshal(id)
			flows[string(key)] = append(flows[string(key)], flowEnd{ph, cat, name, ts, tr})
			used[tr] = true
		case "M":
			args, _ := ev["args"].(map[string]any)
			switch name {
			case "process_name", "thread_name", "process_labels":
				if s, ok := args["name"].(string); !ok && name != "process_labels" || ok && s == "" {
					t.Errorf("metadata %d %s: no args.name", i, name)
				}
				if name == "thread_name" {
					named[tr] = true
				}
			case "process_sort_index", "thread_sort_index":
				if _, ok := args["sort_index"].(float64); !ok {
					t.Errorf("metadata %d %s: no args.sort_index", i, name)
				}
			default:
				t.Errorf("metadata event %d: unknown name %q", i, name)
			}
		case "B", "E", "i", "I", "C", "b", "n", "e", "P", "O", "N", "D", "R", "c":
			// Valid phases this exporter does not use.
		default:
			t.Errorf("event %d: unknown phase %q", i, ph)
		}
	}
	for tr := range used {
		if !named[tr] {
			t.Errorf("track %+v has events but no thread_name", tr)
		}
	}
	const eps = 1e-6
	for tr, ss := range slices {
		sort.SliceStable(ss, func(a, b int) bool {
			if ss[a].ts != ss[b].ts {
				return ss[a].ts < ss[b].ts
			}
			return ss[a].end > ss[b].end // the enclosing one first
		})
		var stack []slice
		for _, s := range ss {
			for len(stack) > 0 && stack[len(stack)-1].end <= s.ts+eps {
				stack = stack[:len(stack)-1]
			}
			if len(stack) > 0 && s.end > stack[len(stack)-1].end+eps {
				t.Errorf("track %+v: slice [%v, %v] overlaps [%v, %v] without nesting", tr, s.ts, s.end, stack[len(stack)-1].ts, stack[len(stack)-1].end)
			}
			stack = append(stack, s)
		}
	}
	inside := func(tr track, ts float64) bool {
		for _, s := range slices[tr] {
			if ts >= s.ts-eps && ts <= s.end+eps {
				return true
			}
		}
		return false
	}
	for id, ends := range flows {
		var s, f *flowEnd
		for i := range ends {
			switch ends[i].ph {
			case "s":
				if s != nil {
					t.Errorf("flow %s has two starts", id)
				}
				s = &ends[i]
			case "f":
				if f != nil {
					t.Errorf("flow %s has two ends", id)
				}
				f = &ends[i]
			}
		}
		if s == nil || f == nil {
			t.Errorf("flow %s is missing its start or end", id)
			continue
		}
		if s.cat != f.cat || s.name != f.name {
			t.Errorf("flow %s: start %s/%s and end %s/%s differ", id, s.cat, s.name, f.cat, f.name)
		}
		if f.ts < s.ts {
			t.Errorf("flow %s ends at %v before it starts at %v", id, f.ts, s.ts)
		}
		if !inside(s.tr, s.ts) || !inside(f.tr, f.ts) {
			t.Errorf("flow %s: an end lies outside any slice of its track", id)
		}
	}
}

func TestChromeExport(t *testing.T) {
	recs := startRequest()
	var buf bytes.Buffer
	if err := trace.WriteChrome(&buf, recs); err != nil {
		t.Fatal(err)
	}
	validateChrome(t, buf.Bytes())

	var tr trace.ChromeTrace
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
	if got, want := strings.Join(names, ","), "api,driver,domain/web1,domain/web1 jobs,monitor/web1,monitor/web1 qmp"; got != want {
		t.Errorf("tracks %s, want %s", got, want)
	}
	if complete != len(recs) {
		t.Errorf("%d complete events, want one per record (%d)", complete, len(recs))
	}
	// Every record but the root has a cause on another track or earlier.
	if flowStarts != len(recs)-1 {
		t.Errorf("%d flows, want %d", flowStarts, len(recs)-1)
	}
	if tr.OtherData["start_time"] != t0.Format("2006-01-02T15:04:05Z07:00") {
		t.Errorf("start_time = %v", tr.OtherData["start_time"])
	}
}

// Jobs that overlap (an async job and a query job) go to two tracks, since
// the complete events of one track must nest.
func TestChromeOverlapSplitsTracks(t *testing.T) {
	recs := []trace.Record{
		{TraceID: "a", SpanID: "job-1", Kind: trace.KindJob, Actor: "domain/web1", JobID: 1, Started: at(0), Ended: at(100)},
		{TraceID: "b", SpanID: "job-2", Kind: trace.KindJob, Actor: "domain/web1", JobID: 2, Started: at(50), Ended: at(150)},
		{TraceID: "b", SpanID: "job-3", Kind: trace.KindJob, Actor: "domain/web1", JobID: 3, Started: at(160), Ended: at(170)},
	}
	var buf bytes.Buffer
	if err := trace.WriteChrome(&buf, recs); err != nil {
		t.Fatal(err)
	}
	validateChrome(t, buf.Bytes())
	if !strings.Contains(buf.String(), `"domain/web1 jobs 2"`) {
		t.Errorf("no second job track in %s", buf.String())
	}
}

func TestChromeEmpty(t *testing.T) {
	var buf bytes.Buffer
	if err := trace.WriteChrome(&buf, nil); err != nil {
		t.Fatal(err)
	}
	validateChrome(t, buf.Bytes())
}
