package qemuargs

import (
	"bufio"
	"os"
	"strings"

	"github.com/vmsup/vmsup/domain"
)

// Paths DetectAccel reads.
const (
	kvmDevicePath = "/dev/kvm"
	cpuinfoPath   = "/proc/cpuinfo"
)

// DetectAccel returns AccelKVM when hardware virtualization is usable and
// AccelTCG otherwise. KVM counts as usable only when /dev/kvm opens
// read-write AND a "flags" line of /proc/cpuinfo lists vmx (Intel) or svm
// (AMD): some hosts, nested or sandboxed, expose a /dev/kvm on which real
// guests fail, and the CPU flags tell them apart. It never fails: any
// doubt means TCG. The result is not cached; each call reads the files.
func DetectAccel() string {
	return detectAccel(kvmDevicePath, cpuinfoPath)
}

// detectAccel is DetectAccel with the two paths as parameters, for tests.
func detectAccel(kvmPath, cpuinfo string) string {
	f, err := os.OpenFile(kvmPath, os.O_RDWR, 0)
	if err != nil {
		return domain.AccelTCG
	}
	_ = f.Close()
	if !cpuHasVirtFlag(cpuinfo) {
		return domain.AccelTCG
	}
	return domain.AccelKVM
}

// cpuHasVirtFlag reports whether a "flags" line of the cpuinfo file lists
// vmx or svm as a whole word.
func cpuHasVirtFlag(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "flags" {
			continue
		}
		for _, flag := range strings.Fields(val) {
			if flag == "vmx" || flag == "svm" {
				return true
			}
		}
	}
	return false
}

// ResolveAccel turns a spec's accel into the one QEMU gets: "auto" (or
// empty) becomes DetectAccel(), anything else is returned unchanged.
func ResolveAccel(spec string) string {
	if spec == "" || spec == domain.AccelAuto {
		return DetectAccel()
	}
	return spec
}
