package main_test

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonSIGKILLReconnects: the daemon is killed with SIGKILL while three
// VMs run (one paused). A new daemon finds all three, with the right states
// and the same QEMUs (never a second one); qmp works on each; the exit of a
// QEMU that is no longer its child is seen within a second (pidfd); destroy
// works; and a VM whose QEMU died while no daemon ran shows as
// shutoff/exited_unsupervised.
func TestDaemonSIGKILLReconnects(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	names := []string{"one", "two", "three", "lost"}
	vms := map[string]info{}
	for _, name := range names {
		d.ok(t, "define", writeSpec(t, d.dir, name))
		var in info
		if name == "three" {
			d.okJSON(t, &in, "start", "--paused", name)
		} else {
			d.okJSON(t, &in, "start", name)
		}
		vms[name] = in
		pid := in.PID
		t.Cleanup(func() {
			if processAlive(pid) {
				killAndReap(t, pid)
			}
		})
	}

	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not die of SIGKILL")
	}
	for _, in := range vms {
		if !processAlive(in.PID) {
			t.Fatalf("QEMU of %s died with the daemon", in.Name)
		}
	}
	// This one dies while no daemon watches.
	if err := syscall.Kill(vms["lost"].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(vms["lost"].PID) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}

	d.start(t)
	waitInfo := func(name string, ok func(info) bool) info {
		t.Helper()
		var in info
		deadline := time.Now().Add(10 * time.Second)
		for {
			d.okJSON(t, &in, "info", name)
			if ok(in) {
				return in
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s after the restart: %+v", name, in)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	idle := func(in info) bool { return in.Job == nil }
	for name, want := range map[string][2]string{"one": {"running", "booted"}, "two": {"running", "booted"}, "three": {"paused", "user"}} {
		in := waitInfo(name, idle)
		if in.State != want[0] || in.Reason != want[1] || in.PID != vms[name].PID {
			t.Fatalf("%s after the daemon restart: %+v, want %s/%s pid %d", name, in, want[0], want[1], vms[name].PID)
		}
		// A VM started paused was never continued: QEMU says "prelaunch".
		running := `"running": true`
		if name == "three" {
			running = `"running": false`
		}
		if out := d.ok(t, "qmp", name, `{"execute":"query-status"}`); !strings.Contains(out, running) {
			t.Fatalf("qmp %s after the restart: %s", name, out)
		}
		n := 0
		for _, pid := range processesMentioning(d.dir) {
			if c := cmdline(pid); strings.Contains(c, "qemu-system") && strings.Contains(c, "-uuid "+vms[name].UUID+" ") {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d QEMU processes for %s after the restart", n, name)
		}
	}
	in := waitInfo("lost", func(info) bool { return true })
	if in.State != "shutoff" || in.Reason != "exited_unsupervised" || in.PID != 0 {
		t.Fatalf("VM that died while the daemon was down: %+v, want shutoff/exited_unsupervised", in)
	}

	// The exit of an adopted QEMU is seen at once.
	if err := syscall.Kill(vms["one"].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	in = waitInfo("one", func(in info) bool { return in.State == "shutoff" })
	if took := time.Since(start); took > time.Second {
		t.Errorf("exit of an adopted QEMU seen after %s", took)
	}
	if in.Reason != "crashed" {
		t.Fatalf("adopted QEMU killed: %+v, want shutoff/crashed", in)
	}
	// Destroy works on adopted QEMUs, running or paused.
	for _, name := range []string{"two", "three"} {
		d.okJSON(t, &in, "destroy", name)
		if in.State != "shutoff" || in.Reason != "destroyed" || processAlive(vms[name].PID) {
			t.Fatalf("destroy %s after the restart: %+v (QEMU alive: %v)", name, in, processAlive(vms[name].PID))
		}
	}
}
