package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/tests/testkit"
)

// TestReconnectAfterRestart: a running and a paused VM survive a driver
// restart; the new driver adopts the same QEMUs (no second process), keeps
// their state, and can run jobs and destroy them.
func TestReconnectAfterRestart(t *testing.T) {
	d1 := openDriver(t, nil)
	run := d1.define(t, "keep-running", "none")
	paused := d1.define(t, "keep-paused", "none")
	if err := run.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := paused.Start(ctxT(t, 30*time.Second), driver.StartOptions{Paused: true}); err != nil {
		t.Fatal(err)
	}
	runPID := expectState(t, run, domain.StateRunning, domain.ReasonBooted).PID
	pausedPID := expectState(t, paused, domain.StatePaused, domain.ReasonUser).PID
	d1.close(t)
	if !processAlive(runPID) || !processAlive(pausedPID) {
		t.Fatal("closing the driver stopped a VM")
	}

	d2 := d1.reopen(t)
	run, paused = d2.Domain("keep-running"), d2.Domain("keep-paused")
	in := waitIdle(t, run)
	if in.State != domain.StateRunning || in.Reason != domain.ReasonBooted || in.PID != runPID {
		t.Fatalf("after restart: %+v, want running/booted pid %d", in, runPID)
	}
	in = waitIdle(t, paused)
	if in.State != domain.StatePaused || in.PID != pausedPID {
		t.Fatalf("after restart: %+v, want paused pid %d", in, pausedPID)
	}
	// QMP works on the adopted QEMU, and state changes are seen.
	if _, err := run.QMP(ctxT(t, 10*time.Second), json.RawMessage(`{"execute":"query-status"}`)); err != nil {
		t.Fatalf("QMP after restart: %v", err)
	}
	if err := paused.Resume(ctxT(t, 10*time.Second)); err != nil {
		t.Fatalf("resume after restart: %v", err)
	}
	expectState(t, paused, domain.StateRunning, domain.ReasonUnpaused)
	// Never a second QEMU.
	if err := run.Start(ctxT(t, 10*time.Second), driver.StartOptions{}); err == nil {
		t.Fatal("start of an adopted, running domain succeeded")
	}
	if n := qemuCount(t, runPID); n != 1 {
		t.Fatalf("%d QEMU processes for the domain", n)
	}
	// Exits of adopted QEMUs are seen through the pidfd.
	if err := syscall.Kill(runPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitState(t, run, domain.StateShutoff, domain.ReasonCrashed, 2*time.Second)
	// Destroy works on an adopted QEMU.
	if err := paused.Destroy(ctxT(t, 30*time.Second)); err != nil {
		t.Fatalf("destroy after restart: %v", err)
	}
	expectState(t, paused, domain.StateShutoff, domain.ReasonDestroyed)
	waitGone(t, pausedPID)
}

// TestDiedWhileDown: a VM whose QEMU died while no driver ran shows as
// shutoff with a reason that says so, and starts again.
func TestDiedWhileDown(t *testing.T) {
	d1 := openDriver(t, nil)
	vm := d1.define(t, "lost", "none")
	if err := vm.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	pid := expectState(t, vm, domain.StateRunning, domain.ReasonBooted).PID
	d1.close(t)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)

	d2 := d1.reopen(t)
	vm = d2.Domain("lost")
	expectState(t, vm, domain.StateShutoff, domain.ReasonExitedUnsupervised)
	if err := vm.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("start after a loss: %v", err)
	}
	expectState(t, vm, domain.StateRunning, domain.ReasonBooted)
}

// TestReusedPIDIsNotAdopted: a pidfile that names a live process which is
// not the domain's QEMU (a reused pid) is never taken for the VM.
func TestReusedPIDIsNotAdopted(t *testing.T) {
	d1 := openDriver(t, nil)
	vm := d1.define(t, "reused", "none")
	if err := vm.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	pid := expectState(t, vm, domain.StateRunning, domain.ReasonBooted).PID
	d1.close(t)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	// The test process itself plays the process that reused the pid.
	pidfile := filepath.Join(d1.cfg.RunDir, "reused", "qemu.pid")
	if err := os.WriteFile(pidfile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d2 := d1.reopen(t)
	in := expectState(t, d2.Domain("reused"), domain.StateShutoff, domain.ReasonExitedUnsupervised)
	if in.PID != 0 {
		t.Fatalf("adopted pid %d", in.PID)
	}
}

// waitIdle waits until the domain has no job (the reconnect job is done).
func waitIdle(t *testing.T, dom *driver.Domain) *domain.Info {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		in, err := dom.Info(ctxT(t, time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if in.Job == nil && in.Queued == 0 {
			return in
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still busy: %+v", dom.Name(), in.Job)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still alive", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// qemuCount counts live processes whose command line carries the same
// -uuid as pid's.
func qemuCount(t *testing.T, pid int) int {
	t.Helper()
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(cmdline), "\x00")
	var uuid string
	for i := range args[:len(args)-1] {
		if args[i] == "-uuid" {
			uuid = args[i+1]
		}
	}
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil || !processAlive(p) {
			continue
		}
		c, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(c), "-uuid\x00"+uuid+"\x00") {
			n++
		}
	}
	return n
}

// TestImpostorIsNotAdopted: after the domain's QEMU died while vmsup was
// down, a process owned by nobody that carries -uuid UUID in its command
// line and whose pid is in the pidfile is not adopted: it is not the
// process recorded at launch (start time, executable, uid).
func TestImpostorIsNotAdopted(t *testing.T) {
	testkit.RequireRoot(t)
	d1 := openDriver(t, nil)
	vm := d1.define(t, "impostor", "none")
	if err := vm.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	in := expectState(t, vm, domain.StateRunning, domain.ReasonBooted)
	d1.close(t)
	if err := syscall.Kill(in.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, in.PID)
	fake := exec.Command("/bin/sh", "-c", "sleep 300; :", "qemu-system-x86_64", "-uuid", in.UUID)
	fake.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: testkit.Nobody, Gid: testkit.Nobody}}
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fake.Process.Kill(); _ = fake.Wait() })
	deadline := time.Now().Add(5 * time.Second)
	for {
		cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(fake.Process.Pid), "cmdline"))
		if strings.Contains(string(cmdline), in.UUID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fake process did not show the uuid within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pidfile := filepath.Join(d1.cfg.RunDir, "impostor", "qemu.pid")
	if err := os.WriteFile(pidfile, []byte(strconv.Itoa(fake.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d2 := d1.reopen(t)
	got := expectState(t, d2.Domain("impostor"), domain.StateShutoff, domain.ReasonExitedUnsupervised)
	if got.PID != 0 {
		t.Fatalf("adopted nobody's pid %d", got.PID)
	}
}
