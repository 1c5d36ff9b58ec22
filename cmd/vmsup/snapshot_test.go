package main_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/tests/testkit"
)

type snapshotEntry struct {
	Name  string   `json:"name"`
	State string   `json:"state"`
	Disks []string `json:"disks"`
}

// writeSnapshotSpec writes a spec of the tiny guest with one image disk,
// a qcow2 overlay on a raw base of zeros.
func writeSnapshotSpec(t *testing.T, dir, name string) string {
	t.Helper()
	g := testkit.RequireGuest(t)
	base := filepath.Join(dir, name+"-base.raw")
	if err := os.WriteFile(base, make([]byte, 4<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	spec := fmt.Sprintf(`name: %s
machine: q35
accel: tcg
memory: 256M
kernel: %s
initrd: %s
append: console=ttyS0 panic=-1 vmsup.shell=0 vmsup.agent=0
disks:
  - image: %s
    format: raw
    size: 8M
`, name, g.Kernel, g.Initrd, base)
	path := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// snapshotState is what the daemon lists and what QEMU has: disk0's tags
// and its jobs.
func (d *daemon) snapshotState(t *testing.T, name string) (list map[string]string, tags, jobs []string) {
	t.Helper()
	var snaps []snapshotEntry
	d.okJSON(t, &snaps, "snapshot", "list", name)
	list = map[string]string{}
	for _, s := range snaps {
		list[s.Name] = s.State
	}
	var err error
	if tags, err = testkit.SnapshotTags(json.RawMessage(d.ok(t, "qmp", name, `{"execute":"query-block"}`)), "disk0"); err != nil {
		t.Fatal(err)
	}
	if jobs, err = testkit.JobIDs(json.RawMessage(d.ok(t, "qmp", name, `{"execute":"query-jobs"}`))); err != nil {
		t.Fatal(err)
	}
	return list, tags, jobs
}

// consistent checks that a snapshot is either complete in the list and on
// the disk, or in neither, and that QEMU has no job left.
func consistent(t *testing.T, snap string, list map[string]string, tags, jobs []string) {
	t.Helper()
	state, listed := list[snap]
	onDisk := slices.Contains(tags, snap)
	if listed != onDisk || (listed && state != "complete") || len(jobs) != 0 {
		t.Fatalf("snapshot %s: listed %v (%q), on disk0 %v (tags %v), QEMU jobs %v", snap, listed, state, onDisk, tags, jobs)
	}
}

func (d *daemon) waitIdle(t *testing.T, name string, within time.Duration) info {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		in := d.info(t, name)
		if in.Job == nil && in.Queued == 0 {
			return in
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not idle after %s: %+v", name, within, in)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCLISnapshotAbortAndSIGKILL: `vmsup job abort` during a snapshot
// leaves no half snapshot; a daemon SIGKILLed in the middle of `snapshot
// create` leaves, after a restart, no stuck job and a list that agrees
// with the disk; snapshots work again afterwards.
func TestCLISnapshotAbortAndSIGKILL(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	d.ok(t, "define", writeSnapshotSpec(t, d.dir, "snapk"))
	var in info
	d.okJSON(t, &in, "start", "snapk")
	pid := in.PID
	t.Cleanup(func() {
		if processAlive(pid) {
			killAndReap(t, pid)
		}
	})
	records := filepath.Join(d.state, "snapshots", "snapk.json")
	// creatingThenStop waits for the snapshot's record to say creating
	// (the job is about to send snapshot-save), then stops QEMU, so that
	// the job cannot end before the test acts.
	creatingThenStop := func() {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			if data, err := os.ReadFile(records); err == nil && strings.Contains(string(data), `"creating"`) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no creating record within 60s")
			}
			time.Sleep(time.Millisecond)
		}
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // snapshot-save is on its way
	}

	// Abort while the snapshot job runs: it leaves no half snapshot.
	create := d.background(t, "snapshot", "create", "snapk", "ab")
	creatingThenStop()
	var js struct {
		Active *struct {
			Kind     string `json:"kind"`
			Progress string `json:"progress"`
		} `json:"active"`
	}
	d.okJSON(t, &js, "jobs", "snapk")
	if js.Active == nil || js.Active.Kind != "async" || !strings.Contains(js.Active.Progress, "[snapshot-save]") {
		t.Errorf("jobs during the snapshot: %+v", js.Active)
	}
	d.ok(t, "job", "abort", "snapk")
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if code := create.wait(t, 3*time.Minute); code == 0 || !strings.Contains(create.stderr.String(), "aborted") {
		t.Fatalf("aborted create: exit %d: %s", code, create.stderr)
	}
	d.waitIdle(t, "snapk", time.Minute)
	list, tags, jobs := d.snapshotState(t, "snapk")
	consistent(t, "ab", list, tags, jobs)
	if _, ok := list["ab"]; ok {
		t.Fatalf("an aborted snapshot is listed: %v", list)
	}

	// SIGKILL the daemon while the job is about to send snapshot-save:
	// QEMU (stopped meanwhile) gets the command or not; either way, after
	// the restart the list agrees with the disk and no job is left.
	create = d.background(t, "snapshot", "create", "snapk", "killed")
	creatingThenStop()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not die of SIGKILL")
	}
	create.wait(t, 30*time.Second)
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if !processAlive(pid) {
		t.Fatal("QEMU died with the daemon")
	}
	d.start(t)
	if in := d.waitIdle(t, "snapk", 3*time.Minute); in.PID != pid || in.State != "running" {
		t.Fatalf("after the restart: %+v", in)
	}
	list, tags, jobs = d.snapshotState(t, "snapk")
	consistent(t, "killed", list, tags, jobs)
	t.Logf("after the restart: list %v, tags %v", list, tags)
	if data, _ := os.ReadFile(records); strings.Contains(string(data), `"creating"`) {
		t.Fatalf("a creating record outlived the restart: %s", data)
	}

	// Nothing is stuck: a new snapshot works, and so does delete.
	d.ok(t, "snapshot", "create", "snapk", "after")
	list, tags, jobs = d.snapshotState(t, "snapk")
	consistent(t, "after", list, tags, jobs)
	if list["after"] != "complete" {
		t.Fatalf("list %v", list)
	}
	d.ok(t, "snapshot", "delete", "snapk", "after")
	list, tags, jobs = d.snapshotState(t, "snapk")
	consistent(t, "after", list, tags, jobs)
	d.fails(t, 1, []string{`no disk has a snapshot of that name`}, "snapshot", "delete", "snapk", "after")
	d.fails(t, 1, []string{`must not be all digits`}, "snapshot", "create", "snapk", "123")
}
