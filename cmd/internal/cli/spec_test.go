package cli

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestResolveSpecPaths(t *testing.T) {
	base := "/srv/specs"
	in := "# a comment\nname: web1\nkernel: ../img/vmlinuz\ninitrd: /abs/initrd.img\nmemory: 256M\ncpus: 2\n" +
		"disks:\n  - {path: web1.qcow2, format: qcow2}\n  - path: /abs/data.raw\nserial: {type: file, path: logs/serial.log}\n"
	out := string(resolveSpecPaths([]byte(in), base))
	for _, want := range []string{
		"kernel: " + filepath.Clean("/srv/img/vmlinuz"),
		"initrd: /abs/initrd.img",
		"path: /srv/specs/web1.qcow2",
		"path: /abs/data.raw",
		"path: /srv/specs/logs/serial.log",
		"memory: 256M",
		"cpus: 2",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("resolved spec lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "name:") > strings.Index(out, "kernel:") {
		t.Errorf("key order changed:\n%s", out)
	}
	for _, same := range []string{
		"name: web1\nkernel: /abs/vmlinuz\n",         // nothing relative
		"name: [broken\nkernel: rel\n",               // does not parse: the daemon says why
		"name: a\nkernel: rel\n---\nname: b\n",       // two documents: the daemon refuses
		`{"name":"web1","kernel":"/abs/vmlinuz"}`,    // JSON, absolute
		"name: web1\nemulator: qemu-system-x86_64\n", // a bare emulator name is looked up in PATH
	} {
		if got := string(resolveSpecPaths([]byte(same), base)); got != same {
			t.Errorf("spec %q rewritten to %q", same, got)
		}
	}
	img := string(resolveSpecPaths([]byte("name: d\ndisks:\n  - {image: ../img/base.qcow2, size: 8G}\ncloud_init: {user_data_file: ud.yaml, hostname: d}\n"), base))
	for _, want := range []string{"image: /srv/img/base.qcow2", "user_data_file: /srv/specs/ud.yaml", "hostname: d"} {
		if !strings.Contains(img, want) {
			t.Errorf("resolved spec lacks %q:\n%s", want, img)
		}
	}
	js := string(resolveSpecPaths([]byte(`{"name":"web1","kernel":"k/vmlinuz"}`), base))
	if !strings.Contains(js, "kernel: /srv/specs/k/vmlinuz") {
		t.Errorf("JSON spec: %s", js)
	}
}

func TestWithDefault(t *testing.T) {
	out := string(withDefault([]byte("name: a\nmemory: 64M\n"), "on_crash", "restart"))
	if !strings.Contains(out, "on_crash: restart") || !strings.Contains(out, "memory: 64M") {
		t.Fatalf("default not added: %q", out)
	}
	kept := "name: a\non_crash: destroy\n"
	if got := string(withDefault([]byte(kept), "on_crash", "restart")); got != kept {
		t.Fatalf("spec's own on_crash overwritten: %q", got)
	}
	bad := "name: [unclosed\n"
	if got := string(withDefault([]byte(bad), "on_crash", "restart")); got != bad {
		t.Fatalf("unparsable spec rewritten: %q", got)
	}
}
