package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/supervision"
)

func fastRestart(limit int) *domain.RestartPolicy {
	return &domain.RestartPolicy{
		Initial: domain.Duration(100 * time.Millisecond),
		Max:     domain.Duration(200 * time.Millisecond),
		Limit:   limit,
		Window:  domain.Duration(time.Minute),
	}
}

// TestOnCrashRestart: a VM with on_crash restart comes back after QEMU is
// killed, counting restarts, until the crash-loop limit leaves it
// crashed/crash-loop. A user's destroy never triggers a restart.
func TestOnCrashRestart(t *testing.T) {
	d := openDriver(t, nil)
	ctx := ctxT(t, 2*time.Minute)
	if _, err := d.Define(ctx, &domain.Spec{Name: "phoenix", Machine: "none", Accel: "tcg", OnCrash: domain.OnCrashRestart, Restart: fastRestart(2)}); err != nil {
		t.Fatal(err)
	}
	vm := d.Domain("phoenix")
	events := recordEvents(t, vm.Subscribe(ctx, 0))
	if err := vm.Start(ctx, driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	pid := expectState(t, vm, domain.StateRunning, domain.ReasonBooted).PID
	for round := 1; round <= 2; round++ {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		in := waitFor(t, vm, 10*time.Second, func(in *domain.Info) bool {
			return in.State == domain.StateRunning && in.PID != pid && in.PID != 0
		})
		if in.Restarts != round {
			t.Fatalf("round %d: restarts = %d", round, in.Restarts)
		}
		pid = in.PID
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	in := waitState(t, vm, domain.StateCrashed, domain.ReasonCrashLoop, 5*time.Second)
	if in.Restarts != 2 || in.PID != 0 {
		t.Fatalf("after the crash loop: %+v", in)
	}
	events.waitMatch(t, "crashed/crash-loop", time.Second, func(ev domain.Event) bool {
		return ev.Type == domain.EventCrashed && ev.Reason == domain.ReasonCrashLoop
	})

	// A user's destroy is not a crash.
	if err := vm.Start(ctx, driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := vm.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // longer than the restart backoff
	expectState(t, vm, domain.StateShutoff, domain.ReasonDestroyed)
}

// TestHungQEMU: with one of 100 domains SIGSTOPped, a QMP command fails at
// its deadline naming the command, the monitor is marked broken (control:
// error), List stays fast, destroy works, and after SIGCONT the monitor
// reconnects.
func TestHungQEMU(t *testing.T) {
	d := openDriver(t, func(c *driver.Config) {
		c.MonitorReconnect = supervision.Backoff{Initial: 100 * time.Millisecond, Max: 200 * time.Millisecond}
	})
	for i := 0; i < 99; i++ {
		d.define(t, fmt.Sprintf("idle%02d", i), "none")
	}
	dom, held, stuck := stuckDomain(t, d, "hung")
	var err error
	select {
	case err = <-stuck:
	case <-time.After(15 * time.Second):
		t.Fatal("the QMP command on a stopped QEMU never failed")
	}
	if err == nil || !strings.Contains(err.Error(), `QMP command "query-status" timed out after 5s`) || !strings.Contains(err.Error(), "monitor marked broken") {
		t.Fatalf("hung command error = %v", err)
	}
	in := waitFor(t, dom, 2*time.Second, func(in *domain.Info) bool { return in.Control != nil && in.Control.State == domain.ControlError })
	if !strings.Contains(in.Control.Reason, "query-status") {
		t.Errorf("control reason = %q", in.Control.Reason)
	}
	// A job on a broken monitor fails at once instead of waiting.
	start := time.Now()
	if err := dom.Reset(ctxT(t, 10*time.Second)); err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("reset on a broken monitor: %v after %s", err, time.Since(start))
	}

	var lat []time.Duration
	for i := 0; i < 20; i++ {
		start := time.Now()
		infos, err := d.List(ctxT(t, time.Second))
		lat = append(lat, time.Since(start))
		if err != nil || len(infos) != 100 {
			t.Fatalf("list: %d domains, %v", len(infos), err)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if lat[len(lat)/2] > 50*time.Millisecond {
		t.Fatalf("List median %s with one hung VM, want < 50ms (all %v)", lat[len(lat)/2], lat)
	}

	// SIGCONT: the monitor reconnects and jobs work again.
	if err := syscall.Kill(held.PID, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, dom, 15*time.Second, func(in *domain.Info) bool { return in.Control != nil && in.Control.State == domain.ControlOK })
	if _, err := dom.QMP(ctxT(t, 10*time.Second), json.RawMessage(`{"execute":"query-status"}`)); err != nil {
		t.Fatalf("QMP after the reconnect: %v", err)
	}
	// And destroy works on a stopped QEMU (again stopped).
	if err := syscall.Kill(held.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := dom.Destroy(ctxT(t, 30*time.Second)); err != nil {
		t.Fatalf("destroy of a stopped QEMU: %v", err)
	}
	expectState(t, dom, domain.StateShutoff, domain.ReasonDestroyed)
}

// TestActorPanics: a panic in the monitor, the domain or the driver actor
// restarts that actor; the caller gets an error naming the panic, the VM
// keeps running with the same QEMU, and later calls work.
func TestActorPanics(t *testing.T) {
	d := openDriver(t, nil)
	vm := d.define(t, "sturdy", "none")
	if err := vm.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	pid := expectState(t, vm, domain.StateRunning, domain.ReasonBooted).PID
	for _, target := range []string{"monitor/sturdy", "domain/sturdy", "driver"} {
		err := d.InjectPanic(ctxT(t, 5*time.Second), target, "test")
		var pe *supervision.PanicError
		if !errors.As(err, &pe) {
			t.Fatalf("%s: InjectPanic returned %v, want a *supervision.PanicError", target, err)
		}
		in := waitIdle(t, vm)
		if in.State != domain.StateRunning || in.PID != pid {
			t.Fatalf("after a panic in %s: %+v, want running with pid %d", target, in, pid)
		}
		waitFor(t, vm, 10*time.Second, func(in *domain.Info) bool { return in.Control != nil && in.Control.State == domain.ControlOK })
		if _, err := vm.QMP(ctxT(t, 10*time.Second), json.RawMessage(`{"execute":"query-status"}`)); err != nil {
			t.Fatalf("after a panic in %s: QMP: %v", target, err)
		}
		if err := vm.Pause(ctxT(t, 10*time.Second)); err != nil {
			t.Fatalf("after a panic in %s: pause: %v", target, err)
		}
		if err := vm.Resume(ctxT(t, 10*time.Second)); err != nil {
			t.Fatalf("after a panic in %s: resume: %v", target, err)
		}
		if n := qemuCount(t, pid); n != 1 {
			t.Fatalf("after a panic in %s: %d QEMUs", target, n)
		}
	}
	if err := d.InjectPanic(ctxT(t, 5*time.Second), "domain/nobody", "test"); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("panic in an unknown domain: %v", err)
	}
}

// waitFor polls Info until ok accepts it.
func waitFor(t *testing.T, dom *driver.Domain, within time.Duration, ok func(*domain.Info) bool) *domain.Info {
	t.Helper()
	deadline := time.Now().Add(within)
	var in *domain.Info
	for {
		var err error
		in, err = dom.Info(ctxT(t, 2*time.Second))
		if err == nil && ok(in) {
			return in
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: condition not met within %s; last info %+v (err %v)", dom.Name(), within, in, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
