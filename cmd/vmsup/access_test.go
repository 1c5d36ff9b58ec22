package main_test

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmsup/vmsup/tests/testkit"
)

// TestAccessByPeer runs the daemon as root with an admin and a reader group
// and calls it with curl as nobody: outside both groups every route is
// refused, a reader may only read, and an admin group member may do all.
// Each attack of the security table is refused to a non-admin before the
// spec or the QMP command is even looked at.
func TestAccessByPeer(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t)
	d := newDaemon(t)
	if err := os.Chmod(d.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d.args = []string{"--admin-group", "4242", "--reader-group", "4343"}
	d.start(t)
	st, err := os.Stat(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o666 {
		t.Errorf("socket mode %s with group access, want 0666 (the peer check decides)", st.Mode().Perm())
	}
	d.ok(t, "define", writeSpec(t, d.dir, "vm1"))

	const nobody = testkit.Nobody
	stranger := []uint32(nil)
	reader := []uint32{4343}
	admin := []uint32{4242}
	attacks := []struct{ name, method, path, body string }{
		{"emulator", "POST", "/v1/domains", `{"name":"evil","machine":"none","emulator":"/tmp/evil.sh"}`},
		{"extra_args", "POST", "/v1/domains", `{"name":"evil","machine":"none","extra_args":["-incoming","exec:touch /tmp/pwned"]}`},
		{"serial file", "POST", "/v1/domains", `{"name":"evil","machine":"none","serial":{"type":"file","path":"/etc/passwd"}}`},
		{"raw qmp migrate", "POST", "/v1/domains/vm1/qmp", `{"execute":"migrate","arguments":{"uri":"exec:touch /tmp/pwned"}}`},
		{"raw qmp hmp", "POST", "/v1/domains/vm1/qmp", `{"execute":"human-monitor-command","arguments":{"command-line":"info status"}}`},
		{"start", "POST", "/v1/domains/vm1/start", ""},
		{"undefine", "DELETE", "/v1/domains/vm1", ""},
		{"console", "GET", "/v1/domains/vm1/console", ""},
	}
	for _, who := range []struct {
		name   string
		groups []uint32
	}{{"stranger", stranger}, {"reader", reader}} {
		for _, a := range attacks {
			code, body := testkit.CurlAs(t, d.socket, nobody, nobody, who.groups, a.method, a.path, a.body)
			if code != 403 || !strings.Contains(body, "permission denied: uid 65534") || !strings.Contains(body, "needs admin access") ||
				!strings.Contains(body, "gid 4242") {
				t.Errorf("%s, %s: %d %s; want 403 naming the uid and the admin group", who.name, a.name, code, body)
			}
			if who.name == "reader" && !strings.Contains(body, "read-only access") {
				t.Errorf("reader, %s: %s; want it to say the peer has read-only access", a.name, body)
			}
		}
	}
	for _, path := range []string{"/v1/domains", "/v1/domains/vm1", "/v1/jobs", "/v1/domains/vm1/jobs", "/v1/trace?limit=1"} {
		code, body := testkit.CurlAs(t, d.socket, nobody, nobody, stranger, "GET", path, "")
		if code != 403 || !strings.Contains(body, "needs read access") {
			t.Errorf("stranger GET %s: %d %s, want 403", path, code, body)
		}
		code, body = testkit.CurlAs(t, d.socket, nobody, nobody, reader, "GET", path, "")
		if code != 200 {
			t.Errorf("reader GET %s: %d %s, want 200", path, code, body)
		}
	}
	code, body := testkit.CurlAs(t, d.socket, nobody, nobody, admin, "POST", "/v1/domains", `{"name":"vm2","machine":"none"}`)
	if code != 201 {
		t.Errorf("admin group define: %d %s, want 201", code, body)
	}
	code, body = testkit.CurlAs(t, d.socket, nobody, 4242, nil, "DELETE", "/v1/domains/vm2", "")
	if code != 200 {
		t.Errorf("admin group (primary gid) undefine: %d %s, want 200", code, body)
	}
	if log := d.stderr.String(); !strings.Contains(log, `"peer_uid":65534`) {
		t.Errorf("the request log does not name the peer's uid")
	}
}

// TestSpecPolicy: as an admin, each attack of the security table through
// the spec and raw QMP is refused without --allow-raw-qemu, with an error
// naming the field or command and the flag; with the flag, extra_args and
// raw QMP pass and the VM is tainted, durably across a daemon restart.
func TestSpecPolicy(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	d.start(t)
	script := filepath.Join(d.dir, "evil.sh")
	victim := filepath.Join(d.dir, "victim")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ntouch "+victim+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	precious := filepath.Join(d.dir, "precious")
	if err := os.WriteFile(precious, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	specMachine := func(name, machine, extra string) string {
		path := filepath.Join(d.dir, name+".yaml")
		if err := os.WriteFile(path, []byte("name: "+name+"\nmachine: "+machine+"\naccel: tcg\nmemory: 64M\n"+extra), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	spec := func(name, extra string) string { return specMachine(name, "none", extra) }
	d.fails(t, 1, []string{`spec field "emulator"`, script, "not an emulator the daemon allows", "--emulator"},
		"define", spec("e1", "emulator: "+script+"\n"))
	d.fails(t, 1, []string{`spec field "extra_args"`, "--allow-raw-qemu"},
		"define", spec("e2", "extra_args: [\"-incoming\", \"exec:touch "+victim+"\"]\n"))
	d.fails(t, 1, []string{`spec field "serial.path"`, "run dir"},
		"define", spec("e3", "serial: {type: file, path: "+precious+"}\n"))
	d.fails(t, 1, []string{`spec field "serial.path"`, "run dir"},
		"define", spec("e4", "serial: {type: socket, path: "+precious+"}\n"))
	d.fails(t, 1, []string{`spec field "kernel"`, "outside the image roots"},
		"define", specMachine("e5", "q35", "kernel: /etc/shadow\n"))
	d.ok(t, "define", spec("vm1", ""))
	d.ok(t, "start", "vm1")
	d.fails(t, 1, []string{`QMP command "migrate" is refused`, "--allow-raw-qemu"},
		"qmp", "vm1", `{"execute":"migrate","arguments":{"uri":"exec:touch `+victim+`"}}`)
	d.fails(t, 1, []string{`QMP command "human-monitor-command" is refused`},
		"qmp", "vm1", `{"execute":"human-monitor-command","arguments":{"command-line":"info status"}}`)
	if in := d.info(t, "vm1"); len(in.Tainted) != 0 {
		t.Errorf("tainted after refusals: %v", in.Tainted)
	}
	if _, err := os.Stat(victim); err == nil {
		t.Fatal("an attack ran its command")
	}
	if data, _ := os.ReadFile(precious); string(data) != "precious" {
		t.Fatal("an attack touched the precious file")
	}
	d.ok(t, "destroy", "vm1")
	if err := d.stop(t); err != nil {
		t.Fatal(err)
	}

	d.args = []string{"--allow-raw-qemu"}
	d.start(t)
	d.fails(t, 1, []string{`spec field "emulator"`}, "define", spec("e1", "emulator: "+script+"\n"))
	d.fails(t, 1, []string{`spec field "serial.path"`}, "define", spec("e3", "serial: {type: file, path: "+precious+"}\n"))
	d.ok(t, "define", spec("raw", "extra_args: [\"-no-user-config\"]\n"))
	if in := d.info(t, "raw"); !slices.Equal(in.Tainted, []string{"extra_args"}) {
		t.Errorf("after extra_args: tainted %v, want [extra_args]", in.Tainted)
	}
	d.ok(t, "start", "vm1")
	out := d.ok(t, "qmp", "vm1", `{"execute":"human-monitor-command","arguments":{"command-line":"info status"}}`)
	if !strings.Contains(out, "running") {
		t.Errorf("hmp info status: %q", out)
	}
	in := d.info(t, "vm1")
	if !slices.Equal(in.Tainted, []string{"qmp human-monitor-command"}) {
		t.Errorf("after raw QMP: tainted %v", in.Tainted)
	}
	// Even allowed, a migration to a program cannot run it: QEMU runs
	// under its seccomp sandbox (spawn=deny).
	status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(in.PID), "status"))
	if err != nil || !strings.Contains(string(status), "\nSeccomp:\t2\n") {
		t.Errorf("QEMU pid %d is not in seccomp filter mode (%v):\n%s", in.PID, err, status)
	}
	// QEMU 7.2's filter kills QEMU at the fork: the VM crashes, the
	// command never runs.
	d.vmsup(t, "qmp", "vm1", `{"execute":"migrate","arguments":{"uri":"exec:touch `+victim+`"}}`)
	time.Sleep(500 * time.Millisecond)
	if _, err := os.Stat(victim); err == nil {
		t.Error("migrate exec: ran its command under the sandbox")
	}
	d.vmsup(t, "destroy", "vm1") // when QEMU survived the refusal
	if err := d.stop(t); err != nil {
		t.Fatal(err)
	}
	d.args = nil
	d.start(t)
	if in := d.info(t, "vm1"); !slices.Equal(in.Tainted, []string{"qmp human-monitor-command", "qmp migrate"}) {
		t.Errorf("after a restart: tainted %v, want the record kept", in.Tainted)
	}
	d.ok(t, "undefine", "raw")
	d.ok(t, "define", spec("raw", ""))
	if in := d.info(t, "raw"); len(in.Tainted) != 0 {
		t.Errorf("undefined and defined again: still tainted %v", in.Tainted)
	}
}
