package tests

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/cloudinit"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/tests/testkit"
)

// TestGuestUserNetSeedOverlay boots the test guest through the driver
// with a user network forwarding a host port that vmsup picks, a
// cloud-init seed and a disk that is an overlay on a raw base. The guest
// gets a DHCP address with the NIC's MAC, a host TCP connection to the
// forwarded port reaches its HTTP server, it prints the seed's
// instance-id (the UUID), and it writes a marker to the overlay, which
// keeps it while the base stays all zeros. Info shows the NIC while QEMU
// runs; undefine removes the overlay and the seed, never the base.
func TestGuestUserNetSeedOverlay(t *testing.T) {
	img := testkit.RequireGuest(t)
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (qemu-utils)")
	}
	d := openDriver(t, nil)
	serial := filepath.Join(d.dir, "serial.log")
	base := filepath.Join(d.dir, "base.raw")
	if err := os.WriteFile(base, make([]byte, 4<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	spec := &domain.Spec{
		Name:      "net",
		Machine:   "q35",
		Accel:     domain.AccelTCG,
		Memory:    256 * domain.MiB,
		Kernel:    img.Kernel,
		Initrd:    img.Initrd,
		Append:    "console=ttyS0 panic=-1 vmsup.write=vda vmsup.shell=0",
		Serial:    &domain.Serial{Type: domain.SerialFile, Path: serial},
		Networks:  []domain.Network{{Forwards: []string{"tcp:127.0.0.1:0-:8080"}}},
		Disks:     []domain.Disk{{Image: base, Format: domain.DiskFormatRaw, Size: 8 * domain.MiB}},
		CloudInit: &cloudinit.Config{Hostname: "netguest"},
	}
	spec.ApplyDefaults()
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Define(ctxT(t, 60*time.Second), spec); err != nil {
		t.Fatalf("define: %v", err)
	}
	dom := d.Domain("net")
	events := recordEvents(t, dom.Subscribe(ctxT(t, 5*time.Minute), 0))
	if err := dom.Start(ctxT(t, 60*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("start: %v", err)
	}
	in := expectState(t, dom, domain.StateRunning, domain.ReasonBooted)
	if len(in.NICs) != 1 || len(in.NICs[0].Forwards) != 1 {
		t.Fatalf("info NICs %+v", in.NICs)
	}
	nic, fw := in.NICs[0], in.NICs[0].Forwards[0]
	if fw.HostPort == 0 || fw.GuestPort != 8080 || fw.HostAddr != "127.0.0.1" || fw.Field != "networks[0].forwards[0]" {
		t.Fatalf("forward %+v", fw)
	}
	mac, _ := spec.MAC(0)
	if nic.MAC != mac.String() || nic.Type != "user" {
		t.Fatalf("NIC %+v, want MAC %s", nic, mac)
	}

	waitGuestSerial(t, serial, "vmsup-guest: instance-id="+spec.UUID, 120*time.Second)
	waitGuestSerial(t, serial, "vmsup-guest: hostname=netguest", 10*time.Second)
	waitGuestSerial(t, serial, "vmsup-guest: vda marker written", 30*time.Second)
	waitGuestSerial(t, serial, "vmsup-guest: ip=10.0.2.15/24 dev=eth0 mac="+nic.MAC, 60*time.Second)
	waitGuestSerial(t, serial, "vmsup-guest: http listening on port 8080", 60*time.Second)
	// The guest brought eth0 up before its DHCP lease: QEMU saw its
	// driver set the receive filter.
	if up := events.waitFor(t, domain.EventNetworkUp, 10*time.Second); up.NIC != "networks[0]" || up.Cause == "" || up.State != domain.StateRunning {
		t.Errorf("network-up event %+v", up)
	}

	client := &http.Client{Timeout: 10 * time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/", fw.HostPort)
	var body []byte
	guestPoll(t, 30*time.Second, "HTTP through the forward", func() bool {
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ = io.ReadAll(io.LimitReader(resp.Body, 4096))
		return resp.StatusCode == http.StatusOK
	})
	if !bytes.Contains(body, []byte("vmsup-guest http ok")) || !bytes.Contains(body, []byte("instance-id="+spec.UUID)) {
		t.Fatalf("page from the guest: %q", body)
	}

	if err := dom.Shutdown(ctxT(t, 90*time.Second), driver.ShutdownOptions{Timeout: 60 * time.Second}); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	in = expectState(t, dom, domain.StateShutoff, domain.ReasonShutdown)
	if in.NICs != nil {
		t.Errorf("NICs of a shut off domain: %+v", in.NICs)
	}
	// QEMU is gone: its forward no longer listens.
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", fw.HostPort), time.Second); err == nil {
		c.Close()
		t.Errorf("host port %d still accepts after QEMU exited", fw.HostPort)
	}

	// The overlay holds the marker; the base is all zeros.
	ov := filepath.Join(d.cfg.StateDir, "disks", "net", "disk0.qcow2")
	raw := filepath.Join(d.dir, "overlay.raw")
	if out, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", ov, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	got, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(got, []byte("VMSUP-GUEST-WRITE\n")) || len(got) != 8<<20 {
		t.Fatalf("overlay (%d bytes) starts with %q", len(got), got[:min(32, len(got))])
	}
	if b, _ := os.ReadFile(base); !bytes.Equal(b, make([]byte, 4<<20)) {
		t.Fatal("the guest's write reached the base image")
	}

	if err := d.Undefine(ctxT(t, 30*time.Second), "net"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(ov)); !os.IsNotExist(err) {
		t.Errorf("overlay dir after undefine: %v", err)
	}
	if _, err := os.Stat(base); err != nil {
		t.Errorf("base after undefine: %v", err)
	}
}

// TestStartTakenPort: a forward on a host port that is in use fails the
// start with an error naming the field, and the domain stays shut off.
func TestStartTakenPort(t *testing.T) {
	d := openDriver(t, nil)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	spec := &domain.Spec{Name: "taken", Machine: "q35", Accel: domain.AccelTCG, Memory: 64 * domain.MiB,
		Networks: []domain.Network{{Forwards: []string{fmt.Sprintf("tcp:127.0.0.1:%d-:22", port)}}}}
	if _, err := d.Define(ctxT(t, 10*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	err = d.Domain("taken").Start(ctxT(t, 30*time.Second), driver.StartOptions{})
	if err == nil || !strings.Contains(err.Error(), `"networks[0].forwards[0]"`) || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("start with a taken port: %v", err)
	}
	expectState(t, d.Domain("taken"), domain.StateShutoff, domain.ReasonFailed)
}

// TestNICsAcrossDaemonRestart: a restarted driver that adopts a running
// QEMU shows the NICs it had, with the same host port, and forgets them
// once that QEMU is destroyed.
func TestNICsAcrossDaemonRestart(t *testing.T) {
	d := openDriver(t, nil)
	spec := &domain.Spec{Name: "keep", Machine: "q35", Accel: domain.AccelTCG, Memory: 64 * domain.MiB,
		Networks: []domain.Network{{Forwards: []string{"tcp:127.0.0.1:0-:22"}}}}
	if _, err := d.Define(ctxT(t, 10*time.Second), spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Domain("keep").Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	before := expectState(t, d.Domain("keep"), domain.StateRunning, domain.ReasonBooted)
	if len(before.NICs) != 1 || before.NICs[0].Forwards[0].HostPort == 0 {
		t.Fatalf("NICs %+v", before.NICs)
	}
	d.close(t)
	d2 := d.reopen(t)
	var after *domain.Info
	guestPoll(t, 30*time.Second, "the adopted domain running", func() bool {
		in, err := d2.Domain("keep").Info(ctxT(t, 5*time.Second))
		after = in
		return err == nil && in.State == domain.StateRunning && in.PID == before.PID
	})
	if len(after.NICs) != 1 || after.NICs[0].Forwards[0].HostPort != before.NICs[0].Forwards[0].HostPort || after.NICs[0].MAC != before.NICs[0].MAC {
		t.Fatalf("NICs after the restart %+v, before %+v", after.NICs, before.NICs)
	}
	if err := d2.Domain("keep").Destroy(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	guestPoll(t, 10*time.Second, "the NICs released", func() bool {
		_, err := os.Stat(filepath.Join(d2.cfg.RunDir, "keep", "nics.json"))
		return os.IsNotExist(err)
	})
	if in, _ := d2.Domain("keep").Info(ctxT(t, 5*time.Second)); in.NICs != nil {
		t.Errorf("NICs after destroy %+v", in.NICs)
	}
}
