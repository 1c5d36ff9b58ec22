package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
)

// TestLifecycle walks define → start → pause → resume → reset → destroy →
// undefine on real QEMU, checking state and reason after each step and the
// lifecycle events.
func TestLifecycle(t *testing.T) {
	for _, machine := range []string{"none", "q35"} {
		t.Run(machine, func(t *testing.T) {
			d := openDriver(t, nil)
			events := recordEvents(t, d.Subscribe(ctxT(t, time.Minute), 0))
			dom := d.define(t, "life-"+machine, machine)
			expectState(t, dom, domain.StateShutoff, domain.ReasonUnknown)
			events.waitFor(t, domain.EventDefined, time.Second)

			if err := dom.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
				t.Fatalf("start: %v", err)
			}
			in := expectState(t, dom, domain.StateRunning, domain.ReasonBooted)
			if in.PID == 0 || !processAlive(in.PID) {
				t.Fatalf("running domain has no live QEMU (pid %d)", in.PID)
			}
			events.waitFor(t, domain.EventStarted, time.Second)
			status, err := dom.QMP(ctxT(t, 10*time.Second), json.RawMessage(`{"execute":"query-status"}`))
			if err != nil {
				t.Fatalf("query-status: %v", err)
			}
			var st struct {
				Status  string `json:"status"`
				Running bool   `json:"running"`
			}
			if err := json.Unmarshal(status, &st); err != nil || !st.Running || st.Status != "running" {
				t.Fatalf("query-status = %s (%v), want running", status, err)
			}

			if err := dom.Pause(ctxT(t, 10*time.Second)); err != nil {
				t.Fatalf("pause: %v", err)
			}
			expectState(t, dom, domain.StatePaused, domain.ReasonUser)
			events.waitFor(t, domain.EventPaused, time.Second)
			if err := dom.Pause(ctxT(t, 10*time.Second)); !errors.Is(err, domain.ErrWrongState) {
				t.Fatalf("pausing a paused domain: %v, want domain.ErrWrongState", err)
			}

			if err := dom.Resume(ctxT(t, 10*time.Second)); err != nil {
				t.Fatalf("resume: %v", err)
			}
			expectState(t, dom, domain.StateRunning, domain.ReasonUnpaused)
			events.waitFor(t, domain.EventResumed, time.Second)

			if err := dom.Reset(ctxT(t, 10*time.Second)); err != nil {
				t.Fatalf("reset: %v", err)
			}
			expectState(t, dom, domain.StateRunning, domain.ReasonUnpaused)

			if err := d.Undefine(ctxT(t, 5*time.Second), dom.Name()); !errors.Is(err, domain.ErrWrongState) {
				t.Fatalf("undefine of a running domain: %v, want domain.ErrWrongState", err)
			}

			pid := in.PID
			if err := dom.Destroy(ctxT(t, 30*time.Second)); err != nil {
				t.Fatalf("destroy: %v", err)
			}
			in = expectState(t, dom, domain.StateShutoff, domain.ReasonDestroyed)
			if in.PID != 0 || processAlive(pid) {
				t.Fatalf("QEMU pid %d still alive after destroy (info pid %d)", pid, in.PID)
			}
			events.waitFor(t, domain.EventStopped, time.Second)

			if err := d.Undefine(ctxT(t, 5*time.Second), dom.Name()); err != nil {
				t.Fatalf("undefine: %v", err)
			}
			events.waitFor(t, domain.EventUndefined, time.Second)
			if _, err := dom.Info(ctxT(t, 5*time.Second)); err == nil {
				t.Fatal("info of an undefined domain succeeded")
			}
			infos, err := d.List(ctxT(t, 5*time.Second))
			if err != nil || len(infos) != 0 {
				t.Fatalf("list after undefine = %v, %v", infos, err)
			}
		})
	}
}

// TestSIGKILLMeansCrashed kills QEMU behind vmsup's back: the domain must be
// shutoff/crashed within milliseconds, with a crashed event.
func TestSIGKILLMeansCrashed(t *testing.T) {
	d := openDriver(t, nil)
	dom := d.define(t, "crash", "none")
	events := recordEvents(t, dom.Subscribe(ctxT(t, time.Minute), 0))
	if err := dom.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("start: %v", err)
	}
	in := expectState(t, dom, domain.StateRunning, domain.ReasonBooted)
	if err := syscall.Kill(in.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitState(t, dom, domain.StateShutoff, domain.ReasonCrashed, 2*time.Second)
	ev := events.waitFor(t, domain.EventCrashed, time.Second)
	if ev.Domain != "crash" || ev.Reason != domain.ReasonCrashed {
		t.Fatalf("crashed event = %+v", ev)
	}
	if processAlive(in.PID) {
		t.Fatalf("QEMU pid %d not reaped", in.PID)
	}
	// The domain can start again afterwards.
	if err := dom.Start(ctxT(t, 30*time.Second), driver.StartOptions{Paused: true}); err != nil {
		t.Fatalf("restart: %v", err)
	}
	expectState(t, dom, domain.StatePaused, domain.ReasonUser)
}

// TestSIGKILLDuringQMPSaysQEMUExited: a QMP job waits on a stopped QEMU,
// which is then killed behind vmsup's back. The job fails at once, and its
// error says that QEMU exited, not only that the connection broke.
func TestSIGKILLDuringQMPSaysQEMUExited(t *testing.T) {
	for i := 0; i < 5; i++ {
		d := openDriver(t, nil)
		dom, in, stuck := stuckDomain(t, d, fmt.Sprintf("killed%d", i))
		began := time.Now()
		if err := syscall.Kill(in.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var err error
		select {
		case err = <-stuck:
		case <-time.After(5 * time.Second):
			t.Fatal("the QMP job did not end within 5s of QEMU's SIGKILL")
		}
		if err == nil || !strings.Contains(err.Error(), "QEMU") || !strings.Contains(err.Error(), "exited") {
			t.Fatalf("round %d: error after %s: %v; want it to say QEMU exited", i, time.Since(began), err)
		}
		t.Logf("round %d: %v", i, err)
		waitState(t, dom, domain.StateShutoff, domain.ReasonCrashed, 2*time.Second)
	}
}
