package qemuargs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vmsup/vmsup/domain"
)

func TestDetectAccel(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A regular file stands in for /dev/kvm: what matters is that it
	// opens read-write.
	kvm := write("kvm", "", 0o600)
	missing := filepath.Join(dir, "missing")
	intel := write("intel", "processor\t: 0\nflags\t\t: fpu vme de vmx sse2\n\nprocessor\t: 1\nflags\t\t: fpu vme de vmx sse2\n", 0o644)
	amd := write("amd", "processor\t: 0\nflags\t\t: fpu svm lm\n", 0o644)
	none := write("none", "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr hypervisor\n", 0o644)
	lookalike := write("lookalike", "processor\t: 0\nflags\t\t: fpu vmxx svm_lock\nvmx flags\t: ept vpid\nmodel name\t: vmx svm\n", 0o644)
	empty := write("empty", "", 0o644)

	cases := []struct {
		name, kvm, cpuinfo, want string
	}{
		{"intel", kvm, intel, domain.AccelKVM},
		{"amd", kvm, amd, domain.AccelKVM},
		{"no virt flag (software /dev/kvm)", kvm, none, domain.AccelTCG},
		{"flag look-alikes", kvm, lookalike, domain.AccelTCG},
		{"empty cpuinfo", kvm, empty, domain.AccelTCG},
		{"no cpuinfo", kvm, missing, domain.AccelTCG},
		{"no /dev/kvm", missing, intel, domain.AccelTCG},
		{"/dev/kvm is a directory", dir, intel, domain.AccelTCG},
	}
	if os.Geteuid() != 0 { // root opens any file read-write
		cases = append(cases, struct{ name, kvm, cpuinfo, want string }{"read-only /dev/kvm", write("kvm-ro", "", 0o400), intel, domain.AccelTCG})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := detectAccel(c.kvm, c.cpuinfo); got != c.want {
				t.Fatalf("detectAccel = %q, want %q", got, c.want)
			}
		})
	}
}

func TestDetectAccelHost(t *testing.T) {
	got := DetectAccel()
	if got != domain.AccelKVM && got != domain.AccelTCG {
		t.Fatalf("DetectAccel() = %q", got)
	}
	t.Logf("this host: %s", got)
}

func TestResolveAccel(t *testing.T) {
	host := DetectAccel()
	for in, want := range map[string]string{"kvm": "kvm", "tcg": "tcg", "auto": host, "": host} {
		if got := ResolveAccel(in); got != want {
			t.Errorf("ResolveAccel(%q) = %q, want %q", in, got, want)
		}
	}
}
