package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors/trace"
)

// startDaemonWith starts a daemon with extra daemon flags.
func startDaemonWith(t *testing.T, args ...string) *daemon {
	t.Helper()
	d := newDaemon(t)
	d.args = args
	d.start(t)
	return d
}

// requestID runs a command with -v and returns the request id that -v
// printed for the call whose "METHOD PATH" is given.
func (d *daemon) requestID(t *testing.T, call string, args ...string) (string, result) {
	t.Helper()
	r := d.vmsup(t, append([]string{"-v"}, args...)...)
	if r.code != 0 {
		t.Fatalf("vmsup -v %s: %s", strings.Join(args, " "), r)
	}
	m := regexp.MustCompile(`vmsup: request (\S+): ` + regexp.QuoteMeta(call) + ` → 2\d\d `).FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("vmsup -v %s printed no request id for %s:\n%s", strings.Join(args, " "), call, r.stderr)
	}
	return m[1], r
}

// checkSVG checks that data is XML whose root element is svg.
func checkSVG(t *testing.T, data []byte) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(data))
	root := ""
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG does not parse as XML: %v\n%s", err, data)
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" {
		t.Fatalf("SVG root element %q, want svg:\n%s", root, data)
	}
}

// checkChrome checks a Chrome trace-event file: an object whose
// traceEvents each have name, ph, ts, pid and tid, and returns the names.
func checkChrome(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		TraceEvents []map[string]json.RawMessage `json:"traceEvents"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s is not JSON: %v", path, err)
	}
	if len(doc.TraceEvents) == 0 {
		t.Fatalf("%s has no traceEvents", path)
	}
	var names []string
	phases := map[string]bool{}
	for i, ev := range doc.TraceEvents {
		for _, key := range []string{"name", "ph", "ts", "pid", "tid"} {
			if _, ok := ev[key]; !ok {
				t.Fatalf("%s: event %d has no %q: %v", path, i, key, ev)
			}
		}
		var name, ph string
		var ts float64
		var pid, tid int
		if json.Unmarshal(ev["name"], &name) != nil || json.Unmarshal(ev["ph"], &ph) != nil ||
			json.Unmarshal(ev["ts"], &ts) != nil || json.Unmarshal(ev["pid"], &pid) != nil || json.Unmarshal(ev["tid"], &tid) != nil {
			t.Fatalf("%s: event %d has fields of the wrong type: %v", path, i, ev)
		}
		if ph == "X" {
			if _, ok := ev["dur"]; !ok {
				t.Fatalf("%s: complete event %d has no dur: %v", path, i, ev)
			}
		}
		phases[ph] = true
		names = append(names, name)
	}
	if !phases["X"] || !phases["M"] {
		t.Errorf("%s: phases %v, want complete (X) and metadata (M) events", path, phases)
	}
	return names
}

// TestCLITraceRequest: `vmsup -v qmp` prints the request id, and `vmsup
// trace` turns it into a Mermaid diagram (api, domain, monitor and the QMP
// command; the driver is on no job's path), an SVG, JSON records and a
// Chrome export; the daemon's --trace-log holds the request's records as
// JSON lines. A define's diagram shows the driver and its job.
func TestCLITraceRequest(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	logPath := filepath.Join(d.dir, "trace.jsonl")
	d.args = []string{"--trace-log", logPath}
	d.start(t)
	defineID, _ := d.requestID(t, "POST /v1/domains", "define", writeSpec(t, d.dir, "tr"))
	if def := d.ok(t, "trace", "--request", defineID, "--format", "mermaid"); !strings.Contains(def, "participant driver\n") || !strings.Contains(def, "driver.DefineRequest") || !strings.Contains(def, "Note over driver: job 1 ok") {
		t.Errorf("mermaid of the define %s lacks the driver and its job:\n%s", defineID, def)
	}
	startID, _ := d.requestID(t, "POST /v1/domains/tr/start", "start", "tr")
	id, r := d.requestID(t, "POST /v1/domains/tr/qmp", "qmp", "tr", `{"execute":"query-status"}`)
	if !strings.Contains(r.stdout, `"status": "running"`) {
		t.Fatalf("qmp output %q", r.stdout)
	}

	mermaid := d.ok(t, "trace", "--request", id, "--format", "mermaid")
	t.Logf("mermaid of request %s:\n%s", id, mermaid)
	if !strings.HasPrefix(mermaid, "sequenceDiagram\n") {
		t.Fatalf("not a Mermaid sequence diagram:\n%s", mermaid)
	}
	for _, want := range []string{"participant api\n", "as domain/tr\n", "as monitor/tr\n", "participant QEMU\n", "api->>domain_tr: domain.QMPRequest", "->>QEMU: query-status\n"} {
		if !strings.Contains(mermaid, want) {
			t.Errorf("mermaid lacks %q", want)
		}
	}
	if strings.Contains(mermaid, "driver") {
		t.Errorf("the driver is on the qmp job's path:\n%s", mermaid)
	}
	if def := d.ok(t, "trace", "--request", id); def != mermaid {
		t.Errorf("trace --request without --format is not the Mermaid diagram:\n%s", def)
	}
	if start := d.ok(t, "trace", "--request", startID); !strings.Contains(start, ": cont\n") || !strings.Contains(start, "domain.StartRequest") {
		t.Errorf("mermaid of the start %s lacks its cont:\n%s", startID, start)
	}

	checkSVG(t, []byte(d.ok(t, "trace", "--request", id, "--format", "svg")))
	svgPath := filepath.Join(d.dir, "req.svg")
	if out := d.ok(t, "trace", "--request", id, "--format", "svg", "-o", svgPath); out != "" {
		t.Errorf("trace -o printed %q", out)
	}
	svg, err := os.ReadFile(svgPath)
	if err != nil {
		t.Fatal(err)
	}
	checkSVG(t, svg)

	var records []trace.Record
	d.okJSON(t, &records, "trace", "--request", id)
	var qmp trace.Record
	for _, rec := range records {
		if rec.TraceID != id {
			t.Fatalf("trace --request %s gave a record of %q", id, rec.TraceID)
		}
		if rec.Kind == trace.KindQMP {
			qmp = rec
		}
	}
	if qmp.QMP == nil || qmp.QMP.Command != "query-status" || qmp.QMP.Outcome != "ok" || qmp.Actor != "monitor/tr" {
		t.Fatalf("no QMP record for query-status in %+v", records)
	}
	text := d.ok(t, "trace", "--request", id, "--format", "text")
	if !regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\.\d{6} monitor/tr qmp query-status → ok job=\d+ trace=` + regexp.QuoteMeta(id) + ` span=\S+<\S+ took=`).MatchString(text) {
		t.Errorf("text lines of the request:\n%s", text)
	}
	// Without flags: the recent records, this request among them.
	recent := d.ok(t, "trace")
	if !strings.Contains(recent, "trace="+id) || !strings.Contains(recent, "api qmp → ok") {
		t.Errorf("vmsup trace:\n%s", recent)
	}
	if lines := strings.Count(d.ok(t, "trace", "--limit", "3"), "\n"); lines != 3 {
		t.Errorf("trace --limit 3 printed %d lines", lines)
	}
	var mine []trace.Record
	d.okJSON(t, &mine, "trace", "--domain", "tr", "--limit", "0")
	for _, rec := range mine {
		if !strings.HasSuffix(rec.Actor, "/tr") && !strings.HasSuffix(rec.Sender, "/tr") && rec.Kind != trace.KindAPI {
			t.Errorf("trace --domain tr gave %+v", rec)
		}
	}

	// Chrome exports: the whole ring, and one request.
	all := filepath.Join(d.dir, "out.json")
	if out := d.ok(t, "trace", "--chrome", all); out != "" {
		t.Errorf("trace --chrome printed %q", out)
	}
	names := checkChrome(t, all)
	if !strings.Contains(strings.Join(names, "\n"), "query-status") {
		t.Errorf("the Chrome export has no query-status event: %v", names)
	}
	one := filepath.Join(d.dir, "one.json")
	d.ok(t, "trace", "--chrome", one, "--request", id)
	if n := len(checkChrome(t, one)); n >= len(names) {
		t.Errorf("the export of one request has %d events, the whole ring %d", n, len(names))
	}

	d.fails(t, 1, []string{"no trace records", "nosuch-1"}, "trace", "--request", "nosuch-1")
	d.fails(t, 2, []string{"--follow"}, "trace", "--follow", "--request", id)
	d.fails(t, 2, []string{"--request"}, "trace", "--format", "svg")
	d.fails(t, 2, []string{"--format"}, "trace", "--request", id, "--format", "png")

	// The trace log holds the request's records once the daemon stopped.
	d.ok(t, "destroy", "tr")
	if err := d.stop(t); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	logged, err := trace.DecodeJSONLines(f)
	if err != nil {
		t.Fatalf("trace log: %v", err)
	}
	kinds := map[trace.Kind]int{}
	for _, rec := range logged {
		if rec.TraceID == id {
			kinds[rec.Kind]++
			if rec.Kind == trace.KindQMP && (rec.QMP == nil || rec.QMP.Command != "query-status") {
				t.Errorf("logged QMP record %+v", rec)
			}
		}
	}
	if kinds[trace.KindAPI] != 1 || kinds[trace.KindQMP] != 1 || kinds[trace.KindJob] != 1 || kinds[trace.KindMessage] < 2 {
		t.Errorf("trace log: records of %s by kind %v (%d records in all)", id, kinds, len(logged))
	}
	if fi, err := os.Stat(logPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("trace log mode: %v %v", fi.Mode(), err)
	}
}

// TestDaemonTraceFlags: --trace=false switches recording off (the trace
// routes say so), --trace-capacity bounds the ring, and bad combinations
// are usage errors.
func TestDaemonTraceFlags(t *testing.T) {
	t.Parallel()
	off := startDaemonWith(t, "--trace=false")
	off.ok(t, "define", writeSpec(t, off.dir, "quiet"))
	off.fails(t, 1, []string{"tracing is off"}, "trace")
	off.fails(t, 1, []string{"tracing is off"}, "trace", "--follow")

	small := startDaemonWith(t, "--trace-capacity", "40")
	small.ok(t, "define", writeSpec(t, small.dir, "small"))
	for range 30 {
		small.ok(t, "info", "small") // a lookup and an info message each
	}
	var records []trace.Record
	small.okJSON(t, &records, "trace", "--limit", "0")
	if len(records) == 0 || len(records) > 40 {
		t.Errorf("a ring of 40 records returned %d", len(records))
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--trace=false", "--trace-log", "x.jsonl"}, "--trace-log"},
		{[]string{"--trace-capacity", "0"}, "--trace-capacity"},
	} {
		args := append([]string{"daemon", "--state-dir", filepath.Join(small.dir, "other"), "--socket", filepath.Join(small.dir, "o.sock")}, c.args...)
		r := runVmsup(t, nil, nil, args...)
		checkFailure(t, r, 2, []string{c.want}, args)
	}
}

// TestCLITraceFollow: `vmsup trace --follow` streams the records of a
// start while it runs, as NDJSON with --json (only the VM's with
// --domain) and as lines; -v prints the stream's request id; SIGINT ends
// it with exit 0.
func TestCLITraceFollow(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	d.ok(t, "define", writeSpec(t, d.dir, "fol"))
	d.ok(t, "define", writeSpec(t, d.dir, "other"))

	jsonF := d.background(t, "-v", "trace", "--follow", "--domain", "fol", "--json")
	textF := d.background(t, "-v", "trace", "--follow")
	jsonF.stderr.WaitContains(t, "GET /v1/trace/follow?domain=fol → 200", 10*time.Second)
	textF.stderr.WaitContains(t, "GET /v1/trace/follow → 200", 10*time.Second)

	startID, _ := d.requestID(t, "POST /v1/domains/fol/start", "start", "fol")
	d.ok(t, "info", "other")
	textF.stdout.WaitContains(t, "monitor/fol qmp cont → ok job=1 trace="+startID, 10*time.Second)
	textF.stdout.WaitContains(t, "api start → ok trace="+startID, 10*time.Second)
	jsonF.stdout.WaitContains(t, `"kind":"api"`, 10*time.Second)

	records, err := trace.DecodeJSONLines(strings.NewReader(jsonF.stdout.String()))
	if err != nil {
		t.Fatalf("follow --json: %v\n%s", err, jsonF.stdout.String())
	}
	var cont, job bool
	for _, r := range records {
		if !strings.HasSuffix(r.Actor, "/fol") && !strings.HasSuffix(r.Sender, "/fol") && r.Kind != trace.KindAPI {
			t.Errorf("follow --domain fol gave %+v", r)
		}
		cont = cont || r.Kind == trace.KindQMP && r.QMP.Command == "cont" && r.TraceID == startID
		job = job || r.Kind == trace.KindJob && r.MessageType == "start" && r.TraceID == startID
	}
	if !cont || !job {
		t.Errorf("follow --json lacks the start's job or its cont: %d records\n%s", len(records), jsonF.stdout.String())
	}

	for _, b := range []*background{jsonF, textF} {
		_ = b.cmd.Process.Signal(os.Interrupt)
		if code := b.wait(t, 10*time.Second); code != 0 {
			t.Errorf("%v after SIGINT: exit %d\n%s", b.cmd.Args, code, b.stderr.String())
		}
	}
}

// TestDaemonTraceStalledFollower: a follower that never reads costs the
// daemon nothing measurable: 200 query-status calls, each a job through
// driver, domain and monitor actors and about ten trace records, take
// about as long with a stalled /v1/trace/follow connection as without;
// the stream reports the records it dropped once its reader reads again.
// (Info is not used: it reads a published snapshot and sends no message.)
func TestDaemonTraceStalledFollower(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	d.ok(t, "define", writeSpec(t, d.dir, "busy"))
	d.ok(t, "start", "busy")
	c := d.httpClient()
	call := func() {
		resp, err := c.Post("http://vmsup/v1/domains/busy/qmp", "application/json", strings.NewReader(`{"execute":"query-status"}`))
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("qmp: %s", resp.Status)
		}
	}
	measure := func(n int) time.Duration {
		began := time.Now()
		for range n {
			call()
		}
		return time.Since(began)
	}
	measure(50) // warm up
	baseline := measure(200)

	// A follower that sends its request and never reads a byte.
	conn, err := net.Dial("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fmt.Fprint(conn, "GET /v1/trace/follow HTTP/1.1\r\nHost: vmsup\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Fill the connection and the subscription: far more records than
	// the socket buffers and the follower's buffer hold.
	var wg sync.WaitGroup
	flooded := time.Now()
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 800 {
				call()
			}
		}()
	}
	wg.Wait()
	flood := time.Since(flooded)
	stalled := measure(200)
	t.Logf("200 qmp calls: %s without a follower, %s with a stalled follower (%.2fx); flood of 3200 calls took %s",
		baseline, stalled, float64(stalled)/float64(baseline), flood)
	if stalled > 3*baseline+time.Second {
		t.Errorf("a stalled follower slowed the daemon: 200 qmp calls took %s, %s without it", stalled, baseline)
	}

	// The follower reads again: the stream reports the records it lost.
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	// No resp.Body.Close: it would read the endless stream; conn.Close
	// ends it.
	if resp.StatusCode != 200 {
		t.Fatalf("follow: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	lines := 0
	for sc.Scan() {
		lines++
		var n struct {
			Kind         string `json:"kind"`
			Dropped      uint64 `json:"dropped"`
			TotalDropped uint64 `json:"total_dropped"`
		}
		if err := json.Unmarshal(sc.Bytes(), &n); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if n.Kind == "dropped" {
			t.Logf("after %d lines: %s", lines, sc.Text())
			if n.Dropped == 0 || n.TotalDropped < n.Dropped {
				t.Errorf("dropped notice %s", sc.Text())
			}
			return
		}
	}
	t.Fatalf("no dropped notice after %d lines: %v", lines, sc.Err())
}

// TestCLIHolderViews: while QEMU is stopped (SIGSTOP) under a QMP query,
// `vmsup jobs` and `vmsup info` show who holds the VM (job, owner, QMP
// command and age, trace id) and the queue, `info --json` has control
// "occupied", and a job that gives up waiting prints the daemon's error
// unchanged, holder's trace id included. The holder's trace id is the
// request id that -v printed for it.
func TestCLIHolderViews(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	d.ok(t, "define", writeSpec(t, d.dir, "held"))
	var in info
	d.okJSON(t, &in, "start", "held")
	if in.Control == nil || in.Control.State != "ok" {
		t.Fatalf("control after start: %+v", in.Control)
	}
	if err := syscall.Kill(in.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(in.PID, syscall.SIGCONT) })

	// query-qmp-schema has a 30s deadline: the stopped QEMU holds the job
	// long enough.
	holder := d.background(t, "-v", "qmp", "held", `{"execute":"query-qmp-schema"}`)
	c := d.httpClient()
	deadline := time.Now().Add(15 * time.Second)
	for {
		var jobs struct {
			Active *jobInfo `json:"active"`
		}
		resp, err := c.Get("http://vmsup/v1/domains/held/jobs")
		if err != nil {
			t.Fatal(err)
		}
		_ = json.NewDecoder(resp.Body).Decode(&jobs)
		resp.Body.Close()
		if jobs.Active != nil && jobs.Active.QMP != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the qmp job never showed in flight; qmp: %s %s", holder.stdout, holder.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A job queued behind it.
	queued := d.background(t, "--request-timeout", "25s", "pause", "held")

	var lane struct {
		Active *jobInfo
		Queued []struct {
			ID    uint64
			Kind  string
			Owner string
			Trace string
		}
	}
	for begin := time.Now(); len(lane.Queued) == 0; time.Sleep(20 * time.Millisecond) {
		if time.Since(begin) > 10*time.Second {
			t.Fatalf("the pause never queued: %+v", lane)
		}
		d.okJSON(t, &lane, "jobs", "held")
	}
	a := lane.Active
	if a == nil || a.Owner != "api qmp" || a.Kind != "query" || a.QMP == nil || a.QMP.Command != "query-qmp-schema" || a.Trace == "" {
		t.Fatalf("jobs --json: active %+v", a)
	}
	q := lane.Queued[0]
	if q.Owner != "api pause" || q.Kind != "suspend" || q.Trace == "" || q.Trace == a.Trace {
		t.Fatalf("jobs --json: queued %+v", q)
	}
	holderTrace := a.Trace

	text := d.ok(t, "jobs")
	for _, re := range []string{
		`(?m)^held:$`,
		fmt.Sprintf(`(?m)^  active: job %d query \(api qmp\) for \d+\.\ds, in QMP "query-qmp-schema" for \d+\.\ds, trace %s$`, a.ID, regexp.QuoteMeta(holderTrace)),
		fmt.Sprintf(`(?m)^  queued: job %d suspend \(api pause\), waiting \d+\.\ds, trace %s$`, q.ID, regexp.QuoteMeta(q.Trace)),
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("vmsup jobs does not match %s:\n%s", re, text)
		}
	}

	var held info
	d.okJSON(t, &held, "info", "held")
	if c := held.Control; c == nil || c.State != "occupied" || c.Since == nil || c.Millis < 0 || c.Reason != "" {
		t.Errorf("info --json control %+v, want occupied with since and ms", held.Control)
	}
	if held.Job == nil || held.Job.Trace != holderTrace || held.Queued != 1 {
		t.Errorf("info --json job %+v queued %d, want trace %s and 1 queued", held.Job, held.Queued, holderTrace)
	}
	text = d.ok(t, "info", "held")
	for _, re := range []string{
		`(?m)^Control: +occupied \(a QMP command waits for QEMU\) for \d+\.\ds$`,
		`(?m)^Job: +job \d+ query \(api qmp\) for .*, trace ` + regexp.QuoteMeta(holderTrace) + `$`,
		`(?m)^Queued: +1$`,
	} {
		if !regexp.MustCompile(re).MatchString(text) {
			t.Errorf("vmsup info does not match %s:\n%s", re, text)
		}
	}

	// A job that gives up waiting: the daemon's error, holder included,
	// printed as it is.
	r := d.vmsup(t, "--request-timeout", "500ms", "resume", "held")
	want := regexp.MustCompile(`^vmsup: domain "held": timed out after \d+(\.\d+)?m?s waiting for job "resume": held by job ` +
		fmt.Sprint(a.ID) + ` "qmp" \(api qmp, trace ` + regexp.QuoteMeta(holderTrace) + `\) for \d+\.\ds, in QMP "query-qmp-schema" for \d+\.\ds\n$`)
	if r.code != 1 || !want.MatchString(r.stderr) {
		t.Errorf("resume while held: %s\nwant stderr matching %s", r, want)
	}

	// QEMU goes on: the holder ends, and -v printed its trace id.
	if err := syscall.Kill(in.PID, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if code := holder.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("qmp after SIGCONT: exit %d\n%s", code, holder.stderr)
	}
	if !strings.Contains(holder.stderr.String(), "vmsup: request "+holderTrace+": POST /v1/domains/held/qmp → 200") {
		t.Errorf("the holder's -v line does not name trace %s:\n%s", holderTrace, holder.stderr)
	}
	if code := queued.wait(t, 30*time.Second); code != 0 {
		t.Errorf("the queued pause: exit %d\n%s", code, queued.stderr)
	}
	mermaid := d.ok(t, "trace", "--request", holderTrace)
	if !strings.Contains(mermaid, "query-qmp-schema") {
		t.Errorf("mermaid of the holder:\n%s", mermaid)
	}
	var idle info
	d.okJSON(t, &idle, "info", "held")
	if idle.Control == nil || idle.Control.State != "ok" || idle.State != "paused" {
		t.Errorf("after the jobs: %s/%s control %+v", idle.State, idle.Reason, idle.Control)
	}
}
