// Package client calls the vmsup daemon's HTTP/JSON API over its unix
// socket.
package client

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
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmsup/vmsup/actors/trace/record"
	"github.com/vmsup/vmsup/cmd/internal/api"
)

// Client talks to one daemon socket. It is safe for concurrent use.
type Client struct {
	socket string
	http   *http.Client
	// Trace, when set, is called after every call with the daemon's
	// request id (for -v).
	Trace func(method, path string, status int, requestID string, took time.Duration)
	// Timeout, when positive, is sent as the X-Vmsup-Timeout header.
	Timeout time.Duration
}

// Error is an error answer of the daemon.
type Error struct {
	// Status is the HTTP status (4xx or 5xx).
	Status int
	// Message is the daemon's one-line error.
	Message string
	// Class and Desc are set for QMP errors.
	Class, Desc string
	// Fields lists the bad fields of a spec.
	Fields []api.FieldError
	// RequestID is the daemon's id for the call.
	RequestID string
}

// Error returns the daemon's message.
func (e *Error) Error() string { return e.Message }

// IsStatus reports whether err is an *Error with the given status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

// New returns a client for the daemon listening on socket.
func New(socket string) *Client {
	c := &Client{socket: socket}
	tr := &http.Transport{
		DialContext:         c.dial,
		MaxIdleConns:        4,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
		TLSHandshakeTimeout: 0,
	}
	c.http = &http.Client{Transport: tr}
	return c
}

// Socket is the socket path the client dials.
func (c *Client) Socket() string { return c.socket }

func (c *Client) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, &DialError{Socket: c.socket, Err: err}
	}
	return conn, nil
}

// DialError means the daemon's socket could not be reached.
type DialError struct {
	Socket string
	Err    error
}

// Error says which socket could not be reached, and what to check.
func (e *DialError) Error() string {
	hint := "is `vmsup daemon` running?"
	if errors.Is(e.Err, syscall.EACCES) {
		hint = "permission denied; the socket is for the daemon's user and group"
	}
	return fmt.Sprintf("cannot reach the vmsup daemon at %s: %s (%v)", e.Socket, hint, unwrapOp(e.Err))
}

// Unwrap returns the dial error.
func (e *DialError) Unwrap() error { return e.Err }

func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// request builds a request to the daemon.
func (c *Client) request(ctx context.Context, method, path string, q url.Values, body []byte, contentType string) (*http.Request, error) {
	u := "http://vmsup" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	if c.Timeout > 0 {
		req.Header.Set(api.HeaderTimeout, c.Timeout.String())
	}
	return req, nil
}

// send runs a request and returns the response when its status is 2xx;
// otherwise it decodes the daemon's error.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	began := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		var de *DialError
		if errors.As(err, &de) {
			return nil, de
		}
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, ctxErr)
		}
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL.Path, err)
	}
	if c.Trace != nil {
		c.Trace(req.Method, req.URL.RequestURI(), resp.StatusCode, resp.Header.Get(api.HeaderRequestID), time.Since(began))
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, decodeError(resp)
}

func decodeError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Status: resp.StatusCode, RequestID: resp.Header.Get(api.HeaderRequestID)}
	var body api.Error
	if json.Unmarshal(data, &body) == nil && body.Error != "" {
		e.Message, e.Class, e.Desc, e.Fields = body.Error, body.Class, body.Desc, body.Fields
	} else {
		msg := strings.TrimSpace(string(data))
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		e.Message = fmt.Sprintf("daemon answered %s: %s", resp.Status, msg)
	}
	return e
}

// call runs a request and decodes a JSON answer into out (when not nil).
func (c *Client) call(ctx context.Context, method, path string, q url.Values, body []byte, contentType string, out any) error {
	req, err := c.request(ctx, method, path, q, body, contentType)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad answer from the daemon: %w", method, path, err)
	}
	return nil
}

func domainPath(name string, rest ...string) string {
	p := api.Prefix + "/domains/" + url.PathEscape(name)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// Ping asks who serves the socket.
func (c *Client) Ping(ctx context.Context) (*api.Ping, error) {
	var p api.Ping
	return &p, c.call(ctx, http.MethodGet, api.Prefix+"/ping", nil, nil, "", &p)
}

// List returns the info object of every VM.
func (c *Client) List(ctx context.Context) ([]api.Info, error) {
	var out []api.Info
	return out, c.call(ctx, http.MethodGet, api.Prefix+"/domains", nil, nil, "", &out)
}

// Define defines or updates a VM from a YAML or JSON spec; force replaces
// a broken definition of the same name.
func (c *Client) Define(ctx context.Context, spec []byte, force bool) (*api.DefineResult, error) {
	var out api.DefineResult
	var q url.Values
	if force {
		q = url.Values{"force": {"1"}}
	}
	return &out, c.call(ctx, http.MethodPost, api.Prefix+"/domains", q, spec, "application/yaml", &out)
}

// Undefine removes a VM that is shut off.
func (c *Client) Undefine(ctx context.Context, name string) error {
	return c.call(ctx, http.MethodDelete, domainPath(name), nil, nil, "", nil)
}

// Info returns a VM's info object.
func (c *Client) Info(ctx context.Context, name string) (*api.Info, error) {
	var out api.Info
	return &out, c.call(ctx, http.MethodGet, domainPath(name), nil, nil, "", &out)
}

// Start starts a VM, paused when asked.
func (c *Client) Start(ctx context.Context, name string, paused bool) (*api.Info, error) {
	var q url.Values
	if paused {
		q = url.Values{"paused": {"1"}}
	}
	return c.action(ctx, name, "start", q)
}

// Shutdown asks the guest to power off and waits up to timeout (0: the
// daemon's default, 60s).
func (c *Client) Shutdown(ctx context.Context, name string, timeout time.Duration) (*api.Info, error) {
	return c.ShutdownMode(ctx, name, timeout, "")
}

// ShutdownMode is Shutdown asking the guest as mode says: "acpi" (the
// default when empty), "agent" or "auto".
func (c *Client) ShutdownMode(ctx context.Context, name string, timeout time.Duration, mode string) (*api.Info, error) {
	q := url.Values{}
	if timeout > 0 {
		q.Set("timeout", timeout.String())
	}
	if mode != "" {
		q.Set("mode", mode)
	}
	return c.action(ctx, name, "shutdown", q)
}

// Destroy kills a VM's QEMU; it preempts any job.
func (c *Client) Destroy(ctx context.Context, name string) (*api.Info, error) {
	return c.action(ctx, name, "destroy", nil)
}

// Pause pauses a VM.
func (c *Client) Pause(ctx context.Context, name string) (*api.Info, error) {
	return c.action(ctx, name, "pause", nil)
}

// Resume resumes a paused VM.
func (c *Client) Resume(ctx context.Context, name string) (*api.Info, error) {
	return c.action(ctx, name, "resume", nil)
}

// Reset resets a VM.
func (c *Client) Reset(ctx context.Context, name string) (*api.Info, error) {
	return c.action(ctx, name, "reset", nil)
}

func (c *Client) action(ctx context.Context, name, action string, q url.Values) (*api.Info, error) {
	var out api.Info
	return &out, c.call(ctx, http.MethodPost, domainPath(name, action), q, nil, "", &out)
}

// QMP sends one raw QMP command and returns the reply's "return" value.
// A QMP error is an *Error with status 502 and Class and Desc set.
func (c *Client) QMP(ctx context.Context, name string, command []byte) (json.RawMessage, error) {
	var out struct {
		Return json.RawMessage `json:"return"`
	}
	if err := c.call(ctx, http.MethodPost, domainPath(name, "qmp"), nil, command, "application/json", &out); err != nil {
		return nil, err
	}
	return out.Return, nil
}

// Agent sends one raw guest agent command, {"execute": ..., "arguments":
// {...}}, and returns the agent's "return" value. An error reply of the
// agent is an *Error with status 502 and Class and Desc set.
func (c *Client) Agent(ctx context.Context, name string, command []byte) (json.RawMessage, error) {
	var out struct {
		Return json.RawMessage `json:"return"`
	}
	if err := c.call(ctx, http.MethodPost, domainPath(name, "agent"), nil, command, "application/json", &out); err != nil {
		return nil, err
	}
	return out.Return, nil
}

// Exec runs a command in the guest through its agent and returns how it
// ended, with its output, once it has exited.
func (c *Client) Exec(ctx context.Context, name string, req api.ExecRequest) (*api.ExecReply, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var out api.ExecReply
	return &out, c.call(ctx, http.MethodPost, domainPath(name, "exec"), nil, body, "application/json", &out)
}

// Jobs returns a VM's job lane.
func (c *Client) Jobs(ctx context.Context, name string) (*api.Jobs, error) {
	var out api.Jobs
	return &out, c.call(ctx, http.MethodGet, domainPath(name, "jobs"), nil, nil, "", &out)
}

// AllJobs returns the job lane of every VM.
func (c *Client) AllJobs(ctx context.Context) ([]api.Jobs, error) {
	var out []api.Jobs
	return out, c.call(ctx, http.MethodGet, api.Prefix+"/jobs", nil, nil, "", &out)
}

// Events streams lifecycle events (of one VM, or of all when name is "")
// to fn until ctx ends, the daemon ends the stream, or fn returns an error.
// started, when not nil, is called once the daemon has accepted the
// subscription.
func (c *Client) Events(ctx context.Context, name string, started func(), fn func(api.Event) error) error {
	var q url.Values
	if name != "" {
		q = url.Values{"domain": {name}}
	}
	return c.streamLines(ctx, "events", api.Prefix+"/events", q, 1<<20, started, func(line []byte) error {
		var ev api.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return fmt.Errorf("events: bad line from the daemon: %w", err)
		}
		return fn(ev)
	})
}

// streamLines reads an NDJSON stream from path and hands each line to fn,
// until ctx ends (its error), fn fails (that error), or the daemon ends the
// stream (io.EOF). started, when not nil, is called once the daemon has
// answered. what names the stream in errors.
func (c *Client) streamLines(ctx context.Context, what, path string, q url.Values, maxLine int, started func(), fn func([]byte) error) error {
	req, err := c.request(ctx, http.MethodGet, path, q, nil, "")
	if err != nil {
		return err
	}
	req.Header.Set("Accept", api.ContentTypeNDJSON)
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if started != nil {
		started()
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for sc.Scan() {
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return io.EOF
}

// Console opens a VM's serial console: a raw byte stream both ways. The
// caller closes it.
func (c *Client) Console(ctx context.Context, name string) (net.Conn, error) {
	conn, err := c.dial(ctx, "", "")
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	req, err := c.request(ctx, http.MethodGet, domainPath(name, "console"), nil, nil, "")
	if err != nil {
		conn.Close()
		return nil, err
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", api.ConsoleProtocol)
	began := time.Now()
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("console: %w", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("console: %w", ctx.Err())
		}
		return nil, fmt.Errorf("console: %w", err)
	}
	if c.Trace != nil {
		c.Trace(req.Method, req.URL.RequestURI(), resp.StatusCode, resp.Header.Get(api.HeaderRequestID), time.Since(began))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		return nil, decodeError(resp)
	}
	if !stop() {
		conn.Close()
		return nil, fmt.Errorf("console: %w", ctx.Err())
	}
	return &bufConn{Conn: conn, r: br}, nil
}

// bufConn reads first what the response reader has buffered.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

// Read reads through the buffered reader.
func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// CloseWrite half-closes the connection (no more input to the console).
func (b *bufConn) CloseWrite() error {
	if uc, ok := b.Conn.(*net.UnixConn); ok {
		return uc.CloseWrite()
	}
	return nil
}

// TraceRecords returns the records in the daemon's trace ring, ordered by
// start time: those of one request and/or one domain when given, the
// newest limit of them when limit > 0.
func (c *Client) TraceRecords(ctx context.Context, domain, request string, limit int) ([]record.Record, error) {
	q := traceQuery(domain, request)
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	out := []record.Record{}
	return out, c.call(ctx, http.MethodGet, api.Prefix+"/trace", q, nil, "", &out)
}

// TraceChrome writes the daemon's trace (of one request and/or domain when
// given) to w as Chrome trace-event JSON, which Perfetto and
// chrome://tracing open.
func (c *Client) TraceChrome(ctx context.Context, domain, request string, w io.Writer) error {
	return c.copyBody(ctx, api.Prefix+"/trace/chrome", traceQuery(domain, request), w)
}

// TraceRequest writes the records of one request to w in format: "json"
// (an array of records), "mermaid" (a sequence diagram) or "svg".
func (c *Client) TraceRequest(ctx context.Context, id, format string, w io.Writer) error {
	return c.copyBody(ctx, api.Prefix+"/trace/request/"+url.PathEscape(id), url.Values{"format": {format}}, w)
}

func traceQuery(domain, request string) url.Values {
	q := url.Values{}
	if domain != "" {
		q.Set("domain", domain)
	}
	if request != "" {
		q.Set("request", request)
	}
	return q
}

// copyBody runs a GET and copies the answer's body to w.
func (c *Client) copyBody(ctx context.Context, path string, q url.Values, w io.Writer) error {
	req, err := c.request(ctx, http.MethodGet, path, q, nil, "")
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "*/*")
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// FollowTrace streams the daemon's trace records (of one domain, or all
// when domain is "") to fn while they are recorded, until ctx ends, the
// daemon ends the stream, or fn returns an error. notice, when not nil,
// gets the stream's notices (records dropped because the reader fell
// behind, the end of the stream). started, when not nil, is called once
// the daemon has subscribed.
func (c *Client) FollowTrace(ctx context.Context, domain string, started func(), fn func(record.Record) error, notice func(api.TraceNotice) error) error {
	return c.streamLines(ctx, "trace", api.Prefix+"/trace/follow", traceQuery(domain, ""), 16<<20, started, func(line []byte) error {
		var rec record.Record
		if err := json.Unmarshal(line, &rec); err != nil {
			return fmt.Errorf("trace: bad line from the daemon: %w", err)
		}
		if k := string(rec.Kind); k == api.NoticeDropped || k == api.NoticeEnd {
			var n api.TraceNotice
			if err := json.Unmarshal(line, &n); err != nil {
				return fmt.Errorf("trace: bad line from the daemon: %w", err)
			}
			if notice != nil {
				return notice(n)
			}
			return nil
		}
		return fn(rec)
	})
}

// Snapshots lists a VM's snapshots.
func (c *Client) Snapshots(ctx context.Context, name string) ([]api.Snapshot, error) {
	var out []api.Snapshot
	return out, c.call(ctx, http.MethodGet, domainPath(name, "snapshots"), nil, nil, "", &out)
}

// CreateSnapshot snapshots a running VM under the tag snap.
func (c *Client) CreateSnapshot(ctx context.Context, name, snap string) (*api.Info, error) {
	var out api.Info
	return &out, c.call(ctx, http.MethodPost, domainPath(name, "snapshots", url.PathEscape(snap)), nil, nil, "", &out)
}

// CreateDiskSnapshot makes the disk-only snapshot snap of a VM.
func (c *Client) CreateDiskSnapshot(ctx context.Context, name, snap string) (*api.Info, error) {
	var out api.Info
	return &out, c.call(ctx, http.MethodPost, domainPath(name, "snapshots", url.PathEscape(snap), "disk-only"), nil, nil, "", &out)
}

// RevertSnapshot loads the snapshot snap of a running VM.
func (c *Client) RevertSnapshot(ctx context.Context, name, snap string) (*api.Info, error) {
	var out api.Info
	return &out, c.call(ctx, http.MethodPost, domainPath(name, "snapshots", url.PathEscape(snap), "revert"), nil, nil, "", &out)
}

// DeleteSnapshot removes the snapshot snap of a running VM.
func (c *Client) DeleteSnapshot(ctx context.Context, name, snap string) (*api.Info, error) {
	var out api.Info
	return &out, c.call(ctx, http.MethodDelete, domainPath(name, "snapshots", url.PathEscape(snap)), nil, nil, "", &out)
}

// AbortJob asks a VM's async job to stop cleanly.
func (c *Client) AbortJob(ctx context.Context, name string) (*api.Info, error) {
	return c.action(ctx, name, "jobs/abort", nil)
}
