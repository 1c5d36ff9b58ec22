package server

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmsup/vmsup/cmd/internal/peer"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

// fuzzServer is the API over a driver of simulated VMs (no QEMU), with one
// VM "vm1" defined and running, so requests reach every handler.
func fuzzServer(f *testing.F) *Server {
	dir, err := os.MkdirTemp("", "vsf")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	var pids atomic.Int64
	pids.Store(1 << 23) // above any real pid
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	drv, err := driver.Open(ctx, driver.Config{
		StateDir: dir,
		Launcher: func(process.Launch) (*process.Process, error) {
			p, _ := process.NewSimulatedProcess(int(pids.Add(1)))
			return p, nil
		},
		DialMonitor: func(string) monitor.Conn { return monitor.NewSimulated(0) },
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { drv.Close(context.Background()) })
	if _, err := drv.Define(ctx, &domain.Spec{Name: "vm1", Machine: "none"}); err != nil {
		f.Fatal(err)
	}
	if err := drv.Domain("vm1").Start(ctx, driver.StartOptions{}); err != nil {
		f.Fatal(err)
	}
	s := New(drv, Options{StateDir: dir})
	f.Cleanup(s.Close)
	return s
}

// FuzzRequest sends hostile requests (method, path, query, body) to the
// API: the daemon must answer each within its deadline, never with a 500
// (a handler panic or an unmapped error), and every error must be the
// JSON error object.
func FuzzRequest(f *testing.F) {
	for _, seed := range []struct{ method, path, body string }{
		{"GET", "/v1/domains", ""},
		{"POST", "/v1/domains", "name: a\nmachine: none\n"},
		{"POST", "/v1/domains", `{"name":"b","machine":"none","bogus":1}`},
		{"POST", "/v1/domains", "name: ../x\n"},
		{"POST", "/v1/domains", "\x00\xff{[["},
		{"GET", "/v1/domains/vm1", ""},
		{"GET", "/v1/domains/%2e%2e", ""},
		{"POST", "/v1/domains/vm1/qmp", `{"execute":"query-status"}`},
		{"POST", "/v1/domains/vm1/qmp", `{"execute":"stop","arguments":[1]}`},
		{"POST", "/v1/domains/vm1/qmp", `{"execute":"x"}{"execute":"y"}`},
		{"POST", "/v1/domains/vm1/shutdown?timeout=-1s", ""},
		{"POST", "/v1/domains/vm1/start?paused=maybe", ""},
		{"POST", "/v1/domains/vm1/pause", ""},
		{"POST", "/v1/domains/vm1/resume", ""},
		{"DELETE", "/v1/domains/vm1", ""},
		{"GET", "/v1/jobs", ""},
		{"GET", "/v1/domains/vm1/jobs?x=1", ""},
		{"PUT", "/v1/domains/vm1", "{}"},
		{"GET", "/v1/trace?limit=abc", ""},
		{"GET", "/v1/trace/request/nope?format=gif", ""},
	} {
		f.Add(seed.method, seed.path, seed.body)
	}
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, method, path, body string) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#") || len(path) > 2048 {
			return // not a request line an HTTP server would parse
		}
		if _, err := url.ParseRequestURI(path); err != nil {
			return // net/http answers 400 before any handler runs
		}
		if m := strings.ToUpper(method); m != "GET" && m != "POST" && m != "DELETE" && m != "PUT" && m != "HEAD" {
			return
		}
		if strings.Contains(path, "/console") || strings.Contains(path, "/events") || strings.Contains(path, "/follow") {
			return // streams: covered by their own tests
		}
		if strings.Contains(path, "/destroy") || strings.Contains(path, "/shutdown") && strings.Contains(path, "timeout=") {
			return // long on purpose; exercised in the seeds above
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ctx = peer.WithCred(ctx, peer.Cred{UID: 0})
		req := httptest.NewRequestWithContext(ctx, strings.ToUpper(method), "http://vmsup"+path, bytes.NewReader([]byte(body)))
		w := httptest.NewRecorder()
		done := make(chan struct{})
		go func() { defer close(done); s.ServeHTTP(w, req) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s %s did not answer within 10s", method, path)
		}
		if w.Code == http.StatusInternalServerError {
			t.Fatalf("%s %s (body %q): 500 %s", method, path, body, w.Body.String())
		}
		if w.Code >= 400 && req.Method != "HEAD" {
			var e struct {
				Error string `json:"error"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("%s %s: %d with a body that is not a JSON error: %q", method, path, w.Code, w.Body.String())
			}
		}
	})
}

// FuzzCheckQMPCommand: the QMP request check never panics, and what it
// accepts is one JSON object with a string "execute".
func FuzzCheckQMPCommand(f *testing.F) {
	for _, seed := range []string{`{"execute":"query-status"}`, `{"execute":"x","arguments":{}}`, `[]`, `{"execute":1}`, `{"execute":"x"} trailing`, "", `{"execute":"x","arguments":null}`} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		if _, err := checkQMPCommand([]byte(body)); err != nil {
			return
		}
		var cmd map[string]json.RawMessage
		if err := json.Unmarshal([]byte(body), &cmd); err != nil {
			t.Fatalf("accepted %q, which is not a JSON object: %v", body, err)
		}
		var name string
		if err := json.Unmarshal(cmd["execute"], &name); err != nil || name == "" {
			t.Fatalf("accepted %q without a string execute", body)
		}
	})
}

// FuzzAuthorize sends any request as a peer that is only in the reader
// group, and as one in no group: a route that is not read-only never runs
// for either (403, or 404/405 for no route), and the reader's reads are
// never refused.
func FuzzAuthorize(f *testing.F) {
	for _, seed := range []struct{ method, path string }{
		{"GET", "/v1/domains"}, {"POST", "/v1/domains"}, {"GET", "/v1/domains/vm1"},
		{"POST", "/v1/domains/vm1/destroy"}, {"POST", "/v1/domains/vm1/qmp"}, {"DELETE", "/v1/domains/vm1"},
		{"GET", "/v1/domains/vm1/console"}, {"GET", "/v1/jobs"}, {"GET", "/v1/trace/request/x"},
		{"GET", "/v1/domains/vm1/%63onsole"}, {"POST", "/v1/domains/vm1/start?paused=1"},
	} {
		f.Add(seed.method, seed.path, uint32(991))
	}
	s := fuzzServer(f)
	reader := peer.Group{Name: "readers", GID: 991}
	s.policy = peer.Policy{AdminUIDs: []uint32{0}, ReaderGroup: &reader}
	f.Fuzz(func(t *testing.T, method, path string, gid uint32) {
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#") || len(path) > 2048 {
			return
		}
		if _, err := url.ParseRequestURI(path); err != nil {
			return
		}
		m := strings.ToUpper(method)
		if m != "GET" && m != "POST" && m != "DELETE" && m != "PUT" {
			return
		}
		req := httptest.NewRequest(m, "http://vmsup"+path, nil)
		_, pattern := s.mux.Handler(req)
		need := s.Access(pattern)
		if pattern == "" || need == peer.Read {
			return // reads and non-routes: FuzzRequest covers them
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ctx = peer.WithCred(ctx, peer.Cred{UID: 65534, GID: gid})
		w := httptest.NewRecorder()
		s.ServeHTTP(w, req.WithContext(ctx))
		if w.Code != http.StatusForbidden && w.Code != http.StatusBadRequest {
			t.Fatalf("%s %s (route %q) as uid 65534 gid %d: %d %s, want 403", m, path, pattern, gid, w.Code, w.Body.String())
		}
		if w.Code == http.StatusForbidden && !strings.Contains(w.Body.String(), "uid 65534") {
			t.Fatalf("403 without the uid: %s", w.Body.String())
		}
	})
}
