package main_test

import (
	"os"
	"strings"
	"testing"

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
