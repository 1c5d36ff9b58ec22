package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmsup/vmsup/tests/testkit"
)

func TestDecide(t *testing.T) {
	admin := &Group{Name: "vmsup", GID: 990}
	reader := &Group{Name: "vmsup-ro", GID: 991}
	p := Policy{AdminUIDs: []uint32{0, 1000}, AdminGroup: admin, ReaderGroup: reader}
	for _, c := range []struct {
		cred Cred
		want Access
	}{
		{Cred{UID: 0, GID: 0}, Admin},
		{Cred{UID: 1000, GID: 1000}, Admin},
		{Cred{UID: 1001, GID: 990}, Admin},
		{Cred{UID: 1001, GID: 1001, Groups: []uint32{5, 990}}, Admin},
		{Cred{UID: 1001, GID: 1001, Groups: []uint32{991}}, Read},
		{Cred{UID: 1001, GID: 991, Groups: []uint32{990}}, Admin},
		{Cred{UID: 65534, GID: 65534}, None},
		{Cred{UID: 65534, GID: 65534, Groups: []uint32{1000}}, None}, // a gid equal to an admin uid is not that uid
	} {
		if got := p.Decide(c.cred); got != c.want {
			t.Errorf("Decide(%+v) = %s, want %s", c.cred, got, c.want)
		}
	}
	if got := DefaultPolicy(0).Decide(Cred{UID: 1000, GID: 0}); got != None {
		t.Errorf("root daemon, uid 1000 in gid 0: %s, want none (no group is granted by default)", got)
	}
	if got := DefaultPolicy(1000).Decide(Cred{UID: 1000, GID: 1000}); got != Admin {
		t.Errorf("daemon of uid 1000, peer uid 1000: %s, want admin", got)
	}
	if got := DefaultPolicy(1000).Decide(Cred{UID: 1001, GID: 1000}); got != None {
		t.Errorf("daemon of uid 1000, peer uid 1001: %s, want none", got)
	}
}

func TestCheckMessage(t *testing.T) {
	p := Policy{AdminUIDs: []uint32{0}, AdminGroup: &Group{Name: "vmsup", GID: 990}, ReaderGroup: &Group{Name: "991", GID: 991}}
	err := p.Check(Cred{PID: 42, UID: 65534, GID: 65534}, Admin, "POST /v1/domains")
	var de *DeniedError
	if !errors.As(err, &de) {
		t.Fatalf("Check: %v, want a *DeniedError", err)
	}
	want := `permission denied: uid 65534 (pid 42) may not POST /v1/domains: it needs admin access (uid 0, or a member of group "vmsup" (gid 990, --admin-group))`
	if err.Error() != want {
		t.Errorf("message\n got %s\nwant %s", err, want)
	}
	err = p.Check(Cred{PID: 42, UID: 65534, GID: 991}, Admin, "POST /v1/domains/x/qmp")
	if err == nil || !strings.HasSuffix(err.Error(), "; it has read-only access") {
		t.Errorf("reader asking for admin: %v", err)
	}
	err = p.Check(Cred{UID: 65534}, Read, "GET /v1/domains")
	if err == nil || !strings.Contains(err.Error(), "a member of gid 991 (--reader-group)") {
		t.Errorf("reader hint: %v", err)
	}
	if err := p.Check(Cred{UID: 65534, Groups: []uint32{991}}, Read, "GET /v1/domains"); err != nil {
		t.Errorf("reader reading: %v", err)
	}
	err = DefaultPolicy(0).Check(Cred{UID: 7}, Read, "GET /v1/domains")
	if err == nil || !strings.Contains(err.Error(), "the daemon grants no group access") {
		t.Errorf("default policy hint: %v", err)
	}
}

func TestLookupGroup(t *testing.T) {
	g, err := LookupGroup("4242")
	if err != nil || g.GID != 4242 {
		t.Fatalf("LookupGroup(4242) = %+v, %v", g, err)
	}
	g, err = LookupGroup("root")
	if err != nil || g.GID != 0 {
		t.Fatalf("LookupGroup(root) = %+v, %v", g, err)
	}
	if _, err := LookupGroup("no-such-group-vmsup-test"); !errors.Is(err, ErrNoSuchGroup) {
		t.Fatalf("LookupGroup of a missing group: %v, want ErrNoSuchGroup", err)
	}
}

// TestFromConnReal serves HTTP on a unix socket with ConnContext and
// connects as root and, with curl, as nobody with supplementary groups:
// the handler sees what the kernel says about each peer.
func TestFromConnReal(t *testing.T) {
	dir := testkit.ShortDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "p.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(socket, 0o777); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext:       ConnContext,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := FromContext(r.Context())
			if err != nil {
				http.Error(w, err.Error(), http.StatusForbidden)
				return
			}
			fmt.Fprintf(w, "uid=%d gid=%d groups=%v pid>0=%v", c.UID, c.GID, c.Groups, c.PID > 0)
		}),
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	resp, err := hc.Get("http://vmsup/")
	if err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	_, _ = fmt.Fprint(&sb, resp.StatusCode, " ")
	buf := make([]byte, 256)
	n, _ := resp.Body.Read(buf)
	resp.Body.Close()
	sb.Write(buf[:n])
	want := fmt.Sprintf("200 uid=%d gid=%d", os.Getuid(), os.Getgid())
	if !strings.HasPrefix(sb.String(), want) || !strings.HasSuffix(sb.String(), "pid>0=true") {
		t.Errorf("as ourselves: %q, want prefix %q", sb.String(), want)
	}

	code, body := testkit.CurlAs(t, socket, testkit.Nobody, testkit.Nobody, []uint32{4242, 4343}, "GET", "/", "")
	if code != 200 || body != "uid=65534 gid=65534 groups=[4242 4343] pid>0=true" {
		t.Errorf("as nobody: %d %q", code, body)
	}
}

// FuzzDecide: the decision is admin exactly for an admin uid or a member
// of the admin group, read exactly for other members of the reader group,
// and Check agrees with it.
func FuzzDecide(f *testing.F) {
	f.Add(uint32(0), uint32(0), uint32(0), uint32(990), uint32(991), true, true, uint32(1000))
	f.Add(uint32(65534), uint32(65534), uint32(991), uint32(990), uint32(991), true, true, uint32(1000))
	f.Add(uint32(1000), uint32(1000), uint32(5), uint32(990), uint32(991), false, false, uint32(1000))
	f.Fuzz(func(t *testing.T, uid, gid, group, adminGID, readerGID uint32, hasAdmin, hasReader bool, self uint32) {
		p := DefaultPolicy(self)
		if hasAdmin {
			p.AdminGroup = &Group{Name: "a", GID: adminGID}
		}
		if hasReader {
			p.ReaderGroup = &Group{Name: "r", GID: readerGID}
		}
		c := Cred{UID: uid, GID: gid, Groups: []uint32{group}}
		got := p.Decide(c)
		in := func(g uint32) bool { return gid == g || group == g }
		want := None
		switch {
		case uid == 0 || uid == self || hasAdmin && in(adminGID):
			want = Admin
		case hasReader && in(readerGID):
			want = Read
		}
		if got != want {
			t.Fatalf("Decide(%+v) under %+v = %s, want %s", c, p, got, want)
		}
		for _, need := range []Access{Read, Admin} {
			err := p.Check(c, need, "GET /x")
			if (err == nil) != (got >= need) {
				t.Fatalf("Check(%+v, %s) = %v with access %s", c, need, err, got)
			}
			if err != nil && !strings.Contains(err.Error(), fmt.Sprintf("uid %d ", uid)) {
				t.Fatalf("Check error does not name uid %d: %v", uid, err)
			}
		}
	})
}

// BenchmarkFromConn is the cost the daemon pays per connection: two
// getsockopt calls.
func BenchmarkFromConn(b *testing.B) {
	dir := b.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "b.sock"))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1))
		}
	}()
	c, err := net.Dial("unix", filepath.Join(dir, "b.sock"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := FromConn(c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecide is the cost per request: the decision on the stored
// credentials.
func BenchmarkDecide(b *testing.B) {
	p := Policy{AdminUIDs: []uint32{0}, AdminGroup: &Group{Name: "vmsup", GID: 990}, ReaderGroup: &Group{Name: "ro", GID: 991}}
	c := Cred{UID: 1000, GID: 1000, Groups: []uint32{4, 24, 27, 991}}
	b.ReportAllocs()
	for b.Loop() {
		if p.Check(c, Read, "GET /v1/domains") != nil {
			b.Fatal("refused")
		}
	}
}
