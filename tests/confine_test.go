package tests

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/confine"
	"github.com/vmsup/vmsup/domain/vm"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/tests/testkit"
)

// A root driver runs QEMU as the unprivileged user, in its own cgroup when
// cgroup v2 is writable: QEMU cannot write a root-owned directory, a disk
// that only root may open is passed to QEMU as an fd (and keeps its owner
// and mode), and the QEMU is adopted again after a restart.
func TestConfinedQEMURunsUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("confining QEMU needs root")
	}
	img := testkit.RequireGuest(t)
	var conf *driver.Config
	d := openDriver(t, func(cfg *driver.Config) {
		cfg.Confine = confinement(t, filepath.Dir(cfg.StateDir))
		conf = cfg
	})
	u := conf.Confine.User
	disk := filepath.Join(d.dir, "disk.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := &domain.Spec{Name: "conf1", Machine: "q35", Accel: domain.AccelTCG, Memory: 64 * domain.MiB,
		Kernel: img.Kernel, Initrd: img.Initrd, Append: "console=ttyS0",
		Disks: []domain.Disk{{Path: disk}}}
	if _, err := d.Define(ctxT(t, 10*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	dom := d.Domain("conf1")
	if err := u.CanOpen(disk, true); err == nil {
		t.Fatalf("the QEMU user may open the root-only disk %s", disk)
	}
	if err := dom.Start(ctxT(t, 60*time.Second), driver.StartOptions{Paused: true}); err != nil {
		t.Fatalf("start with a root-only disk (passed as an fd): %v", err)
	}
	if fi, err := os.Stat(disk); err != nil || fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("the disk's owner or mode changed at start: %v %v", fi.Mode(), err)
	}
	in, err := dom.Info(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	c := in.Confinement
	if c == nil || c.User != u.Name || c.UID != u.UID {
		t.Fatalf("info confinement %+v, want user %s uid %d", c, u.Name, u.UID)
	}
	t.Logf("confinement: %+v", *c)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", in.PID))
	if err != nil {
		t.Fatal(err)
	}
	uid := fmt.Sprint(u.UID)
	if want := "\nUid:\t" + uid + "\t" + uid + "\t" + uid + "\t" + uid + "\n"; !strings.Contains(string(status), want) {
		t.Fatalf("QEMU pid %d does not run as uid %s:\n%s", in.PID, uid, status)
	}
	if conf.Confine.Cgroups != nil {
		if c.Cgroup == "" {
			t.Fatal("a cgroup parent exists but QEMU got no cgroup")
		}
		procs, err := os.ReadFile(filepath.Join(c.Cgroup, "cgroup.procs"))
		if err != nil || !strings.Contains("\n"+string(procs), fmt.Sprintf("\n%d\n", in.PID)) {
			t.Fatalf("QEMU pid %d not in its cgroup %s: %q %v", in.PID, c.Cgroup, procs, err)
		}
		if c.MemoryMax == 0 && c.Note == "" {
			t.Fatal("no memory limit and no note saying why")
		}
		if c.MemoryMax != 0 && c.MemoryMax != confine.MemoryLimit(spec.Memory.Bytes()) {
			t.Fatalf("memory.max %d, want %d", c.MemoryMax, confine.MemoryLimit(spec.Memory.Bytes()))
		}
	} else if c.Note == "" {
		t.Fatal("no cgroup and no note saying why")
	}

	// QEMU writes where it owns files, and nowhere else.
	rootDir := filepath.Join(d.dir, "root-owned")
	if err := os.Mkdir(rootDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dump := func(path string) error {
		cmd, _ := json.Marshal(map[string]any{"execute": "dump-guest-memory",
			"arguments": map[string]any{"paging": false, "protocol": "file:" + path}})
		_, err := dom.QMP(ctxT(t, 60*time.Second), cmd)
		return err
	}
	err = dump(filepath.Join(rootDir, "x"))
	if err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("QEMU dumping into a root-owned dir: %v, want EACCES (Permission denied)", err)
	}
	if _, err := os.Lstat(filepath.Join(rootDir, "x")); !os.IsNotExist(err) {
		t.Fatalf("QEMU created a file in a root-owned dir: %v", err)
	}
	own := filepath.Join(conf.RunDir, "conf1", "dump")
	if err := dump(own); err != nil {
		t.Fatalf("QEMU dumping into its own run dir: %v", err)
	}

	// A restarted driver adopts it: the identity names the QEMU user.
	pid := in.PID
	d.close(t)
	d = d.reopen(t)
	dom = d.Domain("conf1")
	in = waitState(t, dom, domain.StatePaused, domain.ReasonUser, 30*time.Second)
	if in.PID != pid {
		t.Fatalf("after reopen: pid %d, want the adopted %d", in.PID, pid)
	}
	if a := in.Confinement; a == nil || a.UID != u.UID || a.Cgroup != c.Cgroup {
		t.Fatalf("adopted QEMU's confinement %+v, want uid %d cgroup %q", a, u.UID, c.Cgroup)
	}
	if err := dom.Destroy(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if c.Cgroup != "" {
		if _, err := os.Stat(c.Cgroup); !os.IsNotExist(err) {
			t.Fatalf("the adopted QEMU's cgroup %s is still there after it exited: %v", c.Cgroup, err)
		}
	}
}

// The cgroup of a QEMU that vmsup started is gone once QEMU has exited.
func TestConfinedQEMUCgroupRemoved(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("confining QEMU needs root")
	}
	var conf *driver.Config
	d := openDriver(t, func(cfg *driver.Config) {
		cfg.Confine = confinement(t, filepath.Dir(cfg.StateDir))
		conf = cfg
	})
	if conf.Confine.Cgroups == nil {
		t.Skipf("no writable cgroup v2 here: %s", conf.Confine.CgroupNote)
	}
	dom := d.define(t, "cg1", "none")
	if err := dom.Start(ctxT(t, 60*time.Second), driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	in, err := dom.Info(ctxT(t, 5*time.Second))
	if err != nil || in.Confinement == nil || in.Confinement.Cgroup == "" {
		t.Fatalf("info: %+v %v", in, err)
	}
	cg := in.Confinement.Cgroup
	if err := dom.Destroy(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cg); !os.IsNotExist(err) {
		t.Fatalf("cgroup %s still there after QEMU exited: %v", cg, err)
	}
}

// confinement returns what a root daemon confines QEMU with: the QEMU user
// (QEMUUserName) and, when cgroup v2 is writable here, a cgroup parent of
// the test's own, removed when the test ends. It is nil when the test
// does not run as root: a daemon that is not root runs QEMU as itself.
// dir (a ShortDir) is made traversable for the QEMU user.
func confinement(t testing.TB, dir string) *vm.Confine {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := confine.LookupUser(testkit.QEMUUserName())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	c := &vm.Confine{User: u}
	var b [4]byte
	_, _ = rand.Read(b[:])
	g, err := confine.DetectCgroups("vmsup-test-" + hex.EncodeToString(b[:]))
	if err != nil {
		c.CgroupNote = "no cgroup: " + err.Error()
		t.Logf("QEMU runs without a cgroup: %v", err)
		return c
	}
	c.Cgroups = g
	t.Cleanup(func() { _ = os.Remove(g.Dir) })
	return c
}
