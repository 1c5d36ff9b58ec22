package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/driver"
)

// TestSelectRecords: the domain filter keeps the records of domain/NAME
// and monitor/NAME (as actor or sender) and the API records of the calls
// that reached them; the request filter keeps one trace.
func TestSelectRecords(t *testing.T) {
	rec := trace.New(trace.Options{Capacity: 64})
	at := time.Now()
	add := func(traceID, kind, actor, sender string) {
		at = at.Add(time.Millisecond)
		rec.Record(trace.Record{TraceID: traceID, SpanID: fmt.Sprint(rec.Len() + 1), Kind: trace.Kind(kind), Actor: actor, Sender: sender, Started: at, Ended: at})
	}
	add("a", "message", "driver", "")            // lookup for a: not the domain's
	add("a", "message", "domain/web1", "")       // 2
	add("a", "message", "monitor/web1", "")      // 3
	add("a", "qmp", "monitor/web1", "")          // 4
	add("a", "message", "driver", "domain/web1") // 5: sent by the domain
	add("a", "api", "api", "")                   // 6: reached web1
	add("b", "message", "domain/web2", "")       // another domain
	add("b", "api", "api", "")                   // did not reach web1
	add("", "message", "domain/web10", "")       // a prefix is not a match

	spans := func(rs []trace.Record) string {
		var out []string
		for _, r := range rs {
			out = append(out, r.SpanID)
		}
		return strings.Join(out, ",")
	}
	if got := spans(selectRecords(rec, "web1", "")); got != "2,3,4,5,6" {
		t.Errorf("domain web1: %s", got)
	}
	if got := spans(selectRecords(rec, "", "b")); got != "7,8" {
		t.Errorf("request b: %s", got)
	}
	if got := spans(selectRecords(rec, "web1", "b")); got != "" {
		t.Errorf("domain web1, request b: %s", got)
	}
	if got := selectRecords(rec, "nosuch", ""); got == nil || len(got) != 0 {
		t.Errorf("no match: %#v, want an empty slice", got)
	}
}

// settledTrace returns the records of trace id once two reads 20 ms apart
// agree. An actor records the end of its handler just after it has sent
// its reply, so the last records of a call may land after the HTTP reply.
func (ts *testServer) settledTrace(t *testing.T, id string) []trace.Record {
	t.Helper()
	var last []trace.Record
	for deadline := time.Now().Add(5 * time.Second); ; {
		var records []trace.Record
		ts.ok(t, "GET", "/v1/trace?request="+id, nil, http.StatusOK, &records)
		if last != nil && len(records) == len(last) {
			return records
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s still growing after 5s: %d records", id, len(records))
		}
		last = records
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTraceRoutes: with a recorder, the records of a qmp call are found by
// its X-Request-Id in every form: JSON, Mermaid, SVG and Chrome; the
// follow stream shows a call while it runs and ends with a notice at
// Close.
func TestTraceRoutes(t *testing.T) {
	rec := trace.New(trace.Options{})
	ts := newTestServer(t, func(c *driver.Config) { c.Trace = rec })
	ts.ok(t, "POST", "/v1/domains", fmt.Appendf(nil, noneSpec, "tr"), http.StatusCreated, nil)
	ts.ok(t, "POST", "/v1/domains/tr/start", nil, http.StatusOK, nil)
	follow := ts.openFollow(t, "tr")
	r := ts.ok(t, "POST", "/v1/domains/tr/qmp", []byte(`{"execute":"query-status"}`), http.StatusOK, nil)
	id := r.header.Get(api.HeaderRequestID)

	records := ts.settledTrace(t, id)
	var sawAPI, qmp bool
	for _, r := range records {
		if r.TraceID != id {
			t.Fatalf("record of another trace: %+v", r)
		}
		sawAPI = sawAPI || r.Kind == trace.KindAPI
		qmp = qmp || r.Kind == trace.KindQMP && r.QMP.Command == "query-status" && r.Actor == "monitor/tr"
	}
	if !sawAPI || !qmp {
		t.Fatalf("records of %s lack the API call or the QMP command: %+v", id, records)
	}
	var byRoute []trace.Record
	ts.ok(t, "GET", "/v1/trace/request/"+id, nil, http.StatusOK, &byRoute)
	if len(byRoute) != len(records) {
		t.Errorf("/v1/trace/request/%s: %d records, /v1/trace?request: %d", id, len(byRoute), len(records))
	}
	ts.ok(t, "GET", "/v1/trace?domain=tr&limit=3", nil, http.StatusOK, &records)
	if len(records) != 3 {
		t.Errorf("limit=3: %d records", len(records))
	}
	for _, r := range records {
		if !strings.HasSuffix(r.Actor, "/tr") && r.Kind != trace.KindAPI {
			t.Errorf("domain=tr gave %+v", r)
		}
	}

	m := ts.do(t, "GET", "/v1/trace/request/"+id+"?format=mermaid", nil)
	if m.status != 200 || !strings.HasPrefix(m.header.Get("Content-Type"), "text/plain") ||
		!bytes.HasPrefix(m.body, []byte("sequenceDiagram\n")) || !bytes.Contains(m.body, []byte("query-status")) {
		t.Errorf("mermaid: %d %s\n%s", m.status, m.header.Get("Content-Type"), m.body)
	}
	svg := ts.do(t, "GET", "/v1/trace/request/"+id+"?format=svg", nil)
	if svg.status != 200 || svg.header.Get("Content-Type") != "image/svg+xml" {
		t.Errorf("svg: %d %s", svg.status, svg.header.Get("Content-Type"))
	}
	checkXML(t, svg.body)

	var chrome struct {
		TraceEvents []map[string]any `json:"traceEvents"`
	}
	ts.ok(t, "GET", "/v1/trace/chrome?request="+id, nil, http.StatusOK, &chrome)
	if len(chrome.TraceEvents) == 0 {
		t.Error("chrome export of the request has no events")
	}
	ts.ok(t, "GET", "/v1/trace/chrome", nil, http.StatusOK, &chrome)

	expectError(t, ts.do(t, "GET", "/v1/trace/request/nosuch-1", nil), 404, "no trace records")
	expectError(t, ts.do(t, "GET", "/v1/trace/chrome?request=nosuch-1", nil), 404, "no trace records")
	expectError(t, ts.do(t, "GET", "/v1/trace/request/"+id+"?format=png", nil), 400, "format")
	expectError(t, ts.do(t, "GET", "/v1/trace?domain=..%2Fx", nil), 400, "invalid domain name")
	expectError(t, ts.do(t, "GET", "/v1/trace?limit=-1", nil), 400, "limit")
	expectError(t, ts.do(t, "GET", "/v1/trace?request=a%20b", nil), 400, "request id")
	expectError(t, ts.do(t, "GET", "/v1/trace/follow?bogus=1", nil), 400, "bogus")

	// The follow stream saw the call: the domain's records and its API
	// record, but no record of the driver alone.
	got := follow.waitFor(t, func(r trace.Record) bool { return r.Kind == trace.KindAPI && r.TraceID == id })
	for _, r := range got {
		if r.Actor == "driver" && r.Sender != "domain/tr" {
			t.Errorf("follow ?domain=tr gave a driver record %+v", r)
		}
	}
	// Close ends the stream with an "end" notice.
	ts.api.Close()
	if n := follow.waitEnd(t); n == nil || n.Kind != api.NoticeEnd {
		t.Errorf("the stream ended with %+v, want an end notice", n)
	}
}

// TestTraceOff: without a recording recorder, the trace routes answer 409
// and say how to turn tracing on.
func TestTraceOff(t *testing.T) {
	for name, rec := range map[string]*trace.Recorder{"nil": nil, "disabled": trace.New(trace.Options{Disabled: true})} {
		t.Run(name, func(t *testing.T) {
			ts := newTestServer(t, func(c *driver.Config) { c.Trace = rec })
			for _, path := range []string{"/v1/trace", "/v1/trace/follow", "/v1/trace/chrome", "/v1/trace/request/x-1?format=mermaid"} {
				expectError(t, ts.do(t, "GET", path, nil), http.StatusConflict, "tracing is off")
			}
		})
	}
}

func checkXML(t *testing.T, data []byte) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(data))
	root := ""
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not XML: %v\n%s", err, data)
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
}

// followStream reads a /v1/trace/follow stream in the background.
type followStream struct {
	lines chan json.RawMessage
	ended chan error
}

func (ts *testServer) openFollow(t *testing.T, domain string) *followStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://vmsup/v1/trace/follow?domain="+domain, nil)
	resp, err := ts.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != api.ContentTypeNDJSON {
		t.Fatalf("follow: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	s := &followStream{lines: make(chan json.RawMessage, 1024), ended: make(chan error, 1)}
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			s.lines <- json.RawMessage(bytes.Clone(sc.Bytes()))
		}
		s.ended <- sc.Err()
	}()
	return s
}

// waitFor reads records until one matches and returns those it read.
func (s *followStream) waitFor(t *testing.T, match func(trace.Record) bool) []trace.Record {
	t.Helper()
	var seen []trace.Record
	timeout := time.After(10 * time.Second)
	for {
		select {
		case line := <-s.lines:
			var r trace.Record
			if err := json.Unmarshal(line, &r); err != nil {
				t.Fatalf("bad line %s: %v", line, err)
			}
			seen = append(seen, r)
			if match(r) {
				return seen
			}
		case err := <-s.ended:
			t.Fatalf("follow stream ended (%v); saw %+v", err, seen)
		case <-timeout:
			t.Fatalf("no matching record within 10s; saw %+v", seen)
		}
	}
}

// waitEnd reads to the end of the stream and returns its last notice.
func (s *followStream) waitEnd(t *testing.T) *api.TraceNotice {
	t.Helper()
	var last *api.TraceNotice
	timeout := time.After(10 * time.Second)
	for {
		select {
		case line := <-s.lines:
			var n api.TraceNotice
			if json.Unmarshal(line, &n) == nil && (n.Kind == api.NoticeEnd || n.Kind == api.NoticeDropped) {
				last = &n
			}
		case <-s.ended:
			for {
				select {
				case line := <-s.lines:
					var n api.TraceNotice
					if json.Unmarshal(line, &n) == nil && (n.Kind == api.NoticeEnd || n.Kind == api.NoticeDropped) {
						last = &n
					}
				default:
					return last
				}
			}
		case <-timeout:
			t.Fatal("follow stream did not end")
		}
	}
}
