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
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/actors/trace/render"
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
	if tags, err = testkit.SnapshotTags(ret, "disk0"); err != nil {
		t.Fatal(err)
	}
	ret, err = dom.QMP(ctxT(t, 60*time.Second), json.RawMessage(`{"execute":"query-jobs"}`))
	if err != nil {
		t.Fatalf("query-jobs: %v", err)
	}
	if jobs, err = testkit.JobIDs(ret); err != nil {
		t.Fatal(err)
	}
	return tags, jobs
}

var marker = []byte("VMSUP-GUEST-WRITE\n")

// TestGuestSnapshotRevert: a snapshot of the guest before it writes its
// disk, another of the running guest after; while that one runs, Info,
// Jobs and query-status answer and a reset waits, then runs; reverting to
// the first brings the disk back to before the write.
func TestGuestSnapshotRevert(t *testing.T) {
	rec := trace.New(trace.Options{})
	d := openDriver(t, func(c *driver.Config) { c.Trace = rec })
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

	// A snapshot of the running guest. Once it is the lane's async job,
	// QEMU is stopped (SIGSTOP) so that the job cannot end while the test
	// looks: Info and Jobs answer, a reset waits, and a query-status runs
	// beside it (and answers once QEMU goes on).
	in, err := dom.Info(ctxT(t, 5*time.Second))
	if err != nil || in.PID == 0 {
		t.Fatalf("info: %+v %v", in, err)
	}
	qemu := in.PID
	var wg sync.WaitGroup
	async, created := catchAsyncSnapshot(t, dom, qemu, "booted", "trace-snapshot", &wg)
	stopped := true
	defer func() {
		if stopped {
			_ = syscall.Kill(qemu, syscall.SIGCONT)
		}
	}()
	if async.Mask != "query|destroy|suspend|abort" {
		t.Errorf("snapshot job's mask %q", async.Mask)
	}
	began := time.Now()
	in, err = dom.Info(ctxT(t, 5*time.Second))
	if err != nil || in.Job == nil || in.Job.Name != "snapshot-save" {
		t.Fatalf("info during the snapshot: %+v %v", in, err)
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("info took %s during a snapshot", took)
	}
	queried := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, err := dom.QMP(actors.WithRequestID(ctxT(t, 2*time.Minute), "trace-query"), json.RawMessage(`{"execute":"query-status"}`))
		queried <- err
	}()
	guestPoll(t, 10*time.Second, "query-status beside the snapshot", func() bool {
		js, err := dom.Jobs(ctxT(t, 5*time.Second))
		return err == nil && js.Active != nil && js.Active.QMP != nil && js.Active.QMP.Command == "query-status"
	})
	resetDone := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		resetDone <- dom.Reset(actors.WithRequestID(ctxT(t, 5*time.Minute), "trace-reset"))
	}()
	// A reset whose caller gives up names the snapshot and the mask.
	err = dom.Reset(ctxT(t, 300*time.Millisecond))
	var werr *domain.JobWaitError
	if !errors.As(err, &werr) || !strings.Contains(err.Error(), `"snapshot-save"`) && !strings.Contains(err.Error(), `"qmp"`) {
		t.Errorf("a reset that gives up: %v", err)
	}
	time.Sleep(200 * time.Millisecond)
	js, err := dom.Jobs(ctxT(t, 5*time.Second))
	if err != nil || js.Async == nil || js.Async.Name != "snapshot-save" || len(js.Queued) != 1 || js.Queued[0].Name != "reset" {
		t.Fatalf("jobs with QEMU stopped: %+v %v", js, err)
	}
	if err := syscall.Kill(qemu, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	if err := <-created; err != nil {
		t.Fatalf("snapshot create booted: %v", err)
	}
	if err := <-queried; err != nil {
		t.Errorf("query-status during the snapshot: %v", err)
	}
	if err := <-resetDone; err != nil {
		t.Fatalf("reset after the snapshot: %v", err)
	}
	wg.Wait()
	js, err = dom.Jobs(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var saveEnd, resetStart time.Time
	for _, j := range js.Recent {
		switch {
		case j.Name == "snapshot-save":
			saveEnd = j.Ended
			if j.Report == nil || j.Report.Phase != "concluded" || j.Report.Percent == nil || *j.Report.Percent != 100 {
				t.Errorf("the snapshot job's last progress: %+v", j.Report)
			}
		case j.Name == "reset" && !j.Started.IsZero():
			resetStart = j.Started
		}
	}
	if saveEnd.IsZero() || resetStart.Before(saveEnd) {
		t.Errorf("reset started %s, the snapshot ended %s: the reset must wait", resetStart, saveEnd)
	}
	checkSnapshotTrace(t, rec)
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

// checkSnapshotTrace: the snapshot job with its progress, the query that
// ran beside it and the reset that its mask held back are in the Perfetto
// (Chrome JSON) export and in the Mermaid picture, with the mask's
// decisions in words.
func checkSnapshotTrace(t *testing.T, rec *trace.Recorder) {
	t.Helper()
	var records []trace.Record
	for _, id := range []string{"trace-snapshot", "trace-query", "trace-reset"} {
		records = append(records, rec.ByTrace(id)...)
	}
	trace.Sort(records)
	want := []string{
		"snapshot-save: concluded",
		"qmp runs beside snapshot-save: its mask allows query",
		"reset waits: snapshot-save allows query, destroy, suspend, abort",
	}
	var chrome, mermaid bytes.Buffer
	if err := render.WriteChrome(&chrome, records); err != nil {
		t.Fatal(err)
	}
	if err := render.WriteMermaid(&mermaid, records); err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if !bytes.Contains(chrome.Bytes(), []byte(w)) {
			t.Errorf("the Perfetto export lacks %q", w)
		}
		if !bytes.Contains(mermaid.Bytes(), []byte(w)) {
			t.Errorf("the Mermaid picture lacks %q:\n%s", w, mermaid.String())
		}
	}
	if !bytes.Contains(chrome.Bytes(), []byte(`"lane.progress"`)) {
		t.Error("the Perfetto export has no progress step")
	}
}

// catchAsyncSnapshot creates the snapshot name and stops QEMU (SIGSTOP)
// while the job is the lane's async job, so that it cannot end before the
// test acts; QEMU saves a small guest in a fraction of a second, so it
// tries a few times. created gets the create's result.
func catchAsyncSnapshot(t *testing.T, dom *driver.Domain, qemu int, name, requestID string, wg *sync.WaitGroup) (async *domain.JobInfo, created chan error) {
	t.Helper()
	for attempt := 0; async == nil; attempt++ {
		if attempt == 5 {
			t.Fatal("the snapshot job was never caught in its async phase")
		}
		if attempt > 0 {
			if err := dom.DeleteSnapshot(ctxT(t, time.Minute), name); err != nil {
				t.Fatal(err)
			}
		}
		created = make(chan error, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			created <- dom.CreateSnapshot(actors.WithRequestID(ctxT(t, 5*time.Minute), requestID), name)
		}()
		poll := ctxT(t, 60*time.Second)
		ended := false
		for async == nil && !ended {
			js, err := dom.Jobs(poll)
			if err != nil {
				t.Fatal(err)
			}
			if js.Async != nil && js.Async.Name == "snapshot-save" {
				if err := syscall.Kill(qemu, syscall.SIGSTOP); err != nil {
					t.Fatal(err)
				}
				async = js.Async
				break
			}
			select {
			case err := <-created:
				if err != nil {
					t.Fatalf("snapshot create %s: %v", name, err)
				}
				ended = true
			default:
			}
		}
		if async == nil {
			continue
		}
		time.Sleep(100 * time.Millisecond) // what QEMU had on its way has come
		js, err := dom.Jobs(ctxT(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if js.Async == nil {
			async = nil
			if err := syscall.Kill(qemu, syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			if err := <-created; err != nil {
				t.Fatal(err)
			}
		}
	}
	return async, created
}

// TestGuestSnapshotAbortAsync: an abort while the snapshot job follows
// QEMU's job sends job-cancel (an abort job, which the snapshot's mask
// lets run beside it); whether QEMU cancels the save or concludes it
// first, the snapshot is complete on the disk and in the list, or in
// neither, and QEMU keeps no job.
func TestGuestSnapshotAbortAsync(t *testing.T) {
	d := openDriver(t, nil)
	dom, _ := snapshotGuest(t, d, "snapab", false)
	in, err := dom.Info(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	_, created := catchAsyncSnapshot(t, dom, in.PID, "ab", "", &wg)
	aborted := make(chan error, 1)
	go func() { aborted <- dom.AbortJob(ctxT(t, 2*time.Minute)) }()
	guestPoll(t, 10*time.Second, "the abort job beside the snapshot", func() bool {
		js, err := dom.Jobs(ctxT(t, 5*time.Second))
		return err == nil && js.Active != nil && js.Active.Name == "abort" && js.Active.Kind == domain.JobAbort
	})
	if err := syscall.Kill(in.PID, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	abortErr, createErr := <-aborted, <-created
	wg.Wait()
	t.Logf("abort: %v; create: %v", abortErr, createErr)
	if abortErr == nil && createErr == nil {
		t.Error("job-cancel was accepted but the snapshot job succeeded")
	}
	list := snapshotNames(t, dom)
	tags, jobs := qemuTags(t, dom)
	state, listed := list["ab"]
	if listed != slices.Contains(tags, "ab") || (listed && state != domain.SnapshotComplete) || len(jobs) != 0 {
		t.Fatalf("after the abort: list %v, disk0 tags %v, QEMU jobs %v", list, tags, jobs)
	}
	if (createErr == nil) != listed {
		t.Fatalf("create returned %v but the list is %v", createErr, list)
	}
}
