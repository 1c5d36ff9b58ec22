package process

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/confine"
	"github.com/vmsup/vmsup/domain/qemuargs"
	"github.com/vmsup/vmsup/tests/testkit"
)

const testUUID = "6f1c9a3e-2b7d-4c55-9a1e-0d3b5c7e9f11"

// fakeQEMU starts a shell that sleeps and carries -uuid UUID in its
// command line, as uid (and gid) when cred is set; cleanup kills and reaps
// it.
func fakeQEMU(t *testing.T, cred *syscall.Credential) int {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", "sleep 300; :", "sh", "-uuid", testUUID)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	// Wait until the shell has exec'd (its cmdline carries the uuid).
	for i := 0; i < 500 && !runsDomain(cmd.Process.Pid, testUUID); i++ {
		syscall.Nanosleep(&syscall.Timespec{Nsec: 10e6}, nil)
	}
	return cmd.Process.Pid
}

func testPaths(t *testing.T) (string, qemuargs.RunPaths) {
	t.Helper()
	runDir := testkit.ShortDir(t)
	rp, err := qemuargs.NewRunPaths(runDir, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(rp.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return runDir, rp
}

func writePID(t *testing.T, rp qemuargs.RunPaths, pid int) {
	t.Helper()
	if err := os.WriteFile(rp.PIDFile, []byte(strconv.Itoa(pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

var spec = &domain.Spec{Name: "vm1", UUID: testUUID}

// TestRecoverRefusesNobody: a process owned by nobody, with -uuid UUID in
// its command line and its pid in the pidfile, is never adopted: neither
// against the identity recorded at launch nor, without one, by the old
// command-line check.
func TestRecoverRefusesNobody(t *testing.T) {
	testkit.RequireRoot(t)
	runDir, rp := testPaths(t)
	pid := fakeQEMU(t, &syscall.Credential{Uid: testkit.Nobody, Gid: testkit.Nobody})
	writePID(t, rp, pid)

	rec := Recover(spec, runDir, &domain.Status{Name: "vm1", UUID: testUUID, State: domain.StateRunning, PID: pid}, nil)
	if rec.Adopted() {
		rec.Release()
		t.Fatalf("adopted nobody's process %d without an identity record", pid)
	}
	if !strings.Contains(rec.Found, "runs as uid 65534") {
		t.Errorf("Found = %q, want the uid named", rec.Found)
	}
	if st, r := rec.Initial(testUUID); st != domain.StateShutoff || r != domain.ReasonExitedUnsupervised {
		t.Errorf("initial state %s/%s, want shutoff/exited_unsupervised", st, r)
	}

	// The identity of the QEMU vmsup really started (here: root's, as
	// recorded before the pid was taken by the impostor).
	real := fakeQEMU(t, nil)
	id, err := ReadIdentity(real)
	if err != nil {
		t.Fatal(err)
	}
	id.UUID = testUUID
	id.PID = pid
	if err := writeIdentity(rp.Identity, id); err != nil {
		t.Fatal(err)
	}
	rec = Recover(spec, runDir, nil, nil)
	// The two processes may have started in the same clock tick: the uid
	// tells them apart then, and pid + start time does in real life (a pid
	// is not reused within a tick).
	if rec.Adopted() {
		rec.Release()
		t.Fatalf("adopted nobody's process %d against the recorded identity", pid)
	}
	for _, want := range []string{"is not the QEMU vmsup started", "runs as uid 65534, recorded 0"} {
		if !strings.Contains(rec.Found, want) {
			t.Errorf("Found = %q, want %q", rec.Found, want)
		}
	}
}

// TestRecoverIdentity: the process recorded at launch is adopted; the same
// record with another start time, executable, uid or UUID is not.
func TestRecoverIdentity(t *testing.T) {
	runDir, rp := testPaths(t)
	pid := fakeQEMU(t, nil)
	writePID(t, rp, pid)
	id, err := ReadIdentity(pid)
	if err != nil {
		t.Fatal(err)
	}
	id.UUID = testUUID
	if id.StartTime == 0 || id.BootID == "" || id.Exe == "" {
		t.Fatalf("identity %+v lacks a field", id)
	}
	if err := writeIdentity(rp.Identity, id); err != nil {
		t.Fatal(err)
	}
	rec := Recover(spec, runDir, nil, nil)
	if !rec.Adopted() || rec.PID() != pid {
		t.Fatalf("the recorded process was not adopted: %s", rec.Found)
	}
	rec.Release()

	for _, c := range []struct {
		change func(*Identity)
		want   string
	}{
		{func(i *Identity) { i.StartTime++ }, "started at tick"},
		{func(i *Identity) { i.BootID = "00000000-0000-0000-0000-000000000000" }, "rebooted"},
		{func(i *Identity) { i.Exe = "/usr/bin/qemu-system-x86_64" }, "runs " + id.Exe},
		{func(i *Identity) { i.UID = 4242 }, "runs as uid 4242, not as the daemon's uid"},
		{func(i *Identity) { i.UUID = "11111111-2222-3333-4444-555555555555" }, "identity is of UUID"},
	} {
		bad := id
		c.change(&bad)
		if err := writeIdentity(rp.Identity, bad); err != nil {
			t.Fatal(err)
		}
		rec := Recover(spec, runDir, nil, nil)
		if rec.Adopted() {
			rec.Release()
			t.Errorf("adopted against %+v", bad)
			continue
		}
		if !strings.Contains(rec.Found, c.want) {
			t.Errorf("Found = %q, want %q", rec.Found, c.want)
		}
	}
	// A record naming the QEMU user's uid passes that check, and the
	// process must then really run as it.
	bad := id
	bad.UID = 4242
	if err := writeIdentity(rp.Identity, bad); err != nil {
		t.Fatal(err)
	}
	rec = Recover(spec, runDir, nil, &confine.User{Name: "qemu-test", UID: 4242, GID: 4242})
	if rec.Adopted() {
		rec.Release()
		t.Fatal("adopted a process whose uid is not the recorded one")
	}
	if !strings.Contains(rec.Found, "runs as uid "+strconv.Itoa(os.Getuid())+", recorded 4242") {
		t.Errorf("Found = %q, want the uid mismatch", rec.Found)
	}
}

func TestParseStartTime(t *testing.T) {
	line := "4242 (qemu (evil) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 2 3\n"
	got, err := parseStartTime([]byte(line))
	if err != nil || got != 987654 {
		t.Fatalf("parseStartTime = %d, %v; want 987654", got, err)
	}
	for _, bad := range []string{"", "1 (x) S 1", "no paren at all"} {
		if _, err := parseStartTime([]byte(bad)); err == nil {
			t.Errorf("parseStartTime(%q) accepted", bad)
		}
	}
}

// TestQEMULogSymlink: a qemu.log planted as a symlink in the run dir is
// not followed: the launch fails saying so, and the file it points at
// keeps its content.
func TestQEMULogSymlink(t *testing.T) {
	_, rp := testPaths(t)
	victim := filepath.Join(filepath.Dir(rp.Dir), "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, rp.QEMULog); err != nil {
		t.Fatal(err)
	}
	p, err := LaunchQEMU(Launch{Emulator: "/bin/true", Paths: rp})
	if err == nil {
		p.Kill()
		t.Fatal("launched with a symlinked qemu.log")
	}
	if !strings.Contains(err.Error(), "is a symlink; refusing to follow it") {
		t.Errorf("error %q does not say why", err)
	}
	if data, _ := os.ReadFile(victim); string(data) != "precious" {
		t.Errorf("the symlink's target was changed to %q", data)
	}
	// The pidfile and the identity are read the same way.
	if err := os.Symlink(victim, rp.PIDFile); err != nil {
		t.Fatal(err)
	}
	if _, err := readPIDFile(rp.PIDFile); err == nil {
		t.Error("read a symlinked pidfile")
	}
}
