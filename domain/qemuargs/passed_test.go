package qemuargs_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/cloudinit"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

// blockdevs returns the decoded -blockdev options of argv by node name.
func blockdevs(t *testing.T, argv []string) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] != "-blockdev" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(argv[i+1]), &m); err != nil {
			t.Fatalf("-blockdev %s: %v", argv[i+1], err)
		}
		out[m["node-name"].(string)] = m
	}
	return out
}

// With Passed, every file is an fd set named after its fd, each set is
// added (-add-fd, labelled with its spec field) before its use, the
// overlay's backing is the base node (never the name in its header), and
// kernel and initrd are the run-dir copies.
func TestBuildArgsPassedFiles(t *testing.T) {
	spec := &domain.Spec{Name: "p1", UUID: "6b3c2f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f", Machine: "q35", Memory: 64 * domain.MiB, CPUs: 1,
		Kernel: "/img/vmlinuz", Initrd: "/img/initrd", Append: "console=ttyS0",
		Disks:     []domain.Disk{{Path: "/img/a.raw"}, {Image: "/img/base.qcow2", Format: domain.DiskFormatQCOW2}, {Path: "/img/ro.raw", ReadOnly: true}},
		CloudInit: &cloudinit.Config{}}
	rp, err := qemuargs.NewRunPaths("/run/vmsup", "p1")
	if err != nil {
		t.Fatal(err)
	}
	host := &qemuargs.Host{Disks: []string{"/img/a.raw", "/state/disks/p1/1.qcow2", "/img/ro.raw"}, Seed: "/state/seed/p1.img",
		NICs: nil,
		Passed: &qemuargs.Passed{Disks: []int{5, 7, 8}, Backing: [][]qemuargs.Layer{nil, {{FD: 6, Format: "qcow2", Field: "disks[1].image", Path: "/img/base.qcow2"}}, nil}, Seed: 9,
			Kernel: "/run/vmsup/p1/kernel", Initrd: "/run/vmsup/p1/initrd"}}
	argv, err := qemuargs.BuildArgs(spec, rp, "tcg", host)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(argv, " ")
	opened := strings.Join(withoutFDLabels(argv), " ") // what QEMU opens; the labels only name the files
	for _, name := range []string{"/img/", "/state/"} {
		if strings.Contains(opened, name) {
			t.Errorf("argv names a file under %s: %s", name, joined)
		}
	}
	if i := slices.Index(argv, "-kernel"); i < 0 || argv[i+1] != "/run/vmsup/p1/kernel" {
		t.Errorf("-kernel is not the run-dir copy: %s", joined)
	}
	if i := slices.Index(argv, "-initrd"); i < 0 || argv[i+1] != "/run/vmsup/p1/initrd" {
		t.Errorf("-initrd is not the run-dir copy: %s", joined)
	}
	wantAdd := map[string]string{
		"fd=5,set=5,opaque=disks[0].path:/img/a.raw":                 "/dev/fdset/5",
		"fd=6,set=6,opaque=disks[1].image:/img/base.qcow2":           "/dev/fdset/6",
		"fd=7,set=7,opaque=disks[1] overlay:/state/disks/p1/1.qcow2": "/dev/fdset/7",
		"fd=8,set=8,opaque=disks[2].path:/img/ro.raw":                "/dev/fdset/8",
		"fd=9,set=9,opaque=cloud_init seed:/state/seed/p1.img":       "/dev/fdset/9",
	}
	for add, set := range wantAdd {
		i := slices.Index(argv, add)
		if i < 1 || argv[i-1] != "-add-fd" {
			t.Errorf("no -add-fd %s in %s", add, joined)
			continue
		}
		if use := strings.Index(joined, `"filename":"`+set+`"`); use < strings.Index(joined, add) {
			t.Errorf("%s is not used after it is added (-add-fd %s)", set, add)
		}
	}
	bd := blockdevs(t, argv)
	check := func(node, key string, want any) {
		t.Helper()
		if got := bd[node][key]; got != want {
			t.Errorf("node %s: %s = %v, want %v", node, key, got, want)
		}
	}
	check("disk0-file", "filename", "/dev/fdset/5")
	check("disk0-file", "read-only", false)
	check("disk0", "driver", "raw")
	check("disk1-b0-file", "filename", "/dev/fdset/6")
	check("disk1-b0-file", "read-only", true)
	check("disk1-b0", "driver", "qcow2")
	if v, ok := bd["disk1-b0"]["backing"]; !ok || v != nil {
		t.Errorf("a qcow2 base must have backing null (no name from its header): %v", bd["disk1-b0"])
	}
	check("disk1-file", "filename", "/dev/fdset/7")
	check("disk1", "driver", "qcow2")
	check("disk1", "backing", "disk1-b0")
	check("disk2-file", "filename", "/dev/fdset/8")
	check("disk2-file", "read-only", true)
	check("seed-file", "filename", "/dev/fdset/9")

	live := qemuargs.LiveDevices(spec, host)
	for i, want := range []struct {
		set     int
		backing []int
	}{{5, nil}, {7, []int{6}}, {8, nil}} {
		if got := live.Disks[i]; got.FDSet != want.set || !slices.Equal(got.BackingFDSets, want.backing) {
			t.Errorf("live disk %d: fd set %d, backing %v, want %d, %v", i, got.FDSet, got.BackingFDSets, want.set, want.backing)
		}
	}
	if got := qemuargs.BackingNode(live.Disks[1].Node, 0); bd[got] == nil {
		t.Errorf("BackingNode(%s, 0) = %q, not a node of the command line (what a detach removes)", live.Disks[1].Node, got)
	}
}

// A Passed that does not fit the spec is refused, not half used.
func TestBuildArgsPassedMismatch(t *testing.T) {
	spec := &domain.Spec{Name: "p2", UUID: "6b3c2f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f", Machine: "q35", Memory: 64 * domain.MiB, CPUs: 1,
		Disks: []domain.Disk{{Image: "/img/base.raw"}}}
	rp, err := qemuargs.NewRunPaths("/run/vmsup", "p2")
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]*qemuargs.Passed{
		"no base fd":       {Disks: []int{5}, Backing: [][]qemuargs.Layer{nil}},
		"listener fd":      {Disks: []int{3}, Backing: [][]qemuargs.Layer{{{FD: 6, Format: "raw"}}}},
		"missing disk fd":  {Disks: nil, Backing: nil},
		"bad base format":  {Disks: []int{5}, Backing: [][]qemuargs.Layer{{{FD: 6, Format: "vmdk"}}}},
		"kernel copy only": {Disks: []int{5}, Backing: [][]qemuargs.Layer{{{FD: 6, Format: "raw"}}}, Kernel: "/run/vmsup/p2/kernel"},
	} {
		host := &qemuargs.Host{Disks: []string{"/state/disks/p2/0.qcow2"}, NICs: []qemuargs.NIC{}, Passed: p}
		if _, err := qemuargs.BuildArgs(spec, rp, "tcg", host); err == nil || !strings.Contains(err.Error(), "passed files") {
			t.Errorf("%s: BuildArgs = %v, want an error about the passed files", name, err)
		}
	}
}

// A disk with disk-only snapshots: its newest overlay on top, every image
// under it from its own fd, each the backing of the node above, down to
// the disk's own raw file (which takes no backing option).
func TestBuildArgsPassedChain(t *testing.T) {
	spec := &domain.Spec{Name: "p3", UUID: "6b3c2f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f", Machine: "q35", Memory: 64 * domain.MiB, CPUs: 1,
		Disks: []domain.Disk{{Path: "/img/a.raw"}}}
	rp, err := qemuargs.NewRunPaths("/run/vmsup", "p3")
	if err != nil {
		t.Fatal(err)
	}
	host := &qemuargs.Host{Disks: []string{"/state/snap/s2.disk0.qcow2"}, NICs: []qemuargs.NIC{},
		Under: [][]string{{"/state/snap/s1.disk0.qcow2", "/img/a.raw"}},
		Passed: &qemuargs.Passed{Disks: []int{5}, Backing: [][]qemuargs.Layer{{
			{FD: 6, Format: "qcow2", Field: "disks[0] snapshot overlay", Path: "/state/snap/s1.disk0.qcow2"}, {FD: 7, Format: "raw", Field: "disks[0].path", Path: "/img/a.raw"}}}}}
	argv, err := qemuargs.BuildArgs(spec, rp, "tcg", host)
	if err != nil {
		t.Fatal(err)
	}
	bd := blockdevs(t, argv)
	for node, want := range map[string][2]any{
		"disk0": {"qcow2", "disk0-b0"}, "disk0-b0": {"qcow2", "disk0-b1"},
	} {
		if bd[node]["driver"] != want[0] || bd[node]["backing"] != want[1] {
			t.Errorf("node %s = %v, want driver %v backing %v", node, bd[node], want[0], want[1])
		}
	}
	if b := bd["disk0-b1"]; b["driver"] != "raw" || b["read-only"] != true {
		t.Errorf("the disk's own file under the chain = %v, want raw, read-only", b)
	} else if _, ok := b["backing"]; ok {
		t.Errorf("a raw node got a backing option: %v", b)
	}
	for fd, file := range map[string]string{"disk0-file": "/dev/fdset/5", "disk0-b0-file": "/dev/fdset/6", "disk0-b1-file": "/dev/fdset/7"} {
		if bd[fd]["filename"] != file {
			t.Errorf("%s filename %v, want %s", fd, bd[fd]["filename"], file)
		}
	}
	if strings.Contains(strings.Join(withoutFDLabels(argv), " "), "/state/") {
		t.Errorf("argv names a chain file: %v", argv)
	}
	host.Passed.Backing[0] = host.Passed.Backing[0][:1]
	if _, err := qemuargs.BuildArgs(spec, rp, "tcg", host); err == nil || !strings.Contains(err.Error(), "backing fds") {
		t.Errorf("a chain with an image missing: %v, want an error", err)
	}
}

// withoutFDLabels is argv without the values of -add-fd, whose opaque
// labels name the files that QEMU gets as fds.
func withoutFDLabels(argv []string) []string {
	var out []string
	for i := 0; i < len(argv); i++ {
		if argv[i] == "-add-fd" {
			i++
			continue
		}
		out = append(out, argv[i])
	}
	return out
}

// An fd's label gives back the path, whatever the path holds.
func TestFDLabelPath(t *testing.T) {
	for _, path := range []string{"/img/a.raw", "/odd/a:b,c d.qcow2"} {
		if got, ok := qemuargs.FDLabelPath(qemuargs.FDLabel("disks[0].path", path)); !ok || got != path {
			t.Errorf("FDLabelPath(FDLabel(%q)) = %q, %v", path, got, ok)
		}
	}
	if _, ok := qemuargs.FDLabelPath("attach-disk hot0"); ok {
		t.Error("a label without a path gave one")
	}
}
