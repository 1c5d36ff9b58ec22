package render

import (
	"encoding/json"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/vmsup/vmsup/actors/trace/record"
)

// ChromeEvent is one event of the Chrome trace-event format (the JSON
// Object Format that Perfetto and chrome://tracing open).
type ChromeEvent struct {
	// Name is the slice's label (message type, job, QMP command), the flow's
	// name, or the metadata kind ("thread_name").
	Name string `json:"name"`
	// Cat is the category: the record's kind, or "flow".
	Cat string `json:"cat,omitempty"`
	// Ph is the phase: "X" complete, "M" metadata, "s"/"f" flow start/end.
	Ph string `json:"ph"`
	// Ts is the time in microseconds since the first record.
	Ts float64 `json:"ts"`
	// Dur is the duration of a complete event in microseconds.
	Dur *float64 `json:"dur,omitempty"`
	// Pid is the process: always 1.
	Pid int `json:"pid"`
	// Tid is the track.
	Tid int `json:"tid"`
	// ID pairs the two events of a flow (from 1).
	ID uint64 `json:"id,omitempty"`
	// Bp is the binding point of a flow end: "e" binds it to the slice
	// that encloses it.
	Bp string `json:"bp,omitempty"`
	// Args are shown with the event: ids, sender, wait, QMP outcome, or
	// the name of a track.
	Args map[string]any `json:"args,omitempty"`
}

// ChromeTrace is the top-level object of the JSON Object Format.
type ChromeTrace struct {
	// TraceEvents are the events.
	TraceEvents []ChromeEvent `json:"traceEvents"`
	// DisplayTimeUnit is "ms".
	DisplayTimeUnit string `json:"displayTimeUnit"`
	// OtherData holds start_time, the instant of ts 0, and the number of
	// records.
	OtherData map[string]any `json:"otherData,omitempty"`
}

// chromePID is the one process of the export.
const chromePID = 1

// WriteChrome writes the records as Chrome trace-event JSON (the JSON Object
// Format, with "traceEvents" and "displayTimeUnit") that Perfetto and
// chrome://tracing open:
//
//   - one track (tid, named by a thread_name metadata event) per actor for
//     the messages it handles, one for its jobs ("domain/NAME jobs") and one
//     for its QMP commands ("monitor/NAME qmp"), since jobs and commands
//     run in goroutines beside the actor's handling; work that overlaps on
//     a track spills to numbered tracks ("domain/NAME jobs 2"), because
//     complete events of one track must nest;
//   - a complete event ("X") per record: message handling, job, QMP
//     command or API call, with its ids, sender, mailbox wait, job id and
//     QMP outcome in args;
//   - a flow ("s" then "f" with bp "e") from each cause to its effect: from
//     the span that sent a message (or its sender's track) at the send time
//     to the start of its handling, and from a message to the job or QMP
//     command it started.
//
// Times are microseconds since the earliest record; otherData.start_time
// holds that instant.
func WriteChrome(w io.Writer, records []record.Record) error {
	return json.NewEncoder(w).Encode(ChromeExport(records))
}

// ChromeExport builds the Chrome trace of the records; WriteChrome writes
// it.
func ChromeExport(records []record.Record) ChromeTrace {
	recs := slices.Clone(records)
	record.Sort(recs)
	idx := indexRecords(recs)
	out := ChromeTrace{DisplayTimeUnit: "ms", TraceEvents: []ChromeEvent{}}
	if len(recs) == 0 {
		return out
	}
	base := recs[0].Started
	for _, r := range recs {
		for _, t := range []time.Time{r.Enqueued, r.Started} {
			if !t.IsZero() && (base.IsZero() || t.Before(base)) {
				base = t
			}
		}
	}
	us := func(t time.Time) float64 {
		if t.IsZero() || base.IsZero() {
			return 0
		}
		return float64(t.Sub(base).Nanoseconds()) / 1e3 // µs with ns precision
	}
	out.OtherData = map[string]any{"start_time": base.Format(time.RFC3339Nano), "records": len(recs)}
	out.TraceEvents = append(out.TraceEvents, ChromeEvent{
		Name: "process_name", Ph: "M", Pid: chromePID, Args: map[string]any{"name": "vmsup"},
	})

	// Tracks: a base name per record, split into lanes where slices would
	// overlap. Lanes are numbered tids in order of first use.
	type lane struct {
		tid int
		end time.Time
	}
	lanes := map[string][]*lane{}
	nextTid := 1
	tidOf := make([]int, len(recs))
	newTrack := func(name string) int {
		tid := nextTid
		nextTid++
		out.TraceEvents = append(out.TraceEvents,
			ChromeEvent{Name: "thread_name", Ph: "M", Pid: chromePID, Tid: tid, Args: map[string]any{"name": name}},
			ChromeEvent{Name: "thread_sort_index", Ph: "M", Pid: chromePID, Tid: tid, Args: map[string]any{"sort_index": tid}})
		return tid
	}
	messageTrack := map[string]int{} // actor → tid of its first message lane
	for i := range recs {
		r := &recs[i]
		name := trackName(r)
		end := r.Ended
		if end.Before(r.Started) {
			end = r.Started
		}
		var chosen *lane
		for _, l := range lanes[name] {
			if !r.Started.Before(l.end) {
				chosen = l
				break
			}
		}
		if chosen == nil {
			n := len(lanes[name]) + 1
			label := name
			if n > 1 {
				label += " " + strconv.Itoa(n)
			}
			chosen = &lane{tid: newTrack(label)}
			lanes[name] = append(lanes[name], chosen)
		}
		chosen.end = end
		tidOf[i] = chosen.tid
		if r.Kind == record.KindMessage {
			if _, ok := messageTrack[r.Actor]; !ok {
				messageTrack[r.Actor] = chosen.tid
			}
		}
	}

	pos := map[*record.Record]int{}
	for i := range recs {
		pos[&recs[i]] = i
	}
	flow := uint64(0)
	for i := range recs {
		r := &recs[i]
		out.TraceEvents = append(out.TraceEvents, ChromeEvent{
			Name: r.Name(), Cat: string(r.Kind), Ph: "X",
			Ts: us(r.Started), Dur: ptr(max(us(r.Ended)-us(r.Started), 0)),
			Pid: chromePID, Tid: tidOf[i], Args: chromeArgs(r),
		})
		// The flow from cause to effect.
		srcTid, sendAt := 0, r.Enqueued
		if sendAt.IsZero() || r.Kind != record.KindMessage {
			sendAt = r.Started
		}
		if p := idx.parent(r); p != nil {
			srcTid = tidOf[pos[p]]
			// A flow start binds to the slice around it: keep it inside the
			// parent's slice.
			if sendAt.Before(p.Started) {
				sendAt = p.Started
			}
			if !p.Ended.IsZero() && sendAt.After(p.Ended) {
				sendAt = p.Ended
			}
		} else if tid, ok := messageTrack[r.Sender]; ok && r.Kind == record.KindMessage && !r.Enqueued.IsZero() {
			srcTid = tid
		}
		if srcTid == 0 || srcTid == tidOf[i] && !sendAt.Before(r.Started) {
			continue
		}
		flow++
		id := flow
		out.TraceEvents = append(out.TraceEvents,
			ChromeEvent{Name: "send", Cat: "flow", Ph: "s", ID: id, Ts: min(us(sendAt), us(r.Started)), Pid: chromePID, Tid: srcTid},
			ChromeEvent{Name: "send", Cat: "flow", Ph: "f", Bp: "e", ID: id, Ts: us(r.Started), Pid: chromePID, Tid: tidOf[i]})
	}
	return out
}

func trackName(r *record.Record) string {
	name := r.Actor
	if name == "" {
		name = string(r.Kind)
	}
	switch r.Kind {
	case record.KindJob:
		return name + " jobs"
	case record.KindQMP:
		if commandTarget(r.Actor) == GuestAgent {
			return name + " commands"
		}
		return name + " qmp"
	}
	return name
}

func chromeArgs(r *record.Record) map[string]any {
	a := map[string]any{"span_id": r.SpanID}
	if r.TraceID != "" {
		a["trace_id"] = r.TraceID
	}
	if r.ParentSpanID != "" {
		a["parent_span_id"] = r.ParentSpanID
	}
	if r.Sender != "" {
		a["sender"] = r.Sender
	}
	if w := r.Wait(); w != 0 {
		a["wait_us"] = float64(w) / 1e3
	}
	if r.JobID != 0 {
		a["job_id"] = r.JobID
	}
	if r.QMP != nil {
		a["qmp_command"] = r.QMP.Command
		a["qmp_outcome"] = r.QMP.Outcome
		a["qmp_duration_us"] = float64(r.QMP.Duration) / 1e3
	}
	if r.Note != "" {
		a["note"] = r.Note
	}
	return a
}

func ptr[T any](v T) *T { return &v }
