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
	"github.com/vmsup/vmsup/cmd/internal/peer"
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
	// Policy decides what each peer may do; nil is peer.DefaultPolicy of
	// this process's uid. Peer credentials come from the connection's
	// context (ConnContext); a request without them is refused.
	Policy *peer.Policy
	// BodyTimeout bounds the reading of a request's body, from the end of
	// its header (DefaultBodyTimeout when zero); a body that takes longer
	// is answered 408 and the connection closed.
	BodyTimeout time.Duration
}

// DefaultBodyTimeout is Options.BodyTimeout's default.
const DefaultBodyTimeout = 30 * time.Second

// ConnContext is the http.Server ConnContext the API needs: it records
// each connection's peer credentials.
func ConnContext(ctx context.Context, c net.Conn) context.Context { return peer.ConnContext(ctx, c) }

// Server serves the API for one driver. It is an http.Handler; Close ends
// its event streams and console sessions, which http.Server.Shutdown does
// not (they are long-lived or hijacked).
type Server struct {
	drv      *driver.Driver
	log      zerolog.Logger
	stateDir string
	mux      *http.ServeMux
	policy   peer.Policy
	bodyTime time.Duration
	access   map[string]peer.Access // route pattern → access it needs

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
		policy:   peer.DefaultPolicy(uint32(os.Getuid())),
		bodyTime: opts.BodyTimeout,
		access:   make(map[string]peer.Access),
	}
	if s.bodyTime <= 0 {
		s.bodyTime = DefaultBodyTimeout
	}
	if opts.Policy != nil {
		s.policy = *opts.Policy
	}
	if opts.Logger != nil {
		s.log = *opts.Logger
	}
	s.routes()
	return s
}

func (s *Server) routes() {
	read, admin := peer.Read, peer.Admin
	s.handle("GET /v1/ping", read, s.ping)
	s.handle("GET /v1/domains", read, s.list)
	s.handle("POST /v1/domains", admin, s.define)
	s.handle("GET /v1/domains/{name}", read, s.named(s.info))
	s.handle("DELETE /v1/domains/{name}", admin, s.named(s.undefine))
	s.handle("POST /v1/domains/{name}/start", admin, s.named(s.start))
	s.handle("POST /v1/domains/{name}/shutdown", admin, s.named(s.shutdown))
	s.handle("POST /v1/domains/{name}/destroy", admin, s.named(s.action("destroy", (*driver.Domain).Destroy)))
	s.handle("POST /v1/domains/{name}/pause", admin, s.named(s.action("pause", (*driver.Domain).Pause)))
	s.handle("POST /v1/domains/{name}/resume", admin, s.named(s.action("resume", (*driver.Domain).Resume)))
	s.handle("POST /v1/domains/{name}/reset", admin, s.named(s.action("reset", (*driver.Domain).Reset)))
	s.handle("POST /v1/domains/{name}/qmp", admin, s.named(s.qmp))
	// Guest agent commands run in the guest, with the guest's authority,
	// never on the host: admin access suffices (no --allow-raw-qemu).
	s.handle("POST /v1/domains/{name}/agent", admin, s.named(s.agent))
	s.handle("POST /v1/domains/{name}/exec", admin, s.named(s.exec))
	s.handle("GET /v1/domains/{name}/jobs", read, s.named(s.jobs))
	s.handle("POST /v1/domains/{name}/jobs/abort", admin, s.named(s.action("abort", (*driver.Domain).AbortJob)))
	s.handle("GET /v1/domains/{name}/snapshots", read, s.named(s.snapshots))
	s.handle("POST /v1/domains/{name}/snapshots/{snap}", admin, s.named(s.snapshotOp("create", (*driver.Domain).CreateSnapshot)))
	s.handle("POST /v1/domains/{name}/snapshots/{snap}/disk-only", admin, s.named(s.snapshotOp("create", (*driver.Domain).CreateDiskSnapshot)))
	s.handle("POST /v1/domains/{name}/snapshots/{snap}/revert", admin, s.named(s.snapshotOp("revert", (*driver.Domain).RevertSnapshot)))
	s.handle("DELETE /v1/domains/{name}/snapshots/{snap}", admin, s.named(s.snapshotOp("delete", (*driver.Domain).DeleteSnapshot)))
	s.handle("GET /v1/domains/{name}/definition", admin, s.named(s.definition))
	s.handle("POST /v1/domains/{name}/disks", admin, s.named(s.attachDisk))
	s.handle("POST /v1/domains/{name}/disks/detach", admin, s.named(s.detach(true)))
	s.handle("POST /v1/domains/{name}/nics", admin, s.named(s.attachNIC))
	s.handle("POST /v1/domains/{name}/nics/detach", admin, s.named(s.detach(false)))
	// The console writes to the guest: it is not a read.
	s.handle("GET /v1/domains/{name}/console", admin, s.named(s.console))
	s.handle("GET /v1/jobs", read, s.allJobs)
	s.handle("GET /v1/events", read, s.events)
	s.handle("GET /v1/trace", read, s.traceList)
	s.handle("GET /v1/trace/follow", read, s.traceFollow)
	s.handle("GET /v1/trace/chrome", read, s.traceChrome)
	s.handle("GET /v1/trace/request/{id}", read, s.traceRequest)
}

// handle registers a route and the access it needs.
func (s *Server) handle(pattern string, need peer.Access, h http.HandlerFunc) {
	s.access[pattern] = need
	s.mux.HandleFunc(pattern, h)
}

// Access returns the access the route pattern needs (peer.Admin for an
// unknown pattern).
func (s *Server) Access(pattern string) peer.Access {
	if a, ok := s.access[pattern]; ok {
		return a
	}
	return peer.Admin
}

// authorize checks the peer of r against the policy for the route pattern.
func (s *Server) authorize(r *http.Request, pattern string) error {
	cred, err := peer.FromContext(r.Context())
	if err != nil {
		return withStatus(http.StatusForbidden, fmt.Errorf("permission denied: %w", err))
	}
	if err := s.policy.Check(cred, s.Access(pattern), r.Method+" "+r.URL.EscapedPath()); err != nil {
		return withStatus(http.StatusForbidden, err)
	}
	return nil
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

	if r.ContentLength != 0 {
		// A body (or one of unknown length) must arrive in time, whether a
		// handler reads it or the server discards it after the handler;
		// readBody lifts the deadline once it has the body.
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.bodyTime))
	}
	// The driver uses the same id for the call's trace and its job records.
	r = r.WithContext(actors.WithRequestID(r.Context(), id))
	if err := checkPath(r.URL); err != nil {
		writeError(rec, err)
		return
	}
	_, pattern := s.mux.Handler(r)
	if pattern == "" {
		s.noRoute(rec, r)
		return
	}
	if err := s.authorize(r, pattern); err != nil {
		writeError(rec, err)
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
	if c, err := peer.FromContext(r.Context()); err == nil {
		ev = ev.Uint32("peer_uid", c.UID).Int32("peer_pid", c.PID)
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
