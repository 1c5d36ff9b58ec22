package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/actors/trace/render"
	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/domain"
)

// Tuning of the /v1/trace/follow stream.
const (
	// FollowBuffer is the number of records a follower's subscription
	// holds while the handler writes to a slow client. When it is full the
	// recorder drops records for this follower (and never waits).
	FollowBuffer = trace.DefaultSubscriptionBuffer
	// FollowNoticeEvery is how often the stream reports records it dropped
	// since its last report.
	FollowNoticeEvery = time.Second
	// FollowStallTimeout ends the stream of a client that has not taken a
	// single write for this long.
	FollowStallTimeout = 30 * time.Second
	// maxTraceID bounds the length of a request id in a trace route.
	maxTraceID = 128
)

var errTraceOff = withStatus(http.StatusConflict,
	errors.New("tracing is off in this daemon (it runs with --trace=false); restart it with --trace to record"))

// tracer returns the driver's trace recorder, or an error when there is
// none or it does not record.
func (s *Server) tracer() (*trace.Recorder, error) {
	rec := s.drv.Trace()
	if !rec.Enabled() {
		return nil, errTraceOff
	}
	return rec, nil
}

// traceQuery reads the filters shared by the trace routes: ?domain= (a
// valid name) and ?request= (a request id).
func traceQuery(r *http.Request, allowed ...string) (dom, request string, q map[string][]string, err error) {
	vals, err := query(r, allowed...)
	if err != nil {
		return "", "", nil, err
	}
	dom, request = vals.Get("domain"), vals.Get("request")
	if dom != "" {
		if err := domain.ValidateName(dom); err != nil {
			return "", "", nil, badRequest(err)
		}
	}
	if vals.Has("request") {
		if err := checkTraceID(request); err != nil {
			return "", "", nil, err
		}
	}
	return dom, request, vals, nil
}

// checkTraceID accepts a request id of at most 128 printable ASCII
// characters without spaces.
func checkTraceID(id string) error {
	if id == "" || len(id) > maxTraceID {
		return badRequest(fmt.Errorf("request id %q: want 1 to %d characters, such as the X-Request-Id of a call", id, maxTraceID))
	}
	for _, c := range []byte(id) {
		if c <= ' ' || c >= 0x7f {
			return badRequest(fmt.Errorf("request id %q: only printable ASCII without spaces", id))
		}
	}
	return nil
}

// domainFilter matches the records of one domain: those whose actor or
// sender is domain/NAME, monitor/NAME or agent/NAME (its guest agent).
// API records have actor "api"; they are matched by trace (see
// selectRecords and the follow handler).
func domainFilter(name string) func(*trace.Record) bool {
	dom, mon, ag := "domain/"+name, "monitor/"+name, "agent/"+name
	return func(r *trace.Record) bool {
		return r.Actor == dom || r.Actor == mon || r.Actor == ag || r.Sender == dom || r.Sender == mon || r.Sender == ag
	}
}

// selectRecords returns the buffered records of a request and/or domain,
// ordered by start time. For a domain, the API record of each call that
// reached it is included.
func selectRecords(rec *trace.Recorder, dom, request string) []trace.Record {
	var out []trace.Record
	if request != "" {
		out = rec.ByTrace(request)
	} else {
		out = rec.Snapshot()
	}
	if dom != "" {
		match := domainFilter(dom)
		traces := map[string]bool{}
		for i := range out {
			if match(&out[i]) && out[i].TraceID != "" {
				traces[out[i].TraceID] = true
			}
		}
		kept := out[:0]
		for i := range out {
			if match(&out[i]) || out[i].Kind == trace.KindAPI && traces[out[i].TraceID] {
				kept = append(kept, out[i])
			}
		}
		out = kept
	}
	trace.Sort(out)
	if out == nil {
		out = []trace.Record{}
	}
	return out
}

// traceList answers GET /v1/trace: the buffered records, of one request
// and/or one domain, the newest ?limit=N of them (all when 0 or absent),
// ordered by start time.
func (s *Server) traceList(w http.ResponseWriter, r *http.Request) {
	dom, request, q, err := traceQuery(r, "domain", "request", "limit")
	if err != nil {
		writeError(w, err)
		return
	}
	limit := 0
	if v := q["limit"]; len(v) > 0 {
		if limit, err = strconv.Atoi(v[0]); err != nil || limit < 0 {
			writeError(w, badRequest(fmt.Errorf("query parameter limit=%q: want a count such as 100 (0: all)", v[0])))
			return
		}
	}
	rec, err := s.tracer()
	if err != nil {
		writeError(w, err)
		return
	}
	out := selectRecords(rec, dom, request)
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	writeJSON(w, http.StatusOK, out)
}

// traceChrome answers GET /v1/trace/chrome: the buffered records (of one
// request and/or domain) as Chrome trace-event JSON.
func (s *Server) traceChrome(w http.ResponseWriter, r *http.Request) {
	dom, request, _, err := traceQuery(r, "domain", "request")
	if err != nil {
		writeError(w, err)
		return
	}
	rec, err := s.tracer()
	if err != nil {
		writeError(w, err)
		return
	}
	records := selectRecords(rec, dom, request)
	if request != "" && len(records) == 0 {
		writeError(w, noRecords(rec, request))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = render.WriteChrome(w, records)
}

// noRecords is the 404 of a request whose records are not in the ring.
func noRecords(rec *trace.Recorder, id string) error {
	why := "no such request"
	if n := rec.Evicted(); n > 0 {
		why = fmt.Sprintf("no such request, or its records were pushed out of the ring (%d records kept; %d evicted so far)", rec.Capacity(), n)
	}
	return withStatus(http.StatusNotFound, fmt.Errorf("no trace records for request %q: %s", id, why))
}

// traceRequest answers GET /v1/trace/request/{id}: the records of one
// request as JSON (default), or its sequence diagram as Mermaid text or
// SVG.
func (s *Server) traceRequest(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "format")
	if err != nil {
		writeError(w, err)
		return
	}
	id := r.PathValue("id")
	if err := checkTraceID(id); err != nil {
		writeError(w, err)
		return
	}
	format := q.Get("format")
	if format == "" {
		format = api.FormatJSON
	}
	if format != api.FormatJSON && format != api.FormatMermaid && format != api.FormatSVG {
		writeError(w, badRequest(fmt.Errorf("query parameter format=%q: want json, mermaid or svg", format)))
		return
	}
	rec, err := s.tracer()
	if err != nil {
		writeError(w, err)
		return
	}
	records := rec.ByTrace(id)
	if len(records) == 0 {
		writeError(w, noRecords(rec, id))
		return
	}
	switch format {
	case api.FormatJSON:
		writeJSON(w, http.StatusOK, records)
	case api.FormatMermaid:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_ = render.WriteMermaid(w, records)
	case api.FormatSVG:
		w.Header().Set("Content-Type", "image/svg+xml")
		w.WriteHeader(http.StatusOK)
		_ = render.WriteSVG(w, records)
	}
}

// traceFollow streams records as NDJSON while they are recorded, until
// the client goes away or the daemon stops. The records come from a
// bounded subscription (FollowBuffer): a client that reads slowly loses
// records, the recorder and the actors never wait for it. Lost records are
// reported by a TraceNotice line ("dropped") at most every
// FollowNoticeEvery; the stream ends with an "end" notice when the daemon
// stops, and without one when the client has taken no write for
// FollowStallTimeout.
func (s *Server) traceFollow(w http.ResponseWriter, r *http.Request) {
	dom, _, _, err := traceQuery(r, "domain")
	if err != nil {
		writeError(w, err)
		return
	}
	rec, err := s.tracer()
	if err != nil {
		writeError(w, err)
		return
	}
	var (
		filter  func(trace.Record) bool
		matches func(*trace.Record) bool
		traces  *traceSet
	)
	if dom != "" {
		matches = domainFilter(dom)
		traces = newTraceSet(4096)
		// The filter runs in the recording goroutine (an actor): it only
		// compares strings. API records are kept here and matched by
		// trace below; there is one per call.
		filter = func(r trace.Record) bool { return r.Kind == trace.KindAPI || matches(&r) }
	}
	sub := rec.Subscribe(FollowBuffer, filter)
	defer sub.Close()

	ctx := r.Context()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", api.ContentTypeNDJSON)
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	// Undo the write deadlines when the stream ends: the connection may
	// serve other requests.
	defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
	enc := json.NewEncoder(w)
	// flush sends what was encoded, bounded by FollowStallTimeout. The
	// deadline is set before the encoding too: the response buffer writes
	// to the connection when it is full.
	deadline := func() { _ = rc.SetWriteDeadline(time.Now().Add(FollowStallTimeout)) }
	var reported uint64
	notice := func(kind, reason string) bool {
		total := sub.Dropped()
		if kind == api.NoticeDropped && total == reported {
			return true
		}
		n := api.TraceNotice{Kind: kind, Dropped: total - reported, TotalDropped: total, Time: time.Now(), Reason: reason}
		reported = total
		deadline()
		return enc.Encode(n) == nil && rc.Flush() == nil
	}
	// keep reports whether a record goes to this follower.
	keep := func(r *trace.Record) bool {
		if traces == nil {
			return true
		}
		if r.Kind == trace.KindAPI {
			return traces.has(r.TraceID)
		}
		if r.TraceID != "" {
			traces.add(r.TraceID)
		}
		return true
	}
	tick := time.NewTicker(FollowNoticeEvery)
	defer tick.Stop()
	for {
		select {
		case record, ok := <-sub.C:
			if !ok {
				return
			}
			// Write what is waiting (up to a batch) and flush once.
			deadline()
			for n := 0; ; n++ {
				if keep(&record) && enc.Encode(record) != nil {
					return
				}
				if n == 255 {
					break
				}
				select {
				case record, ok = <-sub.C:
				default:
					ok = false
				}
				if !ok {
					break
				}
			}
			if rc.Flush() != nil {
				return
			}
		case <-tick.C:
			if !notice(api.NoticeDropped, "the reader fell behind") {
				return
			}
		case <-s.done:
			notice(api.NoticeEnd, "the daemon is stopping")
			return
		case <-ctx.Done():
			return
		}
	}
}

// traceSet remembers the newest n trace ids.
type traceSet struct {
	ids  map[string]struct{}
	ring []string
	next int
}

func newTraceSet(n int) *traceSet {
	return &traceSet{ids: make(map[string]struct{}, n), ring: make([]string, n)}
}

func (t *traceSet) has(id string) bool {
	_, ok := t.ids[id]
	return ok
}

func (t *traceSet) add(id string) {
	if t.has(id) {
		return
	}
	if old := t.ring[t.next]; old != "" {
		delete(t.ids, old)
	}
	t.ring[t.next] = id
	t.ids[id] = struct{}{}
	t.next = (t.next + 1) % len(t.ring)
}
