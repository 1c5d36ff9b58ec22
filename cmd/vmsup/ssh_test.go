package main_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCLIPortAndSSH: `vmsup port` lists a running VM's forwards with the
// host ports QEMU picked, info and list --json show its NIC, and `vmsup
// ssh` execs the system ssh (a fake on PATH here) at the forward of guest
// port 22 with the options and the user it documents; a VM without such a
// forward gets a clear error.
func TestCLIPortAndSSH(t *testing.T) {
	d := startDaemon(t)
	dir := t.TempDir()
	spec := filepath.Join(dir, "web.yaml")
	// q35 without a kernel or disk: SeaBIOS finds nothing to boot, but
	// QEMU listens on the forwards.
	if err := os.WriteFile(spec, []byte("name: web\nmachine: q35\naccel: tcg\nmemory: 64M\n"+
		"networks:\n  - forwards: ['tcp:127.0.0.1:0-:22', 'tcp::0-:80']\ncloud_init: {hostname: web}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.ok(t, "define", spec)
	d.fails(t, 1, []string{"web is not running"}, "port", "web")
	d.ok(t, "start", "web")

	var fws []struct {
		Field     string `json:"field"`
		Proto     string `json:"proto"`
		HostAddr  string `json:"host_addr"`
		HostPort  int    `json:"host_port"`
		GuestPort int    `json:"guest_port"`
	}
	d.okJSON(t, &fws, "port", "web")
	if len(fws) != 2 || fws[0].HostPort == 0 || fws[1].HostPort == 0 || fws[0].GuestPort != 22 || fws[0].HostAddr != "127.0.0.1" || fws[1].Field != "networks[0].forwards[1]" {
		t.Fatalf("port --json: %+v", fws)
	}
	out := d.ok(t, "port", "web")
	if !strings.Contains(out, fmt.Sprintf("127.0.0.1:%d", fws[0].HostPort)) || !strings.Contains(out, fmt.Sprintf("0.0.0.0:%d", fws[1].HostPort)) {
		t.Errorf("port:\n%s", out)
	}
	if out := d.ok(t, "info", "web"); !strings.Contains(out, "NIC 0:") || !strings.Contains(out, "->:22") {
		t.Errorf("info:\n%s", out)
	}
	var list []struct {
		Name string `json:"name"`
		NICs []struct {
			MAC string `json:"mac"`
		} `json:"nics"`
	}
	d.okJSON(t, &list, "list")
	if len(list) != 1 || len(list[0].NICs) != 1 || len(list[0].NICs[0].MAC) != 17 {
		t.Errorf("list --json: %+v", list)
	}

	// A fake ssh records its arguments.
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	argsFile := filepath.Join(dir, "ssh-args")
	script := "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > " + argsFile + "\n"
	if err := os.WriteFile(filepath.Join(bin, "ssh"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{"VMSUP_SOCKET=" + d.socket, "PATH=" + bin + ":" + os.Getenv("PATH"), "HOME=" + dir, "VMSUP_CACHE=" + filepath.Join(dir, "cache")}
	r := runVmsup(t, env, nil, "ssh", "web", "--", "uname", "-a")
	if r.code != 0 {
		t.Fatalf("vmsup ssh: %s", r)
	}
	b, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatalf("the fake ssh did not run: %v", err)
	}
	got := strings.Split(strings.TrimSpace(string(b)), "\n")
	want := []string{"-p", strconv.Itoa(fws[0].HostPort), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "--", "debian@127.0.0.1", "uname", "-a"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("ssh args\n got %q\nwant %q", got, want)
	}
	r = runVmsup(t, env, nil, "ssh", "-l", "root", "web")
	if b, _ := os.ReadFile(argsFile); r.code != 0 || !strings.Contains(string(b), "root@127.0.0.1") {
		t.Errorf("ssh -l root: %s; args %s", r, b)
	}

	spec2 := writeSpec(t, dir, "nonet")
	d.ok(t, "define", spec2)
	d.ok(t, "start", "nonet")
	d.fails(t, 1, []string{"nonet has no forward to guest TCP port 22"}, "ssh", "nonet")
	d.ok(t, "destroy", "nonet")
	d.ok(t, "destroy", "web")
	d.fails(t, 1, []string{"web is not running"}, "ssh", "web")
}
