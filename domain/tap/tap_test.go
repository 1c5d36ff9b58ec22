//go:build linux

package tap

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vmsup/vmsup/domain/netcfg"
)

// enterNetns moves the test's goroutine, locked to its thread, into a new
// network namespace with a bridge br0 (and returns the namespace). At the
// end of the test the thread goes back to the original namespace, and the
// new one disappears with everything in it. It skips the test when the
// process is not root.
func enterNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace, a bridge and taps")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("current network namespace: %v", err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Skipf("cannot create a network namespace (running in a restricted container?): %v", err)
	}
	t.Cleanup(func() {
		if err := netns.Set(orig); err != nil {
			// The thread stays locked and ends with the goroutine.
			t.Errorf("back to the original network namespace: %v", err)
		} else {
			runtime.UnlockOSThread()
		}
		ns.Close()
		orig.Close()
	})
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
		t.Fatalf("creating bridge br0: %v", err)
	}
	return ns
}

// addTun creates a persistent tun (not tap) device, which is neither a
// bridge nor a tap.
func addTun(t *testing.T, name string) {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TUN}); err != nil {
		t.Fatalf("creating tun %s: %v", name, err)
	}
}

func addBridge(t *testing.T, name string) {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		t.Fatalf("creating bridge %s: %v", name, err)
	}
}

func names(infos []Info) []string {
	var out []string
	for _, i := range infos {
		out = append(out, i.Name)
	}
	slices.Sort(out)
	return out
}

func TestCreateDelete(t *testing.T) {
	enterNetns(t)
	mac, _ := net.ParseMAC("fe:54:00:12:34:56")
	info, err := Create(Config{Name: "vmsuptest0", Bridge: "br0", Tag: "vmsup domain A", MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "vmsuptest0" || info.Bridge != "br0" || info.Tag != "vmsup domain A" ||
		info.MAC.String() != mac.String() || !info.Up || !info.Persistent || info.Carrier || info.Index == 0 {
		t.Errorf("Create returned %+v", info)
	}
	// Cross-check with netlink directly.
	l, err := netlink.LinkByName("vmsuptest0")
	if err != nil {
		t.Fatal(err)
	}
	br, err := netlink.LinkByName("br0")
	if err != nil {
		t.Fatal(err)
	}
	tt, ok := l.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
		t.Fatalf("vmsuptest0 is a %s (%T), want a tap", l.Type(), l)
	}
	if tt.NonPersist {
		t.Error("tap is not persistent")
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		t.Errorf("master index %d, want br0's %d", l.Attrs().MasterIndex, br.Attrs().Index)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		t.Error("tap is not up")
	}
	if tt.Owner != uint32(os.Geteuid()) {
		t.Errorf("tap owner %d, want %d", tt.Owner, os.Geteuid())
	}

	if got, err := List("vmsuptest"); err != nil || !slices.Equal(names(got), []string{"vmsuptest0"}) {
		t.Errorf("List = %v, %v", names(got), err)
	}
	if got, err := List("other"); err != nil || len(got) != 0 {
		t.Errorf("List(other) = %v, %v", names(got), err)
	}

	if _, err := Create(Config{Name: "vmsuptest0", Bridge: "br0", Tag: "vmsup domain A"}); !errors.Is(err, ErrExist) {
		t.Errorf("second Create: %v, want ErrExist", err)
	}
	if err := Delete("vmsuptest0", "vmsup domain B"); !errors.Is(err, ErrNotOurs) || !strings.Contains(err.Error(), `tagged "vmsup domain A"`) {
		t.Errorf("Delete with another tag: %v, want ErrNotOurs", err)
	}
	if _, err := Get("vmsuptest0"); err != nil {
		t.Errorf("tap gone after a refused Delete: %v", err)
	}
	if err := Delete("vmsuptest0", "vmsup domain A"); err != nil {
		t.Fatal(err)
	}
	if _, err := Get("vmsuptest0"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Get after Delete: %v, want ErrNotExist", err)
	}
	if err := Delete("vmsuptest0", "vmsup domain A"); err != nil {
		t.Errorf("Delete of a missing tap: %v", err)
	}
	if _, err := netlink.LinkByName("br0"); err != nil {
		t.Errorf("bridge gone: %v", err)
	}
}

func TestCreateErrors(t *testing.T) {
	enterNetns(t)
	addTun(t, "tun0")
	addBridge(t, "vmsuptaken")
	cases := []struct {
		cfg    Config
		is     error
		substr string
	}{
		{Config{Name: "vmsuptest1", Bridge: "nobr", Tag: "x"}, ErrBridgeNotFound, `bridge "nobr"`},
		{Config{Name: "vmsuptest1", Bridge: "tun0", Tag: "x"}, ErrNotBridge, `"tun0" is a tuntap device`},
		{Config{Name: "vmsuptaken", Bridge: "br0", Tag: "x"}, ErrExist, `a bridge device`},
		{Config{Name: "tun0", Bridge: "br0", Tag: "x"}, ErrExist, `a tuntap device`},
		{Config{Name: "vmsuptest1", Bridge: "br0", Tag: ""}, nil, "tag must be"},
		{Config{Name: "vmsuptest1", Bridge: "br0", Tag: strings.Repeat("x", 256)}, nil, "tag must be"},
		{Config{Name: "vmsuptest1234567", Bridge: "br0", Tag: "x"}, nil, "invalid interface name"},
		{Config{Name: "", Bridge: "br0", Tag: "x"}, nil, "invalid interface name"},
		{Config{Name: "a/b", Bridge: "br0", Tag: "x"}, nil, "invalid interface name"},
		{Config{Name: "vmsuptest1", Bridge: "br 0", Tag: "x"}, nil, "invalid interface name"},
		{Config{Name: "vmsuptest1", Bridge: "br0", Tag: "x", MAC: net.HardwareAddr{1, 2, 3}}, nil, "not an Ethernet address"},
		// The kernel refuses a multicast address after the tap exists:
		// Create must remove the tap again.
		{Config{Name: "vmsuptest1", Bridge: "br0", Tag: "x", MAC: net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}}, nil, "setting its MAC"},
	}
	for _, c := range cases {
		info, err := Create(c.cfg)
		if err == nil {
			t.Errorf("Create(%+v) = %+v, want an error", c.cfg, info)
			continue
		}
		if c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("Create(%+v): %v, want %v", c.cfg, err, c.is)
		}
		if !strings.Contains(err.Error(), c.substr) {
			t.Errorf("Create(%+v): %q, want it to say %q", c.cfg, err, c.substr)
		}
	}
	if l, err := netlink.LinkByName("tun0"); err != nil || l.(*netlink.Tuntap).Mode != netlink.TUNTAP_MODE_TUN {
		t.Errorf("the existing tun was touched: %v", err)
	}
	if got, err := List(""); err != nil || len(got) != 0 {
		t.Errorf("taps left after failed creates: %v, %v", names(got), err)
	}
	if _, err := netlink.LinkByName("vmsuptaken"); err != nil {
		t.Errorf("the existing bridge was touched: %v", err)
	}
}

func TestDeleteStale(t *testing.T) {
	enterNetns(t)
	id := uuid.MustParse("6f1c2a3e-9b4d-4e8f-a1b2-c3d4e5f60718")
	prefix, tag := netcfg.TapPrefix(id), netcfg.TapTag(id)
	name := func(i int) string {
		n, err := netcfg.TapName(id, i)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, c := range []Config{
		{Name: name(0), Bridge: "br0", Tag: tag},
		{Name: name(1), Bridge: "br0", Tag: tag},
		{Name: name(2), Bridge: "br0", Tag: "vmsup domain someone-else"},
		{Name: "vmsupffffffff00", Bridge: "br0", Tag: tag}, // another prefix
	} {
		if _, err := Create(c); err != nil {
			t.Fatal(err)
		}
	}
	// A tap whose creation stopped before it was tagged.
	if err := netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name(3)}, Mode: netlink.TUNTAP_MODE_TAP}); err != nil {
		t.Fatal(err)
	}
	// Not taps, though they have the prefix.
	addTun(t, name(4))
	addBridge(t, name(5))

	deleted, err := DeleteStale(prefix, tag)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(deleted)
	if want := []string{name(0), name(1), name(3)}; !slices.Equal(deleted, want) {
		t.Errorf("DeleteStale deleted %v, want %v", deleted, want)
	}
	left, err := List("")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{name(2), "vmsupffffffff00"}; !slices.Equal(names(left), want) {
		t.Errorf("taps left: %v, want %v", names(left), want)
	}
	for _, n := range []string{name(4), name(5)} {
		if _, err := netlink.LinkByName(n); err != nil {
			t.Errorf("%s with the prefix but no tap was deleted: %v", n, err)
		}
		if err := Delete(n, tag); !errors.Is(err, ErrNotOurs) {
			t.Errorf("Delete(%s), not a tap: %v, want ErrNotOurs", n, err)
		}
	}
	if again, err := DeleteStale(prefix, tag); err != nil || len(again) != 0 {
		t.Errorf("second DeleteStale: %v, %v", again, err)
	}
	if _, err := DeleteStale("", tag); err == nil {
		t.Error("DeleteStale with an empty prefix: no error")
	}
}

// TestCreateNotRoot drops root on one thread (in the test's namespace)
// and checks that Create says it needs root and leaves nothing behind.
func TestCreateNotRoot(t *testing.T) {
	ns := enterNetns(t)
	type result struct {
		err error
		uid int
	}
	done := make(chan result, 1)
	go func() {
		// This thread stays locked: it ends with the goroutine, so its
		// changed credentials never serve another goroutine.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			done <- result{err: err, uid: -1}
			return
		}
		// setresuid as a raw syscall changes only this thread.
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
			done <- result{err: e, uid: -1}
			return
		}
		_, err := Create(Config{Name: "vmsuptest2", Bridge: "br0", Tag: "x"})
		done <- result{err: err, uid: syscall.Geteuid()}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Create as nobody did not return within 30s")
	}
	if r.uid != 65534 {
		t.Fatalf("dropping root on one thread: %v", r.err)
	}
	if !errors.Is(r.err, ErrPermission) || !strings.Contains(r.err.Error(), "needs root") || !strings.Contains(r.err.Error(), "uid 65534") {
		t.Errorf("Create as uid 65534: %v, want ErrPermission", r.err)
	}
	if got, err := List(""); err != nil || len(got) != 0 {
		t.Errorf("taps after a refused Create: %v, %v", names(got), err)
	}
}

// TestQEMUOpensTap starts a real QEMU inside the test's namespace with
// -netdev tap,ifname=<tap>, checks that it attached to the tap (the tap
// gets a carrier) and keeps running, that the tap is up and enslaved, and
// that after QEMU is killed the tap stays until DeleteStale removes it.
func TestQEMUOpensTap(t *testing.T) {
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skipf("qemu-system-x86_64 not installed: %v", err)
	}
	enterNetns(t)
	id := uuid.New()
	name, err := netcfg.TapName(id, 0)
	if err != nil {
		t.Fatal(err)
	}
	guest := netcfg.DeriveMAC(id, 0)
	host := netcfg.HostTapMAC(guest)
	if _, err := Create(Config{Name: name, Bridge: "br0", Tag: netcfg.TapTag(id), MAC: host[:]}); err != nil {
		t.Fatal(err)
	}

	logPath := filepath.Join(t.TempDir(), "qemu.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	qemuLog := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	// Started from this goroutine's locked thread, QEMU inherits the
	// test's network namespace.
	cmd := exec.Command(bin, "-M", "q35", "-S", "-nodefaults", "-display", "none",
		"-netdev", "tap,id=net0,ifname="+name+",script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=net0,mac="+guest.String())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	reaped := false
	kill := func() {
		if reaped {
			return
		}
		_ = cmd.Process.Kill()
		select {
		case <-exited:
			reaped = true
		case <-time.After(10 * time.Second):
			t.Errorf("QEMU pid %d not reaped 10s after SIGKILL", cmd.Process.Pid)
		}
	}
	defer kill()

	waitFor := func(what string, cond func(*Info) bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			info, err := Get(name)
			if err != nil {
				t.Fatalf("waiting for %s: %v", what, err)
			}
			if cond(info) {
				return
			}
			if !reaped {
				select {
				case e := <-exited:
					reaped = true
					t.Fatalf("QEMU exited (%v) while waiting for %s: %s", e, what, qemuLog())
				default:
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s within 30s: %+v; QEMU log: %s", what, info, qemuLog())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor("carrier (QEMU attached)", func(i *Info) bool { return i.Carrier })

	// QEMU keeps running with the tap open.
	select {
	case e := <-exited:
		reaped = true
		t.Fatalf("QEMU exited (%v) after attaching: %s", e, qemuLog())
	case <-time.After(300 * time.Millisecond):
	}
	info, err := Get(name)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Up || info.Bridge != "br0" || !info.Carrier || info.MAC.String() != host.String() {
		t.Errorf("tap while QEMU runs: %+v", info)
	}
	// QEMU did not open a tap of the same name in the host's namespace.
	hostErr := make(chan error, 1)
	go func() {
		// A fresh goroutine runs on a thread in the original namespace;
		// every thread but the test's locked one is there.
		_, err := netlink.LinkByName(name)
		hostErr <- err
	}()
	if err := <-hostErr; err == nil {
		t.Errorf("a link %s exists in the host's namespace too", name)
	}

	kill()
	waitFor("loss of carrier after QEMU exited", func(i *Info) bool { return !i.Carrier })
	deleted, err := DeleteStale(netcfg.TapPrefix(id), netcfg.TapTag(id))
	if err != nil || !slices.Equal(deleted, []string{name}) {
		t.Fatalf("DeleteStale after QEMU exited = %v, %v", deleted, err)
	}
	if _, err := Get(name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tap after DeleteStale: %v", err)
	}
}
