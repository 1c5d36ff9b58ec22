// Package trace records what vmsup's actors do on behalf of each API call:
// every message (actor, type, sender, when it was enqueued, when its
// handling began and ended), every job and every QMP command. Records go
// into a bounded ring buffer (Recorder) that never blocks an actor and costs
// a single atomic load when tracing is off.
//
// # Trace context
//
// The trace id of a record is the request id of the API call
// (actors.Request.RequestID). Each message gets a span id when it is sent;
// its parent span is the ParentID of its actors.Request when it has one,
// otherwise the span of the message the sending actor was handling,
// otherwise the trace's root span, whose id is the trace id itself (the
// KindAPI record). A job record's SpanID must equal the ParentID its job
// puts on the requests it sends (today "job-N"), so that QMP commands hang
// under their job. Current tells a handler the span of its message.
//
// # Wiring
//
//	rec := trace.New(trace.Options{})
//	system.Root.WithSenderMiddleware(trace.SenderMiddleware(rec)) // before any send
//	props := actor.PropsFromProducer(producer,
//		actor.WithReceiverMiddleware(trace.ReceiverMiddleware(rec, trace.ActorName)),
//		actor.WithSenderMiddleware(trace.SenderMiddleware(rec)))
//
// The sender middleware stamps the send time and span ids into the message
// itself when it is a pointer to a struct that embeds an actors.Request
// (actors.Request.TraceStamp: no allocation but the stamp), else into the
// envelope's header (HeaderKey); the receiver middleware reads them and
// records one Record per user message when its handling ends. Jobs, QMP
// commands and API calls are recorded by their owners with Recorder.Record,
// with times from Now and span ids from NewSpanID.
//
// # Sinks
//
//   - zerolog JSON lines: NewLogSink, Recorder.LogTo, Recorder.WriteTo,
//     and DecodeJSONLines to read them back;
//   - a live stream: Recorder.Subscribe;
//   - Chrome trace-event JSON for Perfetto and chrome://tracing, and a
//     picture of one request (Mermaid, SVG): package actors/trace/render;
//   - OpenTelemetry: package actors/trace/otelexport.
//
// # Packages
//
// The records themselves (Record, Kind, QMPRecord) are defined in package
// actors/trace/record, which needs only the standard library; the names
// here are aliases of them. The renderers and the OpenTelemetry exporter
// live in their own packages, so that a program that records traces does
// not build them unless it imports them.
package trace
