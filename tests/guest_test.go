package tests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/tests/testkit"
)

// guestReadyMarker is the line the test guest prints once it handles the
// ACPI power button.
const guestReadyMarker = testkit.GuestReady

// defineGuest defines a domain that boots the test guest with its serial
// console logged to serialLog.
func (d *testDriver) defineGuest(t testing.TB, name, serialLog string) *driver.Domain {
	t.Helper()
	img := testkit.RequireGuest(t)
	spec := &domain.Spec{
		Name:    name,
		Machine: "q35",
		Accel:   domain.AccelTCG,
		Memory:  256 * domain.MiB,
		Kernel:  img.Kernel,
		Initrd:  img.Initrd,
		Append:  "console=ttyS0 panic=-1",
		Serial:  &domain.Serial{Type: domain.SerialFile, Path: serialLog},
	}
	if _, err := d.Define(ctxT(t, 10*time.Second), spec); err != nil {
		t.Fatalf("define %s: %v", name, err)
	}
	return d.Domain(name)
}

// waitGuestSerial polls a serial log until it contains marker, and fails
// the test with the log's tail after within.
func waitGuestSerial(t testing.TB, path, marker string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var data []byte
	for time.Now().Before(deadline) {
		data, _ = os.ReadFile(path)
		if bytes.Contains(data, []byte(marker)) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no %q in the serial log after %s; its tail:\n%s", marker, within, guestLogTail(data, 20))
}

func guestLogTail(data []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestGuestShutdownGraceful boots a real Linux guest and shuts it down
// through ACPI: Shutdown returns once the guest has powered itself off,
// the domain is shutoff/shutdown, QEMU is reaped, and the shutdown and
// stopped events are published in that order.
func TestGuestShutdownGraceful(t *testing.T) {
	d := openDriver(t, nil)
	serial := filepath.Join(d.dir, "serial.log")
	dom := d.defineGuest(t, "guest", serial)
	events := recordEvents(t, dom.Subscribe(ctxT(t, 5*time.Minute), 0))

	began := time.Now()
	if err := dom.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("start: %v", err)
	}
	in := expectState(t, dom, domain.StateRunning, domain.ReasonBooted)
	pid := in.PID
	if pid == 0 || !processAlive(pid) {
		t.Fatalf("running domain has no live QEMU (pid %d)", pid)
	}
	// The guest ignores the power button until its ACPI button driver and
	// acpid are up; the marker says they are.
	waitGuestSerial(t, serial, guestReadyMarker, 60*time.Second)
	t.Logf("boot to %q: %s", guestReadyMarker, time.Since(began).Round(10*time.Millisecond))

	began = time.Now()
	if err := dom.Shutdown(ctxT(t, 90*time.Second), driver.ShutdownOptions{Timeout: 60 * time.Second}); err != nil {
		data, _ := os.ReadFile(serial)
		t.Fatalf("shutdown: %v; serial log tail:\n%s", err, guestLogTail(data, 20))
	}
	t.Logf("shutdown (ACPI powerdown to QEMU exit): %s", time.Since(began).Round(10*time.Millisecond))

	in = expectState(t, dom, domain.StateShutoff, domain.ReasonShutdown)
	if in.PID != 0 {
		t.Errorf("info pid %d after shutdown, want 0", in.PID)
	}
	if processAlive(pid) {
		t.Errorf("QEMU pid %d still alive (or not reaped) after shutdown", pid)
	}
	shut := events.waitFor(t, domain.EventShutdown, 5*time.Second)
	stopped := events.waitFor(t, domain.EventStopped, 5*time.Second)
	if shut.Seq > stopped.Seq {
		t.Errorf("stopped event (seq %d) came before shutdown event (seq %d): %v", stopped.Seq, shut.Seq, events.types())
	}
	if stopped.State != domain.StateShutoff || stopped.Reason != domain.ReasonShutdown {
		t.Errorf("stopped event = %+v, want shutoff/shutdown", stopped)
	}
	for _, typ := range events.types() {
		if typ == domain.EventCrashed {
			t.Errorf("a crashed event was published: %v", events.types())
		}
	}
	// The guest, not QEMU, decided to power off.
	if data, _ := os.ReadFile(serial); !bytes.Contains(data, []byte("vmsup-guest: power button")) {
		t.Errorf("the guest never saw the power button; serial log tail:\n%s", guestLogTail(data, 20))
	}
}

// TestGuestShutdownTimeout uses a guest that ignores ACPI (q35 with no
// kernel and no disk: SeaBIOS finds nothing to boot). Shutdown fails at its
// timeout and the domain keeps running. While such a shutdown waits (an
// async job), a query job runs alongside it, and a suspend job (pause)
// queues behind it and runs once it ends.
func TestGuestShutdownTimeout(t *testing.T) {
	d := openDriver(t, nil)
	dom := d.define(t, "deaf", "q35")
	if err := dom.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("start: %v", err)
	}
	expectState(t, dom, domain.StateRunning, domain.ReasonBooted)

	// 1. The timeout.
	began := time.Now()
	err := dom.Shutdown(ctxT(t, 30*time.Second), driver.ShutdownOptions{Timeout: 2 * time.Second})
	took := time.Since(began)
	if !errors.Is(err, domain.ErrShutdownTimeout) || !strings.Contains(err.Error(), "did not power off within 2s after ACPI powerdown") {
		t.Fatalf("shutdown of a guest that ignores ACPI: err = %v, want one saying it did not power off within 2s after ACPI powerdown", err)
	}
	if took < 2*time.Second || took > 10*time.Second {
		t.Errorf("shutdown with a 2s timeout returned after %s", took)
	}
	expectState(t, dom, domain.StateRunning, domain.ReasonBooted)

	// 2. Jobs alongside a waiting shutdown.
	const timeout = 6 * time.Second
	shutErr := make(chan error, 1)
	go func() { shutErr <- dom.Shutdown(ctxT(t, 60*time.Second), driver.ShutdownOptions{Timeout: timeout}) }()
	var shutdownJob *domain.JobInfo
	guestPoll(t, 10*time.Second, "the shutdown job waiting as async", func() bool {
		jobs := guestJobs(t, dom)
		if jobs.Async != nil && jobs.Async.Name == "shutdown" {
			shutdownJob = jobs.Async
			return true
		}
		return false
	})
	if shutdownJob.Kind != domain.JobAsync {
		t.Errorf("shutdown job kind %q, want %q", shutdownJob.Kind, domain.JobAsync)
	}

	began = time.Now()
	status, err := dom.QMP(ctxT(t, 3*time.Second), json.RawMessage(`{"execute":"query-status"}`))
	if err != nil {
		t.Fatalf("query-status while a shutdown waits: %v", err)
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("query-status while a shutdown waits took %s", took)
	}
	if !strings.Contains(string(status), `"running"`) {
		t.Errorf("query-status = %s, want running", status)
	}
	select {
	case err := <-shutErr:
		t.Fatalf("shutdown ended before its timeout, while query-status ran: %v", err)
	default:
	}

	pauseErr := make(chan error, 1)
	go func() { pauseErr <- dom.Pause(ctxT(t, 60*time.Second)) }()
	guestPoll(t, 5*time.Second, "pause queued behind the shutdown", func() bool {
		jobs := guestJobs(t, dom)
		if jobs.Async == nil || jobs.Async.ID != shutdownJob.ID {
			t.Fatalf("the shutdown job is no longer async while pause is queued: %+v", jobs)
		}
		if jobs.Active != nil {
			t.Fatalf("job %d %q became active while the shutdown waits: %+v", jobs.Active.ID, jobs.Active.Name, jobs)
		}
		for _, q := range jobs.Queued {
			if q.Name == "pause" && q.Kind == domain.JobSuspend {
				var query *domain.JobInfo
				for i := range jobs.Recent {
					if r := &jobs.Recent[i]; r.Name == "qmp" && r.Kind == domain.JobQuery && r.Started.After(shutdownJob.Started) {
						query = r
					}
				}
				if query == nil || query.Ended.IsZero() || query.Error != "" {
					t.Fatalf("query-status job not recorded as done while the shutdown waits: %+v", jobs.Recent)
				}
				return true
			}
		}
		return false
	})
	select {
	case err := <-pauseErr:
		t.Fatalf("pause returned while the shutdown waits: %v", err)
	default:
	}

	select {
	case err := <-shutErr:
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("did not power off within %s after ACPI powerdown", timeout)) {
			t.Fatalf("second shutdown: err = %v", err)
		}
	case <-time.After(timeout + 10*time.Second):
		t.Fatalf("shutdown with a %s timeout did not return", timeout)
	}
	select {
	case err := <-pauseErr:
		if err != nil {
			t.Fatalf("pause queued behind the shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pause queued behind the shutdown did not run after it ended")
	}
	in := expectState(t, dom, domain.StatePaused, domain.ReasonUser)
	jobs := guestJobs(t, dom)
	var shutEnded, pauseStarted time.Time
	for _, r := range jobs.Recent {
		switch {
		case r.ID == shutdownJob.ID:
			shutEnded = r.Ended
		case r.Name == "pause":
			pauseStarted = r.Started
		}
	}
	if shutEnded.IsZero() || pauseStarted.IsZero() || pauseStarted.Before(shutEnded) {
		t.Errorf("pause started %s, shutdown ended %s: pause must start after", pauseStarted, shutEnded)
	}

	// 3. A failed shutdown is forgotten: QEMU dying now is a crash.
	if err := syscall.Kill(in.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitState(t, dom, domain.StateShutoff, domain.ReasonCrashed, 5*time.Second)
}

func guestJobs(t testing.TB, dom *driver.Domain) *domain.Jobs {
	t.Helper()
	jobs, err := dom.Jobs(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatalf("jobs %s: %v", dom.Name(), err)
	}
	return jobs
}

// guestPoll calls cond every 5ms until it is true, for at most within.
func guestPoll(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
