// Package qemuargs builds the QEMU command line of a domain: the runtime
// paths under the run directory, the accelerator, and the argv. It is pure:
// it reads a Spec and starts nothing.
package qemuargs

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vmsup/vmsup/domain"
)

// RunPaths are the per-domain runtime files under <run>/<name>/.
type RunPaths struct {
	// Dir is <run>/<name>, the directory that holds the files below.
	Dir string
	// QMPSocket is the QMP unix socket QEMU listens on (qmp.sock).
	QMPSocket string
	// PIDFile is the file QEMU writes its pid to (qemu.pid).
	PIDFile string
	// SerialLog receives the serial output when the spec has no serial
	// section, or a file serial without a path (serial.log).
	SerialLog string
	// ConsoleSocket is the serial console socket for a socket serial
	// without a path (console.sock).
	ConsoleSocket string
	// QEMULog receives QEMU's own stdout and stderr (qemu.log).
	QEMULog string
	// Identity records who the running QEMU is (qemu.identity): its start
	// time, the boot id, its executable and uid, checked before adoption.
	Identity string
}

// NewRunPaths returns the runtime paths of domain name under runDir, which
// must be absolute. It fails when the name is invalid (see ValidateName)
// or when a unix socket path would be longer than MaxSocketPath bytes, the
// kernel's sun_path limit. It creates nothing.
func NewRunPaths(runDir, name string) (RunPaths, error) {
	if err := domain.ValidateName(name); err != nil {
		return RunPaths{}, err
	}
	if p := domain.PathProblem(filepath.Clean(runDir)); p != "" {
		return RunPaths{}, fmt.Errorf("run directory %q: %s", runDir, p)
	}
	dir := filepath.Join(runDir, name)
	rp := RunPaths{
		Dir:           dir,
		QMPSocket:     filepath.Join(dir, "qmp.sock"),
		PIDFile:       filepath.Join(dir, "qemu.pid"),
		SerialLog:     filepath.Join(dir, "serial.log"),
		ConsoleSocket: filepath.Join(dir, "console.sock"),
		QEMULog:       filepath.Join(dir, "qemu.log"),
		Identity:      filepath.Join(dir, "qemu.identity"),
	}
	for _, sock := range []string{rp.QMPSocket, rp.ConsoleSocket} {
		if len(sock) > domain.MaxSocketPath {
			return RunPaths{}, fmt.Errorf("domain %q: unix socket path %q is %d bytes, longer than the %d-byte limit of a unix socket address (sun_path); use a shorter run directory or domain name",
				name, sock, len(sock), domain.MaxSocketPath)
		}
	}
	return rp, nil
}

// QMPListenFD is the file descriptor on which QEMU finds its listening QMP
// socket: the first of exec.Cmd.ExtraFiles.
const QMPListenFD = 3

// qemuOptValue escapes a value for QEMU's "key=value,..." option syntax,
// where a literal comma is written as two.
func qemuOptValue(v string) string {
	return strings.ReplaceAll(v, ",", ",,")
}

// Sandbox is QEMU's seccomp filter as vmsup always sets it, as libvirt
// does: no obsolete system calls, no set*uid, no fork or exec (so no
// "exec:" migration or helper program), no changes to scheduling or
// affinity. A QEMU built without seccomp refuses to start with it.
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// BuildArgs returns the QEMU argv for spec, WITHOUT the emulator binary
// (see EmulatorPath). spec must be valid (ApplyDefaults, then Validate);
// accel is the resolved accelerator ("kvm" or "tcg"), and an empty or
// "auto" accel is resolved with ResolveAccel(spec.Accel).
//
// The order is stable: -name, -uuid, -machine, -accel, -m (MiB, rounded
// up), -smp, -nodefaults, -no-user-config, -display none, -sandbox
// (Sandbox), -S, -qmp, -pidfile, then -kernel/-initrd/-append, one -drive per disk (virtio),
// the serial port, and finally spec.ExtraArgs. QEMU starts paused (-S);
// the domain continues it over QMP. Commas in paths are doubled where QEMU
// parses the value as an option list.
func BuildArgs(spec *domain.Spec, paths RunPaths, accel string) []string {
	if accel == "" || accel == domain.AccelAuto {
		accel = ResolveAccel(spec.Accel)
	}
	args := []string{
		"-name", "guest=" + qemuOptValue(spec.Name) + ",debug-threads=on",
		"-uuid", spec.UUID,
		"-machine", spec.Machine,
		"-accel", accel,
		"-m", strconv.FormatUint(spec.Memory.MiBCeil(), 10) + "M",
		"-smp", strconv.Itoa(spec.CPUs),
		"-nodefaults",
		"-no-user-config",
		"-display", "none",
		"-sandbox", Sandbox,
		"-S",
		// The QMP socket is bound and listening before QEMU runs (fd
		// QMPListenFD, see ListenQMP), as libvirt does: the monitor
		// connects at once and QEMU greets it when ready, with no polling
		// for the socket to appear.
		"-chardev", "socket,id=qmp,fd=" + strconv.Itoa(QMPListenFD) + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-pidfile", paths.PIDFile,
	}
	if spec.Machine == "q35" || strings.HasPrefix(spec.Machine, "pc") {
		// A guest kernel panic becomes a GUEST_PANICKED event (ISA
		// pvpanic exists on the PC machines).
		args = append(args, "-device", "pvpanic")
	}
	if spec.OnCrash == domain.OnCrashPreserve {
		// Keep a panicked guest paused for inspection instead of exiting.
		args = append(args, "-action", "panic=pause")
	}
	if spec.Kernel != "" {
		args = append(args, "-kernel", spec.Kernel)
		if spec.Initrd != "" {
			args = append(args, "-initrd", spec.Initrd)
		}
		if spec.Append != "" {
			args = append(args, "-append", spec.Append)
		}
	}
	for _, d := range spec.Disks {
		format := d.Format
		if format == "" {
			format = domain.DiskFormatRaw
		}
		ro := "off"
		if d.ReadOnly {
			ro = "on"
		}
		args = append(args, "-drive",
			"file="+qemuOptValue(d.Path)+",format="+format+",if=virtio,readonly="+ro)
	}
	serial := spec.Serial
	if serial == nil {
		// The default serves both users: a console socket to attach to,
		// and a log of everything the guest printed.
		serial = &domain.Serial{Type: domain.SerialSocket}
	}
	switch serial.Type {
	case domain.SerialFile:
		p := serial.Path
		if p == "" {
			p = paths.SerialLog
		}
		args = append(args, "-chardev", "file,id=serial0,path="+qemuOptValue(p), "-serial", "chardev:serial0")
	case domain.SerialSocket:
		p := serial.Path
		if p == "" {
			p = paths.ConsoleSocket
		}
		args = append(args, "-chardev", "socket,id=serial0,path="+qemuOptValue(p)+",server=on,wait=off,logfile="+qemuOptValue(paths.SerialLog)+",logappend=on", "-serial", "chardev:serial0")
	}
	return append(args, spec.ExtraArgs...)
}
