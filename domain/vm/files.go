package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

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
// files, the bases of image disks, the images under a disk's disk-only
// snapshots, the seed, the kernel and initrd) with open, or openOwn for
// vmsup's own overlays and seed, and copies the
// kernel and initrd into the run dir. It returns host with Passed set, and
// the files to pass. On error it has closed what it opened.
func passFiles(spec *domain.Spec, paths qemuargs.RunPaths, host *qemuargs.Host, open OpenImage) (*qemuargs.Host, passedFiles, error) {
	if open == nil {
		open = openPlain
	}
	h := *host
	pass := &qemuargs.Passed{Disks: make([]int, len(spec.Disks)), Backing: make([][]qemuargs.Layer, len(spec.Disks))}
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
		var under []string
		if i < len(host.Under) {
			under = host.Under[i]
		}
		own := fmt.Sprintf("disks[%d].path", i) // the disk's own file
		if d.Image != "" {
			own = fmt.Sprintf("disks[%d] overlay", i)
		}
		// The top: the disk's file, or the newest disk-only overlay.
		var top *os.File
		var err error
		switch {
		case len(under) > 0:
			top, err = openOwn(fmt.Sprintf("disks[%d] snapshot overlay", i), host.Disks[i], !d.ReadOnly)
		case d.Image != "":
			top, err = openOwn(own, host.Disks[i], true)
		default:
			top, err = open(own, host.Disks[i], !d.ReadOnly)
		}
		if err != nil {
			return fail(err)
		}
		pass.Disks[i] = add(top)
		// Under it, nearest first: older snapshot overlays, the disk's
		// own file, an image disk's base (read-only).
		for k, path := range under {
			var f *os.File
			// Read-write, but for an image disk's base: deleting a
			// snapshot of the running VM commits the overlay above into
			// it (Layer.Writable).
			layer := qemuargs.Layer{Format: domain.DiskFormatQCOW2, Path: path, Writable: !d.ReadOnly}
			switch {
			case k < len(under)-1:
				layer.Field = fmt.Sprintf("disks[%d] snapshot overlay", i)
				f, err = openOwn(layer.Field, path, layer.Writable)
			case d.Image != "":
				layer.Field = own
				f, err = openOwn(own, path, layer.Writable)
			default:
				layer.Field, layer.Format = own, diskFormat(d)
				f, err = open(own, path, layer.Writable)
			}
			if err != nil {
				return fail(err)
			}
			layer.FD = add(f)
			pass.Backing[i] = append(pass.Backing[i], layer)
		}
		if d.Image != "" {
			field := fmt.Sprintf("disks[%d].image", i)
			base, err := open(field, d.Image, false)
			if err != nil {
				return fail(err)
			}
			pass.Backing[i] = append(pass.Backing[i], qemuargs.Layer{FD: add(base), Format: diskFormat(d), Field: field, Path: d.Image})
		}
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

// diskFormat is the format of a disk's path, or of an image disk's base.
func diskFormat(d domain.Disk) string {
	if d.Format == "" {
		return domain.DiskFormatRaw
	}
	return d.Format
}

// fdsetFiles maps the name of each fd set QEMU holds (/dev/fdset/N) to
// the path in its label (query-fdsets): QEMU reports a passed file by the
// fd set's name, and vmsup's records need the file.
func (d *jobData) fdsetFiles(ctx context.Context, r run) (map[string]string, error) {
	ret, err := d.qmp(ctx, r, "query-fdsets", nil)
	if err != nil {
		return nil, err
	}
	var sets []struct {
		ID  int `json:"fdset-id"`
		FDs []struct {
			Opaque string `json:"opaque"`
		} `json:"fds"`
	}
	if err := json.Unmarshal(ret, &sets); err != nil {
		return nil, fmt.Errorf("domain %q: query-fdsets: unexpected reply: %w", d.domain, err)
	}
	out := make(map[string]string, len(sets))
	for _, s := range sets {
		for _, fd := range s.FDs {
			if path, ok := qemuargs.FDLabelPath(fd.Opaque); ok {
				out[qemuargs.FDSetPath(s.ID)] = path
			}
		}
	}
	return out, nil
}

// realFiles replaces, in place, every file named by an fd set with the
// path that vmsup passed in it. A set without a path in its label (a
// QEMU started before labels had one) keeps its name; whoever records an
// image refuses such a name.
func (d *jobData) realFiles(ctx context.Context, r run, files ...*string) error {
	var sets map[string]string
	for _, f := range files {
		*f = imageFile(*f)
		if !strings.HasPrefix(*f, "/dev/fdset/") {
			continue
		}
		if sets == nil {
			var err error
			if sets, err = d.fdsetFiles(ctx, r); err != nil {
				return err
			}
		}
		if path, ok := sets[*f]; ok {
			*f = path
		}
	}
	return nil
}

// imageFile is the file of an image as QEMU names it: QEMU names a node
// whose options differ from its header (a backing given on the command
// line) "json:{...}", with the file under "file"; the file's name is
// then that protocol node's "filename". Any other name is returned as
// it is.
func imageFile(name string) string {
	spec, ok := strings.CutPrefix(name, "json:")
	if !ok {
		return name
	}
	var opts struct {
		File json.RawMessage `json:"file"`
	}
	if json.Unmarshal([]byte(spec), &opts) != nil || len(opts.File) == 0 {
		return name
	}
	var file struct {
		Filename string `json:"filename"`
	}
	if json.Unmarshal(opts.File, &file) == nil && file.Filename != "" {
		return file.Filename
	}
	return name // "file" names a node, or is not an object
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
