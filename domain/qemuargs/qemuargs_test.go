package qemuargs_test

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/cloudinit"
	"github.com/vmsup/vmsup/domain/netcfg"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

var updateArgsGolden = flag.Bool("update-args-golden", false, "rewrite domain/qemuargs/testdata/*.args.golden from BuildArgs")

func TestNewRunPaths(t *testing.T) {
	rp, err := qemuargs.NewRunPaths("/run/vmsup", "web1")
	if err != nil {
		t.Fatal(err)
	}
	want := qemuargs.RunPaths{
		Dir:           "/run/vmsup/web1",
		QMPSocket:     "/run/vmsup/web1/qmp.sock",
		AgentSocket:   "/run/vmsup/web1/agent.sock",
		PIDFile:       "/run/vmsup/web1/qemu.pid",
		SerialLog:     "/run/vmsup/web1/serial.log",
		ConsoleSocket: "/run/vmsup/web1/console.sock",
		QEMULog:       "/run/vmsup/web1/qemu.log",
		Identity:      "/run/vmsup/web1/qemu.identity",
	}
	if rp != want {
		t.Fatalf("NewRunPaths = %+v\nwant %+v", rp, want)
	}
	if rp2, err := qemuargs.NewRunPaths("/run/vmsup/", "web1"); err != nil || rp2 != want {
		t.Fatalf("trailing slash: %+v, %v", rp2, err)
	}

	for _, name := range []string{"", "..", "a/b", "-x", strings.Repeat("n", 64)} {
		if _, err := qemuargs.NewRunPaths("/run/vmsup", name); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	for _, dir := range []string{"", "run/vmsup", "/run/vm\x00sup"} {
		if _, err := qemuargs.NewRunPaths(dir, "web1"); err == nil {
			t.Errorf("run dir %q accepted", dir)
		}
	}

	// "/<dir>/<name>/console.sock" is the longest socket path:
	// 1 + len(dir) + 1 + len(name) + 13 bytes.
	name := "n"
	fits := "/" + strings.Repeat("d", domain.MaxSocketPath-1-1-len(name)-len("/console.sock"))
	if rp, err := qemuargs.NewRunPaths(fits, name); err != nil || len(rp.ConsoleSocket) != domain.MaxSocketPath {
		t.Fatalf("a %d-byte socket path must fit: %v", domain.MaxSocketPath, err)
	}
	_, err = qemuargs.NewRunPaths(fits+"d", name)
	if err == nil || !strings.Contains(err.Error(), "sun_path") || !strings.Contains(err.Error(), "108 bytes") {
		t.Fatalf("a 108-byte socket path: err = %v", err)
	}
}

func TestEmulatorPath(t *testing.T) {
	if got := (&domain.Spec{}).EmulatorPath(); got != "qemu-system-x86_64" {
		t.Fatalf("default EmulatorPath = %q", got)
	}
	if got := (&domain.Spec{Emulator: "/opt/qemu/bin/qemu-system-x86_64"}).EmulatorPath(); got != "/opt/qemu/bin/qemu-system-x86_64" {
		t.Fatalf("EmulatorPath = %q", got)
	}
}

// buildArgs is BuildArgs with the plain host of the spec; it fails the
// test on an error.
func buildArgs(t testing.TB, spec *domain.Spec, paths qemuargs.RunPaths, accel string) []string {
	t.Helper()
	args, err := qemuargs.BuildArgs(spec, paths, accel, nil)
	if err != nil {
		t.Fatal(err)
	}
	return args
}

// argsTestGolden compares args, one per line, with testdata/<name>.
func argsTestGolden(t *testing.T, name string, args []string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	got := strings.Join(args, "\n") + "\n"
	if *updateArgsGolden {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update-args-golden to create it)", err)
	}
	if got != string(want) {
		t.Fatalf("BuildArgs differs from %s:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestBuildArgsGoldenFull(t *testing.T) {
	spec, err := domain.ParseSpec(specTestRead(t, "full.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	paths, err := qemuargs.NewRunPaths("/run/vmsup", spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	argsTestGolden(t, "full.args.golden", buildArgs(t, spec, paths, domain.AccelTCG))
}

func TestBuildArgsMinimal(t *testing.T) {
	spec, err := domain.ParseSpec([]byte("name: tiny\nuuid: 0f8fad5b-d9cb-469f-a165-70867728950e\n"))
	if err != nil {
		t.Fatal(err)
	}
	paths, err := qemuargs.NewRunPaths("/run/vmsup", "tiny")
	if err != nil {
		t.Fatal(err)
	}
	got := buildArgs(t, spec, paths, domain.AccelKVM)
	want := []string{
		"-name", "guest=tiny,debug-threads=on",
		"-uuid", "0f8fad5b-d9cb-469f-a165-70867728950e",
		"-machine", "q35",
		"-accel", "kvm",
		"-m", "128M",
		"-smp", "1",
		"-nodefaults",
		"-no-user-config",
		"-display", "none",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		"-S",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-pidfile", "/run/vmsup/tiny/qemu.pid",
		"-chardev", "socket,id=qga0,fd=4,server=on,wait=off",
		"-device", "virtio-serial-pci,id=vserial0",
		"-device", "virtserialport,bus=vserial0.0,chardev=qga0,name=org.qemu.guest_agent.0",
		"-device", "pvpanic",
		"-device", "pcie-root-port,id=hp0,bus=pcie.0,chassis=1", "-device", "pcie-root-port,id=hp1,bus=pcie.0,chassis=2",
		"-device", "pcie-root-port,id=hp2,bus=pcie.0,chassis=3", "-device", "pcie-root-port,id=hp3,bus=pcie.0,chassis=4",
		"-chardev", "socket,id=serial0,path=/run/vmsup/tiny/console.sock,server=on,wait=off,logfile=/run/vmsup/tiny/serial.log,logappend=on", "-serial", "chardev:serial0",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("BuildArgs =\n%q\nwant\n%q", got, want)
	}
}

func TestBuildArgsSerialMemoryEscaping(t *testing.T) {
	paths, err := qemuargs.NewRunPaths("/run/vm,sup", "a")
	if err != nil {
		t.Fatal(err)
	}
	base := func() *domain.Spec {
		s := &domain.Spec{Name: "a", UUID: "0f8fad5b-d9cb-469f-a165-70867728950e"}
		s.ApplyDefaults()
		return s
	}
	tail := func(s *domain.Spec) []string {
		args := buildArgs(t, s, paths, domain.AccelTCG)
		i := slices.Index(args, paths.PIDFile)
		rest := args[i+1:]
		if len(rest) >= 6 && rest[0] == "-chardev" && strings.HasPrefix(rest[1], "socket,id=qga0,") {
			rest = rest[6:] // checked by TestBuildArgsMinimal
		}
		if len(rest) >= 2 && rest[0] == "-device" && rest[1] == "pvpanic" {
			rest = rest[2:] // checked by TestBuildArgsPanicDevice
		}
		var out []string // without the root ports (TestBuildArgsHotplugPorts)
		for i := 0; i < len(rest); i++ {
			if rest[i] == "-device" && i+1 < len(rest) && strings.HasPrefix(rest[i+1], "pcie-root-port,") {
				i++
				continue
			}
			out = append(out, rest[i])
		}
		return out
	}
	cases := []struct {
		name   string
		mutate func(*domain.Spec)
		want   []string
	}{
		{"nil serial is a console socket that also logs", func(*domain.Spec) {},
			[]string{"-chardev", "socket,id=serial0,path=/run/vm,,sup/a/console.sock,server=on,wait=off,logfile=/run/vm,,sup/a/serial.log,logappend=on", "-serial", "chardev:serial0"}},
		{"file serial without path", func(s *domain.Spec) { s.Serial = &domain.Serial{Type: domain.SerialFile} },
			[]string{"-chardev", "file,id=serial0,path=/run/vm,,sup/a/serial.log", "-serial", "chardev:serial0"}},
		{"file serial with path", func(s *domain.Spec) { s.Serial = &domain.Serial{Type: domain.SerialFile, Path: "/var/log/a,b.log"} },
			[]string{"-chardev", "file,id=serial0,path=/var/log/a,,b.log", "-serial", "chardev:serial0"}},
		{"socket serial without path", func(s *domain.Spec) { s.Serial = &domain.Serial{Type: domain.SerialSocket} },
			[]string{"-chardev", "socket,id=serial0,path=/run/vm,,sup/a/console.sock,server=on,wait=off,logfile=/run/vm,,sup/a/serial.log,logappend=on", "-serial", "chardev:serial0"}},
		{"no serial", func(s *domain.Spec) {
			s.Serial = &domain.Serial{Type: domain.SerialNone}
			s.ExtraArgs = []string{"-serial", "pty"}
		},
			[]string{"-serial", "pty"}},
		{"disks", func(s *domain.Spec) {
			s.Serial = &domain.Serial{Type: domain.SerialNone}
			s.Disks = []domain.Disk{{Path: "/img/a,,b.img", Format: domain.DiskFormatQCOW2}, {Path: "/img/c.iso", Format: domain.DiskFormatRaw, ReadOnly: true}}
		}, []string{
			"-blockdev", `{"discard":"unmap","driver":"file","filename":"/img/a,,b.img","node-name":"disk0-file","read-only":false}`,
			"-blockdev", `{"discard":"unmap","driver":"qcow2","file":"disk0-file","node-name":"disk0","read-only":false}`,
			"-device", "virtio-blk-pci,drive=disk0,id=virtio-disk0",
			"-blockdev", `{"discard":"unmap","driver":"file","filename":"/img/c.iso","node-name":"disk1-file","read-only":true}`,
			"-blockdev", `{"discard":"unmap","driver":"raw","file":"disk1-file","node-name":"disk1","read-only":true}`,
			"-device", "virtio-blk-pci,drive=disk1,id=virtio-disk1",
		}},
		{"kernel only", func(s *domain.Spec) { s.Serial = &domain.Serial{Type: domain.SerialNone}; s.Kernel = "/boot/k,1" },
			[]string{"-kernel", "/boot/k,1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := base()
			c.mutate(s)
			if err := s.Validate(); err != nil {
				t.Fatal(err)
			}
			if got := tail(s); !slices.Equal(got, c.want) {
				t.Fatalf("args after -pidfile:\n got %q\nwant %q", got, c.want)
			}
		})
	}

	s := base()
	if got := buildArgs(t, s, paths, domain.AccelTCG); !slices.Contains(got, "/run/vm,sup/a/qemu.pid") {
		t.Fatalf("pidfile: %q", got)
	}
	for mem, want := range map[domain.Size]string{domain.MiB: "1M", domain.MiB + 1: "2M", 1536 * domain.MiB: "1536M", domain.TiB: "1048576M", 2*domain.MiB - 1: "2M"} {
		s.Memory = mem
		args := buildArgs(t, s, paths, domain.AccelTCG)
		if got := args[slices.Index(args, "-m")+1]; got != want {
			t.Errorf("memory %d: -m %s, want %s", mem, got, want)
		}
	}
	// An unresolved accel is resolved from the spec.
	s.Accel = domain.AccelTCG
	for _, accel := range []string{"", domain.AccelAuto} {
		args := buildArgs(t, s, paths, accel)
		if got := args[slices.Index(args, "-accel")+1]; got != domain.AccelTCG {
			t.Errorf("BuildArgs(accel %q) with spec accel tcg: -accel %s", accel, got)
		}
	}
}

// TestBuildArgsRealQEMU starts the real qemu-system-x86_64 with BuildArgs,
// under machine "none" and "q35" with TCG, in a run directory whose path
// contains a comma (to prove the escaping), checks the QMP greeting, the
// paused state, the pid file and the UUID on the command line, then kills
// and reaps QEMU.
func TestBuildArgsRealQEMU(t *testing.T) {
	bin, err := exec.LookPath(domain.DefaultEmulator)
	if err != nil {
		t.Skipf("%s not installed: %v", domain.DefaultEmulator, err)
	}
	runDir, err := os.MkdirTemp("", "vmsup,args-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })

	t.Run("machine-none", func(t *testing.T) {
		spec, err := domain.ParseSpec(specTestRead(t, "machine-none.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		argsTestStartQEMU(t, bin, runDir, spec, nil, func(paths qemuargs.RunPaths) {
			if _, err := os.Stat(paths.SerialLog); err != nil {
				t.Errorf("serial log: %v", err)
			}
		})
	})

	t.Run("q35", func(t *testing.T) {
		imgDir := t.TempDir()
		raw := filepath.Join(imgDir, "root,1.img")
		if err := os.WriteFile(raw, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		seed := filepath.Join(imgDir, "seed.img")
		if err := os.WriteFile(seed, make([]byte, 64<<10), 0o400); err != nil {
			t.Fatal(err)
		}
		spec := &domain.Spec{
			Name:      "q35vm",
			Memory:    64 * domain.MiB,
			CPUs:      2,
			Machine:   "q35",
			Accel:     domain.AccelTCG,
			Disks:     []domain.Disk{{Path: raw}, {Path: seed, ReadOnly: true}},
			Serial:    &domain.Serial{Type: domain.SerialSocket},
			ExtraArgs: []string{"-device", "virtio-rng-pci"},
		}
		if img, err := exec.LookPath("qemu-img"); err == nil {
			q := filepath.Join(imgDir, "data.qcow2")
			if out, err := exec.Command(img, "create", "-q", "-f", "qcow2", q, "1M").CombinedOutput(); err != nil {
				t.Fatalf("qemu-img: %v: %s", err, out)
			}
			spec.Disks = append(spec.Disks, domain.Disk{Path: q, Format: domain.DiskFormatQCOW2})
		}
		// Two user NICs, one forwarding a host port picked here, and a
		// cloud-init seed: QEMU must accept the netdevs and the seed's
		// read-only nodes, and listen on the forward.
		spec.Networks = []domain.Network{{Forwards: []string{"tcp:127.0.0.1:0-:22"}}, {}}
		spec.CloudInit = &cloudinit.Config{Hostname: "q35vm"}
		spec.ApplyDefaults()
		if err := spec.Validate(); err != nil {
			t.Fatal(err)
		}
		fw, err := spec.Forwards(0)
		if err != nil {
			t.Fatal(err)
		}
		if fw, err = netcfg.ResolveForwards(fw); err != nil {
			t.Fatal(err)
		}
		ciSeed := filepath.Join(imgDir, "cidata,1.iso")
		if err := os.WriteFile(ciSeed, make([]byte, 64<<10), 0o400); err != nil {
			t.Fatal(err)
		}
		host := &qemuargs.Host{Seed: ciSeed}
		for _, d := range spec.Disks {
			host.Disks = append(host.Disks, d.Path)
		}
		for i := range spec.Networks {
			mac, _ := spec.MAC(i)
			host.NICs = append(host.NICs, qemuargs.NIC{MAC: mac})
		}
		host.NICs[0].Forwards = fw
		argsTestStartQEMU(t, bin, runDir, spec, host, func(paths qemuargs.RunPaths) {
			c, err := net.Dial("unix", paths.ConsoleSocket)
			if err != nil {
				t.Fatalf("serial console socket: %v", err)
			}
			c.Close()
			addr := fmt.Sprintf("127.0.0.1:%d", fw[0].HostPort)
			tc, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatalf("QEMU does not listen on the forwarded %s: %v", addr, err)
			}
			tc.Close()
		})
	})
}

// argsTestStartQEMU runs QEMU for spec, waits (at most 10 s) for its QMP
// socket, checks it, runs check while QEMU is up, then kills and reaps it.
// QEMU is reaped before the test ends, whatever happens.
func argsTestStartQEMU(t *testing.T, bin, runDir string, spec *domain.Spec, host *qemuargs.Host, check func(qemuargs.RunPaths)) {
	t.Helper()
	paths, err := qemuargs.NewRunPaths(runDir, spec.Name)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(paths.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(paths.QEMULog)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	qemuLog := func() string { b, _ := os.ReadFile(paths.QEMULog); return string(b) }

	args, err := qemuargs.BuildArgs(spec, paths, domain.AccelTCG, host)
	if err != nil {
		t.Fatal(err)
	}
	fds, err := process.ListenFDs(paths, args)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, f := range fds {
			f.Close()
		}
	}()
	if want := map[bool]int{false: 1, true: 2}[qemuargs.AgentChannel(spec)]; len(fds) != want || qemuargs.HasAgentChannel(args) != (want == 2) {
		t.Fatalf("ListenFDs gave %d sockets, want %d (QMP, and the guest agent's on fd %d when the argv has it)", len(fds), want, qemuargs.AgentListenFD)
	}
	cmd := exec.Command(bin, args...)
	cmd.ExtraFiles = fds
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	reaped := false
	t.Cleanup(func() {
		if reaped {
			return
		}
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("QEMU pid %d not reaped 10s after SIGKILL", pid)
		}
	})

	// Wait for the QMP socket, or for QEMU to die.
	deadline := time.Now().Add(10 * time.Second)
	var conn net.Conn
	for conn == nil {
		select {
		case <-exited:
			t.Fatalf("QEMU exited early (%v)\nargs: %q\nlog:\n%s", cmd.ProcessState, args, qemuLog())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no QMP socket at %s after 10s\nlog:\n%s", paths.QMPSocket, qemuLog())
		}
		if conn, err = net.Dial("unix", paths.QMPSocket); err != nil {
			conn = nil
			time.Sleep(20 * time.Millisecond)
		}
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	rd := bufio.NewReader(conn)
	line := func() string {
		b, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("QMP read: %v\nlog:\n%s", err, qemuLog())
		}
		return b
	}
	if greeting := line(); !strings.Contains(greeting, `"QMP"`) {
		t.Fatalf("QMP greeting: %s", greeting)
	}
	for _, cmdLine := range []string{`{"execute":"qmp_capabilities"}`, `{"execute":"query-status"}`} {
		if _, err := conn.Write([]byte(cmdLine + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	if r := line(); !strings.Contains(r, `"return"`) {
		t.Fatalf("qmp_capabilities: %s", r)
	}
	if r := line(); !strings.Contains(r, `"status": "prelaunch"`) || !strings.Contains(r, `"running": false`) {
		t.Fatalf("query-status (QEMU must start paused by -S): %s", r)
	}

	pidText, err := os.ReadFile(paths.PIDFile)
	if err != nil {
		t.Fatalf("pid file: %v", err)
	}
	if got := strings.TrimSpace(string(pidText)); got != strconv.Itoa(pid) {
		t.Fatalf("pid file says %q, QEMU is %d", got, pid)
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cmdline), "\x00"+spec.UUID+"\x00") {
		t.Fatalf("UUID %s not on the command line %q", spec.UUID, cmdline)
	}

	check(paths)

	// Kill and reap.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("QEMU pid %d not reaped 10s after SIGKILL", pid)
	}
	reaped = true
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("pid %d still exists after Wait: %v", pid, err)
	}
}

// TestBuildArgsPanicDevice: PC machines get a pvpanic device so a guest
// panic is reported; on_crash preserve makes QEMU pause on panic instead
// of exiting.
func TestBuildArgsPanicDevice(t *testing.T) {
	paths, err := qemuargs.NewRunPaths("/run/vmsup", "p")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		machine, onCrash string
		pvpanic, pause   bool
	}{
		{"q35", domain.OnCrashDestroy, true, false},
		{"pc-i440fx-7.2", domain.OnCrashRestart, true, false},
		{"q35", domain.OnCrashPreserve, true, true},
		{"none", domain.OnCrashDestroy, false, false},
	} {
		s := &domain.Spec{Name: "p", UUID: "0f8fad5b-d9cb-469f-a165-70867728950e", Machine: c.machine, OnCrash: c.onCrash}
		s.ApplyDefaults()
		args := strings.Join(buildArgs(t, s, paths, domain.AccelTCG), " ")
		if got := strings.Contains(args, "-device pvpanic"); got != c.pvpanic {
			t.Errorf("%s/%s: pvpanic %v, want %v: %s", c.machine, c.onCrash, got, c.pvpanic, args)
		}
		if got := strings.Contains(args, "-action panic=pause"); got != c.pause {
			t.Errorf("%s/%s: panic=pause %v, want %v: %s", c.machine, c.onCrash, got, c.pause, args)
		}
	}
}

// specTestRead reads a spec file from the domain package's testdata.
func specTestRead(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBuildArgsHotplugPorts(t *testing.T) {
	paths, err := qemuargs.NewRunPaths("/run/vmsup", "a")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		machine string
		ports   int
	}{{"q35", qemuargs.HotplugPorts}, {"pc-q35-7.2", qemuargs.HotplugPorts}, {"pc", 0}, {"none", 0}} {
		s := &domain.Spec{Name: "a", UUID: "0f8fad5b-d9cb-469f-a165-70867728950e", Machine: c.machine}
		s.ApplyDefaults()
		s.Networks = []domain.Network{{Type: "user"}}
		if c.machine == "none" {
			s.Networks = nil
		}
		if err := s.Validate(); err != nil {
			t.Fatal(err)
		}
		args := buildArgs(t, s, paths, domain.AccelTCG)
		var ports []string
		lastNIC, firstPort := -1, -1
		for i, a := range args {
			if strings.HasPrefix(a, "pcie-root-port,") {
				ports = append(ports, a)
				if firstPort < 0 {
					firstPort = i
				}
			}
			if strings.HasPrefix(a, "virtio-net-pci,") {
				lastNIC = i
			}
		}
		if len(ports) != c.ports {
			t.Errorf("machine %s: %d root ports %q, want %d", c.machine, len(ports), ports, c.ports)
		}
		if c.ports > 0 && (ports[0] != "pcie-root-port,id=hp0,bus=pcie.0,chassis=1" || firstPort < lastNIC) {
			t.Errorf("machine %s: first port %q at %d, last NIC at %d: want hp0 after the NICs", c.machine, ports[0], firstPort, lastNIC)
		}
		live := qemuargs.LiveDevices(s, nil)
		if len(live.Ports) != c.ports {
			t.Errorf("machine %s: LiveDevices ports %q", c.machine, live.Ports)
		}
		if len(live.NICs) != len(s.Networks) || (len(live.NICs) == 1 && (live.NICs[0].Device != "nic0" || live.NICs[0].Netdev != "net0" || live.NICs[0].MAC == "")) {
			t.Errorf("machine %s: LiveDevices NICs %+v", c.machine, live.NICs)
		}
	}
}
