package main_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCLIHotplugTinyGuest: attach-disk, attach-nic, detach-disk and
// detach-nic on the running tiny guest, through the daemon; the guest's
// console shows the devices come and go, info shows the running
// definition, and --config changes only the definition. A file outside
// the image roots is refused as define refuses it.
func TestCLIHotplugTinyGuest(t *testing.T) {
	spec := requireGuest(t)
	d := startDaemon(t)
	d.ok(t, "define", spec)
	d.ok(t, "start", "tiny")
	con := d.background(t, "console", "tiny")
	con.stdout.WaitContains(t, "vmsup-guest: watching devices", 120*time.Second)

	disk := filepath.Join(d.dir, "data.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	// The daemon opens the file and passes it over QMP: a root daemon's
	// QEMU (its own user) needs no access to it, and its owner and mode
	// stay as they are.
	out := d.ok(t, "attach-disk", "tiny", disk)
	if !strings.Contains(out, "attached disk hot0 ("+disk+", raw): running VM") {
		t.Fatalf("attach-disk output %q", out)
	}
	if fi, err := os.Stat(disk); err != nil || fi.Mode().Perm() != 0o600 || int(fi.Sys().(*syscall.Stat_t).Uid) != os.Geteuid() {
		t.Fatalf("attach-disk changed the file's owner or mode: %v %v", fi.Mode(), err)
	}
	con.stdout.WaitContains(t, "vmsup-guest: block vda added", 60*time.Second)
	var in struct {
		Live struct {
			Disks []struct{ Node, Path string }
			NICs  []struct{ Device, MAC string }
		}
	}
	d.okJSON(t, &in, "info", "tiny")
	if len(in.Live.Disks) != 1 || in.Live.Disks[0].Node != "hot0" || in.Live.Disks[0].Path != disk {
		t.Fatalf("info live disks %+v", in.Live.Disks)
	}
	if text := d.ok(t, "info", "tiny"); !regexp.MustCompile(`Disk hot0:\s+` + regexp.QuoteMeta(disk) + ` \(raw, hot-plugged on hp0\)`).MatchString(text) {
		t.Errorf("info text lacks the hot-plugged disk:\n%s", text)
	}

	outside, err := os.MkdirTemp("", "vsout")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(outside)
	bad := filepath.Join(outside, "x.img")
	if err := os.WriteFile(bad, make([]byte, 512), 0o600); err != nil {
		t.Fatal(err)
	}
	d.fails(t, 1, []string{"attach-disk", "disks[0].path", "image root"}, "attach-disk", "tiny", bad)
	d.fails(t, 2, []string{"--format", "raw or qcow2"}, "attach-disk", "tiny", disk, "--format", "vmdk")

	out = d.ok(t, "attach-nic", "tiny", "--forward", "tcp:127.0.0.1:0-:8080")
	m := regexp.MustCompile(`^attached NIC hnic1 \(mac ([0-9a-f:]{17})\) forwards tcp:127\.0\.0\.1:([1-9][0-9]*)-:8080: running VM\n$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("attach-nic output %q", out)
	}
	con.stdout.WaitContains(t, "vmsup-guest: net eth0 added (mac "+m[1]+")", 60*time.Second)

	out = d.ok(t, "detach-disk", "tiny", "hot0")
	if !strings.Contains(out, "detached disk hot0") {
		t.Fatalf("detach-disk output %q", out)
	}
	con.stdout.WaitContains(t, "vmsup-guest: block vda removed", 30*time.Second)
	d.fails(t, 1, []string{"detach-disk", `"hot0"`, "no such"}, "detach-disk", "tiny", "hot0")
	d.ok(t, "detach-nic", "tiny", "0")
	con.stdout.WaitContains(t, "vmsup-guest: net eth0 removed", 30*time.Second)
	d.okJSON(t, &in, "info", "tiny")
	if len(in.Live.Disks) != 0 || len(in.Live.NICs) != 0 {
		t.Fatalf("info live after the detaches %+v", in.Live)
	}

	out = d.ok(t, "attach-disk", "tiny", disk, "--config", "--readonly")
	if !strings.Contains(out, "attached: definition") {
		t.Fatalf("attach-disk --config output %q", out)
	}
	if def := d.ok(t, "definition", "tiny"); !strings.Contains(def, disk) {
		t.Fatalf("definition lacks the --config disk:\n%s", def)
	}
	d.okJSON(t, &in, "info", "tiny")
	if len(in.Live.Disks) != 0 {
		t.Fatalf("a --config disk reached the running VM: %+v", in.Live)
	}
}
