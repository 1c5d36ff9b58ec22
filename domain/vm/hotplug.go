package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"golang.org/x/sys/unix"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/internal/protocol"
	"github.com/vmsup/vmsup/domain/netcfg"
	"github.com/vmsup/vmsup/domain/qemuargs"
	"github.com/vmsup/vmsup/monitor"
)

// Hot-plug jobs change the running definition (dom.live): the devices of
// the running QEMU. They are modify jobs of the lane, one at a time:
//
//	attach-disk: blockdev-add (file, then format node) → device_add → record
//	detach-disk: device_del → wait for DEVICE_DELETED → blockdev-del (format, then file) → record
//	attach-nic:  netdev_add → device_add → record
//	detach-nic:  device_del → wait for DEVICE_DELETED → netdev_del → record
//
// "record" writes the new running definition to <run>/<name>/live.json, so
// that a daemon that adopts the QEMU later knows its devices. The
// persistent definition (the spec) is the driver's: --config changes go
// through its define path, never through these jobs.

// DefaultDetachTimeout is how long a detach waits for QEMU's
// DEVICE_DELETED event, which comes when the guest has released the
// device (Linux's PCIe hot-plug driver waits 5 s after the attention
// button before it lets go, and TCG is slow).
const DefaultDetachTimeout = 30 * time.Second

// hotplugCleanup bounds the undo of a failed attach.
const hotplugCleanup = 5 * time.Second

// liveFileName is the running definition's file in the run directory.
const liveFileName = "live.json"

// hotplug is a hot-plug job's own data.
type hotplug struct {
	disk    domain.LiveDisk
	nic     domain.LiveNIC
	timeout time.Duration
	// late: QEMU already removed the device (a DEVICE_DELETED after the
	// detach's deadline); only the backend is left to remove.
	late bool

	// Set by the plan's Start, in the actor.
	live    *domain.Live // the running definition after the job
	file    string       // live.json
	deleted chan struct{}
	// done: QEMU's devices are now those of live, whatever the later
	// steps do.
	done bool
}

type hotplugPlans struct {
	attachDisk, detachDisk, attachNIC, detachNIC *plan
}

func makeHotplugPlans(p *hotplugPlans) {
	record := step{Name: "record", Do: stepRecordLive}

	p.attachDisk = newPlan("attach-disk", actors.JobModify,
		step{Name: "blockdev-add", Call: "blockdev-add", Do: stepBlockdevAdd},
		step{Name: "device_add", Call: "device_add", Do: func(ctx context.Context, r run) error {
			d := r.Data()
			disk := d.hp.disk
			args := map[string]any{"driver": "virtio-blk-pci", "drive": disk.Node, "id": disk.Device()}
			if disk.Bus != "" {
				args["bus"] = disk.Bus
			}
			if err := d.hotQMP(ctx, r, "device_add", args); err != nil {
				return err
			}
			d.hp.done = true
			r.SetValue(&protocol.DeviceReply{Disk: &disk})
			return nil
		}},
		record)
	p.attachDisk.Start = hotplugStart((*domainActor).startAttachDisk)

	p.detachDisk = newPlan("detach-disk", actors.JobModify,
		step{Name: "device_del", Call: "device_del", Do: stepDeviceDel},
		step{Name: "wait for DEVICE_DELETED", Do: stepAwaitDeleted},
		step{Name: "blockdev-del", Call: "blockdev-del", Do: func(ctx context.Context, r run) error {
			d := r.Data()
			disk := d.hp.disk
			nodes := []string{disk.Node, disk.FileNode()}
			for k := range disk.BackingFDSets {
				under := qemuargs.BackingNode(disk.Node, k)
				nodes = append(nodes, under, under+"-file")
			}
			for _, node := range nodes {
				if err := d.hotQMP(ctx, r, "blockdev-del", map[string]any{"node-name": node}); err != nil {
					return fmt.Errorf("domain %q: detach-disk %s: the device is gone, but its block node %q stays: %w", d.domain, disk.Node, node, err)
				}
			}
			for _, set := range append([]int{disk.FDSet}, disk.BackingFDSets...) {
				if set == 0 {
					continue
				}
				if err := d.hotQMP(ctx, r, "remove-fd", map[string]any{"fdset-id": set}); err != nil {
					return fmt.Errorf("domain %q: detach-disk %s: the device and its nodes are gone, but its fd set %d stays: %w", d.domain, disk.Node, set, err)
				}
			}
			r.SetValue(&protocol.DeviceReply{Disk: &disk})
			return nil
		}},
		record)
	p.detachDisk.Start = hotplugStart((*domainActor).startDetachDisk)

	p.attachNIC = newPlan("attach-nic", actors.JobModify,
		step{Name: "netdev_add", Call: "netdev_add", Do: stepNetdevAdd},
		step{Name: "device_add", Call: "device_add", Do: func(ctx context.Context, r run) error {
			d := r.Data()
			nic := d.hp.nic
			args := map[string]any{"driver": "virtio-net-pci", "netdev": nic.Netdev, "mac": nic.MAC, "id": nic.Device}
			if nic.Bus != "" {
				args["bus"] = nic.Bus
			}
			if err := d.hotQMP(ctx, r, "device_add", args); err != nil {
				return err
			}
			d.hp.done = true
			r.SetValue(&protocol.DeviceReply{NIC: &nic})
			return nil
		}},
		record)
	p.attachNIC.Start = hotplugStart((*domainActor).startAttachNIC)

	p.detachNIC = newPlan("detach-nic", actors.JobModify,
		step{Name: "device_del", Call: "device_del", Do: stepDeviceDel},
		step{Name: "wait for DEVICE_DELETED", Do: stepAwaitDeleted},
		step{Name: "netdev_del", Call: "netdev_del", Do: func(ctx context.Context, r run) error {
			d := r.Data()
			nic := d.hp.nic
			if err := d.hotQMP(ctx, r, "netdev_del", map[string]any{"id": nic.Netdev}); err != nil {
				return fmt.Errorf("domain %q: detach-nic %s: the device is gone, but its netdev %q stays: %w", d.domain, nic.Device, nic.Netdev, err)
			}
			r.SetValue(&protocol.DeviceReply{NIC: &nic})
			return nil
		}},
		record)
	p.detachNIC.Start = hotplugStart((*domainActor).startDetachNIC)

	for _, hp := range []*plan{p.attachDisk, p.detachDisk, p.attachNIC, p.detachNIC} {
		hp.End = ending(func(dom *domainActor, j *job, _ error) {
			h := j.Data.hp
			if h.deleted != nil {
				dom.unwatchDeleted(h.deleted)
			}
			if h.done && dom.proc != nil && h.live != nil {
				dom.live = h.live
			}
		})
	}
}

// hotplugStart is the Start of a hot-plug plan: a running QEMU with a
// known running definition, then the plan's own check, which fills the
// job's hotplug data from the actor's state.
func hotplugStart(check func(dom *domainActor, j *job, h *hotplug) error) func(actor.Context, *job) error {
	return func(c actor.Context, j *job) error {
		dom := j.Data.dom
		if err := dom.runningPrecondition(c, j); err != nil {
			return err
		}
		h := j.Data.hp
		if h == nil {
			return fmt.Errorf("domain %q: %s: no device given", dom.name(), j.Name())
		}
		if dom.live == nil {
			dom.live = &domain.Live{Disks: []domain.LiveDisk{}, NICs: []domain.LiveNIC{}}
		}
		h.live = dom.live.Clone()
		h.file = filepath.Join(dom.paths.Dir, liveFileName)
		if err := check(dom, j, h); err != nil {
			return fmt.Errorf("domain %q: %s: %w", dom.name(), j.Name(), err)
		}
		return nil
	}
}

func (dom *domainActor) startAttachDisk(_ *job, h *hotplug) error {
	for _, d := range h.live.Disks {
		if d.Path == h.disk.Path {
			return &domain.FieldError{Field: "path", Problem: fmt.Sprintf("%q is already attached as %s", h.disk.Path, d.Node)}
		}
	}
	bus, ok := h.live.FreePort()
	if !ok {
		return fmt.Errorf("no free PCIe root port for a hot-plugged device (all %d in use: %s); detach one first", len(h.live.Ports), strings.Join(h.live.Ports, ", "))
	}
	h.disk.Node, h.disk.Bus, h.disk.Hotplugged = "hot"+strconv.Itoa(h.live.Next), bus, true
	h.disk.FDSet = qemuargs.HotFDSetBase + h.live.Next
	h.live.Next++
	h.live.Disks = append(h.live.Disks, h.disk)
	return nil
}

func (dom *domainActor) startAttachNIC(_ *job, h *hotplug) error {
	for _, n := range h.live.NICs {
		if strings.EqualFold(n.MAC, h.nic.MAC) {
			return &domain.FieldError{Field: "mac", Problem: fmt.Sprintf("%s is already the address of %s", h.nic.MAC, n.Device)}
		}
	}
	if h.nic.Type != netcfg.TypeUser {
		return &domain.FieldError{Field: "type", Problem: fmt.Sprintf("%q NICs cannot be hot-plugged (only %q); add it with --config", h.nic.Type, netcfg.TypeUser)}
	}
	bus, ok := h.live.FreePort()
	if !ok {
		return fmt.Errorf("no free PCIe root port for a hot-plugged device (all %d in use: %s); detach one first", len(h.live.Ports), strings.Join(h.live.Ports, ", "))
	}
	n := strconv.Itoa(h.live.Next)
	h.nic.Device, h.nic.Netdev, h.nic.Bus, h.nic.Hotplugged = "hnic"+n, "hnet"+n, bus, true
	h.live.Next++
	h.live.NICs = append(h.live.NICs, h.nic)
	return nil
}

func (dom *domainActor) startDetachDisk(_ *job, h *hotplug) error {
	i, err := h.live.FindDisk(h.disk.Node)
	if err != nil {
		return err
	}
	h.disk = h.live.Disks[i]
	h.live.Disks = append(h.live.Disks[:i], h.live.Disks[i+1:]...)
	if !h.late {
		h.deleted = dom.watchDeleted(h.disk.Device())
	}
	return nil
}

func (dom *domainActor) startDetachNIC(_ *job, h *hotplug) error {
	i, err := h.live.FindNIC(h.nic.Device)
	if err != nil {
		return err
	}
	h.nic = h.live.NICs[i]
	h.live.NICs = append(h.live.NICs[:i], h.live.NICs[i+1:]...)
	if !h.late {
		h.deleted = dom.watchDeleted(h.nic.Device)
	}
	return nil
}

// watchDeleted registers the wait for DEVICE_DELETED of device, before
// device_del is sent, so that the event cannot be missed.
func (dom *domainActor) watchDeleted(device string) chan struct{} {
	if dom.deleted == nil {
		dom.deleted = map[string]chan struct{}{}
	}
	ch := make(chan struct{})
	dom.deleted[device] = ch
	return ch
}

func (dom *domainActor) unwatchDeleted(ch chan struct{}) {
	for dev, c := range dom.deleted {
		if c == ch {
			delete(dom.deleted, dev)
		}
	}
}

// onDeviceDeleted handles QEMU's DEVICE_DELETED event (data from QEMU:
// checked). A waiting detach hears of it; a device of the running
// definition that QEMU removed with nobody waiting (a detach that gave up
// at its deadline, or a guest-initiated eject) gets a job that removes
// its backend and records the change.
func (dom *domainActor) onDeviceDeleted(c actor.Context, data map[string]any) {
	dev, _ := data["device"].(string)
	if dev == "" {
		return
	}
	if ch, ok := dom.deleted[dev]; ok {
		delete(dom.deleted, dev)
		close(ch)
		return
	}
	if dom.live == nil || c == nil {
		return
	}
	req := actors.Request{RequestID: actors.NewID(), Owner: "vmsup device-deleted"}
	for _, d := range dom.live.Disks {
		if d.Device() == dev {
			dom.lane.Enqueue(c, dom.hot.detachDisk, req, dom.traced(c, &jobData{hp: &hotplug{disk: domain.LiveDisk{Node: d.Node}, late: true}}), actors.Waiter{})
			return
		}
	}
	for _, n := range dom.live.NICs {
		if n.Device == dev {
			dom.lane.Enqueue(c, dom.hot.detachNIC, req, dom.traced(c, &jobData{hp: &hotplug{nic: domain.LiveNIC{Device: n.Device}, late: true}}), actors.Waiter{})
			return
		}
	}
}

func stepBlockdevAdd(ctx context.Context, r run) error {
	d := r.Data()
	disk := d.hp.disk
	// vmsup opens the file (under the image roots, no symlink out of
	// them) and passes it over the QMP socket into an fd set of its own:
	// QEMU opens no name, and its user needs no access to the file.
	open := d.openImage
	if open == nil {
		open = openPlain
	}
	f, err := open("path", disk.Path, !disk.ReadOnly)
	if err != nil {
		return fmt.Errorf("domain %q: attach-disk: %w", d.domain, err)
	}
	defer f.Close() // QEMU has its own copy once add-fd returns
	if err := d.hotQMPFile(ctx, r, "add-fd", map[string]any{"fdset-id": disk.FDSet, "opaque": qemuargs.FDLabel("attach-disk "+disk.Node, disk.Path)}, f); err != nil {
		return err
	}
	r.Defer("remove the fd set of a failed attach", func(jobErr error) error {
		if jobErr == nil || d.hp.done {
			return nil
		}
		return d.undo(r, "remove-fd", map[string]any{"fdset-id": disk.FDSet})
	})
	file := map[string]any{"driver": "file", "node-name": disk.FileNode(), "filename": qemuargs.FDSetPath(disk.FDSet), "read-only": disk.ReadOnly, "discard": "unmap"}
	if err := d.hotQMP(ctx, r, "blockdev-add", file); err != nil {
		return err
	}
	undo := func(node string) func(error) error {
		return func(jobErr error) error {
			if jobErr == nil || d.hp.done {
				return nil
			}
			return d.undo(r, "blockdev-del", map[string]any{"node-name": node})
		}
	}
	r.Defer("remove the file node of a failed attach", undo(disk.FileNode()))
	format := map[string]any{"driver": disk.Format, "node-name": disk.Node, "file": disk.FileNode(), "read-only": disk.ReadOnly, "discard": "unmap"}
	if err := d.hotQMP(ctx, r, "blockdev-add", format); err != nil {
		return err
	}
	r.Defer("remove the format node of a failed attach", undo(disk.Node))
	return nil
}

func stepNetdevAdd(ctx context.Context, r run) error {
	d := r.Data()
	nic := d.hp.nic
	args := map[string]any{"type": "user", "id": nic.Netdev}
	if len(nic.Forwards) > 0 {
		fwds := make([]map[string]string, 0, len(nic.Forwards))
		for _, f := range nic.Forwards {
			fwds = append(fwds, map[string]string{"str": f})
		}
		args["hostfwd"] = fwds
	}
	if err := d.hotQMP(ctx, r, "netdev_add", args); err != nil {
		return err
	}
	r.Defer("remove the netdev of a failed attach", func(jobErr error) error {
		if jobErr == nil || d.hp.done {
			return nil
		}
		return d.undo(r, "netdev_del", map[string]any{"id": nic.Netdev})
	})
	return nil
}

func stepDeviceDel(ctx context.Context, r run) error {
	d := r.Data()
	if d.hp.late {
		return nil
	}
	return d.hotQMP(ctx, r, "device_del", map[string]any{"id": d.hp.device()})
}

// stepAwaitDeleted waits for the DEVICE_DELETED event that the actor
// passes on, up to the detach's deadline. At the deadline the device stays
// in the running definition: QEMU still has it.
func stepAwaitDeleted(ctx context.Context, r run) error {
	d := r.Data()
	h := d.hp
	if h.late {
		h.done = true
		return nil
	}
	timeout := h.timeout
	if timeout <= 0 {
		timeout = DefaultDetachTimeout
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-h.deleted:
		h.done = true
		return nil
	case <-timer.C:
		return fmt.Errorf("domain %q: %s: device %q was not removed within %s (no DEVICE_DELETED from QEMU: the guest did not release it); it stays attached: %w",
			d.domain, r.Name(), h.device(), timeout, domain.ErrDetachTimeout)
	case <-ctx.Done():
		return fmt.Errorf("domain %q: %s: waiting for DEVICE_DELETED of %q: %w", d.domain, r.Name(), h.device(), context.Cause(ctx))
	}
}

// stepRecordLive writes the new running definition beside the QEMU it
// describes.
func stepRecordLive(_ context.Context, r run) error {
	d := r.Data()
	if err := writeLive(d.hp.file, d.hp.live); err != nil {
		return fmt.Errorf("domain %q: %s: QEMU's devices changed, but recording them: %w", d.domain, r.Name(), err)
	}
	return nil
}

func (h *hotplug) device() string {
	if h.nic.Device != "" {
		return h.nic.Device
	}
	return h.disk.Device()
}

// hotQMP runs one hot-plug command with arguments built here.
func (d *jobData) hotQMP(ctx context.Context, r run, execute string, args map[string]any) error {
	return d.hotQMPFile(ctx, r, execute, args, nil)
}

// hotQMPFile is hotQMP with file sent along with the command (add-fd).
func (d *jobData) hotQMPFile(ctx context.Context, r run, execute string, args map[string]any, file *os.File) error {
	b, err := json.Marshal(args)
	if err != nil {
		return err
	}
	r.Calling(execute)
	if _, err := d.qmpFile(ctx, r, execute, b, file); err != nil {
		return fmt.Errorf("domain %q: %s: QMP %q: %w", d.domain, r.Name(), execute, err)
	}
	return nil
}

// undo runs a command of a failed job's cleanup, bounded on its own (the
// job's context may have ended).
func (d *jobData) undo(r run, execute string, args map[string]any) error {
	ctx, cancel := context.WithTimeout(context.Background(), hotplugCleanup)
	defer cancel()
	b, _ := json.Marshal(args)
	if _, err := d.qmp(ctx, r, execute, b); err != nil {
		var qerr *monitor.QMPError
		if errors.As(err, &qerr) || d.link == nil {
			return nil // already gone, or QEMU is
		}
		return fmt.Errorf("undo %s: %w", execute, err)
	}
	return nil
}

// writeLive writes live to path atomically (temp file, fsync, rename).
func writeLive(path string, live *domain.Live) error {
	b, err := json.Marshal(live)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+liveFileName+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// maxLiveFile bounds live.json: a file from the run directory is input.
const maxLiveFile = 1 << 20

// readLive reads the running definition recorded beside a QEMU, without
// following a symlink.
func readLive(dir string) (*domain.Live, error) {
	f, err := os.OpenFile(filepath.Join(dir, liveFileName), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxLiveFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxLiveFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", f.Name(), maxLiveFile)
	}
	var live domain.Live
	if err := json.Unmarshal(b, &live); err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	if live.Disks == nil {
		live.Disks = []domain.LiveDisk{}
	}
	if live.NICs == nil {
		live.NICs = []domain.LiveNIC{}
	}
	return &live, nil
}
