package vm

import (
	"testing"

	"github.com/vmsup/vmsup/domain"
)

// settle keeps the records that the disks bear out: a "creating" record
// whose tag is on every disk it names is complete (QEMU finished the save
// after the daemon died), one whose tag is missing goes, and a tag made
// outside vmsup is listed.
func TestSettleSnapshotRecords(t *testing.T) {
	recs := []domain.Snapshot{
		{Name: "done", State: domain.SnapshotCreating, Disks: []string{"disk0", "disk1"}},
		{Name: "half", State: domain.SnapshotCreating, Disks: []string{"disk0", "disk1"}},
		{Name: "never", State: domain.SnapshotCreating, Disks: []string{"disk0"}},
		{Name: "gone", State: domain.SnapshotComplete, Disks: []string{"disk0"}},
		{Name: "ok", State: domain.SnapshotComplete, Disks: []string{"disk0"}},
	}
	tags := map[string][]string{"disk0": {"done", "half", "ok", "hmp"}, "disk1": {"done", "hmp"}}
	got := map[string]string{}
	for _, x := range settle(recs, tags, false) {
		got[x.Name] = x.State
	}
	want := map[string]string{"done": "complete", "ok": "complete", "hmp": "complete"}
	if len(got) != len(want) {
		t.Fatalf("settled %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("settled %v, want %v", got, want)
		}
	}
	// While a snapshot job runs, its creating record is shown as it is.
	kept := settle(recs[2:3], map[string][]string{"disk0": nil}, true)
	if len(kept) != 1 || kept[0].State != domain.SnapshotCreating {
		t.Fatalf("busy: %+v", kept)
	}
}

func TestValidateSnapshotName(t *testing.T) {
	for _, ok := range []string{"a", "before-upgrade", "v1.2_x", "1a"} {
		if err := domain.ValidateSnapshotName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "123", "-x", ".x", "a b", "a;delvm", "x\n", string(make([]byte, 65))} {
		if err := domain.ValidateSnapshotName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
