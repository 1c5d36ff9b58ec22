package tests

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
	"github.com/vmsup/vmsup/tests/testkit"
)

// rawDisk makes a raw disk file of size bytes in dir.
func rawDisk(t testing.TB, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// qmpText runs a query on dom and returns its reply as text.
func qmpText(t testing.TB, dom *driver.Domain, execute string) string {
	t.Helper()
	ret, err := dom.QMP(ctxT(t, 30*time.Second), json.RawMessage(`{"execute":"`+execute+`"}`))
	if err != nil {
		t.Fatalf("qmp %s: %v", execute, err)
	}
	return string(ret)
}

// blockNodes returns the names of QEMU's block nodes.
func blockNodes(t testing.TB, dom *driver.Domain) map[string]bool {
	t.Helper()
	var nodes []struct {
		Name string `json:"node-name"`
	}
	if err := json.Unmarshal([]byte(qmpText(t, dom, "query-named-block-nodes")), &nodes); err != nil {
		t.Fatalf("query-named-block-nodes: %v", err)
	}
	out := map[string]bool{}
	for _, n := range nodes {
		out[n.Name] = true
	}
	return out
}

// serialCount counts marker in the serial log.
func serialCount(path, marker string) int {
	data, _ := os.ReadFile(path)
	return bytes.Count(data, []byte(marker))
}

// bootGuest defines and starts the tiny guest and waits for its ready line.
func bootGuest(t testing.TB, d *testDriver, name string) (*driver.Domain, string) {
	t.Helper()
	serial := filepath.Join(d.dir, name+".serial.log")
	dom := d.defineGuest(t, name, serial)
	if err := dom.Start(ctxT(t, 60*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("start: %v", err)
	}
	waitGuestSerial(t, serial, guestReadyMarker, 90*time.Second)
	// The watcher's snapshot is taken: changes from now on are printed.
	waitGuestSerial(t, serial, "vmsup-guest: watching devices", 30*time.Second)
	return dom, serial
}

// TestHotplugDiskAndNIC attaches a disk and a NIC to a running tiny guest,
// which sees them come (its watcher's console lines), then detaches both:
// the guest sees them go, and QEMU no longer has the block nodes, the
// netdev or the PCI devices.
func TestHotplugDiskAndNIC(t *testing.T) {
	d := openDriver(t, nil)
	dom, serial := bootGuest(t, d, "hot")
	disk := rawDisk(t, d.dir, "data.img", 8<<20)

	res, err := dom.AttachDisk(ctxT(t, 60*time.Second), disk, driver.DiskOptions{})
	if err != nil {
		t.Fatalf("attach-disk: %v", err)
	}
	if !res.Live || res.Config || res.Disk == nil || res.Disk.Node != "hot0" || res.Disk.Bus != "hp0" {
		t.Fatalf("attach-disk result %+v (disk %+v), want live hot0 on hp0", res, res.Disk)
	}
	waitGuestSerial(t, serial, "vmsup-guest: block vda added", 60*time.Second)
	if nodes := blockNodes(t, dom); !nodes["hot0"] || !nodes["hot0-file"] {
		t.Errorf("block nodes after attach lack hot0/hot0-file: %v", nodes)
	}
	in, err := dom.Info(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if in.Live == nil || len(in.Live.Disks) != 1 || in.Live.Disks[0].Path != disk {
		t.Fatalf("info live after attach-disk = %+v", in.Live)
	}

	nres, err := dom.AttachNIC(ctxT(t, 60*time.Second), domain.Network{Forwards: []string{"tcp:127.0.0.1:0-:8080"}}, driver.DeviceOptions{})
	if err != nil {
		t.Fatalf("attach-nic: %v", err)
	}
	nic := nres.NIC
	if nic == nil || nic.Device != "hnic1" || nic.Netdev != "hnet1" || len(nic.Forwards) != 1 || strings.Contains(nic.Forwards[0], ":0-") {
		t.Fatalf("attach-nic result %+v, want hnic1 on hnet1 with a resolved forward", nic)
	}
	waitGuestSerial(t, serial, "vmsup-guest: net eth0 added (mac "+nic.MAC+")", 60*time.Second)
	if pci := qmpText(t, dom, "query-pci"); !strings.Contains(pci, `"virtio-hot0"`) || !strings.Contains(pci, `"hnic1"`) {
		t.Errorf("query-pci lacks virtio-hot0 or hnic1: %.600s", pci)
	}

	// A second attach of the same file is refused, naming the field.
	if _, err := dom.AttachDisk(ctxT(t, 30*time.Second), disk, driver.DiskOptions{}); err == nil || !strings.Contains(err.Error(), "path") || !strings.Contains(err.Error(), "already attached") {
		t.Errorf("attach of an attached file: %v", err)
	}

	began := time.Now()
	if _, err := dom.DetachDisk(ctxT(t, 90*time.Second), "hot0", driver.DeviceOptions{}); err != nil {
		t.Fatalf("detach-disk: %v", err)
	}
	t.Logf("detach-disk (device_del to DEVICE_DELETED and blockdev-del): %s", time.Since(began).Round(10*time.Millisecond))
	waitGuestSerial(t, serial, "vmsup-guest: block vda removed", 30*time.Second)
	if nodes := blockNodes(t, dom); nodes["hot0"] || nodes["hot0-file"] {
		t.Errorf("block nodes after detach still have hot0: %v", nodes)
	}
	if blk := qmpText(t, dom, "query-block"); strings.Contains(blk, "virtio-hot0") {
		t.Errorf("query-block after detach still has virtio-hot0: %.400s", blk)
	}

	if _, err := dom.DetachNIC(ctxT(t, 90*time.Second), nic.MAC, driver.DeviceOptions{}); err != nil {
		t.Fatalf("detach-nic: %v", err)
	}
	waitGuestSerial(t, serial, "vmsup-guest: net eth0 removed", 30*time.Second)
	if pci := qmpText(t, dom, "query-pci"); strings.Contains(pci, "virtio-hot0") || strings.Contains(pci, `"hnic1"`) {
		t.Errorf("query-pci after detach still has a hot-plugged device: %.600s", pci)
	}
	in, err = dom.Info(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if in.Live == nil || len(in.Live.Disks) != 0 || len(in.Live.NICs) != 0 {
		t.Errorf("info live after the detaches = %+v", in.Live)
	}
	// An unknown target names itself.
	if _, err := dom.DetachDisk(ctxT(t, 30*time.Second), "hot0", driver.DeviceOptions{}); !errors.Is(err, domain.ErrNoDevice) || !strings.Contains(err.Error(), `"hot0"`) {
		t.Errorf("detach of a detached disk: %v", err)
	}
	// The persistent definition never changed.
	if n := serialCount(serial, "vmsup-guest: block vda added"); n != 1 {
		t.Errorf("%d block-added lines, want 1", n)
	}
}

// TestHotplugDetachDeadline runs a domain on the scripted QMP server, which
// answers device_del but never sends DEVICE_DELETED, as QEMU does when the
// guest ignores the unplug request: the detach fails at its deadline with
// an error naming the device, and the disk stays in the running
// definition. When the event comes later, a job removes the disk's block
// nodes and the disk leaves the running definition.
func TestHotplugDetachDeadline(t *testing.T) {
	fake := testkit.NewQMPServer(t, testkit.ShortSocketPath(t), "vmsup-")
	var nextPID atomic.Int64
	nextPID.Store(1 << 23)
	d := openDriver(t, func(cfg *driver.Config) {
		cfg.Launcher = func(process.Launch) (*process.Process, error) {
			p, _ := process.NewSimulatedProcess(int(nextPID.Add(1)))
			return p, nil
		}
		cfg.DialMonitor = func(string) monitor.Conn { return monitor.NewTransport(fake.Path(), monitor.TransportOptions{}) }
	})
	sendDeleted := make(chan string)
	commands := make(chan string, 64)
	fake.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		lines := make(chan testkit.QMPCommand)
		go func() {
			for {
				cmd, err := c.ReadCommandErr()
				if err != nil {
					close(lines)
					return
				}
				lines <- cmd
			}
		}()
		for {
			select {
			case cmd, ok := <-lines:
				if !ok {
					return
				}
				commands <- cmd.Execute + " " + string(cmd.Arguments)
				switch cmd.Execute {
				case "query-status":
					c.Reply(cmd, `{"status":"running","running":true}`)
				default:
					c.Reply(cmd, `{}`) // device_del included, and never a DEVICE_DELETED
				}
			case dev := <-sendDeleted:
				c.Send(`{"event":"DEVICE_DELETED","data":{"device":"` + dev + `","path":"/machine/peripheral/` + dev + `"},"timestamp":{"seconds":1,"microseconds":0}}`)
			case <-c.Stopped():
				return
			}
		}
	})
	if _, err := d.Define(ctxT(t, 10*time.Second), &domain.Spec{Name: "fake", Machine: "pc", Accel: domain.AccelTCG, Memory: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	dom := d.Domain("fake")
	if err := dom.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("start: %v", err)
	}
	disk := rawDisk(t, d.dir, "data.img", 1<<20)
	if _, err := dom.AttachDisk(ctxT(t, 30*time.Second), disk, driver.DiskOptions{Format: "raw", ReadOnly: true}); err != nil {
		t.Fatalf("attach-disk: %v", err)
	}
	began := time.Now()
	_, err := dom.DetachDisk(ctxT(t, 30*time.Second), disk, driver.DeviceOptions{Timeout: time.Second})
	if !errors.Is(err, domain.ErrDetachTimeout) || !strings.Contains(err.Error(), `"virtio-hot0"`) || !strings.Contains(err.Error(), "stays attached") {
		t.Fatalf("detach without DEVICE_DELETED: %v", err)
	}
	if waited := time.Since(began); waited < time.Second || waited > 20*time.Second {
		t.Errorf("detach gave up after %s, want its 1s deadline", waited)
	}
	in, err := dom.Info(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if in.Live == nil || len(in.Live.Disks) != 1 || in.Live.Disks[0].Node != "hot0" {
		t.Fatalf("after the deadline the disk left the running definition: %+v", in.Live)
	}
	var sent []string
	for len(commands) > 0 {
		sent = append(sent, <-commands)
	}
	// The file goes over the socket (add-fd), never by name.
	want := []string{`add-fd {"fdset-id":1000,"opaque":"attach-disk hot0:` + disk + `"}`,
		`blockdev-add {"discard":"unmap","driver":"file","filename":"/dev/fdset/1000","node-name":"hot0-file","read-only":true}`,
		`blockdev-add {"discard":"unmap","driver":"raw","file":"hot0-file","node-name":"hot0","read-only":true}`,
		`device_add {"drive":"hot0","driver":"virtio-blk-pci","id":"virtio-hot0"}`,
		`device_del {"id":"virtio-hot0"}`}
	if len(sent) < len(want) || strings.Join(sent[len(sent)-len(want):], "\n") != strings.Join(want, "\n") {
		t.Fatalf("commands sent:\n%s\nwant them to end with:\n%s", strings.Join(sent, "\n"), strings.Join(want, "\n"))
	}
	for _, c := range sent {
		if strings.HasPrefix(c, "blockdev-del") {
			t.Errorf("blockdev-del sent although the device was not deleted: %s", c)
		}
	}

	// The guest lets go late: vmsup removes the backend and the disk.
	sendDeleted <- "virtio-hot0"
	guestPoll(t, 20*time.Second, "the late DEVICE_DELETED to remove the disk", func() bool {
		in, err := dom.Info(ctxT(t, 5*time.Second))
		return err == nil && in.Live != nil && len(in.Live.Disks) == 0
	})
	var dels []string
	for len(commands) > 0 {
		if c := <-commands; strings.HasPrefix(c, "blockdev-del") || strings.HasPrefix(c, "remove-fd") {
			dels = append(dels, c)
		}
	}
	if strings.Join(dels, "\n") != `blockdev-del {"node-name":"hot0"}`+"\n"+`blockdev-del {"node-name":"hot0-file"}`+"\n"+`remove-fd {"fdset-id":1000}` {
		t.Errorf("after the late event, blockdev-del and remove-fd commands: %q", dels)
	}
}

// TestHotplugConfigAppliesAtNextStart: a --config change leaves the
// running guest alone and is in the next start; a --live --config change
// is in both, with the same MAC.
func TestHotplugConfigAppliesAtNextStart(t *testing.T) {
	d := openDriver(t, nil)
	dom, serial := bootGuest(t, d, "cfg")
	disk := rawDisk(t, d.dir, "cfg.img", 4<<20)

	res, err := dom.AttachDisk(ctxT(t, 30*time.Second), disk, driver.DiskOptions{DeviceOptions: driver.DeviceOptions{Config: true}})
	if err != nil {
		t.Fatalf("attach-disk --config: %v", err)
	}
	if res.Live || !res.Config || res.Disk != nil {
		t.Fatalf("attach-disk --config result %+v", res)
	}
	nres, err := dom.AttachNIC(ctxT(t, 60*time.Second), domain.Network{}, driver.DeviceOptions{Live: true, Config: true})
	if err != nil {
		t.Fatalf("attach-nic --live --config: %v", err)
	}
	if !nres.Live || !nres.Config || nres.NIC == nil {
		t.Fatalf("attach-nic result %+v", nres)
	}
	mac := nres.NIC.MAC
	waitGuestSerial(t, serial, "vmsup-guest: net eth0 added (mac "+mac+")", 60*time.Second)
	if nodes := blockNodes(t, dom); nodes["disk0"] || nodes["hot0"] {
		t.Errorf("a --config disk reached the running QEMU: %v", nodes)
	}
	in, _ := dom.Info(ctxT(t, 5*time.Second))
	if in.Live == nil || len(in.Live.Disks) != 0 || len(in.Live.NICs) != 1 {
		t.Fatalf("running definition %+v, want no disk and one NIC", in.Live)
	}
	spec, err := dom.Definition(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Disks) != 1 || spec.Disks[0].Path != disk || len(spec.Networks) != 1 || spec.Networks[0].MAC != mac {
		t.Fatalf("persistent definition disks %+v networks %+v, want the disk and the NIC with mac %s", spec.Disks, spec.Networks, mac)
	}
	// A live-only detach on a shut-off domain is refused.
	if err := dom.Destroy(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := dom.DetachDisk(ctxT(t, 10*time.Second), "disk0", driver.DeviceOptions{Live: true}); !errors.Is(err, domain.ErrNotRunning) {
		t.Errorf("detach-disk --live on a shut-off domain: %v", err)
	}
	if err := dom.Start(ctxT(t, 60*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if nodes := blockNodes(t, dom); !nodes["disk0"] {
		t.Errorf("the --config disk is not in the next start: %v", nodes)
	}
	in, _ = dom.Info(ctxT(t, 5*time.Second))
	if in.Live == nil || len(in.Live.Disks) != 1 || in.Live.Disks[0].Path != disk || len(in.Live.NICs) != 1 || in.Live.NICs[0].MAC != mac || in.Live.NICs[0].Device != "nic0" {
		t.Fatalf("running definition after the next start %+v", in.Live)
	}
	// With no flag, a shut-off domain's change is --config.
	if err := dom.Destroy(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	res, err = dom.DetachNIC(ctxT(t, 10*time.Second), mac, driver.DeviceOptions{})
	if err != nil || res.Live || !res.Config {
		t.Fatalf("detach-nic on a shut-off domain: %+v, %v", res, err)
	}
	if spec, _ := dom.Definition(ctxT(t, 5*time.Second)); len(spec.Networks) != 0 || len(spec.Disks) != 1 {
		t.Errorf("persistent definition after detach-nic: %+v", spec)
	}
}

// TestHotplugSurvivesDaemonRestart: a --live disk and a --config NIC, then
// the driver closes and a new one adopts the QEMU. It knows the running
// definition (the hot-plugged disk, which it can detach) and the
// persistent one (the NIC, not the disk).
func TestHotplugSurvivesDaemonRestart(t *testing.T) {
	d := openDriver(t, nil)
	dom, serial := bootGuest(t, d, "keep")
	disk := rawDisk(t, d.dir, "keep.img", 4<<20)
	if _, err := dom.AttachDisk(ctxT(t, 60*time.Second), disk, driver.DiskOptions{}); err != nil {
		t.Fatalf("attach-disk: %v", err)
	}
	waitGuestSerial(t, serial, "vmsup-guest: block vda added", 60*time.Second)
	if _, err := dom.AttachNIC(ctxT(t, 30*time.Second), domain.Network{MAC: "52:54:00:aa:bb:cc"}, driver.DeviceOptions{Config: true}); err != nil {
		t.Fatalf("attach-nic --config: %v", err)
	}
	in, _ := dom.Info(ctxT(t, 5*time.Second))
	pid := in.PID
	d.close(t)

	d2 := d.reopen(t)
	dom = d2.Domain("keep")
	guestPoll(t, 30*time.Second, "the adopted domain to run", func() bool {
		in, _ = dom.Info(ctxT(t, 5*time.Second))
		return in != nil && in.State == domain.StateRunning
	})
	if in.PID != pid {
		t.Fatalf("pid %d after the restart, want the adopted %d", in.PID, pid)
	}
	if in.Live == nil || len(in.Live.Disks) != 1 || in.Live.Disks[0].Node != "hot0" || in.Live.Disks[0].Path != disk || len(in.Live.NICs) != 0 {
		t.Fatalf("running definition after the restart %+v", in.Live)
	}
	spec, err := dom.Definition(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Disks) != 0 || len(spec.Networks) != 1 || spec.Networks[0].MAC != "52:54:00:aa:bb:cc" {
		t.Fatalf("persistent definition after the restart: disks %+v networks %+v", spec.Disks, spec.Networks)
	}
	if _, err := dom.DetachDisk(ctxT(t, 90*time.Second), "hot0", driver.DeviceOptions{}); err != nil {
		t.Fatalf("detach-disk after the restart: %v", err)
	}
	waitGuestSerial(t, serial, "vmsup-guest: block vda removed", 30*time.Second)
	if nodes := blockNodes(t, dom); nodes["hot0"] {
		t.Errorf("hot0 still a block node: %v", nodes)
	}
}
