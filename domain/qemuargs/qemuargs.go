// Package qemuargs builds the QEMU command line of a domain: the runtime
// paths under the run directory, the accelerator, and the argv. It is pure:
// it reads a Spec and starts nothing.
package qemuargs

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/netcfg"
)

// RunPaths are the per-domain runtime files under <run>/<name>/.
type RunPaths struct {
	// Dir is <run>/<name>, the directory that holds the files below.
	Dir string
	// QMPSocket is the QMP unix socket QEMU listens on (qmp.sock).
	QMPSocket string
	// AgentSocket is the unix socket on which QEMU relays the guest
	// agent's virtio-serial port (agent.sock).
	AgentSocket string
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
		AgentSocket:   filepath.Join(dir, "agent.sock"),
		PIDFile:       filepath.Join(dir, "qemu.pid"),
		SerialLog:     filepath.Join(dir, "serial.log"),
		ConsoleSocket: filepath.Join(dir, "console.sock"),
		QEMULog:       filepath.Join(dir, "qemu.log"),
		Identity:      filepath.Join(dir, "qemu.identity"),
	}
	for _, sock := range []string{rp.QMPSocket, rp.AgentSocket, rp.ConsoleSocket} {
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

// AgentListenFD is the file descriptor on which QEMU finds the listening
// socket of the guest agent's channel: the second of exec.Cmd.ExtraFiles,
// passed only when the argv has the channel (HasAgentChannel).
const AgentListenFD = 4

// AgentPort is the name of the guest agent's virtio-serial port, which
// qemu-ga opens in the guest.
const AgentPort = "org.qemu.guest_agent.0"

// agentChardev is the chardev of the guest agent's channel.
const agentChardev = "socket,id=qga0,fd=4,server=on,wait=off" // fd AgentListenFD

// AgentChannel reports whether a domain built from spec has a guest agent
// channel: every machine with a PCI bus does (not machine "none").
func AgentChannel(spec *domain.Spec) bool { return spec.Machine != "none" }

// HasAgentChannel reports whether argv (from BuildArgs) expects the
// agent channel's listening socket on fd AgentListenFD.
func HasAgentChannel(argv []string) bool {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == "-chardev" && argv[i+1] == agentChardev {
			return true
		}
	}
	return false
}

// qemuOptValue escapes a value for QEMU's "key=value,..." option syntax,
// where a literal comma is written as two.
func qemuOptValue(v string) string {
	return strings.ReplaceAll(v, ",", ",,")
}

// Host is what the host resources of one start resolved for the command
// line: the files behind the disks, the NICs' addresses, forwards and taps,
// and the cloud-init seed.
type Host struct {
	// Disks[i] is the file QEMU opens for spec.Disks[i]: its path, or the
	// qcow2 overlay vmsup made for an image disk.
	Disks []string
	// NICs[i] is the NIC of spec.Networks[i].
	NICs []NIC
	// Seed is the cloud-init seed image, attached read-only after the
	// disks; empty when the spec has no cloud_init.
	Seed string
	// Under, when set, are the images under each disk's file (Disks[i])
	// that vmsup stacked overlays on, for disk-only snapshots: nearest
	// first, the last being the disk's own file (its path, or an image
	// disk's overlay). Under[i] is empty for a disk without snapshots;
	// Disks[i] is then the disk's own file, else the newest overlay
	// (qcow2).
	Under [][]string
	// Passed, when set, says that vmsup opened every file QEMU needs and
	// passes them as file descriptors: QEMU then opens no image, kernel
	// or initrd by name. Nil: QEMU opens them by name.
	Passed *Passed
}

// Passed are the file descriptors, as numbered in QEMU's process, of the
// files vmsup opened for one start (see PassedFD), and the run-dir copies
// of the kernel and initrd. An fd of 0 means none.
type Passed struct {
	// Disks[i] is the fd of Host.Disks[i] (the path disk, or the
	// overlay of an image disk), opened read-write unless the disk is
	// read-only.
	Disks []int
	// Backing[i] are the images under Disks[i], nearest first, each the
	// backing of the one before it: an image disk's base, and the images
	// under a disk-only snapshot's overlay (Host.Under). Empty for a
	// path disk without snapshots.
	Backing [][]Layer
	// Seed is the fd of Host.Seed (read-only).
	Seed int
	// Kernel and Initrd are the copies in the run dir that vmsup wrote
	// from the files it opened: QEMU 7.2 opens -kernel and -initrd with
	// a plain open(2), which knows neither /dev/fdset nor (for a file
	// the QEMU user may not read) /proc/self/fd.
	Kernel, Initrd string
}

// Layer is one passed backing image of a disk.
type Layer struct {
	// FD is its file descriptor in QEMU's process.
	FD int
	// Format is "raw" or "qcow2".
	Format string
	// Field says what it is, such as "disks[0].image", and Path which
	// file (both in -add-fd's opaque label).
	Field, Path string
	// Writable says that a block-commit may write into it (an older
	// snapshot overlay, or the disk's own file under its snapshots): its
	// fd is read-write and its nodes are opened read-write, since a
	// -blockdev node opened read-only cannot become the base of a commit.
	// Nothing writes to it but a commit: the guest's device is above.
	Writable bool
}

// FirstPassedFD is the first file descriptor of the files vmsup passes
// to QEMU (exec.Cmd.ExtraFiles[FirstPassedFD-3] onwards), after the QMP
// and guest agent sockets.
const FirstPassedFD = AgentListenFD + 1

// FDSetPath is the name under which QEMU finds the fd set that holds fd
// (BuildArgs puts each passed fd in a set of its own number).
func FDSetPath(fd int) string { return "/dev/fdset/" + strconv.Itoa(fd) }

// addFD returns the -add-fd argument of a passed fd, labelled with the
// spec field it stands for and the file's path (FDLabel), so that
// query-fdsets can say which file an fd set holds.
func addFD(fd int, field, path string) []string {
	return []string{"-add-fd", "fd=" + strconv.Itoa(fd) + ",set=" + strconv.Itoa(fd) + ",opaque=" + qemuOptValue(FDLabel(field, path))}
}

// FDLabel is the opaque label of a passed fd: what it stands for, a
// colon, and the file's path (fields have no colon).
func FDLabel(what, path string) string { return what + ":" + path }

// FDLabelPath is the path in an fd's opaque label, and whether it had one.
func FDLabelPath(label string) (string, bool) {
	_, path, ok := strings.Cut(label, ":")
	return path, ok && path != ""
}

// NIC is one resolved NIC.
type NIC struct {
	// MAC is the guest's address, given or derived.
	MAC netcfg.MAC
	// Forwards are the user network's forwards, each with its real host
	// port (never 0).
	Forwards []netcfg.Forward
	// Tap is the host tap device of a tap NIC.
	Tap string
}

// PlainHost returns the Host of a spec that needs no host resources: path
// disks, NICs with their given or derived MACs and forwards as written,
// no seed. It fails for an image disk or a tap NIC (their files and
// devices are made by the host resources), and BuildArgs fails on a
// forward whose host port is 0.
func PlainHost(spec *domain.Spec) (*Host, error) {
	h := &Host{}
	for i, d := range spec.Disks {
		if d.Image != "" {
			return nil, &domain.FieldError{Field: fmt.Sprintf("disks[%d].image", i), Problem: "needs the overlay that the driver makes at define"}
		}
		h.Disks = append(h.Disks, d.Path)
	}
	for i, n := range spec.Networks {
		if n.Type == netcfg.TypeTap {
			return nil, &domain.FieldError{Field: domain.NetworkField(i), Problem: "a tap NIC needs the tap that the driver creates at start"}
		}
		mac, err := spec.MAC(i)
		if err != nil {
			return nil, err
		}
		fw, err := spec.Forwards(i)
		if err != nil {
			return nil, err
		}
		h.NICs = append(h.NICs, NIC{MAC: mac, Forwards: fw})
	}
	if spec.CloudInit != nil {
		return nil, &domain.FieldError{Field: "cloud_init", Problem: "needs the seed that the driver writes at define"}
	}
	return h, nil
}

// blockdev returns a -blockdev argument in QEMU's JSON syntax, which needs
// no escaping of the file name.
func blockdev(opts map[string]any) string {
	b, err := json.Marshal(opts)
	if err != nil {
		panic(err) // only strings and booleans
	}
	return string(b)
}

// appendDisk adds the protocol and format nodes of one image and its
// virtio-blk-pci device: node "<node>-file" (driver file) under node
// "<node>" (the format driver).
func appendDisk(args []string, node, file, format string, readOnly bool) []string {
	return appendDiskNodes(args, node, file, format, readOnly, nil)
}

// appendDiskNodes is appendDisk with extra options on the format node
// (its "backing").
func appendDiskNodes(args []string, node, file, format string, readOnly bool, extra map[string]any) []string {
	fmtNode := map[string]any{"driver": format, "node-name": node, "file": node + "-file", "read-only": readOnly, "discard": "unmap"}
	for k, v := range extra {
		fmtNode[k] = v
	}
	return append(args,
		"-blockdev", blockdev(map[string]any{"driver": "file", "node-name": node + "-file", "filename": file, "read-only": readOnly, "discard": "unmap"}),
		"-blockdev", blockdev(fmtNode),
		"-device", "virtio-blk-pci,drive="+node+",id=virtio-"+node)
}

// BackingNode returns the block node name of the k-th passed image under
// the disk node (nearest first), which BuildArgs gives the node above it
// as its backing.
func BackingNode(node string, k int) string { return node + "-b" + strconv.Itoa(k) }

// DiskNode returns the block node name of disk i ("disk0", ...); the
// seed's node is SeedNode.
func DiskNode(i int) string { return "disk" + strconv.Itoa(i) }

// SeedNode is the block node name of the cloud-init seed.
const SeedNode = "seed"

// Sandbox is QEMU's seccomp filter as vmsup always sets it, as libvirt
// does: no obsolete system calls, no set*uid, no fork or exec (so no
// "exec:" migration or helper program), no changes to scheduling or
// affinity. A QEMU built without seccomp refuses to start with it.
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// BuildArgs returns the QEMU argv for spec, WITHOUT the emulator binary
// (see EmulatorPath). spec must be valid (ApplyDefaults, then Validate);
// accel is the resolved accelerator ("kvm" or "tcg"), and an empty or
// "auto" accel is resolved with ResolveAccel(spec.Accel). host is what the
// host resources resolved; nil means PlainHost(spec).
//
// The order is stable: -name, -uuid, -machine, -accel, -m (MiB, rounded
// up), -smp, -nodefaults, -no-user-config, -display none, -sandbox
// (Sandbox), -S, -qmp,
// -pidfile, the guest agent's channel (AgentChannel: a chardev on fd
// AgentListenFD, virtio-serial-pci and a virtserialport named AgentPort), then -kernel/-initrd/-append, each disk as two -blockdev nodes
// (file, then format; node names from DiskNode) and a virtio-blk-pci
// device, the seed the same way (read-only), each NIC as a -netdev (user
// with hostfwd, or tap) and a virtio-net-pci device, on q35 the
// HotplugPorts root ports for hot-plug, the serial port, and
// finally spec.ExtraArgs. QEMU starts paused (-S); the domain continues it
// over QMP. Commas in paths are doubled where QEMU parses the value as an
// option list.
func BuildArgs(spec *domain.Spec, paths RunPaths, accel string, host *Host) ([]string, error) {
	if host == nil {
		var err error
		if host, err = PlainHost(spec); err != nil {
			return nil, err
		}
	}
	if len(host.Disks) != len(spec.Disks) || len(host.NICs) != len(spec.Networks) || (spec.CloudInit != nil) != (host.Seed != "") {
		return nil, fmt.Errorf("domain %q: host resources for %d disks, %d NICs and seed %q do not match the spec's %d disks, %d networks and cloud_init",
			spec.Name, len(host.Disks), len(host.NICs), host.Seed, len(spec.Disks), len(spec.Networks))
	}
	pass := host.Passed
	if pass != nil {
		if err := pass.check(spec, host); err != nil {
			return nil, fmt.Errorf("domain %q: passed files: %w", spec.Name, err)
		}
	}
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
	if AgentChannel(spec) {
		// The guest agent's channel, bound by vmsup like QMP's (fd
		// AgentListenFD), so that its owner and mode are vmsup's whoever
		// QEMU runs as.
		args = append(args, "-chardev", agentChardev,
			"-device", "virtio-serial-pci,id=vserial0",
			"-device", "virtserialport,bus=vserial0.0,chardev=qga0,name="+AgentPort)
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
		kernel, initrd := spec.Kernel, spec.Initrd
		if pass != nil {
			kernel, initrd = pass.Kernel, pass.Initrd
		}
		args = append(args, "-kernel", kernel)
		if spec.Initrd != "" {
			args = append(args, "-initrd", initrd)
		}
		if spec.Append != "" {
			args = append(args, "-append", spec.Append)
		}
	}
	for i, d := range spec.Disks {
		format := d.Format
		if format == "" {
			format = domain.DiskFormatRaw
		}
		chained := i < len(host.Under) && len(host.Under[i]) > 0
		if pass == nil {
			if d.Image != "" || chained {
				format = domain.DiskFormatQCOW2 // the overlay
			}
			args = appendDisk(args, DiskNode(i), host.Disks[i], format, d.ReadOnly)
			continue
		}
		// The images under the disk's file, each from its own fd and
		// given to the node above as its backing, so that QEMU never
		// opens a name recorded in an overlay's header; the lowest qcow2
		// gets no backing of its own (a base is standalone, checked at
		// define).
		layers := pass.Backing[i]
		for k := len(layers) - 1; k >= 0; k-- {
			l, node := layers[k], BackingNode(DiskNode(i), k)
			args = append(args, addFD(l.FD, l.Field, l.Path)...)
			fileNode := map[string]any{"driver": "file", "node-name": node + "-file", "filename": FDSetPath(l.FD), "read-only": !l.Writable}
			fmtNode := map[string]any{"driver": l.Format, "node-name": node, "file": node + "-file", "read-only": !l.Writable}
			switch {
			case k < len(layers)-1:
				fmtNode["backing"] = BackingNode(DiskNode(i), k+1)
			case l.Format == domain.DiskFormatQCOW2:
				fmtNode["backing"] = nil
			}
			args = append(args, "-blockdev", blockdev(fileNode), "-blockdev", blockdev(fmtNode))
		}
		var extra map[string]any
		field := fmt.Sprintf("disks[%d].path", i)
		switch {
		case chained:
			field = fmt.Sprintf("disks[%d] snapshot overlay", i)
		case d.Image != "":
			field = fmt.Sprintf("disks[%d] overlay", i)
		}
		if len(layers) > 0 {
			format, extra = domain.DiskFormatQCOW2, map[string]any{"backing": BackingNode(DiskNode(i), 0)}
		}
		args = append(args, addFD(pass.Disks[i], field, host.Disks[i])...)
		args = appendDiskNodes(args, DiskNode(i), FDSetPath(pass.Disks[i]), format, d.ReadOnly, extra)
	}
	if host.Seed != "" {
		seed := host.Seed
		if pass != nil {
			args = append(args, addFD(pass.Seed, "cloud_init seed", host.Seed)...)
			seed = FDSetPath(pass.Seed)
		}
		args = appendDisk(args, SeedNode, seed, domain.DiskFormatRaw, true)
	}
	for i, n := range spec.Networks {
		nic := host.NICs[i]
		id := "net" + strconv.Itoa(i)
		switch n.Type {
		case netcfg.TypeTap:
			if nic.Tap == "" {
				return nil, &domain.FieldError{Field: domain.NetworkField(i), Problem: "no tap device was created for it"}
			}
			args = append(args, "-netdev", "tap,id="+id+",ifname="+qemuOptValue(nic.Tap)+",script=no,downscript=no")
		default:
			nd := "user,id=" + id
			for _, f := range nic.Forwards {
				hf, err := f.HostFwd()
				if err != nil {
					return nil, err
				}
				nd += "," + hf
			}
			args = append(args, "-netdev", nd)
		}
		args = append(args, "-device", "virtio-net-pci,netdev="+id+",mac="+nic.MAC.String()+",id=nic"+strconv.Itoa(i))
	}
	args = appendHotplugPorts(args, spec.Machine)
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
	return append(args, spec.ExtraArgs...), nil
}

// check reports a Passed that does not fit spec and host.
func (p *Passed) check(spec *domain.Spec, host *Host) error {
	if len(p.Disks) != len(spec.Disks) || len(p.Backing) != len(spec.Disks) {
		return fmt.Errorf("%d disk fds and %d backing lists for %d disks", len(p.Disks), len(p.Backing), len(spec.Disks))
	}
	for i, d := range spec.Disks {
		if p.Disks[i] < FirstPassedFD {
			return fmt.Errorf("disks[%d]: fd %d is not a passed fd", i, p.Disks[i])
		}
		want := 0
		if i < len(host.Under) {
			want = len(host.Under[i])
		}
		if d.Image != "" {
			want++
		}
		if len(p.Backing[i]) != want {
			return fmt.Errorf("disks[%d]: %d backing fds, want %d", i, len(p.Backing[i]), want)
		}
		for _, l := range p.Backing[i] {
			if l.FD < FirstPassedFD || (l.Format != domain.DiskFormatRaw && l.Format != domain.DiskFormatQCOW2) {
				return fmt.Errorf("disks[%d]: backing fd %d (%s, %q) does not fit the disk", i, l.FD, l.Field, l.Format)
			}
		}
	}
	if (host.Seed != "") != (p.Seed != 0) || (p.Seed != 0 && p.Seed < FirstPassedFD) {
		return fmt.Errorf("seed fd %d does not fit seed %q", p.Seed, host.Seed)
	}
	if (spec.Kernel != "") != (p.Kernel != "") || (spec.Initrd != "") != (p.Initrd != "") {
		return fmt.Errorf("kernel copy %q and initrd copy %q do not fit the spec's kernel and initrd", p.Kernel, p.Initrd)
	}
	return nil
}
