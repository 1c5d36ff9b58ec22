package main_test

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonSIGKILLReconnects: the daemon is killed with SIGKILL while VMs
// run. A new daemon finds them still running, supervises them again with the
// same QEMU (never a second one), keeps a paused VM paused, sees the exit of
// a QEMU that is no longer its child within a second (pidfd), and shows a VM
// that died while no daemon ran as shutoff/exited_unsupervised.
func TestDaemonSIGKILLReconnects(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	var running, paused, lost info
	for _, name := range []string{"running", "paused", "lost"} {
		d.ok(t, "define", writeSpec(t, d.dir, name))
	}
	d.okJSON(t, &running, "start", "running")
	d.okJSON(t, &paused, "start", "--paused", "paused")
	d.okJSON(t, &lost, "start", "lost")
	for _, in := range []info{running, paused, lost} {
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
	for _, in := range []info{running, paused, lost} {
		if !processAlive(in.PID) {
			t.Fatalf("QEMU of %s died with the daemon", in.Name)
		}
	}
	// This one dies while no daemon watches.
	if err := syscall.Kill(lost.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(lost.PID) && time.Now().Before(deadline) {
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
	in := waitInfo("running", func(in info) bool { return in.Job == nil })
	if in.State != "running" || in.Reason != "booted" || in.PID != running.PID {
		t.Fatalf("running VM after the daemon restart: %+v, want running/booted pid %d", in, running.PID)
	}
	in = waitInfo("paused", func(in info) bool { return in.Job == nil })
	if in.State != "paused" || in.PID != paused.PID {
		t.Fatalf("paused VM after the daemon restart: %+v, want paused pid %d", in, paused.PID)
	}
	in = waitInfo("lost", func(info) bool { return true })
	if in.State != "shutoff" || in.Reason != "exited_unsupervised" || in.PID != 0 {
		t.Fatalf("VM that died while the daemon was down: %+v, want shutoff/exited_unsupervised", in)
	}
	for _, vm := range []info{running, paused} {
		n := 0
		for _, pid := range processesMentioning(d.dir) {
			if c := cmdline(pid); strings.Contains(c, "qemu-system") && strings.Contains(c, "-uuid "+vm.UUID+" ") {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d QEMU processes for %s after the restart", n, vm.Name)
		}
	}
	// Supervised again: jobs work, and the exit of a QEMU that is no
	// longer our child is seen at once.
	if out := d.ok(t, "qmp", "running", `{"execute":"query-status"}`); !strings.Contains(out, `"running"`) {
		t.Fatalf("qmp after the restart: %s", out)
	}
	d.ok(t, "resume", "paused")
	if err := syscall.Kill(running.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitInfo("running", func(in info) bool { return in.State == "shutoff" })
	if took := time.Since(start); took > time.Second {
		t.Errorf("exit of an adopted QEMU seen after %s", took)
	}
	in = waitInfo("running", func(info) bool { return true })
	if in.Reason != "crashed" {
		t.Fatalf("adopted QEMU killed: %+v, want shutoff/crashed", in)
	}
}
