package vm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

// OpenImage opens the file a spec field names for QEMU, read-write when
// write is set: under the host's image roots, without following a symlink
// out of them (policy.Policy.OpenFile). An error names field.
type OpenImage func(field, path string, write bool) (*os.File, error)

// openPlain is the OpenImage of a domain with no policy: the path as it is.
func openPlain(field, path string, write bool) (*os.File, error) {
	flags := os.O_RDONLY
	if write {
		flags = os.O_RDWR
	}
	f, err := os.OpenFile(path, flags|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &domain.FieldError{Field: field, Problem: err.Error()}
	}
	return f, nil
}

// openOwn opens a file vmsup made itself (an overlay, the seed), following
// no symlink anywhere on its path.
func openOwn(what, path string, write bool) (*os.File, error) {
	flags := unix.O_RDONLY
	if write {
		flags = unix.O_RDWR
	}
	fd, err := unix.Openat2(unix.AT_FDCWD, path, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NOCTTY),
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("%s %s: a symlink is on its path; refusing to follow it", what, path)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s %s: %w", what, path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// passedFiles are the files one start opened for QEMU, in the order of
// their fds from qemuargs.FirstPassedFD.
type passedFiles []*os.File

// Close closes them all (QEMU has its copies once it runs).
func (p passedFiles) Close() {
	for _, f := range p {
		f.Close()
	}
}

// passFiles opens every file QEMU needs for spec and host (the disks'
// files, the bases of image disks, the seed, the kernel and initrd) with
// open, or openOwn for vmsup's own overlays and seed, and copies the
// kernel and initrd into the run dir. It returns host with Passed set, and
// the files to pass. On error it has closed what it opened.
func passFiles(spec *domain.Spec, paths qemuargs.RunPaths, host *qemuargs.Host, open OpenImage) (*qemuargs.Host, passedFiles, error) {
	if open == nil {
		open = openPlain
	}
	h := *host
	pass := &qemuargs.Passed{Disks: make([]int, len(spec.Disks)), Bases: make([]int, len(spec.Disks))}
	var files passedFiles
	add := func(f *os.File) int {
		files = append(files, f)
		return qemuargs.FirstPassedFD + len(files) - 1
	}
	fail := func(err error) (*qemuargs.Host, passedFiles, error) {
		files.Close()
		return nil, nil, err
	}
	for i, d := range spec.Disks {
		if d.Image != "" {
			base, err := open(fmt.Sprintf("disks[%d].image", i), d.Image, false)
			if err != nil {
				return fail(err)
			}
			pass.Bases[i] = add(base)
			ov, err := openOwn(fmt.Sprintf("disks[%d] overlay", i), host.Disks[i], true)
			if err != nil {
				return fail(err)
			}
			pass.Disks[i] = add(ov)
			continue
		}
		f, err := open(fmt.Sprintf("disks[%d].path", i), host.Disks[i], !d.ReadOnly)
		if err != nil {
			return fail(err)
		}
		pass.Disks[i] = add(f)
	}
	if host.Seed != "" {
		f, err := openOwn("cloud-init seed", host.Seed, false)
		if err != nil {
			return fail(err)
		}
		pass.Seed = add(f)
	}
	if spec.Kernel != "" {
		var err error
		if pass.Kernel, err = copyIn(open, "kernel", spec.Kernel, filepath.Join(paths.Dir, kernelCopy)); err != nil {
			return fail(err)
		}
		if spec.Initrd != "" {
			if pass.Initrd, err = copyIn(open, "initrd", spec.Initrd, filepath.Join(paths.Dir, initrdCopy)); err != nil {
				return fail(err)
			}
		}
	}
	h.Passed = pass
	return &h, files, nil
}

// copyIn opens the file field names with open and copies it to dst in
// the run dir (replacing what is there, never through a symlink); it
// returns dst.
func copyIn(open OpenImage, field, path, dst string) (string, error) {
	src, err := open(field, path, false)
	if err != nil {
		return "", err
	}
	defer src.Close()
	if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("spec field %q: remove stale copy %s: %w", field, dst, err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return "", fmt.Errorf("spec field %q: copy into the run dir: %w", field, err)
	}
	if _, err := io.Copy(out, src); err != nil {
		out.Close()
		return "", fmt.Errorf("spec field %q: copy %s into the run dir: %w", field, path, err)
	}
	if err := out.Close(); err != nil {
		return "", fmt.Errorf("spec field %q: copy into the run dir: %w", field, err)
	}
	return dst, nil
}

// kernelCopy and initrdCopy are the run dir's copies of the spec's kernel
// and initrd, which QEMU reads at machine init.
const (
	kernelCopy = "kernel"
	initrdCopy = "initrd"
)

// removeCopies removes the kernel and initrd copies of paths' run dir.
func removeCopies(paths qemuargs.RunPaths) {
	for _, name := range []string{kernelCopy, initrdCopy} {
		_ = os.Remove(filepath.Join(paths.Dir, name))
	}
}
