package hostres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/cloudinit"
	"github.com/vmsup/vmsup/domain/tap"
)

func requireQemuImg(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (qemu-utils)")
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newManager(t *testing.T) *Manager {
	dir := t.TempDir()
	return New(Config{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run")})
}

func parse(t *testing.T, yaml string) *domain.Spec {
	t.Helper()
	s, err := domain.ParseSpec([]byte("name: h\nuuid: 0f8fad5b-d9cb-469f-a165-70867728950e\n" + yaml))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func fieldsOf(err error) []string {
	var out []string
	for _, fe := range domain.FieldErrors(err) {
		out = append(out, fe.Field)
	}
	return out
}

// rawBase writes a raw base image of size bytes of zeros.
func rawBase(t *testing.T, size int) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "base.raw")
	if err := os.WriteFile(p, make([]byte, size), 0o444); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefineOverlayAndSeed(t *testing.T) {
	requireQemuImg(t)
	m := newManager(t)
	base := rawBase(t, 1<<20)
	before, _ := os.ReadFile(base)
	spec := parse(t, fmt.Sprintf("disks: [{image: %s, format: raw, size: 4M}]\ncloud_init: {hostname: one}\n", base))
	if err := m.Define(ctxT(t), spec); err != nil {
		t.Fatal(err)
	}
	info, err := m.cfg.QemuImg.Info(ctxT(t), m.OverlayPath("h", 0))
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != "qcow2" || info.FullBackingFile != base || info.BackingFormat != "raw" || info.VirtualSize != 4<<20 {
		t.Fatalf("overlay %+v", info)
	}
	seed, err := cloudinit.ReadISO(m.SeedPath("h"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(seed.MetaData, []byte("instance-id: "+spec.UUID)) || !bytes.Contains(seed.MetaData, []byte("local-hostname: one")) {
		t.Fatalf("meta-data %q", seed.MetaData)
	}

	// Write to the overlay; a redefine with a changed hostname keeps it
	// and rewrites the seed.
	f, err := os.OpenFile(m.OverlayPath("h", 0), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	st0, _ := f.Stat()
	f.Close()
	spec.CloudInit.Hostname = "two"
	if err := m.Define(ctxT(t), spec); err != nil {
		t.Fatal(err)
	}
	st1, err := os.Stat(m.OverlayPath("h", 0))
	if err != nil || !os.SameFile(st0, st1) {
		t.Fatalf("redefine replaced the overlay (%v)", err)
	}
	if seed, err = cloudinit.ReadISO(m.SeedPath("h")); err != nil || !bytes.Contains(seed.MetaData, []byte("local-hostname: two")) {
		t.Fatalf("seed not regenerated: %v %q", err, seed.MetaData)
	}

	// Another base for the same disk is refused, naming the field.
	other := rawBase(t, 1<<20)
	spec2 := spec.Clone()
	spec2.Disks[0].Image = other
	err = m.Define(ctxT(t), spec2)
	if err == nil || !strings.Contains(err.Error(), `"disks[0].image"`) || !strings.Contains(err.Error(), "undefine") {
		t.Fatalf("define on another base: %v", err)
	}
	// Dropping cloud_init removes the seed.
	spec.CloudInit = nil
	if err := m.Define(ctxT(t), spec); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.SeedPath("h")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("seed after cloud_init was dropped: %v", err)
	}

	if err := m.Undefine("h"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.Dir("h")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("disk dir after undefine: %v", err)
	}
	after, err := os.ReadFile(base)
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("base changed or gone: %v", err)
	}
}

func TestDefineRefusesBadBases(t *testing.T) {
	requireQemuImg(t)
	m := newManager(t)
	dir := t.TempDir()
	qcow := filepath.Join(dir, "base.qcow2")
	chained := filepath.Join(dir, "chained.qcow2")
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", qcow, "1M"},
		{"create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", qcow, chained},
	} {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v: %s", args, err, out)
		}
	}
	for _, tc := range []struct {
		disk, field, frag string
	}{
		{"{image: " + chained + ", format: qcow2}", "disks[0].image", "backing file"},
		{"{image: " + qcow + ", format: raw}", "disks[0].image", "format does not match"},
		{"{image: " + qcow + ", format: qcow2, size: 512K}", "disks[0].size", "smaller"},
		{"{image: " + filepath.Join(dir, "missing.qcow2") + ", format: qcow2}", "disks[0].image", "does not exist"},
	} {
		err := m.Define(ctxT(t), parse(t, "disks: ["+tc.disk+"]\n"))
		if err == nil || !strings.Contains(err.Error(), tc.frag) || len(fieldsOf(err)) != 1 || fieldsOf(err)[0] != tc.field {
			t.Errorf("%s: %v (fields %v), want %s and %q", tc.disk, err, fieldsOf(err), tc.field, tc.frag)
		}
		if _, err := os.Stat(m.OverlayPath("h", 0)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: an overlay was left: %v", tc.disk, err)
		}
	}
}

func TestAcquireForwards(t *testing.T) {
	m := newManager(t)
	spec := parse(t, "networks: [{forwards: ['tcp:127.0.0.1:0-:22', 'udp:127.0.0.1:0-:53']}, {mac: '52:54:00:00:00:09'}]\n")
	host, release, err := m.Acquire(ctxT(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	fw := host.NICs[0].Forwards
	if len(fw) != 2 || fw[0].HostPort == 0 || fw[1].HostPort == 0 || len(host.NICs[1].Forwards) != 0 {
		t.Fatalf("forwards %+v", host.NICs)
	}
	nics := m.NICs("h")
	if len(nics) != 2 || nics[0].Forwards[0].HostPort != int(fw[0].HostPort) || nics[1].MAC != "52:54:00:00:00:09" || nics[0].Forwards[0].Field != "networks[0].forwards[0]" {
		t.Fatalf("NICs %+v", nics)
	}
	if _, err := os.Stat(m.nicsFile("h")); err != nil {
		t.Fatalf("nics.json: %v", err)
	}
	// A restarted daemon that adopts the QEMU reads them back.
	m2 := New(m.cfg)
	rel2 := m2.Recover(spec, true)
	if got := m2.NICs("h"); len(got) != 2 || got[0].Forwards[0].HostPort != int(fw[0].HostPort) {
		t.Fatalf("recovered NICs %+v", got)
	}
	rel2()
	release()
	if m.NICs("h") != nil {
		t.Fatal("NICs after release")
	}

	// A taken port is an error naming the forward.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	spec = parse(t, fmt.Sprintf("networks: [{}, {forwards: ['tcp::0-:80', 'tcp:127.0.0.1:%d-:22']}]\n", port))
	_, _, err = m.Acquire(ctxT(t), spec)
	if err == nil || !strings.Contains(err.Error(), `"networks[1].forwards[1]"`) || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("taken port: %v", err)
	}

	// Image disks and the seed must have been made at define.
	spec = parse(t, "disks: [{image: /nonexistent/base.qcow2, format: qcow2}]\ncloud_init: {}\n")
	_, _, err = m.Acquire(ctxT(t), spec)
	if f := fieldsOf(err); len(f) != 2 || f[0] != "disks[0].image" || f[1] != "cloud_init" {
		t.Fatalf("acquire without define: %v", err)
	}
}

// TestAcquireTap creates the domain's tap on a bridge in a network
// namespace of its own, releases it, and removes a stale one as Open does.
func TestAcquireTap(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace, a bridge and taps")
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.New()
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Skipf("cannot create a network namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("back to the original network namespace: %v", err)
		} else {
			runtime.UnlockOSThread()
		}
		ns.Close()
		orig.Close()
	})
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
		t.Fatal(err)
	}

	m := newManager(t)
	spec := parse(t, "networks: [{forwards: ['tcp:127.0.0.1:0-:22']}, {type: tap, bridge: br0}]\n")
	host, release, err := m.Acquire(ctxT(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	name := host.NICs[1].Tap
	info, err := tap.Get(name)
	if err != nil {
		t.Fatalf("tap %s: %v", name, err)
	}
	if info.Bridge != "br0" || !info.Up || !strings.Contains(info.Tag, spec.UUID) {
		t.Fatalf("tap %+v", info)
	}
	if nics := m.NICs("h"); nics[1].Tap != name || nics[1].Bridge != "br0" {
		t.Fatalf("NICs %+v", nics)
	}
	// A bad bridge names the field, and leaves no tap.
	bad := parse(t, "networks: [{type: tap, bridge: nobr}]\n")
	bad.Name = "h2"
	bad.UUID = "1f8fad5b-d9cb-469f-a165-70867728950e"
	if _, _, err := m.Acquire(ctxT(t), bad); err == nil || !strings.Contains(err.Error(), `"networks[0].bridge"`) {
		t.Fatalf("missing bridge: %v", err)
	}

	release()
	if _, err := tap.Get(name); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("tap after release: %v", err)
	}

	// A crash leaves the tap: Recover (driver Open) removes it.
	if _, _, err := m.Acquire(ctxT(t), spec); err != nil {
		t.Fatal(err)
	}
	if rel := New(m.cfg).Recover(spec, false); rel != nil {
		t.Fatal("Recover of a domain without QEMU returned a release")
	}
	if _, err := tap.Get(name); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale tap after Recover: %v", err)
	}
}

// TestDefineUserDataFile: the seed carries the user data file as it is
// at define; a file that is missing or not cloud-init's is an error naming
// cloud_init.user_data_file, and no seed is written.
func TestDefineUserDataFile(t *testing.T) {
	m := newManager(t)
	ud := filepath.Join(t.TempDir(), "user-data.yaml")
	if err := os.WriteFile(ud, []byte("#cloud-config\npackages: [curl]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := parse(t, "cloud_init: {user_data_file: "+ud+"}\n")
	if err := m.Define(ctxT(t), spec); err != nil {
		t.Fatal(err)
	}
	seed, err := cloudinit.ReadISO(m.SeedPath("h"))
	if err != nil || string(seed.UserData) != "#cloud-config\npackages: [curl]\n" {
		t.Fatalf("seed user-data %q, %v", seed.UserData, err)
	}
	for _, content := range []string{"", "hello"} {
		m2 := newManager(t)
		p := filepath.Join(t.TempDir(), "ud")
		if content != "" {
			if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		err := m2.Define(ctxT(t), parse(t, "cloud_init: {user_data_file: "+p+"}\n"))
		if f := fieldsOf(err); len(f) != 1 || f[0] != "cloud_init.user_data_file" {
			t.Errorf("user data %q: %v", content, err)
		}
		if _, err := os.Stat(m2.SeedPath("h")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("user data %q: a seed was written", content)
		}
	}
}
