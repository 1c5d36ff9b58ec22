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

// Snapshot is one internal snapshot of a domain: the vCPU and device
// state in its first disk and a qcow2 snapshot of each writable disk,
// all under one tag.
type Snapshot struct {
	// Name is the tag on every disk.
	Name  string `json:"name"`
	State string `json:"state"`
	// Created is when the snapshot job started.
	Created time.Time `json:"created"`
	// VMState names the node that holds the VM state ("disk0").
	VMState string `json:"vmstate,omitempty"`
	// Disks are the block nodes the snapshot covers ("disk0", ...).
	Disks []string `json:"disks"`
	// Job is the id of the vmsup job that made it.
	Job uint64 `json:"job,omitempty"`
}

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
