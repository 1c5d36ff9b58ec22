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
		Passed: &qemuargs.Passed{Disks: []int{5, 7, 8}, Bases: []int{0, 6, 0}, Seed: 9,
			Kernel: "/run/vmsup/p1/kernel", Initrd: "/run/vmsup/p1/initrd"}}
	argv, err := qemuargs.BuildArgs(spec, rp, "tcg", host)
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(argv, " ")
	for _, name := range []string{"/img/", "/state/"} {
		if strings.Contains(joined, name) {
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
		"fd=5,set=5,opaque=disks[0].path":    "/dev/fdset/5",
		"fd=6,set=6,opaque=disks[1].image":   "/dev/fdset/6",
		"fd=7,set=7,opaque=disks[1] overlay": "/dev/fdset/7",
		"fd=8,set=8,opaque=disks[2].path":    "/dev/fdset/8",
		"fd=9,set=9,opaque=cloud_init seed":  "/dev/fdset/9",
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
	check("disk1-base-file", "filename", "/dev/fdset/6")
	check("disk1-base-file", "read-only", true)
	check("disk1-base", "driver", "qcow2")
	if v, ok := bd["disk1-base"]["backing"]; !ok || v != nil {
		t.Errorf("a qcow2 base must have backing null (no name from its header): %v", bd["disk1-base"])
	}
	check("disk1-file", "filename", "/dev/fdset/7")
	check("disk1", "driver", "qcow2")
	check("disk1", "backing", "disk1-base")
	check("disk2-file", "filename", "/dev/fdset/8")
	check("disk2-file", "read-only", true)
	check("seed-file", "filename", "/dev/fdset/9")

	live := qemuargs.LiveDevices(spec, host)
	for i, want := range [][2]int{{5, 0}, {7, 6}, {8, 0}} {
		if got := [2]int{live.Disks[i].FDSet, live.Disks[i].BaseFDSet}; got != want {
			t.Errorf("live disk %d: fd sets %v, want %v", i, got, want)
		}
	}
	if got := qemuargs.BaseNode(1); got != live.Disks[1].Node+"-base" {
		t.Errorf("BaseNode(1) = %q, not what a detach removes", got)
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
		"no base fd":       {Disks: []int{5}, Bases: []int{0}},
		"listener fd":      {Disks: []int{3}, Bases: []int{6}},
		"missing disk fd":  {Disks: nil, Bases: nil},
		"kernel copy only": {Disks: []int{5}, Bases: []int{6}, Kernel: "/run/vmsup/p2/kernel"},
	} {
		host := &qemuargs.Host{Disks: []string{"/state/disks/p2/0.qcow2"}, NICs: []qemuargs.NIC{}, Passed: p}
		if _, err := qemuargs.BuildArgs(spec, rp, "tcg", host); err == nil || !strings.Contains(err.Error(), "passed files") {
			t.Errorf("%s: BuildArgs = %v, want an error about the passed files", name, err)
		}
	}
}
