package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

func keys(t *testing.T, data []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestInfoObjectFields pins the info object:
// {"name","uuid","state","reason","pid","job","queued","restarts"}, with
// "control" {"state","since","ms","reason"}, and the job
// {"id","kind","owner","started","qmp":{"command","since"}|null} with its
// "trace".
func TestInfoObjectFields(t *testing.T) {
	now := time.Now()
	in := &domain.Info{
		Name: "web1", UUID: "u", State: domain.StateRunning, Reason: domain.ReasonBooted, PID: 42, Queued: 2, Restarts: 1,
		Job: &domain.JobInfo{ID: 17, Name: "shutdown", Kind: domain.JobAsync, Owner: "api shutdown", RequestID: "r",
			Enqueued: now, Started: now, Step: "wait", QMP: &domain.QMPInFlight{Command: "system_powerdown", Since: now}},
		Control: &domain.Control{State: domain.ControlOccupied, Since: now, Millis: 1500},
	}
	data, err := json.Marshal(fromInfo(in))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := keys(t, data), []string{"control", "job", "name", "pid", "queued", "reason", "restarts", "state", "uuid"}; !slices.Equal(got, want) {
		t.Errorf("info keys %v, want %v", got, want)
	}
	var top map[string]json.RawMessage
	_ = json.Unmarshal(data, &top)
	if got, want := keys(t, top["control"]), []string{"ms", "reason", "since", "state"}; !slices.Equal(got, want) {
		t.Errorf("control keys %v, want %v", got, want)
	}
	if got, want := keys(t, top["job"]), []string{"id", "kind", "owner", "qmp", "started", "trace"}; !slices.Equal(got, want) {
		t.Errorf("job keys %v, want %v", got, want)
	}
	var job map[string]json.RawMessage
	_ = json.Unmarshal(top["job"], &job)
	if got, want := keys(t, job["qmp"]), []string{"command", "since"}; !slices.Equal(got, want) {
		t.Errorf("qmp keys %v, want %v", got, want)
	}
	var back api.Info
	_ = json.Unmarshal(data, &back)
	if back.State != "running" || back.Reason != "booted" || back.PID != 42 || back.Job.ID != 17 || back.Job.Kind != "async" ||
		back.Job.Owner != "api shutdown" || back.Job.QMP.Command != "system_powerdown" || back.Queued != 2 || back.Restarts != 1 ||
		back.Job.Trace != "r" {
		t.Errorf("round trip: %+v", back)
	}
	if c := back.Control; c == nil || c.State != "occupied" || c.Since == nil || !c.Since.Equal(now) || c.Millis != 1500 || c.Reason != "" {
		t.Errorf("control round trip: %+v", back.Control)
	}

	// An idle VM: control "ok" with "since": null.
	in.Control = &domain.Control{State: domain.ControlOK}
	data, _ = json.Marshal(fromInfo(in))
	_ = json.Unmarshal(data, &top)
	if string(top["control"]) != `{"state":"ok","since":null,"ms":0,"reason":""}` {
		t.Errorf("idle control: %s", top["control"])
	}

	// No job: "job": null, and a job without QMP: "qmp": null.
	in.Job = nil
	data, _ = json.Marshal(fromInfo(in))
	_ = json.Unmarshal(data, &top)
	if string(top["job"]) != "null" {
		t.Errorf("job without a job: %s", top["job"])
	}
	in.Job = &domain.JobInfo{ID: 1, Kind: domain.JobModify, Owner: "api start", Started: now}
	data, _ = json.Marshal(fromInfo(in))
	_ = json.Unmarshal(data, &top)
	_ = json.Unmarshal(top["job"], &job)
	if string(job["qmp"]) != "null" {
		t.Errorf("qmp without a command: %s", job["qmp"])
	}
}

// TestStatusOf pins the mapping from driver errors to HTTP statuses.
func TestStatusOf(t *testing.T) {
	qmpErr := &monitor.QMPError{Command: "cont", Class: "GenericError", Desc: "nope"}
	cases := []struct {
		err  error
		want int
	}{
		{fmt.Errorf("undefine: domain %q %w", "x", driver.ErrNotFound), http.StatusNotFound},
		{fmt.Errorf("domain %q: pause: %w", "x", domain.ErrNotRunning), http.StatusConflict},
		{fmt.Errorf("x: %w", domain.ErrUndefining), http.StatusConflict},
		{fmt.Errorf("domain %q: qmp: %w", "x", qmpErr), http.StatusBadGateway},
		{&domain.JobWaitError{Lane: `domain "x"`, Job: "reset", Cause: context.DeadlineExceeded}, http.StatusGatewayTimeout},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), http.StatusGatewayTimeout},
		{fmt.Errorf("define: %w", &domain.FieldError{Field: "memory", Problem: "bad"}), http.StatusBadRequest},
		{errors.Join(&domain.FieldError{Field: "a", Problem: "b"}, &domain.FieldError{Field: "c", Problem: "d"}), http.StatusBadRequest},
		{fmt.Errorf("run: %w", monitor.ErrBadCommand), http.StatusBadRequest},
		{&http.MaxBytesError{Limit: api.MaxBodyBytes}, http.StatusRequestEntityTooLarge},
		{badRequest(errors.New("x")), http.StatusBadRequest},
		{driver.ErrClosed, http.StatusServiceUnavailable},
		{errors.New("something broke"), http.StatusInternalServerError},
	}
	for _, c := range cases {
		if got := StatusOf(c.err); got != c.want {
			t.Errorf("StatusOf(%v) = %d, want %d", c.err, got, c.want)
		}
	}
	body := ErrorBody(fmt.Errorf("domain %q: %w", "x", qmpErr))
	if body.Class != "GenericError" || body.Desc != "nope" {
		t.Errorf("QMP error body %+v", body)
	}
	body = ErrorBody(errors.Join(errors.New("one"), errors.New("two")))
	if body.Error != "one; two" {
		t.Errorf("multi-line error %q, want one line", body.Error)
	}
}

// TestInfoNICs pins the nics of the info object: absent while a VM does
// not run, else {"index","type","mac",...} with each forward's real port.
func TestInfoNICs(t *testing.T) {
	in := &domain.Info{Name: "web1", State: domain.StateShutoff}
	data, _ := json.Marshal(fromInfo(in))
	if slices.Contains(keys(t, data), "nics") {
		t.Errorf("a VM without NICs has nics: %s", data)
	}
	in.NICs = []domain.NIC{
		{Index: 0, Type: "user", MAC: "52:54:00:00:00:01", Forwards: []domain.PortForward{{Field: "networks[0].forwards[0]", Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 40022, GuestPort: 22}}},
		{Index: 1, Type: "tap", MAC: "52:54:00:00:00:02", Tap: "vmsup01234567ab", Bridge: "br0"},
	}
	data, _ = json.Marshal(fromInfo(in))
	var back api.Info
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.NICs) != 2 || back.NICs[0].Forwards[0].HostPort != 40022 || back.NICs[0].Forwards[0].Field != "networks[0].forwards[0]" ||
		back.NICs[1].Tap != "vmsup01234567ab" || back.NICs[1].Bridge != "br0" || back.NICs[0].MAC != "52:54:00:00:00:01" {
		t.Errorf("nics round trip: %s", data)
	}
	var top map[string]json.RawMessage
	_ = json.Unmarshal(data, &top)
	var nics []json.RawMessage
	_ = json.Unmarshal(top["nics"], &nics)
	if got, want := keys(t, nics[0]), []string{"forwards", "index", "mac", "type"}; !slices.Equal(got, want) {
		t.Errorf("nic keys %v, want %v", got, want)
	}
}
