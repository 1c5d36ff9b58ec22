package tests

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/tests/testkit"
)

// defineAgentGuest defines and starts the test guest (which runs qemu-ga on
// the agent channel unless appendArgs says vmsup.agent=0) with one user
// NIC.
func defineAgentGuest(t *testing.T, d *testDriver, name, appendArgs string) (*driver.Domain, string) {
	t.Helper()
	img := testkit.RequireGuest(t)
	serial := filepath.Join(d.dir, name+".serial.log")
	spec := &domain.Spec{
		Name: name, Machine: "q35", Accel: domain.AccelTCG, Memory: 256 * domain.MiB,
		Kernel: img.Kernel, Initrd: img.Initrd,
		Append:   "console=ttyS0 panic=-1 vmsup.shell=0 vmsup.http=0 " + appendArgs,
		Serial:   &domain.Serial{Type: domain.SerialFile, Path: serial},
		Networks: []domain.Network{{}},
	}
	if _, err := d.Define(ctxT(t, 30*time.Second), spec); err != nil {
		t.Fatalf("define %s: %v", name, err)
	}
	dom := d.Domain(name)
	if err := dom.Start(ctxT(t, 60*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return dom, serial
}

// waitInfo polls Info until ok accepts it, or fails after within.
func waitInfo(t *testing.T, dom *driver.Domain, what string, within time.Duration, ok func(*domain.Info) bool) *domain.Info {
	t.Helper()
	deadline := time.Now().Add(within)
	var in *domain.Info
	for time.Now().Before(deadline) {
		var err error
		in, err = dom.Info(ctxT(t, time.Second))
		if err == nil && ok(in) {
			return in
		}
		time.Sleep(100 * time.Millisecond)
	}
	b, _ := json.Marshal(in)
	t.Fatalf("no %s after %s; info: %s", what, within, b)
	return nil
}

// answersAtOnce checks that query-status over QMP and Info answer within
// a generous bound while an agent command hangs.
func answersAtOnce(t *testing.T, dom *driver.Domain) {
	t.Helper()
	began := time.Now()
	if _, err := dom.QMP(ctxT(t, 5*time.Second), json.RawMessage(`{"execute":"query-status"}`)); err != nil {
		t.Fatalf("query-status while the agent hangs: %v", err)
	}
	if _, err := dom.Info(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("info while the agent hangs: %v", err)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Fatalf("query-status and info took %s while the agent hung; they must not wait for it", took)
	}
}

// TestGuestAgent: on the test guest's qemu-ga, Info shows the agent
// available and the guest's IP on its NIC; Exec returns the exit code and
// the output; a raw command returns its value and guest-sync is refused;
// with qemu-ga stopped (SIGSTOP, sent through the agent itself), agent
// commands fail at their deadline naming the command, Info shows the
// agent unavailable, and QMP and Info answer at once meanwhile.
func TestGuestAgent(t *testing.T) {
	rec := trace.New(trace.Options{})
	d := openDriver(t, func(c *driver.Config) { c.Trace = rec })
	dom, serial := defineAgentGuest(t, d, "ga", "")
	waitGuestSerial(t, serial, "vmsup-guest: agent on", 120*time.Second)
	in := waitInfo(t, dom, "available agent", 60*time.Second, func(in *domain.Info) bool {
		return in.Agent != nil && in.Agent.State == domain.AgentAvailable && in.Agent.Version != ""
	})
	t.Logf("agent %+v", *in.Agent)

	// A figure for the report: guest-exec round trips of /bin/true.
	began := time.Now()
	const n = 10
	for i := 0; i < n; i++ {
		if _, err := dom.Exec(ctxT(t, 60*time.Second), "/bin/true", nil, nil); err != nil {
			t.Fatalf("exec /bin/true: %v", err)
		}
	}
	t.Logf("exec /bin/true: %s each (mean of %d, TCG)", (time.Since(began) / n).Round(100*time.Microsecond), n)

	res, err := dom.Exec(ctxT(t, 60*time.Second), "/bin/sh", []string{"-c", "uname -s; echo oops >&2; exit 3"}, nil)
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	if res.ExitCode != 3 || string(res.Stdout) != "Linux\n" || string(res.Stderr) != "oops\n" {
		t.Fatalf("exec = code %d stdout %q stderr %q, want 3, Linux, oops", res.ExitCode, res.Stdout, res.Stderr)
	}
	res, err = dom.Exec(actors.WithRequestID(ctxT(t, 60*time.Second), "trace-exec"), "/bin/cat", nil, []byte("to stdin\n"))
	if err != nil || res.ExitCode != 0 || string(res.Stdout) != "to stdin\n" {
		t.Fatalf("exec cat = %+v, %v", res, err)
	}
	// The exec's agent commands are in its trace, as QMP commands are,
	// each under the API call's span.
	var cmds []string
	for _, r := range rec.ByTrace("trace-exec") {
		if r.Kind == trace.KindQMP && r.Actor == "agent/ga" && r.QMP != nil && r.QMP.Outcome == trace.OutcomeOK && r.ParentSpanID == "trace-exec" {
			cmds = append(cmds, r.QMP.Command)
		}
	}
	if len(cmds) < 2 || cmds[0] != "guest-exec" || cmds[len(cmds)-1] != "guest-exec-status" {
		t.Fatalf("trace of the exec: agent commands %v, want guest-exec then guest-exec-status", cmds)
	}

	// The guest's DHCP lease from QEMU's user network shows on the NIC.
	in = waitInfo(t, dom, "guest IP on nics[0]", 90*time.Second, func(in *domain.Info) bool {
		return len(in.NICs) == 1 && in.NICs[0].GuestIP != ""
	})
	if ip := in.NICs[0].GuestIP; !strings.HasPrefix(ip, "10.0.2.") {
		t.Fatalf("guest IP %q, want QEMU's user network 10.0.2.x", ip)
	}

	raw, err := dom.Agent(ctxT(t, 30*time.Second), "guest-info", nil)
	if err != nil || !strings.Contains(string(raw), `"supported_commands"`) {
		t.Fatalf("raw guest-info = %.200s, %v", raw, err)
	}
	if _, err := dom.Agent(ctxT(t, 5*time.Second), "guest-sync-delimited", json.RawMessage(`{"id":1}`)); err == nil || !strings.Contains(err.Error(), "synchronises") {
		t.Fatalf("raw guest-sync-delimited = %v, want refused", err)
	}

	// Stop qemu-ga from inside: the child stops its parent after the
	// agent has answered guest-exec.
	if _, err := dom.Agent(ctxT(t, 30*time.Second), "guest-exec",
		json.RawMessage(`{"path":"/bin/sh","arg":["-c","sleep 1; kill -STOP $(cat /var/run/qemu-ga.pid)"]}`)); err != nil {
		t.Fatalf("guest-exec kill -STOP: %v", err)
	}
	time.Sleep(2 * time.Second)
	errc := make(chan error, 1)
	began = time.Now()
	go func() {
		_, err := dom.Agent(context.Background(), "guest-ping", nil)
		errc <- err
	}()
	time.Sleep(300 * time.Millisecond) // the ping is on the agent's lane now
	answersAtOnce(t, dom)
	select {
	case err = <-errc:
	case <-time.After(30 * time.Second):
		t.Fatal("guest-ping to a stopped agent did not fail within 30s")
	}
	took := time.Since(began)
	if err == nil || !strings.Contains(err.Error(), `"guest-ping"`) || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("guest-ping to a stopped agent = %v, want a deadline error naming it", err)
	}
	if took > 15*time.Second {
		t.Fatalf("guest-ping failed after %s, want about its 3s deadline", took)
	}
	// The agent stores its status before it replies, and Info reads the
	// agent's status itself: the caller sees the failure at once.
	in, err = dom.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if in.Agent == nil || in.Agent.State != domain.AgentUnavailable || !strings.Contains(in.Agent.Reason, "guest-ping") {
		t.Fatalf("Info right after the failed guest-ping: agent %+v, want unavailable naming guest-ping", in.Agent)
	}
	answersAtOnce(t, dom)
}

// TestGuestAgentMissing: a guest without qemu-ga (vmsup.agent=0) shows
// its agent unavailable; an agent command fails at its deadline naming
// it, and QMP and Info answer at once meanwhile.
func TestGuestAgentMissing(t *testing.T) {
	d := openDriver(t, nil)
	dom, serial := defineAgentGuest(t, d, "noga", "vmsup.agent=0")
	waitGuestSerial(t, serial, guestReadyMarker, 120*time.Second)
	errc := make(chan error, 1)
	began := time.Now()
	go func() {
		_, err := dom.Agent(context.Background(), "guest-info", nil)
		errc <- err
	}()
	time.Sleep(300 * time.Millisecond)
	answersAtOnce(t, dom)
	var err error
	select {
	case err = <-errc:
	case <-time.After(60 * time.Second):
		t.Fatal("guest-info without an agent did not fail within 60s")
	}
	if err == nil || !strings.Contains(err.Error(), `"guest-`) {
		t.Fatalf("guest-info without an agent = %v, want an error naming the command", err)
	}
	// It may have queued behind the watcher's ping; each has its deadline.
	if took := time.Since(began); took > 30*time.Second {
		t.Fatalf("guest-info failed after %s", took)
	}
	in, err := dom.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if in.Agent == nil || in.Agent.State != domain.AgentUnavailable {
		t.Fatalf("Info right after the failed guest-info: agent %+v, want unavailable", in.Agent)
	}
	t.Logf("missing agent: %v; info reason %q", err, in.Agent.Reason)
}

// installShutdownShim gives the tiny guest the /sbin/shutdown that qemu-ga
// runs for guest-shutdown (busybox has none): it says so on the console
// and powers off.
func installShutdownShim(t *testing.T, dom *driver.Domain) {
	t.Helper()
	res, err := dom.Exec(ctxT(t, 60*time.Second), "/bin/sh", []string{"-c",
		`printf '#!/bin/sh\necho "vmsup-guest: shutdown shim $*" >/dev/console\nexec poweroff -f\n' >/sbin/shutdown && chmod 0755 /sbin/shutdown`}, nil)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("install /sbin/shutdown: %+v, %v", res, err)
	}
}

// TestGuestShutdownAutoUsesAgent: shutdown --mode auto on a guest whose
// agent answers goes through guest-shutdown (the guest's shutdown program
// runs) and ends shutoff/shutdown.
func TestGuestShutdownAutoUsesAgent(t *testing.T) {
	d := openDriver(t, nil)
	// acpid off and no polling: only the agent can power it off.
	dom, serial := defineAgentGuest(t, d, "sdagent", "vmsup.acpid=0 vmsup.poll=0")
	waitInfo(t, dom, "available agent", 120*time.Second, func(in *domain.Info) bool {
		return in.Agent != nil && in.Agent.State == domain.AgentAvailable
	})
	installShutdownShim(t, dom)
	if err := dom.Shutdown(ctxT(t, 90*time.Second), driver.ShutdownOptions{Timeout: 60 * time.Second, Mode: domain.ShutdownAuto}); err != nil {
		t.Fatalf("shutdown --mode auto: %v", err)
	}
	expectState(t, dom, domain.StateShutoff, domain.ReasonShutdown)
	waitGuestSerial(t, serial, "vmsup-guest: shutdown shim -h -P +0", 5*time.Second)
}

// TestGuestShutdownACPIResent: an ACPI shutdown sent right after start,
// before the guest's OS handles the power button, still powers the guest
// off, because the press is repeated until the deadline.
func TestGuestShutdownACPIResent(t *testing.T) {
	d := openDriver(t, nil)
	dom, serial := defineAgentGuest(t, d, "sdacpi", "vmsup.agent=0")
	began := time.Now()
	if err := dom.Shutdown(ctxT(t, 90*time.Second), driver.ShutdownOptions{Timeout: 60 * time.Second}); err != nil {
		t.Fatalf("shutdown right after start: %v", err)
	}
	expectState(t, dom, domain.StateShutoff, domain.ReasonShutdown)
	// The first press came before the guest was ready for it.
	waitGuestSerial(t, serial, guestReadyMarker, time.Second)
	t.Logf("start to power-off: %s", time.Since(began).Round(10*time.Millisecond))
}

// TestGuestShutdownAutoFallbackForce: shutdown --mode auto on a guest
// without an agent falls back to ACPI, pressed again and again; a guest
// that ignores it is destroyed at the one deadline with Force, and ends
// shutoff/destroyed with no crashed event.
func TestGuestShutdownAutoFallbackForce(t *testing.T) {
	d := openDriver(t, nil)
	dom, serial := defineAgentGuest(t, d, "sdforce", "vmsup.agent=0 vmsup.acpid=0 vmsup.poll=0")
	events := recordEvents(t, dom.Subscribe(ctxT(t, 5*time.Minute), 0))
	waitGuestSerial(t, serial, guestReadyMarker, 120*time.Second)
	// Without Force: the error names ACPI and its presses.
	err := dom.Shutdown(ctxT(t, 60*time.Second), driver.ShutdownOptions{Timeout: 15 * time.Second, Mode: domain.ShutdownAuto})
	if err == nil || !errors.Is(err, domain.ErrShutdownTimeout) || !strings.Contains(err.Error(), "ACPI powerdown (pressed") || strings.Contains(err.Error(), "pressed 1 times") {
		t.Fatalf("shutdown of a guest ignoring ACPI = %v, want a timeout after several ACPI presses", err)
	}
	began := time.Now()
	if err := dom.Shutdown(ctxT(t, 60*time.Second), driver.ShutdownOptions{Timeout: 5 * time.Second, Mode: domain.ShutdownAuto, Force: true}); err != nil {
		t.Fatalf("shutdown --force: %v", err)
	}
	if took := time.Since(began); took > 30*time.Second {
		t.Fatalf("shutdown --force took %s with a 5s deadline", took)
	}
	expectState(t, dom, domain.StateShutoff, domain.ReasonDestroyed)
	events.waitFor(t, domain.EventStopped, 5*time.Second)
	for _, typ := range events.types() {
		if typ == domain.EventCrashed {
			t.Fatalf("a forced shutdown published a crashed event: %v", events.types())
		}
	}
}
