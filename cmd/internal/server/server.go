// Package server serves vmsup's HTTP/JSON API (routes and objects in
// package api) for one driver.
package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
)

// Options tune a Server.
type Options struct {
	// Logger receives one line per request and every recovered panic; nil
	// discards them.
	Logger *zerolog.Logger
	// StateDir is reported by GET /v1/ping.
	StateDir string
}

// Server serves the API for one driver. It is an http.Handler; Close ends
// its event streams and console sessions, which http.Server.Shutdown does
// not (they are long-lived or hijacked).
type Server struct {
	drv      *driver.Driver
	log      zerolog.Logger
	stateDir string
	mux      *http.ServeMux

	done      chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	conns     map[io.Closer]struct{} // console connections, both sides
	sessions  sync.WaitGroup
}

// New returns the API server of drv.
func New(drv *driver.Driver, opts Options) *Server {
	s := &Server{
		drv:      drv,
		log:      zerolog.Nop(),
		stateDir: opts.StateDir,
		mux:      http.NewServeMux(),
		done:     make(chan struct{}),
		conns:    make(map[io.Closer]struct{}),
	}
	if opts.Logger != nil {
		s.log = *opts.Logger
	}
	s.routes()
	return s
}

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /v1/ping", s.ping)
	m.HandleFunc("GET /v1/domains", s.list)
	m.HandleFunc("POST /v1/domains", s.define)
	m.HandleFunc("GET /v1/domains/{name}", s.named(s.info))
	m.HandleFunc("DELETE /v1/domains/{name}", s.named(s.undefine))
	m.HandleFunc("POST /v1/domains/{name}/start", s.named(s.start))
	m.HandleFunc("POST /v1/domains/{name}/shutdown", s.named(s.shutdown))
	m.HandleFunc("POST /v1/domains/{name}/destroy", s.named(s.action("destroy", (*driver.Domain).Destroy)))
	m.HandleFunc("POST /v1/domains/{name}/pause", s.named(s.action("pause", (*driver.Domain).Pause)))
	m.HandleFunc("POST /v1/domains/{name}/resume", s.named(s.action("resume", (*driver.Domain).Resume)))
	m.HandleFunc("POST /v1/domains/{name}/reset", s.named(s.action("reset", (*driver.Domain).Reset)))
	m.HandleFunc("POST /v1/domains/{name}/qmp", s.named(s.qmp))
	m.HandleFunc("GET /v1/domains/{name}/jobs", s.named(s.jobs))
	m.HandleFunc("GET /v1/domains/{name}/console", s.named(s.console))
	m.HandleFunc("GET /v1/jobs", s.allJobs)
	m.HandleFunc("GET /v1/events", s.events)
	m.HandleFunc("GET /v1/trace", s.traceList)
	m.HandleFunc("GET /v1/trace/follow", s.traceFollow)
	m.HandleFunc("GET /v1/trace/chrome", s.traceChrome)
	m.HandleFunc("GET /v1/trace/request/{id}", s.traceRequest)
}

// Close ends the event and trace streams and the console sessions, and
// waits for the console bridges to finish. It is safe to call more than once.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.done)
		s.mu.Lock()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
	})
	s.sessions.Wait()
}

// ServeHTTP gives the request an id, recovers panics, rejects paths that
// are not canonical, answers unknown routes with JSON errors, applies the
// client's timeout header and logs the request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	began := time.Now()
	id := actors.NewID()
	w.Header().Set(api.HeaderRequestID, id)
	rec := &recorder{ResponseWriter: w}
	defer func() {
		p := recover()
		if p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error().Str("request_id", id).Str("method", r.Method).Str("path", r.URL.EscapedPath()).
				Str("panic", fmt.Sprint(p)).Str("stack", string(debug.Stack())).Msg("handler panicked")
			if !rec.wrote && !rec.hijacked {
				writeError(rec, withStatus(http.StatusInternalServerError,
					fmt.Errorf("internal error (request %s): %v", id, p)))
			}
		}
		s.logRequest(r, rec, id, began)
	}()

	// The driver uses the same id for the call's trace and its job records.
	r = r.WithContext(actors.WithRequestID(r.Context(), id))
	if err := checkPath(r.URL); err != nil {
		writeError(rec, err)
		return
	}
	if _, pattern := s.mux.Handler(r); pattern == "" {
		s.noRoute(rec, r)
		return
	}
	if h := r.Header.Get(api.HeaderTimeout); h != "" {
		d, err := time.ParseDuration(h)
		if err != nil || d <= 0 {
			writeError(rec, badRequest(fmt.Errorf("header %s: %q is not a positive duration such as \"30s\"", api.HeaderTimeout, h)))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		r = r.WithContext(ctx)
	}
	s.mux.ServeHTTP(rec, r)
}

func (s *Server) logRequest(r *http.Request, rec *recorder, id string, began time.Time) {
	ev := s.log.Debug()
	if r.Method != http.MethodGet || rec.status >= 400 {
		ev = s.log.Info()
	}
	ev.Str("request_id", id).Str("method", r.Method).Str("path", r.URL.EscapedPath()).
		Int("status", rec.status).Dur("took", time.Since(began)).Msg("request")
}

// checkPath rejects paths with empty, "." or ".." segments, which the mux
// would otherwise answer with a redirect. A dot segment where a domain name
// goes is reported as an invalid name.
func checkPath(u *url.URL) error {
	p := u.EscapedPath()
	if p == "" || p[0] != '/' {
		return badRequest(fmt.Errorf("invalid path %q", p))
	}
	segs := strings.Split(p[1:], "/")
	for i, seg := range segs {
		raw, err := url.PathUnescape(seg)
		if err != nil {
			return badRequest(fmt.Errorf("invalid path %q: %v", p, err))
		}
		if seg == "." || seg == ".." {
			if i == 2 && segs[1] == "domains" {
				return badRequest(domain.ValidateName(raw))
			}
			return badRequest(fmt.Errorf("invalid path %q: \".\" and \"..\" segments are not allowed", p))
		}
		if seg == "" && i != len(segs)-1 {
			return badRequest(fmt.Errorf("invalid path %q: empty segment", p))
		}
	}
	if path.Clean(p) != p && !strings.HasSuffix(p, "/") {
		return badRequest(fmt.Errorf("invalid path %q", p))
	}
	return nil
}

// noRoute answers a request that no route matches: 405 with Allow when
// another method would match, else 404.
func (s *Server) noRoute(w http.ResponseWriter, r *http.Request) {
	h, _ := s.mux.Handler(r)
	probe := &probeWriter{header: http.Header{}}
	h.ServeHTTP(probe, r)
	if probe.status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", probe.header.Get("Allow"))
		writeError(w, withStatus(http.StatusMethodNotAllowed,
			fmt.Errorf("method %s is not allowed on %s (allowed: %s)", r.Method, r.URL.EscapedPath(), probe.header.Get("Allow"))))
		return
	}
	writeError(w, withStatus(http.StatusNotFound, fmt.Errorf("no API route %s %s", r.Method, r.URL.EscapedPath())))
}

// named validates the {name} of a route before the handler runs.
func (s *Server) named(h func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if err := domain.ValidateName(name); err != nil {
			writeError(w, badRequest(err))
			return
		}
		h(w, r, name)
	}
}

// query checks that r has no query parameters other than allowed.
func query(r *http.Request, allowed ...string) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badRequest(fmt.Errorf("bad query: %v", err))
	}
	for k := range q {
		ok := false
		for _, a := range allowed {
			ok = ok || k == a
		}
		if !ok {
			if len(allowed) == 0 {
				return nil, badRequest(fmt.Errorf("unknown query parameter %q (this route takes none)", k))
			}
			return nil, badRequest(fmt.Errorf("unknown query parameter %q (allowed: %s)", k, strings.Join(allowed, ", ")))
		}
	}
	return q, nil
}

func (s *Server) ping(w http.ResponseWriter, r *http.Request) {
	if _, err := query(r); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.Ping{PID: os.Getpid(), StateDir: s.stateDir})
}

// recorder remembers the status written, and passes Flush and Hijack
// through (via Unwrap, for http.ResponseController).
type recorder struct {
	http.ResponseWriter
	status   int
	wrote    bool
	hijacked bool
}

// WriteHeader records the status and writes it.
func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

// Write records an implicit 200 and writes b.
func (r *recorder) Write(b []byte) (int, error) {
	if !r.wrote {
		r.status, r.wrote = http.StatusOK, true
	}
	return r.ResponseWriter.Write(b)
}

// Unwrap exposes the underlying writer to http.ResponseController.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// Flush flushes a streamed response.
func (r *recorder) Flush() {
	if !r.wrote {
		r.status, r.wrote = http.StatusOK, true
	}
	_ = http.NewResponseController(r.ResponseWriter).Flush()
}

// Hijack takes over the connection (console route).
func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := http.NewResponseController(r.ResponseWriter).Hijack()
	if err == nil {
		r.hijacked = true
		if !r.wrote {
			r.status, r.wrote = http.StatusSwitchingProtocols, true
		}
	}
	return c, rw, err
}

// probeWriter captures what the mux's own 404/405 handlers would write.
type probeWriter struct {
	header http.Header
	status int
}

// Header returns the captured header.
func (p *probeWriter) Header() http.Header { return p.header }

// Write discards the body.
func (p *probeWriter) Write(b []byte) (int, error) { return len(b), nil }

// WriteHeader captures the status.
func (p *probeWriter) WriteHeader(code int) { p.status = code }

var errClosing = errors.New("the daemon is stopping")
