package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/tests/testkit"
)

// testServer is the API served in-process on a unix socket, over a real
// driver (real QEMU).
type testServer struct {
	api    *Server
	drv    *driver.Driver
	socket string
	http   *http.Client
}

// newTestServer serves the API of a fresh driver. Cleanup ends streams and
// consoles, stops serving, destroys every running VM and closes the driver.
func newTestServer(t *testing.T, configure ...func(*driver.Config)) *testServer {
	t.Helper()
	testkit.RequireQEMU(t)
	dir, err := os.MkdirTemp("", "vs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	logger := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := driver.Config{
		StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"),
		Logger: &logger, DestroyGrace: 2 * time.Second,
	}
	for _, c := range configure {
		c(&cfg)
	}
	drv, err := driver.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	s := New(drv, Options{Logger: &logger, StateDir: dir})
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second, ConnContext: ConnContext}
	hs.RegisterOnShutdown(s.Close)
	served := make(chan struct{})
	go func() { defer close(served); _ = hs.Serve(ln) }()
	ts := &testServer{api: s, drv: drv, socket: socket}
	ts.http = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s.Close()
		if err := hs.Shutdown(ctx); err != nil {
			t.Errorf("http shutdown: %v", err)
		}
		<-served
		infos, err := drv.List(ctx)
		if err != nil {
			t.Errorf("cleanup list: %v", err)
		}
		for _, in := range infos {
			if in.PID != 0 {
				_ = syscall.Kill(in.PID, syscall.SIGCONT)
				if err := drv.Domain(in.Name).Destroy(ctx); err != nil {
					t.Errorf("cleanup destroy %s: %v", in.Name, err)
				}
			}
		}
		if err := drv.Close(ctx); err != nil {
			t.Errorf("close driver: %v", err)
		}
	})
	return ts
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request with a raw (already escaped) path.
func (ts *testServer) do(t *testing.T, method, rawPath string, body []byte, header ...string) response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://vmsup/", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.URL.Opaque = "//vmsup" + rawPath // sent as is, never cleaned
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := ts.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawPath, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, rawPath, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

// ok sends a request, checks the status and decodes the JSON answer.
func (ts *testServer) ok(t *testing.T, method, path string, body []byte, want int, out any) response {
	t.Helper()
	r := ts.do(t, method, path, body)
	if r.status != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.status, want, r.body)
	}
	if out != nil {
		if err := json.Unmarshal(r.body, out); err != nil {
			t.Fatalf("%s %s: bad JSON %q: %v", method, path, r.body, err)
		}
	}
	return r
}

// expectError checks a JSON error answer.
func expectError(t *testing.T, r response, status int, contains string) api.Error {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error Content-Type %q", ct)
	}
	if r.header.Get(api.HeaderRequestID) == "" {
		t.Errorf("no %s header", api.HeaderRequestID)
	}
	var e api.Error
	if err := json.Unmarshal(r.body, &e); err != nil || e.Error == "" {
		t.Fatalf("error body %q is not {\"error\": ...}: %v", r.body, err)
	}
	if strings.Contains(e.Error, "\n") {
		t.Errorf("error is not one line: %q", e.Error)
	}
	if !strings.Contains(e.Error, contains) {
		t.Errorf("error %q does not contain %q", e.Error, contains)
	}
	return e
}

func (ts *testServer) alive(t *testing.T) {
	t.Helper()
	var infos []api.Info
	ts.ok(t, http.MethodGet, "/v1/domains", nil, http.StatusOK, &infos)
}

const noneSpec = "name: %s\nmachine: none\naccel: tcg\nmemory: 64M\n"

// TestBadRequests: every kind of bad request gets a 4xx JSON error with a
// request id, and the server keeps answering.
func TestBadRequests(t *testing.T) {
	ts := newTestServer(t)
	ts.ok(t, http.MethodPost, "/v1/domains", fmt.Appendf(nil, noneSpec, "vm1"), http.StatusCreated, nil)
	big := bytes.Repeat([]byte("a"), api.MaxBodyBytes+1)
	cases := []struct {
		name, method, path string
		body               []byte
		header             []string
		status             int
		contains           string
	}{
		{"garbage spec", "POST", "/v1/domains", []byte("\x00\x01{{{ ]]"), nil, 400, "spec"},
		{"empty spec", "POST", "/v1/domains", nil, nil, 400, "empty"},
		{"oversize spec", "POST", "/v1/domains", big, nil, 413, "larger than 1 MiB"},
		{"unknown field", "POST", "/v1/domains", []byte("name: x\nbogus: 1\n"), nil, 400, "bogus"},
		{"wrong type", "POST", "/v1/domains", []byte(`{"name":"x","cpus":"many"}`), nil, 400, "cpus"},
		{"traversal name in spec", "POST", "/v1/domains", []byte("name: ../x\n"), nil, 400, "name"},
		{"dot-dot escaped", "GET", "/v1/domains/%2e%2e", nil, nil, 400, "invalid domain name"},
		{"dot-dot literal", "GET", "/v1/domains/..", nil, nil, 400, "invalid domain name"},
		{"dot-dot path", "GET", "/v1/domains/../v1/domains", nil, nil, 400, "invalid domain name"},
		{"slash in name", "GET", "/v1/domains/..%2Fx", nil, nil, 400, "invalid domain name"},
		{"double slash", "GET", "/v1//domains", nil, nil, 400, "invalid path"},
		{"dot-dot action", "POST", "/v1/domains/%2e%2e/start", nil, nil, 400, "invalid domain name"},
		{"long name", "GET", "/v1/domains/" + strings.Repeat("a", 64), nil, nil, 400, "at most 63"},
		{"unknown domain", "GET", "/v1/domains/nosuch", nil, nil, 404, "not found"},
		{"undefine unknown", "DELETE", "/v1/domains/nosuch", nil, nil, 404, "not found"},
		{"start unknown", "POST", "/v1/domains/nosuch/start", nil, nil, 404, "not found"},
		{"qmp unknown domain", "POST", "/v1/domains/nosuch/qmp", []byte(`{"execute":"query-status"}`), nil, 404, "not found"},
		{"qmp not json", "POST", "/v1/domains/vm1/qmp", []byte("query-status"), nil, 400, "JSON object"},
		{"qmp unknown field", "POST", "/v1/domains/vm1/qmp", []byte(`{"execute":"stop","id":"x"}`), nil, 400, `unknown member "id"`},
		{"qmp key of another case", "POST", "/v1/domains/vm1/qmp", []byte(`{"Execute":"stop"}`), nil, 400, `unknown member "Execute"`},
		{"qmp no execute", "POST", "/v1/domains/vm1/qmp", []byte(`{"arguments":{}}`), nil, 400, "execute"},
		{"qmp trailing data", "POST", "/v1/domains/vm1/qmp", []byte(`{"execute":"stop"} {}`), nil, 400, "trailing"},
		{"qmp bad arguments", "POST", "/v1/domains/vm1/qmp", []byte(`{"execute":"stop","arguments":[1]}`), nil, 400, "arguments"},
		{"qmp oversize", "POST", "/v1/domains/vm1/qmp", big, nil, 413, "larger than 1 MiB"},
		{"qmp stopped domain", "POST", "/v1/domains/vm1/qmp", []byte(`{"execute":"query-status"}`), nil, 409, "not running"},
		{"pause stopped domain", "POST", "/v1/domains/vm1/pause", nil, nil, 409, "not running"},
		{"agent not json", "POST", "/v1/domains/vm1/agent", []byte("guest-ping"), nil, 400, "agent: bad command"},
		{"agent empty", "POST", "/v1/domains/vm1/agent", nil, nil, 400, "empty body"},
		{"agent guest-sync", "POST", "/v1/domains/vm1/agent", []byte(`{"execute":"guest-sync-delimited","arguments":{"id":1}}`), nil, 400, "refused"},
		{"agent stopped domain", "POST", "/v1/domains/vm1/agent", []byte(`{"execute":"guest-ping"}`), nil, 409, "not running"},
		{"agent unknown domain", "POST", "/v1/domains/nosuch/agent", []byte(`{"execute":"guest-ping"}`), nil, 404, "not found"},
		{"exec no path", "POST", "/v1/domains/vm1/exec", []byte(`{"args":["x"]}`), nil, 400, "path"},
		{"exec unknown field", "POST", "/v1/domains/vm1/exec", []byte(`{"path":"/bin/true","cmd":"x"}`), nil, 400, "unknown field"},
		{"exec stopped domain", "POST", "/v1/domains/vm1/exec", []byte(`{"path":"/bin/true"}`), nil, 409, "not running"},
		{"bad shutdown mode", "POST", "/v1/domains/vm1/shutdown?mode=nicely", nil, nil, 400, "want acpi, agent or auto"},
		{"bad shutdown timeout", "POST", "/v1/domains/vm1/shutdown?timeout=banana", nil, nil, 400, "timeout"},
		{"negative shutdown timeout", "POST", "/v1/domains/vm1/shutdown?timeout=-1s", nil, nil, 400, "timeout"},
		{"bad paused", "POST", "/v1/domains/vm1/start?paused=maybe", nil, nil, 400, "paused"},
		{"unknown query", "POST", "/v1/domains/vm1/start?pasued=1", nil, nil, 400, "pasued"},
		{"bad events domain", "GET", "/v1/events?domain=..%2Fx", nil, nil, 400, "invalid domain name"},
		{"bad timeout header", "GET", "/v1/domains", nil, []string{api.HeaderTimeout, "soon"}, 400, api.HeaderTimeout},
		{"attach-disk unknown member", "POST", "/v1/domains/vm1/disks", []byte(`{"path":"/img/a","bogus":1}`), nil, 400, "bogus"},
		{"attach-disk trailing data", "POST", "/v1/domains/vm1/disks", []byte(`{"path":"/img/a"} {}`), nil, 400, "trailing"},
		{"attach-disk relative path", "POST", "/v1/domains/vm1/disks", []byte(`{"path":"rel.img","config":true}`), nil, 400, "disks[0].path"},
		{"attach-disk bad format", "POST", "/v1/domains/vm1/disks", []byte(`{"path":"/img/a","format":"vmdk"}`), nil, 400, "disks[0].format"},
		{"attach-disk live on a stopped domain", "POST", "/v1/domains/vm1/disks", []byte(`{"path":"/img/a","live":true}`), nil, 409, "not running"},
		{"attach-disk unknown domain", "POST", "/v1/domains/nosuch/disks", []byte(`{"path":"/img/a"}`), nil, 404, "not found"},
		{"detach-disk empty target", "POST", "/v1/domains/vm1/disks/detach", []byte(`{"target":""}`), nil, 400, "target"},
		{"detach-disk bad timeout", "POST", "/v1/domains/vm1/disks/detach", []byte(`{"target":"hot0","timeout":"soon"}`), nil, 400, "timeout"},
		{"detach-disk not in the definition", "POST", "/v1/domains/vm1/disks/detach", []byte(`{"target":"disk3"}`), nil, 404, `"disk3"`},
		{"detach-nic not in the definition", "POST", "/v1/domains/vm1/nics/detach", []byte(`{"target":"5","config":true}`), nil, 404, "no such NIC"},
		{"attach-nic bad mac", "POST", "/v1/domains/vm1/nics", []byte(`{"mac":"ff:ff:ff:ff:ff:ff"}`), nil, 400, "mac"},
		{"console without upgrade", "GET", "/v1/domains/vm1/console", nil, nil, 426, "Upgrade"},
		{"wrong method", "PUT", "/v1/domains", nil, nil, 405, "not allowed"},
		{"no route", "GET", "/v1/nope", nil, nil, 404, "no API route"},
		{"no version", "GET", "/domains", nil, nil, 404, "no API route"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := ts.do(t, c.method, c.path, c.body, c.header...)
			expectError(t, r, c.status, c.contains)
			ts.alive(t)
		})
	}
	// A spec with field errors names every field.
	r := ts.do(t, "POST", "/v1/domains", []byte("name: ../x\nmemory: lots\ncpus: 0\n"))
	e := expectError(t, r, 400, "memory")
	if len(e.Fields) < 2 {
		t.Errorf("fields %+v: want the bad name and memory", e.Fields)
	}
}

// TestPanicRecovered: a panicking handler is answered 500 with a JSON error
// and the server keeps serving.
func TestPanicRecovered(t *testing.T) {
	ts := newTestServer(t)
	ts.api.mux.HandleFunc("GET /v1/panic", func(http.ResponseWriter, *http.Request) { panic("boom") })
	r := ts.do(t, "GET", "/v1/panic", nil)
	expectError(t, r, http.StatusInternalServerError, "boom")
	ts.alive(t)
}

// TestLifecycle drives one VM through the API: define (and redefine, which
// keeps the uuid), start, info, jobs, QMP (reply and error), pause, resume,
// undefine refused while running, destroy, undefine; and checks the event
// stream.
func TestLifecycle(t *testing.T) {
	ts := newTestServer(t)
	events := ts.openEvents(t, "vm1")

	var def api.DefineResult
	ts.ok(t, "POST", "/v1/domains", fmt.Appendf(nil, noneSpec, "vm1"), http.StatusCreated, &def)
	if def.Name != "vm1" || def.UUID == "" || !def.Created {
		t.Fatalf("define: %+v", def)
	}
	var again api.DefineResult
	ts.ok(t, "POST", "/v1/domains", fmt.Appendf(nil, noneSpec, "vm1"), http.StatusOK, &again)
	if again.UUID != def.UUID || again.Created {
		t.Fatalf("redefine: %+v, want uuid %s kept", again, def.UUID)
	}

	var in api.Info
	r := ts.ok(t, "POST", "/v1/domains/vm1/start", nil, http.StatusOK, &in)
	if in.State != "running" || in.Reason != "booted" || in.PID == 0 || in.UUID != def.UUID {
		t.Fatalf("after start: %+v", in)
	}
	// The X-Request-Id is the id of the driver call: the start job has it.
	reqID := r.header.Get(api.HeaderRequestID)
	lane, err := ts.drv.Domain("vm1").Jobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, j := range lane.Recent {
		found = found || (j.Name == "start" && j.RequestID == reqID)
	}
	if reqID == "" || !found {
		t.Errorf("X-Request-Id %q is not the start job's request id (recent jobs %+v)", reqID, lane.Recent)
	}
	ev := events.waitFor(t, "started")
	if ev.Domain != "vm1" || ev.State != "running" {
		t.Errorf("started event %+v", ev)
	}

	var infos []api.Info
	ts.ok(t, "GET", "/v1/domains", nil, http.StatusOK, &infos)
	if len(infos) != 1 || infos[0].Name != "vm1" || infos[0].PID != in.PID {
		t.Fatalf("list: %+v", infos)
	}

	var reply struct {
		Return struct{ Status string } `json:"return"`
	}
	ts.ok(t, "POST", "/v1/domains/vm1/qmp", []byte(`{"execute":"query-status"}`), http.StatusOK, &reply)
	if reply.Return.Status != "running" {
		t.Fatalf("query-status: %+v", reply)
	}
	e := expectError(t, ts.do(t, "POST", "/v1/domains/vm1/qmp", []byte(`{"execute":"no-such-command"}`)), http.StatusBadGateway, "no-such-command")
	if e.Class != "CommandNotFound" || e.Desc == "" {
		t.Errorf("QMP error %+v: want class CommandNotFound and a desc", e)
	}

	var jobs api.Jobs
	ts.ok(t, "GET", "/v1/domains/vm1/jobs", nil, http.StatusOK, &jobs)
	if jobs.Domain != "vm1" || jobs.Active != nil || jobs.Queued == nil {
		t.Errorf("jobs: %+v", jobs)
	}
	var all []api.Jobs
	ts.ok(t, "GET", "/v1/jobs", nil, http.StatusOK, &all)
	if len(all) != 1 || all[0].Domain != "vm1" {
		t.Errorf("all jobs: %+v", all)
	}

	ts.ok(t, "POST", "/v1/domains/vm1/pause", nil, http.StatusOK, &in)
	if in.State != "paused" || in.Reason != "user" {
		t.Fatalf("after pause: %+v", in)
	}
	events.waitFor(t, "paused")
	ts.ok(t, "POST", "/v1/domains/vm1/resume", nil, http.StatusOK, &in)
	if in.State != "running" {
		t.Fatalf("after resume: %+v", in)
	}
	ts.ok(t, "POST", "/v1/domains/vm1/reset", nil, http.StatusOK, &in)

	expectError(t, ts.do(t, "DELETE", "/v1/domains/vm1", nil), http.StatusConflict, "destroy")

	ts.ok(t, "POST", "/v1/domains/vm1/destroy", nil, http.StatusOK, &in)
	if in.State != "shutoff" || in.Reason != "destroyed" || in.PID != 0 {
		t.Fatalf("after destroy: %+v", in)
	}
	events.waitFor(t, "stopped")
	expectError(t, ts.do(t, "POST", "/v1/domains/vm1/destroy", nil), http.StatusConflict, "not running")

	var undef api.Undefined
	ts.ok(t, "DELETE", "/v1/domains/vm1", nil, http.StatusOK, &undef)
	expectError(t, ts.do(t, "GET", "/v1/domains/vm1", nil), http.StatusNotFound, "not found")
	events.waitFor(t, "undefined")
}

// TestShutdownTimeout: a guest that ignores ACPI (machine none) makes
// shutdown answer 504 once the timeout passes.
func TestShutdownTimeout(t *testing.T) {
	ts := newTestServer(t)
	ts.ok(t, "POST", "/v1/domains", fmt.Appendf(nil, noneSpec, "deaf"), http.StatusCreated, nil)
	ts.ok(t, "POST", "/v1/domains/deaf/start", nil, http.StatusOK, nil)
	began := time.Now()
	expectError(t, ts.do(t, "POST", "/v1/domains/deaf/shutdown?timeout=1s", nil), http.StatusGatewayTimeout, "did not power off")
	if took := time.Since(began); took < time.Second || took > 10*time.Second {
		t.Errorf("shutdown answered after %s, want about 1s", took)
	}
}

// TestClientTimeoutHeader: X-Vmsup-Timeout bounds a call; a job that cannot
// get the lane in time is answered 504 naming the holder.
func TestClientTimeoutHeader(t *testing.T) {
	ts := newTestServer(t)
	ts.ok(t, "POST", "/v1/domains", fmt.Appendf(nil, noneSpec, "busy"), http.StatusCreated, nil)
	ts.ok(t, "POST", "/v1/domains/busy/start", nil, http.StatusOK, nil)
	// A shutdown of a deaf guest holds the async job for 5s; a modify job
	// queued behind it gives up after the header's 300ms.
	done := make(chan response, 1)
	go func() { done <- ts.do(t, "POST", "/v1/domains/busy/shutdown?timeout=5s", nil) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var in api.Info
		ts.ok(t, "GET", "/v1/domains/busy", nil, http.StatusOK, &in)
		var jobs api.Jobs
		ts.ok(t, "GET", "/v1/domains/busy/jobs", nil, http.StatusOK, &jobs)
		if jobs.Async != nil || jobs.Active != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the shutdown job never showed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	began := time.Now()
	r := ts.do(t, "POST", "/v1/domains/busy/pause", nil, api.HeaderTimeout, "300ms")
	expectError(t, r, http.StatusGatewayTimeout, "shutdown")
	if took := time.Since(began); took > 3*time.Second {
		t.Errorf("pause with a 300ms timeout answered after %s", took)
	}
	ts.ok(t, "POST", "/v1/domains/busy/destroy", nil, http.StatusOK, nil)
	<-done
}

// TestConsoleUpgradeAndClose: the console route switches protocols on a
// running domain, refuses a stopped one, and Server.Close ends the session
// and the event streams.
func TestConsoleUpgradeAndClose(t *testing.T) {
	ts := newTestServer(t)
	ts.ok(t, "POST", "/v1/domains", fmt.Appendf(nil, noneSpec, "con"), http.StatusCreated, nil)
	upgrade := []string{"Connection", "Upgrade", "Upgrade", api.ConsoleProtocol}
	expectError(t, ts.do(t, "GET", "/v1/domains/con/console", nil, upgrade...), http.StatusConflict, "not running")
	expectError(t, ts.do(t, "GET", "/v1/domains/nosuch/console", nil, upgrade...), http.StatusNotFound, "not found")
	ts.ok(t, "POST", "/v1/domains/con/start", nil, http.StatusOK, nil)

	conn, err := net.Dial("unix", ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/domains/con/console HTTP/1.1\r\nHost: vmsup\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", api.ConsoleProtocol)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != api.ConsoleProtocol || resp.Header.Get(api.HeaderRequestID) == "" {
		t.Fatalf("console answer %s %v", resp.Status, resp.Header)
	}
	if _, err := conn.Write([]byte("hello\r\n")); err != nil {
		t.Fatalf("write to console: %v", err)
	}
	events := ts.openEvents(t, "")

	closed := make(chan struct{})
	go func() { ts.api.Close(); close(closed) }()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	// The session ends with EOF, or with a reset when the daemon closed
	// the connection before reading all that the client sent.
	if _, err := io.Copy(io.Discard, br); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("console session did not end at Close: %v", err)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	events.waitEnd(t)
	// New consoles are refused once closed; the rest of the API still works.
	expectError(t, ts.do(t, "GET", "/v1/domains/con/console", nil, upgrade...), http.StatusServiceUnavailable, "stopping")
	ts.alive(t)
}

// eventStream reads an NDJSON event stream in the background.
type eventStream struct {
	lines chan api.Event
	ended chan error
	seen  []api.Event
}

func (ts *testServer) openEvents(t *testing.T, name string) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	path := "http://vmsup/v1/events"
	if name != "" {
		path += "?domain=" + name
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", path, nil)
	resp, err := ts.http.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != api.ContentTypeNDJSON {
		cancel()
		t.Fatalf("events: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	s := &eventStream{lines: make(chan api.Event, 100), ended: make(chan error, 1)}
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var ev api.Event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				s.ended <- fmt.Errorf("bad NDJSON line %q: %v", sc.Text(), err)
				return
			}
			s.lines <- ev
		}
		s.ended <- sc.Err()
	}()
	t.Cleanup(cancel)
	return s
}

func (s *eventStream) waitFor(t *testing.T, typ string) api.Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-s.lines:
			s.seen = append(s.seen, ev)
			if ev.Type == typ {
				if ev.Seq == 0 || ev.Time.IsZero() {
					t.Errorf("event %+v has no seq or time", ev)
				}
				return ev
			}
		case err := <-s.ended:
			t.Fatalf("event stream ended (%v) before %q; saw %+v", err, typ, s.seen)
		case <-timeout:
			t.Fatalf("no %q event within 10s; saw %+v", typ, s.seen)
		}
	}
}

func (s *eventStream) waitEnd(t *testing.T) {
	t.Helper()
	for {
		select {
		case <-s.lines:
		case <-s.ended:
			return
		case <-time.After(10 * time.Second):
			t.Fatal("event stream did not end")
		}
	}
}
