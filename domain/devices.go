package domain

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Live is the running definition's devices: the disks and NICs of the
// running QEMU, those it started with and those hot-plugged since, each
// with the QEMU ids that name it. The persistent definition (the Spec) is
// kept apart: a change made with --live only is not in it, one made with
// --config only is not here until the next start.
type Live struct {
	// Disks and NICs are the devices QEMU has now.
	Disks []LiveDisk `json:"disks"`
	NICs  []LiveNIC  `json:"nics"`
	// Ports are the PCIe root ports that hot-plugged devices can use
	// (none on a machine whose root bus takes hot-plugged devices itself).
	Ports []string `json:"ports,omitempty"`
	// Next numbers the next hot-plugged device (hotN, hnetN).
	Next int `json:"next"`
}

// LiveDisk is one disk of the running QEMU: a format node (Node) on a
// file node (Node+"-file") under a virtio-blk-pci device (Device()).
type LiveDisk struct {
	Node     string `json:"node"`
	Path     string `json:"path"`
	Format   string `json:"format"`
	ReadOnly bool   `json:"readonly,omitempty"`
	// Bus is the root port of a hot-plugged disk ("" for the root bus).
	Bus        string `json:"bus,omitempty"`
	Hotplugged bool   `json:"hotplugged,omitempty"`
	// FDSet is QEMU's fd set that holds the file vmsup opened for the
	// disk (its file node opens /dev/fdset/FDSet); 0 when QEMU opened
	// the file by name. A detach removes it.
	FDSet int `json:"fdset,omitempty"`
	// BackingFDSets are the fd sets of the images under the disk's file
	// that vmsup passed (an image disk's base, the images under its
	// disk-only snapshots), nearest first: their nodes
	// ("<node>-b<k>" and its "-file") a detach removes too.
	BackingFDSets []int `json:"backing_fdsets,omitempty"`
}

// Device is the QEMU id of the disk's virtio-blk-pci device.
func (d LiveDisk) Device() string { return "virtio-" + d.Node }

// FileNode is the name of the disk's protocol (file) node.
func (d LiveDisk) FileNode() string { return d.Node + "-file" }

// LiveNIC is one NIC of the running QEMU: a virtio-net-pci device on a
// netdev.
type LiveNIC struct {
	Device string `json:"device"`
	Netdev string `json:"netdev"`
	Type   string `json:"type"`
	MAC    string `json:"mac"`
	// Forwards are a user NIC's forwards, with their real host ports.
	Forwards   []string `json:"forwards,omitempty"`
	Bus        string   `json:"bus,omitempty"`
	Hotplugged bool     `json:"hotplugged,omitempty"`
}

// Clone returns a deep copy of l (nil for nil).
func (l *Live) Clone() *Live {
	if l == nil {
		return nil
	}
	c := *l
	c.Disks = append([]LiveDisk(nil), l.Disks...)
	for i := range c.Disks {
		c.Disks[i].BackingFDSets = slices.Clone(c.Disks[i].BackingFDSets)
	}
	c.NICs = make([]LiveNIC, len(l.NICs))
	for i, n := range l.NICs {
		n.Forwards = append([]string(nil), n.Forwards...)
		c.NICs[i] = n
	}
	c.Ports = append([]string(nil), l.Ports...)
	return &c
}

// FindDisk returns the index of the disk that target names: its node
// ("disk0", "hot1"), its device id ("virtio-hot1") or its file's path.
func (l *Live) FindDisk(target string) (int, error) {
	if target == "" {
		return -1, &FieldError{Field: "target", Problem: "is empty; give a disk's node (disk0, hot1), device id or path"}
	}
	for i, d := range l.Disks {
		if d.Node == target || d.Device() == target || d.Path == target {
			return i, nil
		}
	}
	return -1, fmt.Errorf("target %q: no such disk attached (disks: %s): %w", target, l.diskNames(), ErrNoDevice)
}

// FindNIC returns the index of the NIC that target names: its MAC, its
// device id ("nic0", "hnic2") or its index among the live NICs.
func (l *Live) FindNIC(target string) (int, error) {
	if target == "" {
		return -1, &FieldError{Field: "target", Problem: "is empty; give a NIC's MAC, device id or index"}
	}
	for i, n := range l.NICs {
		if strings.EqualFold(n.MAC, target) || n.Device == target {
			return i, nil
		}
	}
	if i, err := strconv.Atoi(target); err == nil && i >= 0 && i < len(l.NICs) && strconv.Itoa(i) == target {
		return i, nil
	}
	return -1, fmt.Errorf("target %q: no such NIC attached (%d NICs): %w", target, len(l.NICs), ErrNoDevice)
}

// FreePort returns a root port no hot-plugged device uses; ok is false
// when all are taken. On a machine without ports it returns "" and true.
func (l *Live) FreePort() (string, bool) {
	if len(l.Ports) == 0 {
		return "", true
	}
	used := map[string]bool{}
	for _, d := range l.Disks {
		used[d.Bus] = true
	}
	for _, n := range l.NICs {
		used[n.Bus] = true
	}
	for _, p := range l.Ports {
		if !used[p] {
			return p, true
		}
	}
	return "", false
}

func (l *Live) diskNames() string {
	if len(l.Disks) == 0 {
		return "none"
	}
	names := make([]string, len(l.Disks))
	for i, d := range l.Disks {
		names[i] = d.Node + "=" + d.Path
	}
	return strings.Join(names, ", ")
}
