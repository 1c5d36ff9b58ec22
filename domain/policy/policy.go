// Package policy holds what the host decides about a spec, not the spec:
// which emulators may run, whether raw QEMU arguments and raw QMP beyond
// an allowlist are allowed, and which host paths a spec may name.
//
// The checks are pure where they can be (CheckPath, QMPAllowed) so that
// they can be fuzzed; CheckSpec adds one look at the file system per path
// (openat2 with RESOLVE_BENEATH from the image root), so that a symlink
// under an image root cannot lead out of it.
package policy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

// Policy is the host's decision about specs. The zero value allows no
// raw QEMU, no emulator and no path: use New.
type Policy struct {
	// AllowRawQEMU allows extra_args and raw QMP beyond SafeQMP; a
	// domain that uses them is tainted.
	AllowRawQEMU bool
	// Emulators are the QEMU binaries a spec may name: absolute, clean
	// paths.
	Emulators []string
	// ImageRoots are the directories that kernel, initrd and disk paths
	// must lie under: absolute, clean paths.
	ImageRoots []string
}

// DefaultEmulators is the allowlist when the host names none: the
// domain.DefaultEmulator found in PATH.
func DefaultEmulators() ([]string, error) {
	path, err := exec.LookPath(domain.DefaultEmulator)
	if err != nil {
		return nil, fmt.Errorf("emulator %q: %w", domain.DefaultEmulator, err)
	}
	return []string{path}, nil
}

// New returns a policy with the emulators and image roots given, made
// absolute and clean. An emulator given as a bare name is looked up in
// PATH now. With no emulators, no start is allowed.
func New(allowRaw bool, emulators, imageRoots []string) (*Policy, error) {
	p := &Policy{AllowRawQEMU: allowRaw}
	for _, e := range emulators {
		path := e
		if !strings.Contains(e, "/") {
			found, err := exec.LookPath(e)
			if err != nil {
				return nil, fmt.Errorf("emulator %q: %w", e, err)
			}
			path = found
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, fmt.Errorf("emulator %q: %w", e, err)
		}
		p.Emulators = append(p.Emulators, abs)
	}
	for _, r := range imageRoots {
		abs, err := filepath.Abs(r)
		if err != nil {
			return nil, fmt.Errorf("image root %q: %w", r, err)
		}
		p.ImageRoots = append(p.ImageRoots, abs)
	}
	return p, nil
}

// Error is a spec field or QMP command the policy refuses.
type Error struct {
	// Field is the spec field ("emulator", "disks[0].path") or
	// "qmp" for a raw QMP command.
	Field string
	// Value is what was refused.
	Value string
	// Reason says why, and what would allow it.
	Reason string
}

// Error reads: spec field "emulator": "/tmp/x" is not an allowed emulator (...).
func (e *Error) Error() string {
	if e.Field == "qmp" {
		return fmt.Sprintf("QMP command %q is refused: %s", e.Value, e.Reason)
	}
	return fmt.Sprintf("spec field %q: %q %s", e.Field, e.Value, e.Reason)
}

// ErrRefused is what every *Error matches with errors.Is.
var ErrRefused = errors.New("refused by the host's policy")

// Is makes errors.Is(err, ErrRefused) true.
func (e *Error) Is(target error) bool { return target == ErrRefused }

// Taint names a use of raw QEMU that the policy allowed.
type Taint struct {
	// What was used: "extra_args", or "qmp <command>".
	What string `json:"what"`
}

// CheckEmulator refuses an emulator (a spec's EmulatorPath: a bare name
// or an absolute path) that is not in the allowlist. A bare name is looked
// up in PATH.
func (p *Policy) CheckEmulator(emulator string) error {
	path := emulator
	if !strings.Contains(emulator, "/") {
		found, err := exec.LookPath(emulator)
		if err != nil {
			return &Error{Field: "emulator", Value: emulator, Reason: fmt.Sprintf("is not found in PATH (%v)", err)}
		}
		if path, err = filepath.Abs(found); err != nil {
			return &Error{Field: "emulator", Value: emulator, Reason: err.Error()}
		}
	}
	if filepath.IsAbs(path) && slices.Contains(p.Emulators, filepath.Clean(path)) {
		return nil
	}
	return &Error{Field: "emulator", Value: emulator,
		Reason: fmt.Sprintf("is not an emulator the daemon allows (allowed: %s; the daemon's --emulator adds one)", strings.Join(p.Emulators, ", "))}
}

// CheckPath reports whether path lies under one of roots, lexically: it
// must be absolute, clean (no "." or ".." segments, no doubled slashes)
// and strictly below a root. It touches no file.
func CheckPath(roots []string, path string) error {
	if !filepath.IsAbs(path) {
		return errors.New("is not an absolute path")
	}
	if filepath.Clean(path) != path {
		return errors.New(`is not a clean path ("." or ".." segments, doubled or trailing slashes)`)
	}
	for _, r := range roots {
		if rel, ok := below(r, path); ok && rel != "" {
			return nil
		}
	}
	if len(roots) == 0 {
		return errors.New("is outside the image roots: the daemon has none")
	}
	return fmt.Errorf("is outside the image roots (%s; the daemon's --image-root adds one)", strings.Join(roots, ", "))
}

// below returns path relative to root when path is root or under it.
func below(root, path string) (string, bool) {
	if path == root {
		return "", true
	}
	prefix := root
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	rel, ok := strings.CutPrefix(path, prefix)
	return rel, ok
}

// openBeneath opens path (under root) without letting any symlink or ".."
// lead out of root, and without following magic links (/proc/self/fd/N).
func openBeneath(root, rel string) (*os.File, error) {
	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open image root %s: %w", root, err)
	}
	defer unix.Close(dir)
	fd, err := unix.Openat2(dir, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), filepath.Join(root, rel)), nil
}

// checkFile checks a spec path lexically, then that it resolves under the
// same root. A missing file passes (the start reports it); a symlink that
// leads out of the root does not.
func (p *Policy) checkFile(field, path string) error {
	if err := CheckPath(p.ImageRoots, path); err != nil {
		return &Error{Field: field, Value: path, Reason: err.Error()}
	}
	for _, r := range p.ImageRoots {
		rel, ok := below(r, path)
		if !ok || rel == "" {
			continue
		}
		f, err := openBeneath(r, rel)
		switch {
		case err == nil:
			f.Close()
			return nil
		case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
			return &Error{Field: field, Value: path, Reason: fmt.Sprintf("leads out of image root %s through a symlink", r)}
		case errors.Is(err, unix.ENOENT):
			return nil
		case errors.Is(err, unix.ENOSYS):
			return &Error{Field: field, Value: path, Reason: "cannot be checked: the kernel lacks openat2 (Linux 5.6)"}
		default:
			return &Error{Field: field, Value: path, Reason: fmt.Sprintf("cannot be checked: %v", err)}
		}
	}
	return &Error{Field: field, Value: path, Reason: "is outside the image roots"}
}

// CheckSpec checks a valid spec against the policy, for a domain whose
// runtime files are rp: the emulator, extra_args, the kernel, initrd,
// disk paths and images, the cloud-init user data file, and the serial
// path. It returns the taints the spec brings
// when the policy allows raw QEMU.
func (p *Policy) CheckSpec(spec *domain.Spec, rp qemuargs.RunPaths) ([]Taint, error) {
	var taints []Taint
	var errs []error
	if err := p.CheckEmulator(spec.EmulatorPath()); err != nil {
		errs = append(errs, err)
	}
	if len(spec.ExtraArgs) > 0 {
		if p.AllowRawQEMU {
			taints = append(taints, Taint{What: "extra_args"})
		} else {
			errs = append(errs, &Error{Field: "extra_args", Value: strings.Join(spec.ExtraArgs, " "),
				Reason: "needs the daemon's --allow-raw-qemu (raw QEMU arguments can run commands and write files as QEMU's user)"})
		}
	}
	if spec.Kernel != "" {
		errs = append(errs, p.checkFile("kernel", spec.Kernel))
	}
	if spec.Initrd != "" {
		errs = append(errs, p.checkFile("initrd", spec.Initrd))
	}
	for i, d := range spec.Disks {
		if d.Image != "" {
			errs = append(errs, p.checkFile(fmt.Sprintf("disks[%d].image", i), d.Image))
		} else {
			errs = append(errs, p.checkFile(fmt.Sprintf("disks[%d].path", i), d.Path))
		}
	}
	if ci := spec.CloudInit; ci != nil && ci.UserDataFile != "" {
		errs = append(errs, p.checkFile("cloud_init.user_data_file", ci.UserDataFile))
	}
	if spec.Serial != nil && spec.Serial.Path != "" {
		if err := CheckSerialPath(rp, spec.Serial.Path); err != nil {
			errs = append(errs, &Error{Field: "serial.path", Value: spec.Serial.Path, Reason: err.Error()})
		}
	}
	return taints, errors.Join(errs...)
}

// CheckSerialPath accepts a serial file or socket only directly in the
// domain's run dir, and never on one of vmsup's own files there (the QMP and agent
// and agent sockets, the pidfile, QEMU's log). It touches no file.
func CheckSerialPath(rp qemuargs.RunPaths, path string) error {
	if err := CheckPath([]string{rp.Dir}, path); err != nil {
		return fmt.Errorf("must lie in the domain's run dir %s (leave it empty for the default): it %v", rp.Dir, err)
	}
	if filepath.Dir(path) != rp.Dir {
		return fmt.Errorf("must be a file directly in the domain's run dir %s", rp.Dir)
	}
	switch path {
	case rp.QMPSocket, rp.AgentSocket, rp.PIDFile, rp.QEMULog, rp.Identity:
		return fmt.Errorf("is one of vmsup's own files in %s", rp.Dir)
	}
	return nil
}

// SafeQMP are the raw QMP commands allowed without AllowRawQEMU, beside
// every query-*: they change the VM's run state or read it, and none
// opens a host file, runs a program or adds a backend.
var SafeQMP = []string{
	"cont", "stop", "system_reset", "system_powerdown", "system_wakeup",
	"inject-nmi", "set_link", "balloon", "qom-list", "qom-get",
	"trace-event-get-state",
}

// QMPAllowed reports whether a raw QMP command runs without
// AllowRawQEMU: a query-* or one of SafeQMP. It is pure.
func QMPAllowed(command string) bool {
	if strings.HasPrefix(command, "query-") && len(command) > len("query-") {
		return true
	}
	return slices.Contains(SafeQMP, command)
}

// CheckQMP decides a raw QMP command: nil with no taint when it is
// allowed, nil with a taint when only AllowRawQEMU allows it, else an
// *Error.
func (p *Policy) CheckQMP(command string) (*Taint, error) {
	if QMPAllowed(command) {
		return nil, nil
	}
	if p.AllowRawQEMU {
		return &Taint{What: "qmp " + command}, nil
	}
	return nil, &Error{Field: "qmp", Value: command,
		Reason: "only query-* and " + strings.Join(SafeQMP, ", ") + " run without the daemon's --allow-raw-qemu (other commands can run programs, open host files or add backends)"}
}

// OpenFile opens the file a spec field names, for QEMU to be given as a
// file descriptor: lexically under one of p's image roots (CheckPath),
// then with openat2 from that root's directory, RESOLVE_BENEATH and
// RESOLVE_NO_MAGICLINKS, so that no symlink or ".." swapped in after
// define leads out of the root. It opens read-write when write is set,
// else read-only, always O_CLOEXEC and O_NOCTTY. A refusal is an *Error
// naming field.
func (p *Policy) OpenFile(field, path string, write bool) (*os.File, error) {
	if err := CheckPath(p.ImageRoots, path); err != nil {
		return nil, &Error{Field: field, Value: path, Reason: err.Error()}
	}
	flags := unix.O_RDONLY
	if write {
		flags = unix.O_RDWR
	}
	for _, r := range p.ImageRoots {
		rel, ok := below(r, path)
		if !ok || rel == "" {
			continue
		}
		f, err := openat2Beneath(r, rel, flags)
		switch {
		case err == nil:
			return f, nil
		case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
			return nil, &Error{Field: field, Value: path, Reason: fmt.Sprintf("leads out of image root %s through a symlink; it is not opened", r)}
		case errors.Is(err, unix.ENOSYS):
			return nil, &Error{Field: field, Value: path, Reason: "cannot be opened safely: the kernel lacks openat2 (Linux 5.6)"}
		default:
			return nil, fmt.Errorf("spec field %q: open %s: %w", field, path, err)
		}
	}
	return nil, &Error{Field: field, Value: path, Reason: "is outside the image roots"}
}

// openat2Beneath opens rel under root with flags, as openBeneath resolves.
func openat2Beneath(root, rel string, flags int) (*os.File, error) {
	dir, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open image root %s: %w", root, err)
	}
	defer unix.Close(dir)
	fd, err := unix.Openat2(dir, rel, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NOCTTY),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), filepath.Join(root, rel)), nil
}
