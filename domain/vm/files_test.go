package vm

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/qemuargs"
	"github.com/vmsup/vmsup/tests/testkit"
)

// passFiles copies the kernel and initrd into the run dir without
// following a symlink planted there, opens path disks with the access they
// need, and refuses an overlay reached through a symlink.
func TestPassFiles(t *testing.T) {
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	kernel, initrd, disk := write("vmlinuz", "kernel"), write("initrd", "initrd"), write("disk.raw", "disk")
	victim := write("victim", "untouched")
	if err := os.Symlink(victim, filepath.Join(run, "kernel")); err != nil {
		t.Fatal(err)
	}
	spec := &domain.Spec{Name: "f", Kernel: kernel, Initrd: initrd, Disks: []domain.Disk{{Path: disk}, {Path: disk, ReadOnly: true}}}
	paths := qemuargs.RunPaths{Dir: run}
	host, files, err := passFiles(spec, paths, &qemuargs.Host{Disks: []string{disk, disk}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer files.Close()
	if b, _ := os.ReadFile(victim); string(b) != "untouched" {
		t.Fatalf("the copy followed a symlink in the run dir: victim now %q", b)
	}
	if b, err := os.ReadFile(host.Passed.Kernel); err != nil || string(b) != "kernel" {
		t.Fatalf("kernel copy %s: %q %v", host.Passed.Kernel, b, err)
	}
	if fi, err := os.Lstat(host.Passed.Kernel); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("kernel copy is not a regular file: %v %v", fi.Mode(), err)
	}
	if got := host.Passed.Disks; len(got) != 2 || got[0] != qemuargs.FirstPassedFD || got[1] != qemuargs.FirstPassedFD+1 || len(files) != 2 {
		t.Fatalf("disk fds %v for %d files", got, len(files))
	}
	if _, err := files[0].Write([]byte("w")); err != nil {
		t.Errorf("a read-write disk was not opened for writing: %v", err)
	}
	if _, err := files[1].Write([]byte("w")); err == nil {
		t.Error("a read-only disk was opened for writing")
	}

	link := filepath.Join(dir, "overlay-link")
	if err := os.Symlink(disk, link); err != nil {
		t.Fatal(err)
	}
	img := &domain.Spec{Name: "f", Disks: []domain.Disk{{Image: disk}}}
	if _, _, err := passFiles(img, paths, &qemuargs.Host{Disks: []string{link}}, nil); err == nil {
		t.Fatal("an overlay reached through a symlink was opened")
	}
}

// BenchmarkPassFilesGuest measures a start's file work for the test guest:
// opening its kernel and initrd and copying them into the run dir.
func BenchmarkPassFilesGuest(b *testing.B) {
	g := testkit.RequireGuest(b)
	run := b.TempDir()
	spec := &domain.Spec{Name: "f", Kernel: g.Kernel, Initrd: g.Initrd}
	for b.Loop() {
		_, files, err := passFiles(spec, qemuargs.RunPaths{Dir: run}, &qemuargs.Host{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		files.Close()
	}
}
