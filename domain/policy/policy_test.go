package policy

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

func testPolicy(t *testing.T, allowRaw bool) (*Policy, string, qemuargs.RunPaths) {
	t.Helper()
	root := t.TempDir()
	emu := filepath.Join(root, "qemu-system-x86_64")
	if err := os.WriteFile(emu, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := New(allowRaw, []string{emu}, []string{filepath.Join(root, "images")})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "images"), 0o700); err != nil {
		t.Fatal(err)
	}
	rp, err := qemuargs.NewRunPaths(filepath.Join(root, "run"), "vm1")
	if err != nil {
		t.Fatal(err)
	}
	return p, root, rp
}

func wantRefused(t *testing.T, err error, field string, parts ...string) {
	t.Helper()
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("%s: %v, want refused", field, err)
	}
	if !strings.Contains(err.Error(), `spec field "`+field+`"`) && !strings.Contains(err.Error(), "QMP command") {
		t.Errorf("error does not name %s: %v", field, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q lacks %q", field, err, p)
		}
	}
}

// TestAttacks: each attack of the security table, refused through the spec
// and raw QMP, with and without AllowRawQEMU.
func TestAttacks(t *testing.T) {
	p, root, rp := testPolicy(t, false)
	emu := p.Emulators[0]
	script := filepath.Join(root, "evil.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ntouch /tmp/pwned\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, allowRaw := range []bool{false, true} {
		p.AllowRawQEMU = allowRaw
		_, err := p.CheckSpec(&domain.Spec{Name: "vm1", Emulator: script}, rp)
		wantRefused(t, err, "emulator", "not an emulator the daemon allows", emu)
		_, err = p.CheckSpec(&domain.Spec{Name: "vm1", Emulator: emu, Serial: &domain.Serial{Type: domain.SerialFile, Path: "/etc/passwd"}}, rp)
		wantRefused(t, err, "serial.path", "run dir "+rp.Dir)
		_, err = p.CheckSpec(&domain.Spec{Name: "vm1", Emulator: emu, Serial: &domain.Serial{Type: domain.SerialSocket, Path: rp.PIDFile}}, rp)
		wantRefused(t, err, "serial.path", "vmsup's own files")
		_, err = p.CheckSpec(&domain.Spec{Name: "vm1", Emulator: emu, Serial: &domain.Serial{Type: domain.SerialFile, Path: rp.Dir + "/../vm2/serial.log"}}, rp)
		wantRefused(t, err, "serial.path")
		_, err = p.CheckSpec(&domain.Spec{Name: "vm1", Emulator: emu, Kernel: "/etc/shadow"}, rp)
		wantRefused(t, err, "kernel", "outside the image roots")
		for _, cmd := range []string{"migrate", "human-monitor-command", "add-fd", "getfd", "object-add", "netdev_add", "chardev-add", "blockdev-add", "dump-guest-memory", "screendump", "query-", "x-exit-preconfig", "quit"} {
			taint, err := p.CheckQMP(cmd)
			if allowRaw {
				if err != nil || taint == nil || taint.What != "qmp "+cmd {
					t.Errorf("with --allow-raw-qemu, %s: taint %v, err %v; want allowed and tainted", cmd, taint, err)
				}
				continue
			}
			if err == nil || !strings.Contains(err.Error(), `QMP command "`+cmd+`" is refused`) || !strings.Contains(err.Error(), "--allow-raw-qemu") {
				t.Errorf("%s: %v, want refused naming the flag", cmd, err)
			}
		}
	}
	p.AllowRawQEMU = false
	args := []string{"-incoming", "exec:touch /tmp/pwned", "-D", "/etc/important"}
	_, err := p.CheckSpec(&domain.Spec{Name: "vm1", Emulator: emu, ExtraArgs: args}, rp)
	wantRefused(t, err, "extra_args", "--allow-raw-qemu")
	p.AllowRawQEMU = true
	taints, err := p.CheckSpec(&domain.Spec{Name: "vm1", Emulator: emu, ExtraArgs: args}, rp)
	if err != nil || len(taints) != 1 || taints[0].What != "extra_args" {
		t.Errorf("extra_args with --allow-raw-qemu: %v %v, want allowed and tainted", taints, err)
	}
	for _, cmd := range []string{"query-status", "query-qmp-schema", "stop", "cont", "system_powerdown"} {
		if taint, err := p.CheckQMP(cmd); err != nil || taint != nil {
			t.Errorf("%s: %v %v, want allowed untainted", cmd, taint, err)
		}
	}
}

// TestImageRootSymlinks: a path under an image root is accepted when it
// resolves under it (through symlinks inside the root, or when missing),
// and refused when a symlink leads out.
func TestImageRootSymlinks(t *testing.T) {
	p, root, rp := testPolicy(t, false)
	images := p.ImageRoots[0]
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(images, "vmlinuz"), []byte("k"), 0o600))
	must(os.Symlink("vmlinuz", filepath.Join(images, "inside")))
	must(os.Symlink("/etc/shadow", filepath.Join(images, "outside")))
	must(os.Symlink("../../"+filepath.Base(root), filepath.Join(images, "up")))
	must(os.Mkdir(filepath.Join(images, "sub"), 0o700))
	must(os.Symlink("/etc", filepath.Join(images, "sub", "etc")))
	spec := func(kernel string) *domain.Spec {
		return &domain.Spec{Name: "vm1", Emulator: p.Emulators[0], Kernel: kernel}
	}
	for _, ok := range []string{"vmlinuz", "inside", "missing", "sub"} {
		if _, err := p.CheckSpec(spec(filepath.Join(images, ok)), rp); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"outside", "up/x", "sub/etc/passwd"} {
		_, err := p.CheckSpec(spec(filepath.Join(images, bad)), rp)
		wantRefused(t, err, "kernel", "leads out of image root")
	}
	_, err := p.CheckSpec(spec(images+"/../evil"), rp)
	wantRefused(t, err, "kernel", "not a clean path")
	_, err = p.CheckSpec(spec(images), rp)
	wantRefused(t, err, "kernel", "outside the image roots")
}

// FuzzCheckPath: what CheckPath accepts is absolute, clean, and strictly
// below a root by whole segments, whatever the input.
func FuzzCheckPath(f *testing.F) {
	for _, s := range []string{"/srv/img/a", "/srv/img", "/srv/imgx/a", "/srv/img/../etc", "/srv/img//a", "srv/img/a", "/srv/img/a/", "/srv/img/./a", "/"} {
		f.Add("/srv/img", s)
	}
	f.Add("/", "/etc/passwd")
	f.Fuzz(func(t *testing.T, root, path string) {
		if !filepath.IsAbs(root) || filepath.Clean(root) != root {
			return // roots are made absolute and clean by New
		}
		if CheckPath([]string{root}, path) != nil {
			return
		}
		if !filepath.IsAbs(path) || filepath.Clean(path) != path || path == root {
			t.Fatalf("accepted %q under %q", path, root)
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
			t.Fatalf("accepted %q, which is not below %q (rel %q, %v)", path, root, rel, err)
		}
	})
}

// FuzzQMPAllowed: only query-* and the safe list pass without the flag.
func FuzzQMPAllowed(f *testing.F) {
	for _, s := range []string{"query-status", "migrate", "human-monitor-command", "query-", "stop", "Stop", "query-x\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		if !QMPAllowed(cmd) {
			return
		}
		safe := false
		for _, s := range SafeQMP {
			safe = safe || s == cmd
		}
		if !safe && !(strings.HasPrefix(cmd, "query-") && len(cmd) > 6) {
			t.Fatalf("allowed %q", cmd)
		}
	})
}

// OpenFile opens a file under a root with the access asked for, follows a
// symlink that stays inside, and refuses one that leads out, naming the
// field.
func TestOpenFileBeneathRoot(t *testing.T) {
	root, out := t.TempDir(), t.TempDir()
	p, err := New(false, nil, []string{root})
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(root, "disk.raw")
	if err := os.WriteFile(in, []byte("inside"), 0o600); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(out, "secret")
	if err := os.WriteFile(secret, []byte("outside"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("disk.raw", filepath.Join(root, "inner")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../"+filepath.Base(out)+"/secret", filepath.Join(root, "dotdot")); err != nil {
		t.Fatal(err)
	}
	for _, write := range []bool{false, true} {
		f, err := p.OpenFile("disks[0].path", in, write)
		if err != nil {
			t.Fatalf("open %s (write %v): %v", in, write, err)
		}
		fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
		f.Close()
		want := unix.O_RDONLY
		if write {
			want = unix.O_RDWR
		}
		if err != nil || fl&unix.O_ACCMODE != want {
			t.Fatalf("open %s (write %v): flags %#x %v, want access mode %#x", in, write, fl, err, want)
		}
	}
	f, err := p.OpenFile("kernel", filepath.Join(root, "inner"), false)
	if err != nil {
		t.Fatalf("a symlink inside the root: %v", err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if string(b) != "inside" {
		t.Fatalf("read %q through the inner symlink", b)
	}
	for _, name := range []string{"escape", "dotdot"} {
		_, err := p.OpenFile("disks[1].image", filepath.Join(root, name), false)
		var pe *Error
		if !errors.As(err, &pe) || pe.Field != "disks[1].image" || !strings.Contains(err.Error(), "leads out of image root") {
			t.Fatalf("open %s: %v, want a policy error naming disks[1].image", name, err)
		}
	}
	if _, err := p.OpenFile("initrd", secret, false); !errors.Is(err, ErrRefused) {
		t.Fatalf("open a path outside the roots: %v, want a refusal", err)
	}
	if _, err := p.OpenFile("initrd", filepath.Join(root, "missing"), false); err == nil || !strings.Contains(err.Error(), `"initrd"`) {
		t.Fatalf("open a missing file: %v, want an error naming the field", err)
	}
}
