package render

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/vmsup/vmsup/actors/trace/record"
)

// QEMU is the participant that QMP commands go to in sequence diagrams.
const QEMU = "QEMU"

// GuestAgent is the participant that guest agent commands go to: the
// records of kind qmp whose actor is a domain's agent ("agent/NAME").
const GuestAgent = "guest agent"

// commandTarget is who a command record's actor talks to.
func commandTarget(actor string) string {
	if strings.HasPrefix(actor, "agent/") {
		return GuestAgent
	}
	return QEMU
}

// The sequence model behind WriteMermaid and WriteSVG: participants in the
// order they first appear and the steps of the diagram in time order.

type stepKind int

const (
	stepArrow stepKind = iota
	stepReply
	stepActivate
	stepDeactivate
	stepNote
)

type seqStep struct {
	kind     stepKind
	from, to string // to is unused by activate, deactivate and note
	text     string
}

type sequence struct {
	traces       []string
	participants []string
	steps        []seqStep
}

type timedStep struct {
	at    time.Time
	order int
	step  seqStep
}

type spanKey struct{ trace, span string }

// recordIndex finds records by span.
type recordIndex map[spanKey]*record.Record

func indexRecords(records []record.Record) recordIndex {
	idx := make(recordIndex, len(records))
	for i := range records {
		k := spanKey{records[i].TraceID, records[i].SpanID}
		if _, ok := idx[k]; !ok && records[i].SpanID != "" {
			idx[k] = &records[i]
		}
	}
	return idx
}

func (idx recordIndex) parent(r *record.Record) *record.Record {
	if r.ParentSpanID == "" {
		return nil
	}
	return idx[spanKey{r.TraceID, r.ParentSpanID}]
}

// source is who sent a message: its Sender, else the actor of the span
// that caused it (a job sends from its goroutine, the API from a root
// context), else the API for a traced message.
func (idx recordIndex) source(r *record.Record) string {
	if r.Sender != "" {
		return r.Sender
	}
	if p := idx.parent(r); p != nil && p.Actor != "" {
		return p.Actor
	}
	if r.TraceID != "" {
		return "api"
	}
	return "external"
}

func buildSequence(records []record.Record) sequence {
	recs := slices.Clone(records)
	record.Sort(recs)
	idx := indexRecords(recs)
	var seq sequence
	var events []timedStep
	add := func(at time.Time, s seqStep) {
		events = append(events, timedStep{at: at, order: len(events), step: s})
	}
	// The first actor that each API call (trace, caller) asked.
	firstAsked := map[spanKey]string{}
	for i := range recs {
		if r := &recs[i]; r.Kind == record.KindMessage {
			k := spanKey{r.TraceID, idx.source(r)}
			if _, ok := firstAsked[k]; !ok {
				firstAsked[k] = r.Actor
			}
		}
	}
	seenTrace := map[string]bool{}
	for i := range recs {
		r := &recs[i]
		if r.TraceID != "" && !seenTrace[r.TraceID] {
			seenTrace[r.TraceID] = true
			seq.traces = append(seq.traces, r.TraceID)
		}
		switch r.Kind {
		case record.KindMessage:
			at := r.Enqueued
			if at.IsZero() {
				at = r.Started
			}
			text := r.MessageType
			if w := r.Wait(); w > 0 {
				text += " (wait " + formatDuration(w) + ")"
			}
			add(at, seqStep{kind: stepArrow, from: idx.source(r), to: r.Actor, text: text})
			if r.Note != "" {
				add(r.Started, seqStep{kind: stepNote, from: r.Actor, text: r.Note})
			}
		case record.KindJob:
			text := "job " + strconv.FormatUint(r.JobID, 10)
			if r.Note != "" {
				text += " " + r.Note
			}
			var parts []string
			if w := r.Wait(); w > 0 {
				parts = append(parts, "queued "+formatDuration(w))
			}
			if !r.Ended.IsZero() {
				parts = append(parts, "ran "+formatDuration(r.Duration()))
			}
			if len(parts) > 0 {
				text += " (" + strings.Join(parts, ", ") + ")"
			}
			add(r.Started, seqStep{kind: stepActivate, from: r.Actor})
			add(r.Started, seqStep{kind: stepNote, from: r.Actor, text: text})
			if !r.Ended.IsZero() {
				add(r.Ended, seqStep{kind: stepDeactivate, from: r.Actor})
			}
		case record.KindQMP:
			cmd, outcome, took := "qmp", "", r.Duration()
			if r.QMP != nil {
				cmd, outcome = r.QMP.Command, r.QMP.Outcome
				if r.QMP.Duration > 0 {
					took = r.QMP.Duration
				}
			}
			target := commandTarget(r.Actor)
			add(r.Started, seqStep{kind: stepArrow, from: r.Actor, to: target, text: cmd})
			if !r.Ended.IsZero() {
				if outcome == "" {
					outcome = "reply"
				}
				add(r.Ended, seqStep{kind: stepReply, from: target, to: r.Actor, text: outcome + " (" + formatDuration(took) + ")"})
			}
		case record.KindAPI:
			actorName := r.Actor
			if actorName == "" {
				actorName = "api"
			}
			add(r.Started, seqStep{kind: stepNote, from: actorName, text: "request " + r.TraceID})
			if r.Ended.IsZero() {
				continue
			}
			text := r.Note
			if text == "" {
				text = "reply"
			}
			text += " (" + formatDuration(r.Duration()) + ")"
			// The reply comes from the first actor the call asked.
			from := firstAsked[spanKey{r.TraceID, actorName}]
			if from == "" {
				add(r.Ended, seqStep{kind: stepNote, from: actorName, text: text})
			} else {
				add(r.Ended, seqStep{kind: stepReply, from: from, to: actorName, text: text})
			}
		}
	}
	slices.SortStableFunc(events, func(a, b timedStep) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.order - b.order
	})
	seen := map[string]bool{}
	declare := func(p string) {
		if p != "" && !seen[p] {
			seen[p] = true
			seq.participants = append(seq.participants, p)
		}
	}
	for _, e := range events {
		declare(e.step.from)
		declare(e.step.to)
		seq.steps = append(seq.steps, e.step)
	}
	return seq
}

// formatDuration prints d with three significant digits at most, in the
// largest unit that keeps it at least 1: 850ns, 12.3µs, 1.5ms, 2.04s.
func formatDuration(d time.Duration) string {
	if d < 0 {
		return "-" + formatDuration(-d)
	}
	unit, div := "ns", 1.0
	switch {
	case d >= time.Second:
		unit, div = "s", float64(time.Second)
	case d >= time.Millisecond:
		unit, div = "ms", float64(time.Millisecond)
	case d >= time.Microsecond:
		unit, div = "µs", float64(time.Microsecond)
	}
	v := float64(d) / div
	prec := 2
	switch {
	case v >= 100:
		prec = 0
	case v >= 10:
		prec = 1
	}
	s := strconv.FormatFloat(v, 'f', prec, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s + unit
}

// clip shortens s to at most n runes, marking the cut with "…", and puts
// it on one line.
func clip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func (s sequence) title() string {
	switch len(s.traces) {
	case 0:
		return "trace"
	case 1:
		return "request " + s.traces[0]
	default:
		return fmt.Sprintf("%d requests", len(s.traces))
	}
}
