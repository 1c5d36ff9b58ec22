package tests

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qemu"
	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
)

// TestGoQEMUOnSupervisedDomain: go-qemu's typed commands (qmp/raw) and its
// qemu.Domain work on Domain.Monitor of a supervised domain under real
// QEMU: a raw query-status, qemu.Domain.Status, a QMP event that arrives
// after a pause, QMP errors as errors, the event stream closed by
// Disconnect (qemu.Domain.Close) with its goroutine gone, and Run refused
// outside Connect … Disconnect with an error naming the domain.
func TestGoQEMUOnSupervisedDomain(t *testing.T) {
	d := openDriver(t, nil)
	vm := d.define(t, "gomon", "none")
	if err := vm.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}

	if err := d.Domain("nosuch").Monitor().Connect(); !errors.Is(err, driver.ErrNotFound) || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Fatalf("connect to an unknown domain: %v", err)
	}
	mon := vm.Monitor()
	if _, err := mon.Run([]byte(`{"execute":"query-status"}`)); !errors.Is(err, driver.ErrMonitorNotConnected) || !strings.Contains(err.Error(), `"gomon"`) {
		t.Fatalf("run before connect: %v", err)
	}
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}

	rm := raw.NewMonitor(mon)
	st, err := rm.QueryStatus()
	if err != nil {
		t.Fatalf("raw query-status: %v", err)
	}
	if st.Status != raw.RunStateRunning || !st.Running {
		t.Fatalf("raw query-status: %+v, want running", st)
	}
	if _, err := rm.QueryCommands(); err != nil {
		t.Fatalf("raw query-commands: %v", err)
	}
	// A QMP error reply is an error, as with go-qemu's SocketMonitor.
	if _, err := mon.Run([]byte(`{"execute":"no-such-command"}`)); err == nil || !strings.Contains(err.Error(), "no-such-command") {
		t.Fatalf("unknown command: %v", err)
	}

	goroutines := runtime.NumGoroutine()
	dom, err := qemu.NewDomain(mon, "gomon")
	if err != nil {
		t.Fatalf("qemu.NewDomain: %v", err)
	}
	if s, err := dom.Status(); err != nil || s != qemu.StatusRunning {
		t.Fatalf("qemu.Domain.Status: %v %v, want running", s, err)
	}
	events, done, err := dom.Events()
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.Pause(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	stop := waitQMPEvent(t, events, "STOP", 10*time.Second)
	if stop.Timestamp.Seconds == 0 {
		t.Errorf("STOP event without QEMU's timestamp: %+v", stop)
	}
	if s, err := dom.Status(); err != nil || s != qemu.StatusPaused {
		t.Fatalf("qemu.Domain.Status after pause: %v %v, want paused", s, err)
	}
	// A command through go-qemu is a job like any other: cont resumes.
	if _, err := dom.Run(qmp.Command{Execute: "cont"}); err != nil {
		t.Fatal(err)
	}
	waitQMPEvent(t, events, "RESUME", 10*time.Second)
	waitState(t, vm, domain.StateRunning, domain.ReasonUnpaused, 10*time.Second)
	done <- struct{}{}

	// Close disconnects: the event stream ends and its goroutine with it.
	direct, err := mon.Events(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := dom.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-direct:
		if ok {
			// an event that was already on its way; the next read sees the end
			if _, ok := <-direct; ok {
				t.Fatal("event stream still open after Disconnect")
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("event stream not closed by Disconnect")
	}
	if _, err := mon.Run([]byte(`{"execute":"query-status"}`)); !errors.Is(err, driver.ErrMonitorNotConnected) {
		t.Fatalf("run after disconnect: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > goroutines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > goroutines {
		t.Errorf("%d goroutines after Close, %d before NewDomain", n, goroutines)
	}

	// Connect again: a new session works.
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	defer mon.Disconnect()
	if st, err := raw.NewMonitor(mon).QueryStatus(); err != nil || !st.Running {
		t.Fatalf("query-status after reconnect: %+v %v", st, err)
	}
}

func waitQMPEvent(t *testing.T, events <-chan qmp.Event, name string, within time.Duration) qmp.Event {
	t.Helper()
	timeout := time.After(within)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("event stream closed while waiting for %s", name)
			}
			if ev.Event == name {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %s event within %s", name, within)
		}
	}
}
