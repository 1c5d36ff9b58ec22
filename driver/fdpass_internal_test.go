package driver

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/cloudinit"
	"github.com/vmsup/vmsup/domain/policy"
	"github.com/vmsup/vmsup/domain/vm"
	"github.com/vmsup/vmsup/tests/testkit"
)

// fdDriver opens a driver whose only image root is a fresh dir, with the
// test guest's kernel and initrd copied into it, and returns the root.
func fdDriver(t *testing.T) (*Driver, string, testkit.Guest) {
	t.Helper()
	testkit.RequireQEMU(t)
	img := testkit.RequireGuest(t)
	dir := testkit.ShortDir(t)
	root := filepath.Join(dir, "images")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{img.Kernel, img.Initrd} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, filepath.Base(src)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	emus, err := policy.DefaultEmulators()
	if err != nil {
		t.Skip(err)
	}
	pol, err := policy.New(false, emus, []string{root})
	if err != nil {
		t.Fatal(err)
	}
	logger := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := Open(ctx, Config{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"),
		Logger: &logger, DestroyGrace: 2 * time.Second, Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if infos, err := d.List(ctx); err == nil {
			for _, in := range infos {
				if in.PID != 0 {
					_ = d.Domain(in.Name).Destroy(ctx)
				}
			}
		}
		if err := d.Close(ctx); err != nil {
			t.Errorf("close driver: %v", err)
		}
	})
	return d, root, testkit.Guest{Kernel: filepath.Join(root, "vmlinuz"), Initrd: filepath.Join(root, "initrd.img")}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// openFiles returns the targets of pid's open file descriptors.
func openFiles(t *testing.T, pid int) []string {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			out = append(out, l)
		}
	}
	return out
}

// swapForSymlink replaces path with a symlink to target.
func swapForSymlink(t *testing.T, path, target string) {
	t.Helper()
	tmp := path + ".swap"
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// A disk or kernel that was a regular file under the image root at define
// and is a symlink out of it at start (a swap after the check) is never
// opened: the start fails naming the spec field. With the files in
// place, QEMU runs on the files vmsup opened and passed as fds: its
// command line names none of them.
func TestStartNeverOpensFileSwappedOutOfImageRoot(t *testing.T) {
	d, root, g := fdDriver(t)
	outside := filepath.Join(testkit.ShortDir(t), "secret.raw")
	if err := os.WriteFile(outside, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(root, "disk.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := &domain.Spec{Name: "fd1", Machine: "q35", Accel: domain.AccelTCG, Memory: 64 * domain.MiB,
		Kernel: g.Kernel, Initrd: g.Initrd, Append: "console=ttyS0", Disks: []domain.Disk{{Path: disk}}}
	if _, err := d.Define(ctxFor(t, 10*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	dom := d.Domain("fd1")

	// Swapped after define: refused at start, naming the field.
	if err := os.Rename(disk, disk+".orig"); err != nil {
		t.Fatal(err)
	}
	swapForSymlink(t, disk, outside)
	err := dom.Start(ctxFor(t, 60*time.Second), StartOptions{Paused: true})
	if err == nil || !strings.Contains(err.Error(), `spec field "disks[0].path"`) || !strings.Contains(err.Error(), "leads out of image root") {
		t.Fatalf("start with disks[0].path swapped for a symlink out of the image root: %v, want a refusal naming the field", err)
	}
	if err := os.Rename(disk+".orig", disk); err != nil {
		t.Fatal(err)
	}
	kernel := g.Kernel
	if err := os.Rename(kernel, kernel+".orig"); err != nil {
		t.Fatal(err)
	}
	swapForSymlink(t, kernel, outside)
	err = dom.Start(ctxFor(t, 60*time.Second), StartOptions{Paused: true})
	if err == nil || !strings.Contains(err.Error(), `spec field "kernel"`) || !strings.Contains(err.Error(), "leads out of image root") {
		t.Fatalf("start with the kernel swapped for a symlink out of the image root: %v, want a refusal naming the field", err)
	}
	if err := os.Rename(kernel+".orig", kernel); err != nil {
		t.Fatal(err)
	}

	// In place: QEMU gets the disk as an fd, never its name.
	if err := dom.Start(ctxFor(t, 60*time.Second), StartOptions{Paused: true}); err != nil {
		t.Fatal(err)
	}
	in, err := dom.Info(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(in.PID) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	// What QEMU opens: every argument but -add-fd's, whose labels name
	// the files it holds as fds.
	argv := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	var opened []string
	for i := 0; i < len(argv); i++ {
		if argv[i] == "-add-fd" {
			i++
			continue
		}
		opened = append(opened, argv[i])
	}
	for _, name := range []string{disk, g.Kernel, g.Initrd} {
		if strings.Contains(strings.Join(opened, " "), name) {
			t.Errorf("QEMU's command line names %s outside an fd label; it should get it as an fd or a run-dir copy", name)
		}
	}
	if !strings.Contains(string(cmdline), "/dev/fdset/") {
		t.Errorf("QEMU's command line has no /dev/fdset: %q", cmdline)
	}
	files := openFiles(t, in.PID)
	found := false
	for _, f := range files {
		found = found || f == disk
		if f == outside {
			t.Fatalf("QEMU has the outside file open: %v", files)
		}
	}
	if !found {
		t.Fatalf("QEMU does not hold the disk %s open: %v", disk, files)
	}
	// The daemon closed its copies once QEMU was spawned.
	for _, f := range openFiles(t, os.Getpid()) {
		if f == disk {
			t.Fatalf("the daemon still holds %s open after the start", disk)
		}
	}
}

// An attach-disk whose file was swapped for a symlink out of the image
// root after the driver checked it (the job is sent as the driver sends it
// after its check) is refused naming the path, and QEMU never opens the
// outside file; an attach of a regular file passes it to QEMU as an fd.
func TestAttachDiskNeverOpensFileSwappedOutOfImageRoot(t *testing.T) {
	d, root, g := fdDriver(t)
	outside := filepath.Join(testkit.ShortDir(t), "secret.raw")
	if err := os.WriteFile(outside, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := &domain.Spec{Name: "fd2", Machine: "q35", Accel: domain.AccelTCG, Memory: 64 * domain.MiB,
		Kernel: g.Kernel, Initrd: g.Initrd, Append: "console=ttyS0"}
	if _, err := d.Define(ctxFor(t, 10*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	dom := d.Domain("fd2")
	if err := dom.Start(ctxFor(t, 60*time.Second), StartOptions{Paused: true}); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(root, "hot.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	// The driver's check passes on the regular file...
	if _, err := d.CheckDefine(&domain.Spec{Name: "fd2", Machine: "q35", Memory: 64 * domain.MiB, Disks: []domain.Disk{{Path: disk}}}); err != nil {
		t.Fatalf("check of a regular file under the root: %v", err)
	}
	// ...then it is swapped before the domain opens it.
	swapForSymlink(t, disk, outside)
	attach := func() (any, error) {
		return dom.job(ctxFor(t, 30*time.Second), "attach-disk", func(r actors.Request) any {
			return vm.AttachDiskJob(r, disk, domain.DiskFormatRaw, false)
		})
	}
	_, err := attach()
	if err == nil || !strings.Contains(err.Error(), `spec field "path"`) || !strings.Contains(err.Error(), "leads out of image root") {
		t.Fatalf("attach of a file swapped for a symlink out of the root: %v, want a refusal naming the path", err)
	}
	in, err := dom.Info(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range openFiles(t, in.PID) {
		if f == outside {
			t.Fatalf("QEMU opened the outside file %s", outside)
		}
	}

	if err := os.Remove(disk); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := attach()
	if err != nil {
		t.Fatalf("attach of a regular file: %v", err)
	}
	got, _, _ := vm.DeviceOf(v)
	if got == nil || got.FDSet == 0 {
		t.Fatalf("attached disk %+v has no fd set", got)
	}
	found := false
	for _, f := range openFiles(t, in.PID) {
		found = found || f == disk
	}
	if !found {
		t.Fatalf("QEMU does not hold the attached disk %s open", disk)
	}
	sets, err := dom.QMP(ctxFor(t, 10*time.Second), []byte(`{"execute":"query-fdsets"}`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(sets), `"fdset-id": `+strconv.Itoa(got.FDSet)) && !strings.Contains(string(sets), `"fdset-id":`+strconv.Itoa(got.FDSet)) {
		t.Fatalf("query-fdsets has no set %d: %s", got.FDSet, sets)
	}
}

// The seed's user data is read through the image root too: a
// user_data_file swapped for a symlink out of the root after define's
// check (the host resources are asked directly, as after the check) is
// refused naming the field, and its target never reaches the seed.
func TestSeedNeverReadsUserDataSwappedOutOfImageRoot(t *testing.T) {
	d, root, _ := fdDriver(t)
	outside := filepath.Join(testkit.ShortDir(t), "secret")
	if err := os.WriteFile(outside, []byte("#cloud-config\nsecret: outside\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ud := filepath.Join(root, "user-data")
	swapForSymlink(t, ud, outside)
	spec := &domain.Spec{Name: "fd3", UUID: "6b3c2f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f", Machine: "q35", Memory: 64 * domain.MiB,
		CloudInit: &cloudinit.Config{UserDataFile: ud}}
	err := d.host.Define(ctxFor(t, 10*time.Second), spec)
	if err == nil || !strings.Contains(err.Error(), "cloud_init.user_data_file") || !strings.Contains(err.Error(), "leads out of image root") {
		t.Fatalf("seed from a user_data_file swapped for a symlink out of the root: %v, want a refusal naming the field", err)
	}
	if b, err := os.ReadFile(d.host.SeedPath("fd3")); err == nil && strings.Contains(string(b), "outside") {
		t.Fatal("the outside file's content is in the seed")
	}
}

// An image disk on a qcow2 base runs with the base from its own fd as the
// overlay's backing node: QEMU's block graph has the base node, and QEMU
// holds the base and the overlay open, neither by a name from a header.
func TestImageDiskBaseIsPassedAsBackingNode(t *testing.T) {
	d, root, _ := fdDriver(t)
	base := filepath.Join(root, "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "8M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	spec := &domain.Spec{Name: "fd4", Machine: "q35", Accel: domain.AccelTCG, Memory: 64 * domain.MiB,
		Disks: []domain.Disk{{Image: base, Format: domain.DiskFormatQCOW2}}}
	if _, err := d.Define(ctxFor(t, 30*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	dom := d.Domain("fd4")
	if err := dom.Start(ctxFor(t, 60*time.Second), StartOptions{Paused: true}); err != nil {
		t.Fatal(err)
	}
	nodes, err := dom.QMP(ctxFor(t, 10*time.Second), []byte(`{"execute":"query-named-block-nodes"}`))
	if err != nil {
		t.Fatal(err)
	}
	var reply []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
		File     string `json:"file"`
		Backing  string `json:"backing_file"`
	}
	if err := json.Unmarshal(nodes, &reply); err != nil {
		t.Fatalf("query-named-block-nodes: %v: %s", err, nodes)
	}
	got := map[string]string{}
	for _, n := range reply {
		got[n.NodeName] = n.Drv + " " + n.File + " backing " + n.Backing
	}
	if !strings.HasPrefix(got["disk0-b0"], "qcow2 /dev/fdset/") || !strings.HasPrefix(got["disk0"], "qcow2 ") ||
		!strings.Contains(got["disk0"], "backing /dev/fdset/") {
		t.Fatalf("block nodes %v, want disk0 (qcow2) backed by base node disk0-b0 (qcow2 on an fd set)", got)
	}
	in, err := dom.Info(ctxFor(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	files := strings.Join(openFiles(t, in.PID), "\n")
	overlay := d.host.OverlayPath("fd4", 0)
	if !strings.Contains(files, base) || !strings.Contains(files, overlay) {
		t.Fatalf("QEMU does not hold the base %s and overlay %s open:\n%s", base, overlay, files)
	}
}

// The guest boots from the fd-passed disk and the copies of kernel and
// initrd, which are gone from the run dir once QEMU has loaded them; a
// reset boots it again from QEMU's own copy.
func TestGuestBootsFromPassedFiles(t *testing.T) {
	d, root, g := fdDriver(t)
	disk := filepath.Join(root, "disk.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := &domain.Spec{Name: "fd5", Machine: "q35", Accel: domain.AccelTCG, Memory: 128 * domain.MiB,
		Kernel: g.Kernel, Initrd: g.Initrd, Append: "console=ttyS0 panic=-1", Disks: []domain.Disk{{Path: disk}},
		Serial: &domain.Serial{Type: domain.SerialFile}}
	if _, err := d.Define(ctxFor(t, 10*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	dom := d.Domain("fd5")
	if err := dom.Start(ctxFor(t, 60*time.Second), StartOptions{}); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(d.cfg.RunDir, "fd5")
	for _, name := range []string{"kernel", "initrd"} {
		if _, err := os.Lstat(filepath.Join(run, name)); !os.IsNotExist(err) {
			t.Errorf("the %s copy is still in the run dir after start: %v", name, err)
		}
	}
	serial := filepath.Join(run, "serial.log")
	waitMarker := func(count int) {
		t.Helper()
		deadline := time.Now().Add(120 * time.Second)
		for time.Now().Before(deadline) {
			b, _ := os.ReadFile(serial)
			if strings.Count(string(b), testkit.GuestReady) >= count {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		b, _ := os.ReadFile(serial)
		t.Fatalf("no %d× %q in the serial log; it has:\n%s", count, testkit.GuestReady, b)
	}
	waitMarker(1)
	if err := dom.Reset(ctxFor(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitMarker(2)
}
