package main_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/tests/testkit"
)

// diskSnapEntry is one entry of `snapshot list --json`.
type diskSnapEntry struct {
	Name       string            `json:"name"`
	State      string            `json:"state"`
	Kind       string            `json:"kind"`
	Overlays   map[string]string `json:"overlays"`
	Backing    map[string]string `json:"backing"`
	Frozen     bool              `json:"frozen"`
	FrozenFS   int               `json:"frozen_fs"`
	FreezeNote string            `json:"freeze_note"`
}

// writeDiskSnapSpec writes a spec of the tiny guest with one image disk
// (a qcow2 overlay on a raw base of zeros), with or without its agent.
func writeDiskSnapSpec(t *testing.T, dir, name string, agent bool) string {
	t.Helper()
	g := testkit.RequireGuest(t)
	base := filepath.Join(dir, name+"-base.raw")
	if err := os.WriteFile(base, make([]byte, 4<<20), 0o444); err != nil {
		t.Fatal(err)
	}
	flags := ""
	if !agent {
		flags = " vmsup.agent=0"
	}
	spec := fmt.Sprintf(`name: %s
machine: q35
accel: tcg
memory: 256M
kernel: %s
initrd: %s
append: console=ttyS0 panic=-1 vmsup.shell=0%s
disks:
  - image: %s
    format: raw
    size: 8M
`, name, g.Kernel, g.Initrd, flags, base)
	path := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func (d *daemon) waitAgent(t *testing.T, name string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		r := d.vmsup(t, "info", name)
		if strings.Contains(r.stdout, "available (qemu-ga ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no available agent in info after %s: %s", within, r)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (d *daemon) diskSnaps(t *testing.T, name string) map[string]diskSnapEntry {
	t.Helper()
	var list []diskSnapEntry
	d.okJSON(t, &list, "snapshot", "list", name)
	out := map[string]diskSnapEntry{}
	for _, s := range list {
		out[s.Name] = s
	}
	return out
}

// topFile is the file of disk0's top image in the running QEMU. QEMU
// names a node whose backing came from the command line "json:{...}"
// and a passed file "/dev/fdset/N": the file is then the one QEMU's fd in
// that set points at (/proc/PID/fd), whatever vmsup says of it.
func (d *daemon) topFile(t *testing.T, name string) string {
	t.Helper()
	var devs []struct {
		Inserted *struct {
			NodeName string `json:"node-name"`
			File     string `json:"file"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal([]byte(d.ok(t, "qmp", name, `{"execute":"query-block"}`)), &devs); err != nil {
		t.Fatal(err)
	}
	for _, dev := range devs {
		if in := dev.Inserted; in != nil && strings.HasPrefix(in.NodeName, "disk0") {
			return d.realFile(t, name, in.File)
		}
	}
	t.Fatalf("no disk0 in query-block")
	return ""
}

// realFile is the file behind a name QEMU reports (see topFile).
func (d *daemon) realFile(t *testing.T, name, file string) string {
	t.Helper()
	if spec, ok := strings.CutPrefix(file, "json:"); ok {
		var opts struct {
			File struct {
				Filename string `json:"filename"`
			} `json:"file"`
		}
		if err := json.Unmarshal([]byte(spec), &opts); err != nil || opts.File.Filename == "" {
			t.Fatalf("QEMU's name %s: no file in it (%v)", file, err)
		}
		file = opts.File.Filename
	}
	set, ok := strings.CutPrefix(file, "/dev/fdset/")
	if !ok {
		return file
	}
	var sets []struct {
		ID  int `json:"fdset-id"`
		FDs []struct {
			FD int `json:"fd"`
		} `json:"fds"`
	}
	if err := json.Unmarshal([]byte(d.ok(t, "qmp", name, `{"execute":"query-fdsets"}`)), &sets); err != nil {
		t.Fatal(err)
	}
	pid := d.info(t, name).PID
	for _, s := range sets {
		if strconv.Itoa(s.ID) == set && len(s.FDs) > 0 {
			target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, s.FDs[0].FD))
			if err != nil {
				t.Fatal(err)
			}
			return target
		}
	}
	t.Fatalf("QEMU has no fd set %s: %v", set, sets)
	return ""
}

// freezeStatus is what the guest agent says of the guest's filesystems.
func (d *daemon) freezeStatus(t *testing.T, name string) string {
	t.Helper()
	var st string
	if err := json.Unmarshal([]byte(d.ok(t, "agent", name, `{"execute":"guest-fsfreeze-status"}`)), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// imageHas reports whether the image at path (with its chain) holds
// marker in its first sector, read with qemu-img while QEMU may run.
func imageHas(t *testing.T, path, marker string) bool {
	t.Helper()
	out := filepath.Join(t.TempDir(), "img.raw")
	if b, err := exec.Command("qemu-img", "convert", "-U", "-O", "raw", path, out).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert %s: %v: %s", path, err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.HasPrefix(data, []byte(marker))
}

// TestCLIDiskSnapshot: `snapshot create --disk-only` on a running VM with
// the tiny guest's agent freezes the filesystems, switches disk0 to a new
// qcow2 overlay on its image and thaws, in that order (the trace); the
// guest's writes go to the overlay; the chain survives a VM restart; an
// overlay step that fails (its target exists) still thaws and leaves no
// record; the chain survives a daemon restart; revert and delete refuse a
// running VM; on a stopped one revert discards the writes after the
// snapshot (and later snapshots), and delete commits them into the image
// under it.
func TestCLIDiskSnapshot(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	d.ok(t, "define", writeDiskSnapSpec(t, d.dir, "dsnap", true))
	d.ok(t, "start", "dsnap")
	d.waitAgent(t, "dsnap", 2*time.Minute)
	before := d.topFile(t, "dsnap")

	began := time.Now()
	id, _ := d.requestID(t, "POST /v1/domains/dsnap/snapshots/s1/disk-only", "snapshot", "create", "dsnap", "s1", "--disk-only")
	t.Logf("snapshot create --disk-only with freeze and thaw: %s", time.Since(began))
	snaps := d.diskSnaps(t, "dsnap")
	s1, ok := snaps["s1"]
	overlay := filepath.Join(d.state, "snapshots", "dsnap", "s1.disk0.qcow2")
	if !ok || s1.Kind != "disk" || s1.State != "complete" || s1.Overlays["disk0"] != overlay || s1.Backing["disk0"] != before || !s1.Frozen || s1.FreezeNote != "" {
		t.Fatalf("snapshot list after create --disk-only: %+v (want kind disk, complete, overlay %s on %s, frozen by the agent)", snaps, overlay, before)
	}
	t.Logf("s1: frozen %v, %d filesystems", s1.Frozen, s1.FrozenFS)
	if os.Getuid() == 0 {
		// Confined: the QEMU user owns the overlay it writes, never the
		// directory in which the daemon's qemu-img opens overlays by name.
		var dirSt, ovSt syscall.Stat_t
		if err := syscall.Lstat(filepath.Dir(overlay), &dirSt); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Lstat(overlay, &ovSt); err != nil {
			t.Fatal(err)
		}
		if dirSt.Uid != 0 || dirSt.Mode&0o777 != 0o711 || ovSt.Uid == 0 {
			t.Fatalf("overlay dir uid %d mode %o, overlay uid %d: want the dir root's (0711) and the overlay the QEMU user's", dirSt.Uid, dirSt.Mode&0o777, ovSt.Uid)
		}
	}
	if top := d.topFile(t, "dsnap"); top != overlay {
		t.Fatalf("disk0's top is %s, want the overlay %s", top, overlay)
	}
	if st := d.freezeStatus(t, "dsnap"); st != "thawed" {
		t.Fatalf("guest-fsfreeze-status after the snapshot: %q", st)
	}
	if order, text := d.commandOrder(t, id); order != "guest-ping,guest-fsfreeze-freeze,blockdev-add,transaction,guest-fsfreeze-thaw" {
		t.Fatalf("the snapshot's commands in its trace: %v, want ping, freeze, blockdev-add, transaction, thaw:\n%s", order, text)
	}
	mermaid := d.ok(t, "trace", "--request", id, "--format", "mermaid")
	for _, want := range []string{"guest-fsfreeze-freeze", "transaction", "guest-fsfreeze-thaw", "snapshot-disk: frozen", "snapshot-disk: thawed"} {
		if !strings.Contains(mermaid, want) {
			t.Errorf("the snapshot's Mermaid picture lacks %q:\n%s", want, mermaid)
		}
	}
	chrome := filepath.Join(d.dir, "dsnap.json")
	d.ok(t, "trace", "--chrome", chrome, "--request", id)
	names := strings.Join(checkChrome(t, chrome), "\n")
	for _, want := range []string{"guest-fsfreeze-freeze", "transaction", "guest-fsfreeze-thaw"} {
		if !strings.Contains(names, want) {
			t.Errorf("the snapshot's Perfetto export lacks %q: %s", want, names)
		}
	}
	info, err := exec.Command("qemu-img", "info", "-U", "--output=json", overlay).Output()
	if err != nil || !strings.Contains(string(info), `"backing-filename": "`+before+`"`) {
		t.Fatalf("qemu-img info %s: %v: %s", overlay, err, info)
	}

	// The guest's writes go to the overlay, not to the image under it.
	const marker = "VMSUP-DISKSNAP"
	d.ok(t, "exec", "dsnap", "--", "/bin/sh", "-c", "printf "+marker+" | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null && sync")
	if !imageHas(t, overlay, marker) || imageHas(t, before, marker) {
		t.Fatalf("after the guest's write: overlay has it %v, its backing has it %v; want only the overlay", imageHas(t, overlay, marker), imageHas(t, before, marker))
	}

	// A failing overlay step (its target exists) still thaws, and leaves
	// no record and the file it did not make.
	taken := filepath.Join(d.state, "snapshots", "dsnap", "s2.disk0.qcow2")
	if err := os.WriteFile(taken, []byte("not mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := d.vmsup(t, "-v", "snapshot", "create", "dsnap", "s2", "--disk-only")
	m := regexp.MustCompile(`vmsup: request (\S+): POST /v1/domains/dsnap/snapshots/s2/disk-only → 409 `).FindStringSubmatch(r.stderr)
	if r.code != 1 || m == nil || !strings.Contains(r.stderr, "s2.disk0.qcow2: file already exists") {
		t.Fatalf("create over an existing overlay file: want exit 1, a 409 and the file named: %s", r)
	}
	if order, text := d.commandOrder(t, m[1]); order != "guest-ping,guest-fsfreeze-freeze,guest-fsfreeze-thaw" {
		t.Fatalf("the failed snapshot's commands in its trace: %v, want ping, freeze, thaw (no overlay node):\n%s", order, text)
	}
	if st := d.freezeStatus(t, "dsnap"); st != "thawed" {
		t.Fatalf("guest-fsfreeze-status after a failed overlay step: %q", st)
	}
	if _, ok := d.diskSnaps(t, "dsnap")["s2"]; ok {
		t.Fatal("a failed disk-only snapshot is listed")
	}
	if data, err := os.ReadFile(taken); err != nil || string(data) != "not mine" {
		t.Fatalf("the file in the overlay's way: %q, %v", data, err)
	}
	if top := d.topFile(t, "dsnap"); top != overlay {
		t.Fatalf("after the failed snapshot disk0's top is %s, want %s", top, overlay)
	}

	// A second disk-only snapshot in the same QEMU stacks on the first.
	d.ok(t, "snapshot", "create", "dsnap", "s3", "--disk-only")
	s3 := d.diskSnaps(t, "dsnap")["s3"]
	if s3.State != "complete" || s3.Backing["disk0"] != overlay || d.topFile(t, "dsnap") != s3.Overlays["disk0"] {
		t.Fatalf("s3 on s1: %+v, top %s", s3, d.topFile(t, "dsnap"))
	}

	// Delete on the running VM: an active block-commit of s3's overlay
	// into s1's; the disk's top is s1's overlay again.
	d.ok(t, "snapshot", "delete", "dsnap", "s3")
	if _, ok := d.diskSnaps(t, "dsnap")["s3"]; ok {
		t.Fatal("s3 is listed after its delete")
	}
	if top := d.topFile(t, "dsnap"); top != overlay {
		t.Fatalf("after deleting s3 disk0's top is %s, want %s", top, overlay)
	}
	if _, err := os.Stat(s3.Overlays["disk0"]); !os.IsNotExist(err) {
		t.Fatalf("s3's overlay after its delete: %v", err)
	}
	if !imageHas(t, overlay, marker) {
		t.Fatal("the data in s1's overlay is gone after the commit of s3")
	}
	d.ok(t, "snapshot", "create", "dsnap", "s3", "--disk-only")
	s3 = d.diskSnaps(t, "dsnap")["s3"]
	overlay3 := s3.Overlays["disk0"]
	if s3.Backing["disk0"] != overlay || d.topFile(t, "dsnap") != overlay3 {
		t.Fatalf("s3 again: %+v, top %s", s3, d.topFile(t, "dsnap"))
	}

	d.fails(t, 1, []string{"stopped VM"}, "snapshot", "revert", "dsnap", "s1")

	// A daemon restart keeps the chain (the adopted QEMU writes to the
	// overlay), and a VM restart opens the chain's top.
	pid := d.info(t, "dsnap").PID
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not die of SIGKILL")
	}
	d.start(t)
	if in := d.waitIdle(t, "dsnap", 3*time.Minute); in.PID != pid || in.State != "running" {
		t.Fatalf("after the daemon restart: %+v", in)
	}
	if s, ok := d.diskSnaps(t, "dsnap")["s1"]; !ok || s.State != "complete" {
		t.Fatalf("s1 after the daemon restart: %+v", s)
	}
	if top := d.topFile(t, "dsnap"); top != overlay3 {
		t.Fatalf("after the daemon restart disk0's top is %s, want the overlay %s", top, overlay3)
	}
	d.ok(t, "destroy", "dsnap")
	d.ok(t, "start", "dsnap")
	if top := d.topFile(t, "dsnap"); top != overlay3 {
		t.Fatalf("after a VM restart disk0's top is %s, want the overlay %s", top, overlay3)
	}
	d.ok(t, "destroy", "dsnap")

	// Revert on the stopped VM: the write after s1 is gone, s1 stays.
	d.ok(t, "snapshot", "revert", "dsnap", "s1")
	if imageHas(t, overlay, marker) {
		t.Fatal("the guest's write after s1 survived the revert")
	}
	after := d.diskSnaps(t, "dsnap")
	if s, ok := after["s1"]; !ok || s.State != "complete" {
		t.Fatalf("s1 after the revert: %+v", s)
	}
	if _, ok := after["s3"]; ok {
		t.Fatal("s3, made after s1, is still listed after the revert to s1")
	}
	if _, err := os.Stat(overlay3); !os.IsNotExist(err) {
		t.Fatalf("s3's overlay after the revert to s1: %v", err)
	}
	d.ok(t, "start", "dsnap")
	if top := d.topFile(t, "dsnap"); top != overlay {
		t.Fatalf("after the revert disk0's top is %s, want %s", top, overlay)
	}

	// Delete on the stopped VM: the writes since s1 are committed into
	// the image under it, which is the disk's top again.
	const marker2 = "VMSUP-COMMITTED"
	d.waitAgent(t, "dsnap", 2*time.Minute)
	d.ok(t, "exec", "dsnap", "--", "/bin/sh", "-c", "printf "+marker2+" | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null && sync")
	d.ok(t, "destroy", "dsnap")
	d.ok(t, "snapshot", "delete", "dsnap", "s1")
	if _, ok := d.diskSnaps(t, "dsnap")["s1"]; ok {
		t.Fatal("s1 is listed after its delete")
	}
	if _, err := os.Stat(overlay); !os.IsNotExist(err) {
		t.Fatalf("s1's overlay after the delete: %v", err)
	}
	if !imageHas(t, before, marker2) {
		t.Fatal("the write since s1 is not in the image under it after the delete")
	}
	d.ok(t, "start", "dsnap")
	if top := d.topFile(t, "dsnap"); top != before {
		t.Fatalf("after the delete disk0's top is %s, want %s", top, before)
	}
}

// TestCLIDiskSnapshotNoAgent: with the guest's agent absent, a disk-only
// snapshot completes unfrozen within the ping's deadline (and generous
// slack), and says why it was not frozen.
func TestCLIDiskSnapshotNoAgent(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	d.ok(t, "define", writeDiskSnapSpec(t, d.dir, "dsna", false))
	d.ok(t, "start", "dsna")
	start := time.Now()
	d.ok(t, "snapshot", "create", "dsna", "s1", "--disk-only")
	took := time.Since(start)
	s, ok := d.diskSnaps(t, "dsna")["s1"]
	if !ok || s.State != "complete" || s.Frozen || !strings.Contains(s.FreezeNote, "guest-ping") {
		t.Fatalf("snapshot without an agent: %+v", s)
	}
	if took > time.Minute {
		t.Fatalf("a disk-only snapshot without an agent took %s", took)
	}
	t.Logf("took %s: %s", took, s.FreezeNote)
	if out := d.ok(t, "snapshot", "list", "dsna"); !strings.Contains(out, "disk") || !strings.Contains(out, "unfrozen") {
		t.Fatalf("snapshot list: %s", out)
	}
	// Internal snapshots are refused on disks on overlays this QEMU
	// switched to, and disk-only ones beside internal ones.
	d.fails(t, 1, []string{"disk-only snapshot overlays", "restart"}, "snapshot", "create", "dsna", "int")

	// On a stopped VM: only the overlay, on the chain's top; the next
	// start opens it.
	d.ok(t, "destroy", "dsna")
	d.ok(t, "snapshot", "create", "dsna", "s2", "--disk-only")
	s2, ok := d.diskSnaps(t, "dsna")["s2"]
	if !ok || s2.State != "complete" || s2.Frozen || s2.Backing["disk0"] != s.Overlays["disk0"] || !strings.Contains(s2.FreezeNote, "not running") {
		t.Fatalf("disk-only snapshot of the stopped VM: %+v (want it on %s)", s2, s.Overlays["disk0"])
	}
	d.ok(t, "start", "dsna")
	if top := d.topFile(t, "dsna"); top != s2.Overlays["disk0"] {
		t.Fatalf("after the offline snapshot disk0's top is %s, want %s", top, s2.Overlays["disk0"])
	}
	d.ok(t, "snapshot", "create", "dsna", "int")
	d.fails(t, 1, []string{`internal snapshot "int"`, "delete it first"}, "snapshot", "create", "dsna", "s9", "--disk-only")
	d.ok(t, "snapshot", "delete", "dsna", "int")

	// Deleting s1, under s2, on the running VM (an intermediate
	// block-commit): s2's overlay now sits on s1's backing.
	d.ok(t, "snapshot", "delete", "dsna", "s1")
	snaps := d.diskSnaps(t, "dsna")
	if _, ok := snaps["s1"]; ok || snaps["s2"].Backing["disk0"] != s.Backing["disk0"] {
		t.Fatalf("after deleting s1: %+v (want s2 on %s)", snaps, s.Backing["disk0"])
	}
	if info, err := exec.Command("qemu-img", "info", "-U", "--output=json", s2.Overlays["disk0"]).Output(); err != nil || !strings.Contains(string(info), `"backing-filename": "`+s.Backing["disk0"]+`"`) {
		t.Fatalf("qemu-img info of s2's overlay after deleting s1: %v: %s", err, info)
	}
	if _, err := os.Stat(s.Overlays["disk0"]); !os.IsNotExist(err) {
		t.Fatalf("s1's overlay after its delete: %v", err)
	}
	d.ok(t, "destroy", "dsna")
	d.ok(t, "start", "dsna")
	if top := d.topFile(t, "dsna"); top != s2.Overlays["disk0"] {
		t.Fatalf("after deleting s1 and a restart disk0's top is %s, want %s", top, s2.Overlays["disk0"])
	}
	d.ok(t, "destroy", "dsna")

	// Deleting s2, under s5, on the stopped VM: qemu-img commit, and s5's
	// overlay rebased onto the image under s2.
	d.ok(t, "snapshot", "create", "dsna", "s5", "--disk-only")
	s5 := d.diskSnaps(t, "dsna")["s5"]
	d.ok(t, "snapshot", "delete", "dsna", "s2")
	snaps = d.diskSnaps(t, "dsna")
	if _, ok := snaps["s2"]; ok || snaps["s5"].Backing["disk0"] != s.Backing["disk0"] {
		t.Fatalf("after deleting s2 offline: %+v (want s5 on %s)", snaps, s.Backing["disk0"])
	}
	if info, err := exec.Command("qemu-img", "info", "--output=json", s5.Overlays["disk0"]).Output(); err != nil || !strings.Contains(string(info), `"backing-filename": "`+s.Backing["disk0"]+`"`) {
		t.Fatalf("qemu-img info of s5's overlay after deleting s2: %v: %s", err, info)
	}

	// Undefine takes the records and the overlays (their base, the image
	// disk's overlay, went with it).
	d.ok(t, "undefine", "dsna")
	for _, p := range []string{filepath.Join(d.state, "snapshots", "dsna.json"), filepath.Join(d.state, "snapshots", "dsna")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("after undefine %s: %v", p, err)
		}
	}
}

// commandOrder is the QMP and agent commands of a disk-only snapshot that
// the trace of the request id shows answered, in order, comma-joined.
func (d *daemon) commandOrder(t *testing.T, id string) (order, text string) {
	t.Helper()
	text = d.ok(t, "trace", "--request", id, "--format", "text")
	var cmds []string
	for _, line := range strings.Split(text, "\n") {
		for _, cmd := range []string{"guest-ping", "guest-fsfreeze-freeze", "blockdev-add", "transaction", "guest-fsfreeze-thaw"} {
			if strings.Contains(line, " "+cmd+" ") && strings.Contains(line, "→ ok") {
				cmds = append(cmds, cmd)
			}
		}
	}
	return strings.Join(cmds, ","), text
}

// TestCLIDiskSnapshotSIGKILL: a daemon SIGKILLed while a disk-only
// snapshot waits on QEMU (stopped, after the overlay file was made)
// leaves, after a restart, no stuck job, no record and no overlay of a
// snapshot QEMU never switched to, a thawed guest, and disk-only
// snapshots that work again.
func TestCLIDiskSnapshotSIGKILL(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	d.ok(t, "define", writeDiskSnapSpec(t, d.dir, "dsk", true))
	var in info
	d.okJSON(t, &in, "start", "dsk")
	pid := in.PID
	t.Cleanup(func() {
		if processAlive(pid) {
			killAndReap(t, pid)
		}
	})
	d.waitAgent(t, "dsk", 2*time.Minute)
	before := d.topFile(t, "dsk")
	records := filepath.Join(d.state, "snapshots", "dsk.json")
	overlay := filepath.Join(d.state, "snapshots", "dsk", "k.disk0.qcow2")

	create := d.stopMidDiskSnapshot(t, "dsk", "k", pid, records, overlay)
	time.Sleep(300 * time.Millisecond)
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
	d.start(t)
	if in := d.waitIdle(t, "dsk", 3*time.Minute); in.PID != pid || in.State != "running" {
		t.Fatalf("after the restart: %+v", in)
	}
	if s, ok := d.diskSnaps(t, "dsk")["k"]; ok {
		t.Fatalf("a snapshot QEMU never switched to is listed after the restart: %+v", s)
	}
	if _, err := os.Stat(overlay); !os.IsNotExist(err) {
		t.Fatalf("its overlay after the restart: %v", err)
	}
	if top := d.topFile(t, "dsk"); top != before {
		t.Fatalf("disk0's top after the restart is %s, want %s", top, before)
	}
	d.waitAgent(t, "dsk", 2*time.Minute)
	if st := d.freezeStatus(t, "dsk"); st != "thawed" {
		t.Fatalf("guest-fsfreeze-status after the restart: %q", st)
	}
	d.ok(t, "snapshot", "create", "dsk", "k", "--disk-only")
	if s := d.diskSnaps(t, "dsk")["k"]; s.State != "complete" || !s.Frozen || d.topFile(t, "dsk") != overlay {
		t.Fatalf("the snapshot again after the restart: %+v, top %s", s, d.topFile(t, "dsk"))
	}
}

// TestCLIDiskSnapshotAbort: `vmsup job abort` while a disk-only snapshot
// waits on QEMU (stopped, after the overlay file was made; resumed right
// after the abort) ends the job
// as aborted and leaves no record, no overlay file and the disk's top as
// it was; a snapshot of the same name works afterwards.
func TestCLIDiskSnapshotAbort(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	d.ok(t, "define", writeDiskSnapSpec(t, d.dir, "dsab", true))
	var in info
	d.okJSON(t, &in, "start", "dsab")
	pid := in.PID
	t.Cleanup(func() {
		if processAlive(pid) {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	d.waitAgent(t, "dsab", 2*time.Minute)
	before := d.topFile(t, "dsab")
	records := filepath.Join(d.state, "snapshots", "dsab.json")
	overlay := filepath.Join(d.state, "snapshots", "dsab", "ab.disk0.qcow2")

	create := d.stopMidDiskSnapshot(t, "dsab", "ab", pid, records, overlay)
	time.Sleep(300 * time.Millisecond)
	d.ok(t, "job", "abort", "dsab")
	// QEMU goes on, so that the cleanup's blockdev-del is answered (a
	// stopped QEMU would fail it at its deadline, and the monitor with it).
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if code := create.wait(t, 2*time.Minute); code == 0 || !strings.Contains(create.stderr.String(), "aborted") {
		t.Fatalf("aborted create: exit %d: %s", code, create.stderr)
	}
	d.waitIdle(t, "dsab", time.Minute)
	if s, ok := d.diskSnaps(t, "dsab")["ab"]; ok {
		t.Fatalf("an aborted disk-only snapshot is listed: %+v", s)
	}
	if _, err := os.Stat(overlay); !os.IsNotExist(err) {
		t.Fatalf("the aborted snapshot's overlay: %v", err)
	}
	if top := d.topFile(t, "dsab"); top != before {
		t.Fatalf("disk0's top after the abort is %s, want %s", top, before)
	}
	d.ok(t, "snapshot", "create", "dsab", "ab", "--disk-only")
	if top := d.topFile(t, "dsab"); top != overlay {
		t.Fatalf("the snapshot after the abort: top %s, want %s", top, overlay)
	}
}

// stopMidDiskSnapshot starts `snapshot create NAME TAG --disk-only` and
// stops QEMU (SIGSTOP) once the job has written its "creating" record,
// then waits for the overlay file: the job then waits on the stopped
// QEMU in its overlay step. On a busy machine the agent may answer the
// job's guest-ping before the stop; the freeze then meets the stopped
// QEMU and the create fails at the freeze's deadline, before any overlay.
// Such an attempt is undone (QEMU resumed, the guest thawed) and made
// again.
func (d *daemon) stopMidDiskSnapshot(t *testing.T, name, tag string, pid int, records, overlay string) *background {
	t.Helper()
	for attempt := 1; attempt <= 3; attempt++ {
		create := d.background(t, "snapshot", "create", name, tag, "--disk-only")
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
		deadline = time.Now().Add(150 * time.Second)
		for {
			if _, err := os.Stat(overlay); err == nil {
				return create
			}
			select {
			case <-create.done:
			default:
				if time.Now().After(deadline) {
					t.Fatalf("no overlay file within 150s; the create: stdout %s, stderr %s", create.stdout, create.stderr)
				}
				time.Sleep(10 * time.Millisecond)
				continue
			}
			break
		}
		t.Logf("attempt %d: the create ended before it made the overlay (the ping was answered before QEMU stopped): %s", attempt, create.stderr)
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		d.waitAgent(t, name, 2*time.Minute)
		d.vmsup(t, "agent", name, `{"execute":"guest-fsfreeze-thaw"}`) // the late freeze may have reached the guest
	}
	t.Fatalf("the create of %s never waited on the stopped QEMU in 3 attempts", tag)
	return nil
}
