package qemuargs

import (
	"strconv"
	"strings"

	"github.com/vmsup/vmsup/domain"
)

// HotplugPorts is how many PCIe root ports BuildArgs adds on a q35
// machine, after the NICs, so that disks and NICs can be hot-plugged: the
// root complex of q35 (pcie.0) takes no hot-plugged device, each root
// port takes one. It bounds the devices hot-plugged at once; an i440fx
// ("pc") machine hot-plugs on its root bus and needs none.
const HotplugPorts = 4

// HotplugPortIDs returns the ids of the root ports BuildArgs adds for
// machine ("hp0", ...), or nil for a machine that needs none.
func HotplugPortIDs(machine string) []string {
	if machine != "q35" && !strings.HasPrefix(machine, "pc-q35") {
		return nil
	}
	ids := make([]string, HotplugPorts)
	for i := range ids {
		ids[i] = "hp" + strconv.Itoa(i)
	}
	return ids
}

// appendHotplugPorts adds the root ports of HotplugPortIDs, each its own
// chassis.
func appendHotplugPorts(args []string, machine string) []string {
	for i, id := range HotplugPortIDs(machine) {
		args = append(args, "-device", "pcie-root-port,id="+id+",bus=pcie.0,chassis="+strconv.Itoa(i+1))
	}
	return args
}

// HotFDSetBase is the first fd set id of hot-plugged disks: the disk
// hot-plugged as "hotN" has its file in fd set HotFDSetBase+N, clear of
// the sets BuildArgs numbers after the fds of the start (FirstPassedFD
// onwards).
const HotFDSetBase = 1000

// NICDevice and NICNetdev are the QEMU ids BuildArgs gives NIC i.
func NICDevice(i int) string { return "nic" + strconv.Itoa(i) }

// NICNetdev is the id of NIC i's netdev.
func NICNetdev(i int) string { return "net" + strconv.Itoa(i) }

// LiveDevices returns the devices a QEMU started by BuildArgs(spec, ...,
// host) has: the running definition before any hot-plug. host is nil for
// PlainHost(spec); a spec that PlainHost refuses gives its paths as
// written.
func LiveDevices(spec *domain.Spec, host *Host) *domain.Live {
	if host == nil {
		host, _ = PlainHost(spec)
	}
	live := &domain.Live{Disks: []domain.LiveDisk{}, NICs: []domain.LiveNIC{}, Ports: HotplugPortIDs(spec.Machine)}
	for i, d := range spec.Disks {
		format := d.Format
		if format == "" {
			format = domain.DiskFormatRaw
		}
		path := d.Path
		if host != nil && i < len(host.Disks) {
			path = host.Disks[i]
		}
		if d.Image != "" || (host != nil && i < len(host.Under) && len(host.Under[i]) > 0) {
			format = domain.DiskFormatQCOW2 // an overlay
		}
		ld := domain.LiveDisk{Node: DiskNode(i), Path: path, Format: format, ReadOnly: d.ReadOnly}
		if host != nil && host.Passed != nil && i < len(host.Passed.Disks) {
			ld.FDSet = host.Passed.Disks[i]
			if i < len(host.Passed.Backing) {
				for _, l := range host.Passed.Backing[i] {
					ld.BackingFDSets = append(ld.BackingFDSets, l.FD)
				}
			}
		}
		live.Disks = append(live.Disks, ld)
	}
	for i, n := range spec.Networks {
		nic := domain.LiveNIC{Device: NICDevice(i), Netdev: NICNetdev(i), Type: n.Type, MAC: n.MAC}
		if nic.Type == "" {
			nic.Type = "user"
		}
		if host != nil && i < len(host.NICs) {
			nic.MAC = host.NICs[i].MAC.String()
			for _, f := range host.NICs[i].Forwards {
				nic.Forwards = append(nic.Forwards, f.String())
			}
		} else if mac, err := spec.MAC(i); err == nil {
			nic.MAC = mac.String()
		}
		live.NICs = append(live.NICs, nic)
	}
	return live
}
