package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

// DefaultShutdownTimeout is how long shutdown waits for the guest when the
// request gives no timeout.
const DefaultShutdownTimeout = 60 * time.Second

// maxShutdownTimeout bounds ?timeout= of shutdown.
const maxShutdownTimeout = 24 * time.Hour

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	if _, err := query(r); err != nil {
		writeError(w, err)
		return
	}
	infos, err := s.drv.List(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]api.Info, 0, len(infos))
	for i := range infos {
		out = append(out, s.fromInfo(&infos[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

// readBody reads a request body of at most MaxBodyBytes within the body
// deadline (408 past it), then lifts the deadline.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, err
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, withStatus(http.StatusRequestTimeout,
				fmt.Errorf("read body: the request body did not arrive within %s", s.bodyTime))
		}
		return nil, badRequest(fmt.Errorf("read body: %v", err))
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
	return data, nil
}

func (s *Server) define(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "force")
	if err != nil {
		writeError(w, err)
		return
	}
	force, err := boolParam(q, "force")
	if err != nil {
		writeError(w, err)
		return
	}
	data, err := s.readBody(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	spec, err := domain.ParseSpec(data)
	if err != nil {
		writeError(w, badRequest(err))
		return
	}
	// ParseSpec gives a spec without a uuid a random one; drop it, so that
	// redefining an existing domain keeps its uuid (the driver assigns one
	// to a new domain).
	if !hasKey(data, "uuid") {
		spec.UUID = ""
	}
	res, err := s.drv.DefineWith(r.Context(), spec, driver.DefineOptions{Force: force})
	if err != nil {
		writeError(w, err)
		return
	}
	status := http.StatusOK
	if res.Created {
		status = http.StatusCreated
	}
	writeJSON(w, status, api.DefineResult{Name: res.Name, UUID: res.UUID, Created: res.Created})
}

// hasKey reports whether the top-level object of a (valid) YAML or JSON
// spec has key.
func hasKey(spec []byte, key string) bool {
	js, err := yaml.YAMLToJSON(spec)
	if err != nil {
		return false
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(js, &top) != nil {
		return false
	}
	_, ok := top[key]
	return ok
}

func (s *Server) info(w http.ResponseWriter, r *http.Request, name string) {
	if _, err := query(r); err != nil {
		writeError(w, err)
		return
	}
	s.writeInfo(w, r.Context(), name)
}

func (s *Server) writeInfo(w http.ResponseWriter, ctx context.Context, name string) {
	in, err := s.drv.Domain(name).Info(ctx)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.fromInfo(in))
}

func (s *Server) undefine(w http.ResponseWriter, r *http.Request, name string) {
	if _, err := query(r); err != nil {
		writeError(w, err)
		return
	}
	if err := s.drv.Undefine(r.Context(), name); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.Undefined{Name: name})
}

func (s *Server) start(w http.ResponseWriter, r *http.Request, name string) {
	q, err := query(r, "paused")
	if err != nil {
		writeError(w, err)
		return
	}
	paused, err := boolParam(q, "paused")
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.drv.Domain(name).Start(r.Context(), driver.StartOptions{Paused: paused}); err != nil {
		writeError(w, err)
		return
	}
	s.writeInfo(w, r.Context(), name)
}

func boolParam(q map[string][]string, key string) (bool, error) {
	v := q[key]
	if len(v) == 0 {
		return false, nil
	}
	if v[0] == "" {
		return true, nil // ?paused
	}
	b, err := strconv.ParseBool(v[0])
	if err != nil {
		return false, badRequest(fmt.Errorf("query parameter %s=%q: want 1, 0, true or false", key, v[0]))
	}
	return b, nil
}

func (s *Server) shutdown(w http.ResponseWriter, r *http.Request, name string) {
	q, err := query(r, "timeout", "mode", "force")
	if err != nil {
		writeError(w, err)
		return
	}
	mode, err := domain.ParseShutdownMode(q.Get("mode"))
	if err != nil {
		writeError(w, badRequest(fmt.Errorf("query parameter mode: %w", err)))
		return
	}
	force, err := boolParam(q, "force")
	if err != nil {
		writeError(w, err)
		return
	}
	timeout := DefaultShutdownTimeout
	if v := q.Get("timeout"); v != "" {
		timeout, err = time.ParseDuration(v)
		if err != nil || timeout <= 0 || timeout > maxShutdownTimeout {
			writeError(w, badRequest(fmt.Errorf("query parameter timeout=%q: want a duration such as 60s, at most 24h", v)))
			return
		}
	}
	ctx := r.Context()
	if _, ok := ctx.Deadline(); !ok {
		// The guest's own timeout, plus the default wait for the job lane.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout+actors.DefaultTimeout)
		defer cancel()
	}
	if err := s.drv.Domain(name).Shutdown(ctx, driver.ShutdownOptions{Timeout: timeout, Mode: mode, Force: force}); err != nil {
		// A guest that did not power off in time is a 504, which tells
		// the CLI that --force may destroy it.
		writeError(w, err)
		return
	}
	s.writeInfo(w, r.Context(), name)
}

func (s *Server) action(name string, do func(*driver.Domain, context.Context) error) func(http.ResponseWriter, *http.Request, string) {
	return func(w http.ResponseWriter, r *http.Request, dom string) {
		if _, err := query(r); err != nil {
			writeError(w, err)
			return
		}
		if err := do(s.drv.Domain(dom), r.Context()); err != nil {
			writeError(w, err)
			return
		}
		s.writeInfo(w, r.Context(), dom)
	}
}

func (s *Server) qmp(w http.ResponseWriter, r *http.Request, name string) {
	if _, err := query(r); err != nil {
		writeError(w, err)
		return
	}
	data, err := s.readBody(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	if _, err := checkQMPCommand(data); err != nil {
		writeError(w, badRequest(err))
		return
	}
	// Domain.QMP checks the command against the daemon's policy.
	ret, err := s.drv.Domain(name).QMP(r.Context(), json.RawMessage(data))
	if err != nil {
		writeError(w, err)
		return
	}
	if len(ret) == 0 {
		ret = json.RawMessage("{}")
	}
	writeJSON(w, http.StatusOK, api.QMPReply{Return: ret})
}

// checkQMPCommand accepts exactly one JSON object with a string "execute"
// and an optional object "arguments" (driver.ParseQMPCommand).
func checkQMPCommand(data []byte) (string, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return "", errors.New(`qmp: empty body; send a command such as {"execute":"query-status"}`)
	}
	execute, _, err := driver.ParseQMPCommand(data)
	return execute, err
}

func (s *Server) jobs(w http.ResponseWriter, r *http.Request, name string) {
	if _, err := query(r); err != nil {
		writeError(w, err)
		return
	}
	j, err := s.drv.Domain(name).Jobs(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, fromJobs(j))
}

func (s *Server) allJobs(w http.ResponseWriter, r *http.Request) {
	if _, err := query(r); err != nil {
		writeError(w, err)
		return
	}
	infos, err := s.drv.List(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]api.Jobs, 0, len(infos))
	for _, in := range infos {
		j, err := s.drv.Domain(in.Name).Jobs(r.Context())
		if errors.Is(err, driver.ErrNotFound) {
			continue // undefined meanwhile
		}
		if err != nil {
			writeError(w, err)
			return
		}
		out = append(out, fromJobs(j))
	}
	writeJSON(w, http.StatusOK, out)
}

// events streams lifecycle events as NDJSON, one flushed line per event,
// until the client goes away or the daemon stops.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "domain")
	if err != nil {
		writeError(w, err)
		return
	}
	name := q.Get("domain")
	if name != "" {
		if err := domain.ValidateName(name); err != nil {
			writeError(w, badRequest(err))
			return
		}
	}
	ctx := r.Context()
	var sub *domain.Subscription
	if name == "" {
		sub = s.drv.Subscribe(ctx, 0)
	} else {
		sub = s.drv.Domain(name).Subscribe(ctx, 0)
	}
	defer sub.Close()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", api.ContentTypeNDJSON)
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	enc := json.NewEncoder(w)
	for {
		select {
		case ev, ok := <-sub.Events():
			if !ok {
				return
			}
			if err := enc.Encode(fromEvent(ev)); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		case <-s.done:
			return
		case <-ctx.Done():
			return
		}
	}
}

// agent runs one raw guest agent command. guest-sync* are refused: the
// daemon synchronises the channel itself.
func (s *Server) agent(w http.ResponseWriter, r *http.Request, name string) {
	if _, err := query(r); err != nil {
		writeError(w, err)
		return
	}
	data, err := s.readBody(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	if len(bytes.TrimSpace(data)) == 0 {
		writeError(w, badRequest(errors.New(`agent: empty body; send a command such as {"execute":"guest-info"}`)))
		return
	}
	// The agent speaks QMP's framing: the same parser, the agent's words.
	execute, args, err := monitor.ParseCommand(data)
	if err != nil {
		writeError(w, badRequest(fmt.Errorf(`agent: bad command (%v); send an object such as {"execute":"guest-info"}`, err)))
		return
	}
	if strings.HasPrefix(execute, "guest-sync") {
		writeError(w, badRequest(fmt.Errorf("agent: %q is refused: the daemon synchronises the agent channel itself", execute)))
		return
	}
	ret, err := s.drv.Domain(name).Agent(r.Context(), execute, args)
	if err != nil {
		writeError(w, err)
		return
	}
	if len(ret) == 0 {
		ret = json.RawMessage("{}")
	}
	writeJSON(w, http.StatusOK, api.AgentReply{Return: ret})
}

// defaultExecTimeout bounds exec when the call has no X-Vmsup-Timeout.
const defaultExecTimeout = 5 * time.Minute

// exec runs a command in the guest through the agent and answers once it
// has exited (qemu-ga returns the output only then).
func (s *Server) exec(w http.ResponseWriter, r *http.Request, name string) {
	if _, err := query(r); err != nil {
		writeError(w, err)
		return
	}
	data, err := s.readBody(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	var req api.ExecRequest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, badRequest(fmt.Errorf("exec: bad body: %w; send {\"path\":\"/bin/uname\",\"args\":[\"-a\"]}", err)))
		return
	}
	if req.Path == "" || len(req.Path) > 4096 || strings.ContainsRune(req.Path, 0) {
		writeError(w, badRequest(errors.New(`exec: "path" must be a non-empty program path`)))
		return
	}
	ctx := r.Context()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultExecTimeout)
		defer cancel()
	}
	res, err := s.drv.Domain(name).Exec(ctx, req.Path, req.Args, req.Stdin)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, api.ExecReply{PID: res.PID, ExitCode: res.ExitCode, Signal: res.Signal,
		Stdout: res.Stdout, Stderr: res.Stderr, Truncated: res.Truncated})
}
