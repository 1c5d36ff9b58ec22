package domain

import (
	"fmt"
	"time"
)

// The states of a snapshot record. A record is written "creating" before
// QEMU's snapshot job starts and "complete" once it has concluded without
// an error; a "creating" record that outlived its job is settled at the
// next look (the tag is on every disk: complete; else it goes).
const (
	SnapshotCreating = "creating"
	SnapshotComplete = "complete"
)

// The kinds of a snapshot.
const (
	// SnapshotInternal is a snapshot inside the qcow2 disks (the VM
	// state in the first disk and a tag on every writable disk).
	SnapshotInternal = "internal"
	// SnapshotDisk is a disk-only (external) snapshot: every writable
	// disk's image at that instant becomes the read-only backing file of
	// a new qcow2 overlay, which takes the writes from then on.
	SnapshotDisk = "disk"
)

// Snapshot is one snapshot of a domain. An internal one is the vCPU and
// device state in its first disk and a qcow2 snapshot of each writable
// disk, all under one tag; a disk-only one is a chain of external
// overlays (Overlays over Backing).
type Snapshot struct {
	// Name is the tag on every disk (internal), or the snapshot's name.
	Name  string `json:"name"`
	State string `json:"state"`
	// Kind is SnapshotInternal (also when empty) or SnapshotDisk.
	Kind string `json:"kind,omitempty"`
	// Created is when the snapshot job started.
	Created time.Time `json:"created"`
	// VMState names the node that holds the VM state ("disk0").
	VMState string `json:"vmstate,omitempty"`
	// Disks are the block nodes the snapshot covers ("disk0", ...).
	Disks []string `json:"disks"`
	// Job is the id of the vmsup job that made it.
	Job uint64 `json:"job,omitempty"`

	// Backing is, for a disk-only snapshot, each disk's image at the
	// snapshot's instant (read-only from then on), by node.
	Backing map[string]string `json:"backing,omitempty"`
	// Overlays is, for a disk-only snapshot, the qcow2 overlay made on
	// each disk's Backing, by node: the top of the disk's chain until a
	// later disk-only snapshot.
	Overlays map[string]string `json:"overlays,omitempty"`
	// Frozen says the guest agent's guest-fsfreeze-freeze succeeded
	// before a disk-only snapshot (and its thaw was sent after);
	// FrozenFS is how many filesystems it froze (0 for a guest with no
	// freezable filesystem).
	Frozen   bool `json:"frozen,omitempty"`
	FrozenFS int  `json:"frozen_fs,omitempty"`
	// FreezeNote says why the filesystems were not frozen (no agent, or
	// it did not answer guest-ping).
	FreezeNote string `json:"freeze_note,omitempty"`
}

// IsDisk reports whether s is a disk-only snapshot.
func (s *Snapshot) IsDisk() bool { return s.Kind == SnapshotDisk }

// MaxSnapshotName bounds a snapshot's name.
const MaxSnapshotName = 64

// ValidateSnapshotName checks a snapshot name from outside: 1 to 64 of
// A-Z a-z 0-9 . _ -, not starting with "." or "-", and not all digits
// (QEMU also finds a snapshot by its numeric id, so a numeric name could
// name another snapshot).
func ValidateSnapshotName(name string) error {
	if name == "" || len(name) > MaxSnapshotName {
		return fmt.Errorf("snapshot name %q: must be 1 to %d characters", name, MaxSnapshotName)
	}
	digits := true
	for i, r := range name {
		switch {
		case r >= '0' && r <= '9':
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '_':
			digits = false
		case (r == '.' || r == '-') && i > 0:
			digits = false
		default:
			return fmt.Errorf("snapshot name %q: character %q at %d is not allowed (use A-Z a-z 0-9 . _ -, not first . or -)", name, r, i)
		}
	}
	if digits {
		return fmt.Errorf("snapshot name %q: must not be all digits (QEMU would read it as a snapshot id)", name)
	}
	return nil
}
