package netcfg

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func mustForwards(t *testing.T, specs ...string) []Forward {
	t.Helper()
	var out []Forward
	for i, s := range specs {
		f, err := ParseForward(fmt.Sprintf("networks[0].forwards[%d]", i), s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f)
	}
	return out
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestResolveForwardsPicksFreePorts(t *testing.T) {
	explicit := freePort(t)
	in := mustForwards(t,
		"tcp:127.0.0.1:0-:22",
		"tcp:127.0.0.1:0-:80",
		"udp:127.0.0.1:0-:53",
		"tcp::0-:443",
		fmt.Sprintf("tcp:127.0.0.1:%d-:8080", explicit),
	)
	got, err := ResolveForwards(in)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(in) {
		t.Fatalf("ResolveForwards returned %d forwards for %d", len(got), len(in))
	}
	tcpPorts := map[uint16]bool{}
	for i, f := range got {
		if f.HostPort == 0 {
			t.Errorf("forward %d: host port still 0", i)
		}
		want := in[i]
		want.HostPort = f.HostPort
		if f != want {
			t.Errorf("forward %d: %+v, want %+v with only the host port changed", i, f, want)
		}
		if f.Proto == ProtoTCP {
			if tcpPorts[f.HostPort] {
				t.Errorf("TCP port %d picked twice", f.HostPort)
			}
			tcpPorts[f.HostPort] = true
		}
	}
	if got[4].HostPort != uint16(explicit) {
		t.Errorf("explicit port %d became %d", explicit, got[4].HostPort)
	}
	if in[0].HostPort != 0 {
		t.Error("ResolveForwards changed its argument")
	}
	// Every socket it held is released: each port can be bound again.
	for _, f := range got {
		port, c, err := bindHost(f)
		if err != nil {
			t.Errorf("port of %s not released: %v", f, err)
			continue
		}
		if port != f.HostPort {
			t.Errorf("bound %d, want %d", port, f.HostPort)
		}
		c.Close()
	}
}

func TestResolveForwardsTakenPort(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	tcpPort := l.Addr().(*net.TCPAddr).Port
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	udpPort := u.LocalAddr().(*net.UDPAddr).Port

	cases := []struct {
		specs []string
		want  []string
	}{
		{[]string{"tcp::0-:22", fmt.Sprintf("tcp:127.0.0.1:%d-:22", tcpPort)},
			[]string{fmt.Sprintf("networks[0].forwards[1]: host tcp port %d on 127.0.0.1 is already in use", tcpPort)}},
		// Every address includes 127.0.0.1.
		{[]string{fmt.Sprintf("tcp::%d-:22", tcpPort)},
			[]string{fmt.Sprintf("networks[0].forwards[0]: host tcp port %d on every address is already in use", tcpPort)}},
		{[]string{fmt.Sprintf("udp:127.0.0.1:%d-:53", udpPort), fmt.Sprintf("tcp:127.0.0.1:%d-:53", tcpPort)},
			[]string{
				fmt.Sprintf("networks[0].forwards[0]: host udp port %d on 127.0.0.1 is already in use", udpPort),
				fmt.Sprintf("networks[0].forwards[1]: host tcp port %d on 127.0.0.1 is already in use", tcpPort),
			}},
		// 192.0.2.1 (TEST-NET-1) is no address of this host; binding
		// it sends nothing.
		{[]string{"tcp:192.0.2.1:0-:22"},
			[]string{"networks[0].forwards[0]: host address 192.0.2.1 is not an address of this host"}},
		// Static conflicts are found before any bind.
		{[]string{"tcp:127.0.0.1:2222-:22", "tcp::2222-:22"},
			[]string{"networks[0].forwards[1]: host tcp port 2222 on every address is already forwarded by networks[0].forwards[0]"}},
	}
	for _, c := range cases {
		got, err := ResolveForwards(mustForwards(t, c.specs...))
		if got != nil {
			t.Errorf("ResolveForwards(%q) returned forwards %v with error %v", c.specs, got, err)
		}
		if p := fieldProblems(t, err); strings.Join(p, "\n") != strings.Join(c.want, "\n") {
			t.Errorf("ResolveForwards(%q):\n got %q\nwant %q", c.specs, p, c.want)
		}
	}
}

func TestResolveForwardsPrivilegedPort(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("runs as root, which may bind ports below 1024")
	}
	_, err := ResolveForwards(mustForwards(t, "tcp:127.0.0.1:1-:22"))
	p := fieldProblems(t, err)
	if len(p) != 1 || !strings.Contains(p[0], "permission denied") {
		t.Errorf("binding port 1 as uid %d: %q", os.Geteuid(), p)
	}
}

// TestHostFwdRealQEMU starts QEMU with the rendered hostfwd options of
// resolved forwards and checks that QEMU listens on exactly the reported
// host ports: a TCP connection to each TCP port is accepted, and each UDP
// port is bound.
func TestHostFwdRealQEMU(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skipf("qemu-system-x86_64 not installed: %v", err)
	}
	fwds, err := ResolveForwards(mustForwards(t, "tcp:127.0.0.1:0-:22", "tcp:127.0.0.1:0-10.0.2.15:80", "udp:127.0.0.1:0-:53"))
	if err != nil {
		t.Fatal(err)
	}
	netdev := "user,id=net0"
	for _, f := range fwds {
		opt, err := f.HostFwd()
		if err != nil {
			t.Fatal(err)
		}
		netdev += "," + opt
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	logPath := filepath.Join(t.TempDir(), "qemu.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	qemuLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	cmd := exec.CommandContext(ctx, bin, "-M", "q35", "-S", "-nodefaults", "-display", "none",
		"-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,mac="+DeriveMAC([16]byte{1}, 0).String())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Errorf("QEMU pid %d not reaped 10s after SIGKILL", cmd.Process.Pid)
		}
	}()

	for _, f := range fwds {
		addr := fmt.Sprintf("127.0.0.1:%d", f.HostPort)
		deadline := time.Now().Add(30 * time.Second)
		for {
			var err error
			if f.Proto == ProtoTCP {
				var c net.Conn
				if c, err = net.DialTimeout("tcp4", addr, time.Second); err == nil {
					c.Close()
				}
			} else {
				// QEMU holds the UDP port, so binding it fails.
				var u *net.UDPConn
				if u, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(mustAddrPort(addr))); err == nil {
					u.Close()
					err = fmt.Errorf("udp %s is not bound", addr)
				} else {
					err = nil
				}
			}
			if err == nil {
				break
			}
			select {
			case e := <-exited:
				exited <- e
				t.Fatalf("QEMU exited (%v) before %s %s answered: %s", e, f.Proto, addr, qemuLog())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s %s (forward %s) not served by QEMU within 30s: %v", f.Proto, addr, f, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
