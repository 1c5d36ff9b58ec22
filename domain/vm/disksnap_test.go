package vm

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

// applyChains makes a start open the newest disk-only overlay of each
// disk, with the images under it down to the disk's file, leaves the host resources it was given
// and the other disks alone, ignores "creating" records, and refuses a
// disk whose file is no longer the chain's base.
func TestApplyChains(t *testing.T) {
	file := filepath.Join(t.TempDir(), "vm.json")
	recs := []domain.Snapshot{
		{Name: "a", State: domain.SnapshotComplete, Kind: domain.SnapshotDisk,
			Backing: map[string]string{"disk0": "/base0.raw"}, Overlays: map[string]string{"disk0": "/s/a.disk0.qcow2"}},
		{Name: "i", State: domain.SnapshotComplete, Disks: []string{"disk0"}},
		{Name: "b", State: domain.SnapshotComplete, Kind: domain.SnapshotDisk,
			Backing: map[string]string{"disk0": "/s/a.disk0.qcow2"}, Overlays: map[string]string{"disk0": "/s/b.disk0.qcow2"}},
		{Name: "c", State: domain.SnapshotCreating, Kind: domain.SnapshotDisk,
			Backing: map[string]string{"disk0": "/s/b.disk0.qcow2"}, Overlays: map[string]string{"disk0": "/s/c.disk0.qcow2"}},
	}
	if err := writeSnapshots(file, recs); err != nil {
		t.Fatal(err)
	}
	spec := domain.Spec{Disks: []domain.Disk{{Path: "/base0.raw", Format: "raw"}, {Path: "/data1.raw", Format: "raw"}}}
	orig := spec.Disks
	host := &qemuargs.Host{Disks: []string{"/base0.raw", "/data1.raw"}}
	got, err := applyChains(file, &spec, host)
	if err != nil {
		t.Fatal(err)
	}
	if got.Disks[0] != "/s/b.disk0.qcow2" || got.Disks[1] != "/data1.raw" || spec.Disks[0].Format != "raw" || spec.Disks[1].Format != "raw" {
		t.Fatalf("applyChains: disks %v, formats %s %s", got.Disks, spec.Disks[0].Format, spec.Disks[1].Format)
	}
	if len(got.Under) != 2 || !slices.Equal(got.Under[0], []string{"/s/a.disk0.qcow2", "/base0.raw"}) || len(got.Under[1]) != 0 {
		t.Fatalf("applyChains: the images under the tops %q, want disk0's older overlay then its file", got.Under)
	}
	if host.Disks[0] != "/base0.raw" || orig[0].Format != "raw" {
		t.Fatalf("applyChains changed what it was given: host %v, spec %+v", host.Disks, orig[0])
	}

	moved := &qemuargs.Host{Disks: []string{"/other.raw", "/data1.raw"}}
	if _, err := applyChains(file, &spec, moved); err == nil || !strings.Contains(err.Error(), "disks[0]") || !strings.Contains(err.Error(), "/base0.raw") {
		t.Fatalf("a disk moved under its chain: %v", err)
	}

	gap := filepath.Join(t.TempDir(), "gap.json")
	if err := writeSnapshots(gap, []domain.Snapshot{recs[0], {Name: "x", State: domain.SnapshotComplete, Kind: domain.SnapshotDisk,
		Backing: map[string]string{"disk0": "/s/elsewhere.qcow2"}, Overlays: map[string]string{"disk0": "/s/x.disk0.qcow2"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := applyChains(gap, &spec, host); err == nil || !strings.Contains(err.Error(), "do not stack") {
		t.Fatalf("records whose overlays do not stack: %v", err)
	}

	none := filepath.Join(t.TempDir(), "none.json")
	if got, err := applyChains(none, &spec, host); err != nil || got != host {
		t.Fatalf("no records: %v, %v", got, err)
	}
}

// settle passes disk-only records through (their overlays are not tags
// on the disks) and never lists them as made outside vmsup.
func TestSettleKeepsDiskSnapshots(t *testing.T) {
	recs := []domain.Snapshot{
		{Name: "d", State: domain.SnapshotComplete, Kind: domain.SnapshotDisk, Disks: []string{"disk0"}},
		{Name: "dc", State: domain.SnapshotCreating, Kind: domain.SnapshotDisk, Disks: []string{"disk0"}},
	}
	out := settle(recs, map[string][]string{"disk0": nil}, false)
	if len(out) != 1 || out[0].Name != "d" {
		t.Fatalf("settle without a job: %+v", out)
	}
	if out := settle(recs, map[string][]string{"disk0": nil}, true); len(out) != 2 {
		t.Fatalf("settle during a job: %+v", out)
	}
}

// QEMU's json: names of a node with a backing from the command line give
// back the file under them; other names stay.
func TestImageFile(t *testing.T) {
	for name, want := range map[string]string{
		`json:{"backing": {"driver": "raw", "file": {"driver": "file", "filename": "/dev/fdset/6"}}, "driver": "qcow2", "file": {"driver": "file", "filename": "/dev/fdset/5"}}`: "/dev/fdset/5",
		"/s/a.disk0.qcow2":                         "/s/a.disk0.qcow2",
		`json:{"driver": "qcow2", "file": "node"}`: `json:{"driver": "qcow2", "file": "node"}`,
		"json:{broken":                             "json:{broken",
	} {
		if got := imageFile(name); got != want {
			t.Errorf("imageFile(%s) = %s, want %s", name, got, want)
		}
	}
}
