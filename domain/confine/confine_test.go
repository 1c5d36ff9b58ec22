package confine

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown, setuid, cgroups)")
	}
}

func TestLookupUserRefusesRoot(t *testing.T) {
	if _, err := LookupUser("root"); err == nil || !strings.Contains(err.Error(), "confines nothing") {
		t.Fatalf("LookupUser(root) = %v, want a refusal", err)
	}
	if _, err := LookupUser("no-such-user-vmsup"); err == nil || !strings.Contains(err.Error(), "useradd") {
		t.Fatalf("LookupUser(missing) = %v, want an error that says how to create it", err)
	}
	u, err := LookupUser("nobody")
	if err != nil || u.UID == 0 {
		t.Fatalf("LookupUser(nobody) = %+v, %v", u, err)
	}
}

func TestCanOpenJudgesModeOwnerAndParents(t *testing.T) {
	requireRoot(t)
	u, err := LookupUser("nobody")
	if err != nil {
		t.Fatal(err)
	}
	// Under /tmp (1777) itself: t.TempDir's parent is 0700.
	dir, err := os.MkdirTemp("", "vmsup-confine-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	f := filepath.Join(dir, "disk.img")
	os.WriteFile(f, nil, 0o600)
	if err := u.CanOpen(f, false); err == nil || !strings.Contains(err.Error(), "may not read") {
		t.Fatalf("root-owned 0600 file: %v, want refused", err)
	}
	os.Chmod(f, 0o644)
	if err := u.CanOpen(f, false); err != nil {
		t.Fatalf("0644 for reading: %v", err)
	}
	if err := u.CanOpen(f, true); err == nil {
		t.Fatal("0644 root-owned file judged writable by nobody")
	}
	if err := u.Own(f); err != nil {
		t.Fatal(err)
	}
	os.Chmod(f, 0o600)
	if err := u.CanOpen(f, true); err != nil {
		t.Fatalf("own 0600 file for writing: %v", err)
	}
	os.Chmod(dir, 0o700)
	if err := u.CanOpen(f, false); err == nil || !strings.Contains(err.Error(), "may not enter "+dir) {
		t.Fatalf("file under a 0700 root dir: %v, want refused naming the dir", err)
	}
}

// A process started with the user's credential in a cgroup runs as that
// user, in that cgroup, cannot write root's files, and Remove kills it.
func TestCredentialAndCgroup(t *testing.T) {
	requireRoot(t)
	u, err := LookupUser("nobody")
	if err != nil {
		t.Fatal(err)
	}
	g, err := DetectCgroups("vmsup-test")
	if err != nil {
		t.Skipf("no writable cgroup v2 here: %v", err)
	}
	defer os.Remove(g.Dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cg, err := g.New(ctx, "t1", 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cgroup %s: memory.max %d %s", cg.Path, cg.MemoryMax, cg.Note)
	if g.Memory != (cg.MemoryMax == MemoryLimit(64<<20)) || (!g.Memory && cg.Note == "") {
		t.Fatalf("memory %v, cgroup %+v: a missing limit must be explained", g.Memory, cg)
	}
	secret := filepath.Join(t.TempDir(), "root-only")
	os.WriteFile(secret, []byte("x"), 0o644)
	cmd := exec.Command("/bin/sh", "-c", "echo pwned > "+secret+"; exec sleep 60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: u.Credential(), UseCgroupFD: true, CgroupFD: cg.FD()}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	defer cmd.Process.Kill()
	status, _ := os.ReadFile("/proc/" + itoa(cmd.Process.Pid) + "/status")
	if !strings.Contains(string(status), "\nUid:\t65534\t65534\t65534\t65534\n") {
		t.Fatalf("process uid line not nobody's:\n%s", status)
	}
	if in, err := cg.Member(cmd.Process.Pid); err != nil || !in {
		t.Fatalf("process in its cgroup: %v, %v", in, err)
	}
	time.Sleep(200 * time.Millisecond)
	if b, _ := os.ReadFile(secret); string(b) != "x" {
		t.Fatalf("the confined process wrote a root file: %q", b)
	}
	if err := cg.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("Remove left the process running")
	}
	if _, err := os.Stat(cg.Path); !os.IsNotExist(err) {
		t.Fatalf("cgroup dir still there: %v", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestCheckSandbox(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("no QEMU")
	}
	if err := CheckSandbox(context.Background(), qemu); err != nil {
		t.Fatalf("Debian's QEMU has seccomp: %v", err)
	}
	if err := CheckSandbox(context.Background(), "/bin/true"); err == nil {
		t.Fatal("/bin/true judged to have a sandbox")
	}
}
