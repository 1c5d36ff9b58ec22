package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/agent"
	"github.com/vmsup/vmsup/domain/policy"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

// httpError is an error with the status the API answers it with.
type httpError struct {
	status int
	err    error
}

// Error returns the wrapped error's message.
func (e *httpError) Error() string { return e.err.Error() }

// Unwrap returns the wrapped error.
func (e *httpError) Unwrap() error { return e.err }

// badRequest marks err as the caller's fault (400).
func badRequest(err error) error { return &httpError{status: http.StatusBadRequest, err: err} }

// withStatus marks err with an explicit status.
func withStatus(status int, err error) error { return &httpError{status: status, err: err} }

// StatusOf maps an error of the driver to the status the API answers with:
//
//	400 bad input (spec field errors, bad QMP command, bad name)
//	404 driver.ErrNotFound
//	409 domain.ErrNotRunning, ErrUndefining, ErrWrongState, ErrNoConsole,
//	    driver.ErrConflict, driver.ErrBroken
//	403 a spec field or QMP command the host's policy refuses
//	413 body over MaxBodyBytes
//	502 *monitor.QMPError, *agent.Error (the guest agent's error reply,
//	    or its channel failing other than by its deadline)
//	503 driver.ErrClosed (the daemon is stopping)
//	504 *domain.JobWaitError, domain.ErrShutdownTimeout, context.DeadlineExceeded
//	500 anything else
func StatusOf(err error) int {
	var he *httpError
	var qe *monitor.QMPError
	var we *domain.JobWaitError
	var mbe *http.MaxBytesError
	var ae *agent.Error
	switch {
	case errors.As(err, &he):
		return he.status
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, policy.ErrRefused):
		return http.StatusForbidden
	case errors.Is(err, driver.ErrNotFound), errors.Is(err, domain.ErrNoSnapshot), errors.Is(err, domain.ErrNoDevice):
		return http.StatusNotFound
	case errors.As(err, &qe):
		return http.StatusBadGateway
	case errors.As(err, &we), errors.Is(err, domain.ErrShutdownTimeout), errors.Is(err, domain.ErrDetachTimeout),
		errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	case errors.As(err, &ae):
		return http.StatusBadGateway
	case errors.Is(err, domain.ErrNotRunning), errors.Is(err, domain.ErrUndefining), errors.Is(err, domain.ErrWrongState),
		errors.Is(err, domain.ErrNoConsole), errors.Is(err, driver.ErrConflict), errors.Is(err, driver.ErrBroken):
		return http.StatusConflict
	case errors.Is(err, monitor.ErrBadCommand), len(domain.FieldErrors(err)) > 0:
		return http.StatusBadRequest
	case errors.Is(err, context.Canceled), errors.Is(err, driver.ErrClosed):
		// The client went away (nobody reads this status), or the
		// daemon is stopping.
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// ErrorBody builds the JSON error object for err, on one line.
func ErrorBody(err error) api.Error {
	body := api.Error{Error: oneLine(err.Error())}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		body.Error = "request body is larger than 1 MiB"
	}
	var qe *monitor.QMPError
	var ae *agent.Error
	switch {
	case errors.As(err, &qe):
		body.Class, body.Desc = qe.Class, qe.Desc
	case errors.As(err, &ae) && ae.Err == nil:
		body.Class, body.Desc = ae.Class, ae.Desc
	}
	for _, fe := range domain.FieldErrors(err) {
		body.Fields = append(body.Fields, api.FieldError{Field: fe.Field, Problem: fe.Problem})
	}
	return body
}

// oneLine joins the lines of a message (errors.Join puts one problem per
// line) with "; ".
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "\n") {
		return s
	}
	lines := strings.Split(s, "\n")
	out := lines[:0]
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	writeJSON(w, StatusOf(err), ErrorBody(err))
}
