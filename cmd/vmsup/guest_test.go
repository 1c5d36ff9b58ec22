package main_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/tests/testkit"
)

// guestReady is what the tiny guest prints once it handles the ACPI power
// button.
const guestReady = testkit.GuestReady

var (
	guestOnce sync.Once
	guestSpec string // a spec of the tiny guest named "tiny"
	guestErr  error
)

// requireGuest returns the path of a spec for the tiny guest: the README's
// examples/tiny.yaml when the guest is in the default cache, else a spec
// with absolute paths into $VMSUP_CACHE.
func requireGuest(t *testing.T) string {
	t.Helper()
	g := testkit.RequireGuest(t)
	guestOnce.Do(func() { guestSpec, guestErr = tinySpec(g) })
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return guestSpec
}

func tinySpec(g testkit.Guest) (string, error) {
	if g.Cache == filepath.Join(g.Repo, ".cache") {
		return filepath.Join(g.Repo, "examples", "tiny.yaml"), nil
	}
	dir, err := os.MkdirTemp("", "vsguest")
	if err != nil {
		return "", err
	}
	spec := filepath.Join(dir, "tiny.yaml")
	content := fmt.Sprintf("name: tiny\nmachine: q35\naccel: auto\nmemory: 256M\nkernel: %s\ninitrd: %s\nappend: console=ttyS0 panic=-1\n", g.Kernel, g.Initrd)
	return spec, os.WriteFile(spec, []byte(content), 0o644)
}

// background is a vmsup command running in the background.
type background struct {
	cmd            *exec.Cmd
	stdout, stderr *testkit.SyncBuffer
	done           chan struct{}
	err            error
}

func (d *daemon) background(t *testing.T, args ...string) *background {
	t.Helper()
	b := &background{stdout: &testkit.SyncBuffer{}, stderr: &testkit.SyncBuffer{}, done: make(chan struct{})}
	b.cmd = exec.Command(vmsupBin, args...)
	b.cmd.Env = append(cliEnv(), "VMSUP_SOCKET="+d.socket)
	b.cmd.Stdout, b.cmd.Stderr = b.stdout, b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.err = b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		_ = b.cmd.Process.Kill()
		<-b.done
	})
	return b
}

// wait waits for the command to exit and returns its exit code.
func (b *background) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(within):
		t.Fatalf("%v still running after %s\nstdout: %s\nstderr: %s", b.cmd.Args, within, b.stdout, b.stderr)
	}
	if b.err == nil {
		return 0
	}
	if ee, ok := b.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("%v: %v", b.cmd.Args, b.err)
	return -1
}

// TestCLIUpTinyGuest: `vmsup up examples/tiny.yaml` without a terminal
// boots the real guest and streams its console; SIGINT shuts it down
// gracefully (ACPI), and up exits 0 with the VM shutoff/shutdown.
func TestCLIUpTinyGuest(t *testing.T) {
	spec := requireGuest(t)
	d := startDaemon(t)
	up := d.background(t, "up", spec)
	up.stdout.WaitContains(t, guestReady, 120*time.Second)
	in := d.info(t, "tiny")
	expectInfo(t, in, "running", "booted")
	if !strings.Contains(up.stderr.String(), "tiny is running") {
		t.Errorf("up stderr: %s", up.stderr)
	}

	_ = up.cmd.Process.Signal(syscall.SIGINT)
	if code := up.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("up exit %d\nstdout: %s\nstderr: %s", code, up.stdout, up.stderr)
	}
	for _, want := range []string{"shutting down tiny", "tiny stopped: shutoff (shutdown)"} {
		if !strings.Contains(up.stderr.String(), want) {
			t.Errorf("up stderr does not say %q:\n%s", want, up.stderr)
		}
	}
	if !strings.Contains(up.stdout.String(), "powering off") {
		t.Errorf("the console did not show the guest powering off:\n%s", up.stdout)
	}
	expectInfo(t, d.info(t, "tiny"), "shutoff", "shutdown")
	if processAlive(in.PID) {
		t.Fatalf("QEMU %d still alive", in.PID)
	}
}

// TestCLIConsoleAndShutdownTinyGuest: `vmsup console` streams the guest's
// serial output; `vmsup shutdown` powers it off through ACPI and it ends
// shutoff/shutdown; the console then ends by itself with exit 0.
func TestCLIConsoleAndShutdownTinyGuest(t *testing.T) {
	spec := requireGuest(t)
	d := startDaemon(t)
	d.ok(t, "define", spec)
	d.ok(t, "start", "tiny")
	con := d.background(t, "console", "tiny")
	con.stdout.WaitContains(t, guestReady, 120*time.Second)

	var in info
	d.okJSON(t, &in, "shutdown", "tiny", "--timeout", "30s")
	expectInfo(t, in, "shutoff", "shutdown")
	if code := con.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("console exit %d\nstderr: %s", code, con.stderr)
	}
	if !strings.Contains(con.stderr.String(), "tiny stopped: shutoff (shutdown)") {
		t.Errorf("console stderr: %s", con.stderr)
	}
	if !strings.Contains(con.stdout.String(), "powering off") {
		t.Errorf("console output:\n%s", con.stdout)
	}
}
