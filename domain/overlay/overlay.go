package overlay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Base image formats.
const (
	FormatQCOW2 = "qcow2"
	FormatRaw   = "raw"
)

// Errors that CheckBase and Create wrap, for errors.Is.
var (
	// ErrBackingChain: the base has a backing file (or an external data
	// file) of its own.
	ErrBackingChain = errors.New("has a backing file; a base must be a standalone image")
	// ErrFormatMismatch: the base's format is not the declared one.
	ErrFormatMismatch = errors.New("format does not match")
	// ErrTooSmall: the overlay's size is smaller than the base.
	ErrTooSmall = errors.New("size is smaller than the base image")
	// ErrUnusable: the base is encrypted, corrupt or marked dirty.
	ErrUnusable = errors.New("image cannot serve as a base")
)

// CheckBase inspects the base image path and checks that it can back an
// overlay: its format as qemu-img detects it is format (qcow2 or raw), and
// it has no backing file, no external data file, no encryption, and no
// corrupt or dirty flag. It returns the base's Info.
func (q QemuImg) CheckBase(ctx context.Context, path, format string) (*Info, error) {
	if format != FormatQCOW2 && format != FormatRaw {
		return nil, fmt.Errorf("base image %s: format %q is not supported; use %q or %q", path, format, FormatQCOW2, FormatRaw)
	}
	if err := checkPath("base image", path); err != nil {
		return nil, err
	}
	stat, info := os.Stat, q.Info
	if q.OpenBase != nil {
		f, err := q.OpenBase(path)
		if err != nil {
			return nil, fmt.Errorf("base image: %w", err)
		}
		defer f.Close()
		stat = func(string) (os.FileInfo, error) { return f.Stat() }
		info = func(ctx context.Context, _ string) (*Info, error) { return q.infoOf(ctx, f) }
	}
	st, err := stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("base image %s does not exist: %w", path, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("base image: %w", err)
	}
	if !st.Mode().IsRegular() && st.Mode().Type() != fs.ModeDevice {
		return nil, fmt.Errorf("base image %s is not a file or a block device (mode %s)", path, st.Mode())
	}
	// qemu-img probes the format: a raw image whose first bytes look like
	// a qcow2 header is reported as qcow2, and refused here as a mismatch.
	bi, err := info(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("base image %s: %w", path, err)
	}
	return checkBaseInfo(path, format, bi)
}

// checkBaseInfo checks what qemu-img says of the base image path.
func checkBaseInfo(path, format string, info *Info) (*Info, error) {
	switch {
	case info.Format != format:
		return nil, fmt.Errorf("base image %s: %w: declared %q, qemu-img detects %q", path, ErrFormatMismatch, format, info.Format)
	case info.BackingFile != "" || info.FullBackingFile != "":
		return nil, fmt.Errorf("base image %s %w (%s)", path, ErrBackingChain, quoteName(info.BackingFile, info.FullBackingFile))
	case info.DataFile != "":
		return nil, fmt.Errorf("base image %s: %w: it keeps its data in the external file %q", path, ErrBackingChain, info.DataFile)
	case info.Encrypted:
		return nil, fmt.Errorf("base image %s: %w: it is encrypted", path, ErrUnusable)
	case info.Corrupt:
		return nil, fmt.Errorf("base image %s: %w: it is marked corrupt (see qemu-img check)", path, ErrUnusable)
	case info.Dirty:
		return nil, fmt.Errorf("base image %s: %w: it is marked dirty (repair it with qemu-img check -r all)", path, ErrUnusable)
	case info.VirtualSize == 0:
		return nil, fmt.Errorf("base image %s: %w: its virtual size is 0", path, ErrUnusable)
	}
	return info, nil
}

func quoteName(recorded, full string) string {
	if full != "" && full != recorded {
		return strconv.Quote(recorded) + ", that is " + strconv.Quote(full)
	}
	return strconv.Quote(recorded)
}

// Create makes the qcow2 overlay at path on the base image base of format
// baseFormat, with "qemu-img create -f qcow2 -F baseFormat -b base". The
// overlay's virtual size is size bytes, or the base's when size is 0; a
// size below the base's is refused, and it must be a multiple of 512.
// Both paths must be absolute, and path must not exist.
//
// The overlay appears at path whole or not at all: qemu-img writes a
// temporary file next to it, which is checked, synced and renamed to path
// (never over an existing file), and removed on any failure, including a
// deadline. The base is opened read-only. Create returns the overlay's
// Info.
func (q QemuImg) Create(ctx context.Context, base, baseFormat, path string, size uint64) (*Info, error) {
	if err := checkPath("overlay", path); err != nil {
		return nil, err
	}
	if size%512 != 0 {
		return nil, fmt.Errorf("overlay %s: size %d is not a multiple of 512 bytes", path, size)
	}
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("overlay %s: %w", path, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("overlay: %w", err)
	}
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("overlay %s: its directory %s does not exist", path, dir)
	}
	if path == base {
		return nil, fmt.Errorf("overlay %s: it is the base image itself", path)
	}
	bi, err := q.CheckBase(ctx, base, baseFormat)
	if err != nil {
		return nil, err
	}
	if size == 0 {
		size = bi.VirtualSize
	}
	if size < bi.VirtualSize {
		return nil, fmt.Errorf("overlay %s: %w: %d bytes, base %s has %d", path, ErrTooSmall, size, base, bi.VirtualSize)
	}

	tmp, err := tempName(path)
	if err != nil {
		return nil, err
	}
	done := false
	defer func() {
		if !done {
			os.Remove(tmp)
		}
	}()
	// -u: qemu-img does not open the base (CheckBase read it, through
	// OpenBase when set); the size is given.
	if _, err := q.run(ctx, "create", "-q", "-u", "-f", FormatQCOW2, "-F", baseFormat, "-b", base, tmp, strconv.FormatUint(size, 10)); err != nil {
		return nil, fmt.Errorf("creating overlay %s: %w", path, err)
	}
	info, err := q.Info(ctx, tmp)
	if err != nil {
		return nil, fmt.Errorf("creating overlay %s: reading it back: %w", path, err)
	}
	if info.Format != FormatQCOW2 || info.FullBackingFile != base || info.BackingFormat != baseFormat || info.VirtualSize != size {
		return nil, fmt.Errorf("creating overlay %s: qemu-img made a %s image of %d bytes on %q (%s), want qcow2 of %d bytes on %q (%s)",
			path, info.Format, info.VirtualSize, info.FullBackingFile, info.BackingFormat, size, base, baseFormat)
	}
	if err := syncFile(tmp); err != nil {
		return nil, fmt.Errorf("creating overlay %s: %w", path, err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("overlay %s: %w (created meanwhile)", path, fs.ErrExist)
		}
		return nil, fmt.Errorf("creating overlay %s: renaming %s: %w", path, tmp, err)
	}
	done = true
	if err := syncFile(dir); err != nil {
		return nil, fmt.Errorf("creating overlay %s: %w", path, err)
	}
	info.Filename = path
	return info, nil
}

// tempName returns a fresh temporary name next to path.
func tempName(path string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp-"+hex.EncodeToString(b[:])), nil
}

// syncFile fsyncs the file or directory name.
func syncFile(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", name, err)
	}
	return nil
}

// Remove deletes the overlay at path and any temporary file a Create of it
// left behind. A missing overlay is not an error; anything but a regular
// file (a directory, a symlink, a device) is refused. It never follows a
// link, so a base cannot be reached through it.
func Remove(path string) error {
	if err := checkPath("overlay", path); err != nil {
		return err
	}
	var errs []error
	dir, prefix := filepath.Dir(path), "."+filepath.Base(path)+".tmp-"
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing overlay %s: %w", path, err))
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing overlay %s: %w", path, err))
		}
	}
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		errs = append(errs, fmt.Errorf("removing overlay: %w", err))
	case !st.Mode().IsRegular():
		errs = append(errs, fmt.Errorf("removing overlay %s: not a regular file (mode %s); left alone", path, st.Mode()))
	default:
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("removing overlay: %w", err))
		}
	}
	return errors.Join(errs...)
}

// checkPath requires an absolute, clean path.
func checkPath(what, p string) error {
	if p == "" {
		return fmt.Errorf("%s: empty path", what)
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%s %q: the path must be absolute", what, p)
	}
	if filepath.Clean(p) != p {
		return fmt.Errorf("%s %q: the path must be clean (no \"..\", \".\" or repeated \"/\")", what, p)
	}
	return nil
}

// CreateOn makes a qcow2 overlay at path on backing, an image of format
// backingFormat and size bytes that a running QEMU may hold open (and
// locked): qemu-img does not open backing (create -u), so the caller
// gives its size. backing may itself have a backing chain: this is a
// new top for a disk-only snapshot. Like Create, the overlay appears at
// path whole or not at all, and never replaces an existing file.
func (q QemuImg) CreateOn(ctx context.Context, backing, backingFormat, path string, size uint64) error {
	if err := checkPath("overlay", path); err != nil {
		return err
	}
	if err := checkPath("backing image", backing); err != nil {
		return err
	}
	if backingFormat != FormatQCOW2 && backingFormat != FormatRaw {
		return fmt.Errorf("overlay %s: backing %s: format %q is not supported; use %q or %q", path, backing, backingFormat, FormatQCOW2, FormatRaw)
	}
	if size == 0 || size%512 != 0 {
		return fmt.Errorf("overlay %s: size %d is not a positive multiple of 512 bytes", path, size)
	}
	if path == backing {
		return fmt.Errorf("overlay %s: it is its backing image itself", path)
	}
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("overlay %s: %w", path, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("overlay: %w", err)
	}
	tmp, err := tempName(path)
	if err != nil {
		return err
	}
	done := false
	defer func() {
		if !done {
			os.Remove(tmp)
		}
	}()
	if _, err := q.run(ctx, "create", "-q", "-u", "-f", FormatQCOW2, "-F", backingFormat, "-b", backing, tmp, strconv.FormatUint(size, 10)); err != nil {
		return fmt.Errorf("creating overlay %s: %w", path, err)
	}
	info, err := q.Info(ctx, tmp)
	if err != nil {
		return fmt.Errorf("creating overlay %s: reading it back: %w", path, err)
	}
	if info.Format != FormatQCOW2 || info.BackingFile != backing || info.BackingFormat != backingFormat || info.VirtualSize != size {
		return fmt.Errorf("creating overlay %s: qemu-img made a %s image of %d bytes on %q (%s), want qcow2 of %d bytes on %q (%s)",
			path, info.Format, info.VirtualSize, info.BackingFile, info.BackingFormat, size, backing, backingFormat)
	}
	if err := syncFile(tmp); err != nil {
		return fmt.Errorf("creating overlay %s: %w", path, err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("overlay %s: %w (created meanwhile)", path, fs.ErrExist)
		}
		return fmt.Errorf("creating overlay %s: renaming %s: %w", path, tmp, err)
	}
	done = true
	return syncFile(filepath.Dir(path))
}

// Commit writes the data of the qcow2 overlay at path, open as over, into
// its backing image, open read-write as backing (qemu-img commit -d: the
// overlay is left as it was, so that a commit cut short leaves a chain
// that still reads the same). The image must not be in use.
func (q QemuImg) Commit(ctx context.Context, path string, over, backing *os.File, backingFormat string) error {
	if err := checkPath("overlay", path); err != nil {
		return err
	}
	if backingFormat != FormatQCOW2 && backingFormat != FormatRaw {
		return fmt.Errorf("committing overlay %s: backing format %q is not supported", path, backingFormat)
	}
	// The overlay and its backing as the caller opened them (fds 3 and
	// 4), the backing given explicitly: qemu-img follows no name, neither
	// the paths nor the backing name in the overlay's header.
	spec, err := json.Marshal(map[string]any{
		"driver": FormatQCOW2, "file": map[string]any{"driver": "file", "filename": "/dev/fd/3"},
		"backing": map[string]any{"driver": backingFormat, "file": map[string]any{"driver": "file", "filename": "/dev/fd/4"}},
	})
	if err != nil {
		return err
	}
	if _, err := q.runWith(ctx, []*os.File{over, backing}, "commit", "-q", "-d", "json:"+string(spec)); err != nil {
		return fmt.Errorf("committing overlay %s into its backing: %w", path, err)
	}
	return nil
}

// Rebase makes the qcow2 image at path name backing (of backingFormat)
// as its backing file, rewriting only its header (qemu-img rebase -u):
// for when backing already holds what the old backing file did.
func (q QemuImg) Rebase(ctx context.Context, path, backing, backingFormat string) error {
	if err := checkPath("image", path); err != nil {
		return err
	}
	if err := checkPath("backing image", backing); err != nil {
		return err
	}
	if backingFormat != FormatQCOW2 && backingFormat != FormatRaw {
		return fmt.Errorf("rebase %s: backing format %q is not supported", path, backingFormat)
	}
	if _, err := q.run(ctx, "rebase", "-q", "-u", "-f", FormatQCOW2, "-F", backingFormat, "-b", backing, path); err != nil {
		return fmt.Errorf("rebasing %s onto %s: %w", path, backing, err)
	}
	return nil
}
