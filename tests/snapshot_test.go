package tests

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/tests/testkit"
)

// snapshotGuest defines and starts the test guest with one image disk
// (a qcow2 overlay on a raw base of zeros) that the guest marks at boot.
func snapshotGuest(t *testing.T, d *testDriver, name string, paused bool) (*driver.Domain, string) {
	t.Helper()
	img := testkit.RequireGuest(t)
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (qemu-utils)")
	}
	serial := filepath.Join(d.dir, name+"-serial.log")
	base := filepath.Join(d.dir, name+"-base.raw")
	if err := os.WriteFile(base, make([]byte, 4<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	spec := &domain.Spec{
		Name: name, Machine: "q35", Accel: domain.AccelTCG, Memory: 128 * domain.MiB,
		Kernel: img.Kernel, Initrd: img.Initrd,
		Append: "console=ttyS0 panic=-1 vmsup.write=vda vmsup.shell=0 vmsup.agent=0",
		Serial: &domain.Serial{Type: domain.SerialFile, Path: serial},
		Disks:  []domain.Disk{{Image: base, Format: domain.DiskFormatRaw, Size: 8 * domain.MiB}},
	}
	spec.ApplyDefaults()
	if _, err := d.Define(ctxT(t, 60*time.Second), spec); err != nil {
		t.Fatalf("define: %v", err)
	}
	dom := d.Domain(name)
	if err := dom.Start(ctxT(t, 60*time.Second), driver.StartOptions{Paused: paused}); err != nil {
		t.Fatalf("start: %v", err)
	}
	return dom, serial
}

// overlayHead reads the first bytes of the overlay of a stopped domain's
// disk 0, through qemu-img (the guest's view).
func overlayHead(t *testing.T, d *testDriver, name string) []byte {
	t.Helper()
	ov := filepath.Join(d.cfg.StateDir, "disks", name, "disk0.qcow2")
	raw := filepath.Join(d.dir, name+"-head.raw")
	os.Remove(raw)
	if out, err := exec.Command("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", ov, raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	got, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	return got[:32]
}

func snapshotNames(t *testing.T, dom *driver.Domain) map[string]string {
	t.Helper()
	snaps, err := dom.Snapshots(ctxT(t, 60*time.Second))
	if err != nil {
		t.Fatalf("snapshot list: %v", err)
	}
	out := map[string]string{}
	for _, s := range snaps {
		out[s.Name] = s.State
	}
	return out
}

// qemuTags are the snapshot tags QEMU reports for disk0, and the QEMU
// jobs it still has.
func qemuTags(t *testing.T, dom *driver.Domain) (tags, jobs []string) {
	t.Helper()
	ret, err := dom.QMP(ctxT(t, 60*time.Second), json.RawMessage(`{"execute":"query-block"}`))
	if err != nil {
		t.Fatalf("query-block: %v", err)
	}
	var devs []struct {
		Inserted struct {
			NodeName string `json:"node-name"`
			Image    struct {
				Snapshots []struct{ Name string } `json:"snapshots"`
			} `json:"image"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(ret, &devs); err != nil {
		t.Fatal(err)
	}
	for _, dv := range devs {
		if dv.Inserted.NodeName == "disk0" {
			for _, s := range dv.Inserted.Image.Snapshots {
				tags = append(tags, s.Name)
			}
		}
	}
	ret, err = dom.QMP(ctxT(t, 60*time.Second), json.RawMessage(`{"execute":"query-jobs"}`))
	if err != nil {
		t.Fatalf("query-jobs: %v", err)
	}
	var qj []struct{ ID string }
	if err := json.Unmarshal(ret, &qj); err != nil {
		t.Fatal(err)
	}
	for _, j := range qj {
		jobs = append(jobs, j.ID)
	}
	return tags, jobs
}

var marker = []byte("VMSUP-GUEST-WRITE\n")

// TestGuestSnapshotRevert: a snapshot of the guest before it writes its
// disk, another of the running guest after; while that one runs, Info,
// Jobs and query-status answer and a reset waits, then runs; reverting to
// the first brings the disk back to before the write.
func TestGuestSnapshotRevert(t *testing.T) {
	d := openDriver(t, nil)
	dom, serial := snapshotGuest(t, d, "snap", true)

	// Before the guest runs: its disk is blank.
	if err := dom.CreateSnapshot(ctxT(t, 5*time.Minute), "clean"); err != nil {
		t.Fatalf("snapshot create clean: %v", err)
	}
	if err := dom.Resume(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitGuestSerial(t, serial, "vmsup-guest: vda marker absent", 120*time.Second)
	waitGuestSerial(t, serial, "vmsup-guest: vda marker written", 60*time.Second)

	// A snapshot of the running guest, with a query, a pause and a reset
	// sent while it runs.
	var wg sync.WaitGroup
	created := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		created <- dom.CreateSnapshot(ctxT(t, 5*time.Minute), "booted")
	}()
	var async *domain.JobInfo
	guestPoll(t, 60*time.Second, "the snapshot job's async phase", func() bool {
		select {
		case err := <-created:
			t.Fatalf("snapshot create booted ended (%v) before its async phase was seen", err)
		default:
		}
		js, err := dom.Jobs(ctxT(t, 5*time.Second))
		if err == nil && js.Async != nil && js.Async.Name == "snapshot-save" {
			async = js.Async
		}
		return async != nil
	})
	if async.Mask != "query|destroy|suspend|abort" {
		t.Errorf("snapshot job's mask %q", async.Mask)
	}
	began := time.Now()
	in, err := dom.Info(ctxT(t, 5*time.Second))
	if err != nil || in.Job == nil {
		t.Fatalf("info during the snapshot: %+v %v", in, err)
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("info took %s during a snapshot", took)
	}
	resetDone := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		resetDone <- dom.Reset(ctxT(t, 5*time.Minute))
	}()
	if _, err := dom.QMP(ctxT(t, 2*time.Minute), json.RawMessage(`{"execute":"query-status"}`)); err != nil {
		t.Errorf("query-status during the snapshot: %v", err)
	}
	// The reset waits behind the snapshot until it ends.
	var resetErr error
	select {
	case err := <-created:
		if err != nil {
			t.Fatalf("snapshot create booted: %v", err)
		}
		resetErr = <-resetDone
	case resetErr = <-resetDone:
		select {
		case err := <-created:
			t.Fatalf("reset ended before the snapshot could be seen ending (snapshot: %v)", err)
		default:
			t.Fatal("reset ran while the snapshot ran")
		}
	}
	wg.Wait()
	if resetErr != nil {
		t.Fatalf("reset after the snapshot: %v", resetErr)
	}
	js, err := dom.Jobs(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var saveEnd, resetStart time.Time
	for _, j := range js.Recent {
		switch j.Name {
		case "snapshot-save":
			saveEnd = j.Ended
		case "reset":
			resetStart = j.Started
		}
	}
	if saveEnd.IsZero() || resetStart.Before(saveEnd) {
		t.Errorf("reset started %s, the snapshot ended %s: the reset must wait", resetStart, saveEnd)
	}
	if got := snapshotNames(t, dom); got["clean"] != domain.SnapshotComplete || got["booted"] != domain.SnapshotComplete {
		t.Fatalf("snapshots %v", got)
	}
	if tags, jobs := qemuTags(t, dom); !slices.Contains(tags, "clean") || !slices.Contains(tags, "booted") || len(jobs) != 0 {
		t.Fatalf("QEMU has tags %v and jobs %v", tags, jobs)
	}

	// Revert to before the write, paused, and look at the disk.
	if err := dom.Pause(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := dom.RevertSnapshot(ctxT(t, 5*time.Minute), "clean"); err != nil {
		t.Fatalf("revert clean: %v", err)
	}
	if err := dom.Destroy(ctxT(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	if head := overlayHead(t, d, "snap"); bytes.HasPrefix(head, marker) || !bytes.Equal(head, make([]byte, 32)) {
		t.Fatalf("disk after revert to clean starts with %q, want zeros", head)
	}
	// A stopped domain's list comes from qemu-img.
	if got := snapshotNames(t, dom); len(got) != 2 || got["booted"] != domain.SnapshotComplete {
		t.Fatalf("snapshots of the stopped domain %v", got)
	}
	// A snapshot needs QEMU; a missing one is named.
	if err := dom.RevertSnapshot(ctxT(t, 30*time.Second), "clean"); !errors.Is(err, domain.ErrNotRunning) {
		t.Errorf("revert of a stopped domain: %v", err)
	}
	if err := dom.Start(ctxT(t, 60*time.Second), driver.StartOptions{Paused: true}); err != nil {
		t.Fatal(err)
	}
	if err := dom.RevertSnapshot(ctxT(t, 60*time.Second), "nope"); !errors.Is(err, domain.ErrNoSnapshot) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("revert of a missing snapshot: %v", err)
	}
	if err := dom.DeleteSnapshot(ctxT(t, 5*time.Minute), "booted"); err != nil {
		t.Fatalf("delete booted: %v", err)
	}
	if got := snapshotNames(t, dom); len(got) != 1 || got["clean"] != domain.SnapshotComplete {
		t.Fatalf("snapshots after delete %v", got)
	}
}
