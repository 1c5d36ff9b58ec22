package vm

import (
	"fmt"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
)

// The trace of async jobs: each progress report of the async job, each
// job that its mask keeps waiting and each job that it lets run beside
// it is a record of the domain actor (Note says it in words), so the
// Perfetto export and the Mermaid picture show the mask's decisions.

// jobProgressed is the lane's Progressed hook.
func (dom *domainActor) jobProgressed(j *job, p actors.Progress) {
	dom.traceNote(j, "lane.progress", j.Name()+": "+p.String())
}

// jobRefused is the lane's Refused hook.
func (dom *domainActor) jobRefused(j, async *job) {
	ai := async.Info()
	dom.traceNote(j, "lane.mask", actors.MaskDecision(j.Name(), j.Kind(), &ai))
}

// traceBeside notes a job that starts beside the async job.
func (dom *domainActor) traceBeside(j *job) {
	a := dom.lane.Async()
	if a == nil || a == j {
		return
	}
	dom.traceNote(j, "lane.mask", fmt.Sprintf("%s runs beside %s: its mask allows %s", j.Name(), a.Name(), j.Kind()))
}

// traceNote records a point in j's trace, under the span of the message
// that queued it.
func (dom *domainActor) traceNote(j *job, what, note string) {
	if !dom.cfg.Trace.Enabled() || j.Data == nil {
		return
	}
	info, now := j.Info(), trace.Now()
	actorName := "domain/" + dom.name()
	dom.cfg.Trace.Record(trace.Record{TraceID: info.RequestID, SpanID: fmt.Sprintf("%s/%s-%d", jobSpan(dom.name(), info.ID), what, now.UnixNano()),
		ParentSpanID: j.Data.parentSpan, Kind: trace.KindMessage, Actor: actorName, Sender: actorName, MessageType: what,
		Enqueued: now, Started: now, Ended: now, JobID: info.ID, Note: note})
}

// asyncPhase calls the Async hook when j enters its async phase (begins)
// and when a job that was in it ends.
func (dom *domainActor) asyncPhase(j *job, begins bool) {
	d := j.Data
	if d == nil {
		return
	}
	switch {
	case begins && dom.lane.Async() == j && !d.async:
		d.async = true
	case !begins && d.async:
		d.async = false
	default:
		return
	}
	if h := dom.cfg.Hooks.Async; h != nil {
		h(dom.name(), jobInfo(j.Info()), begins)
	}
}
