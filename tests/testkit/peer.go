package testkit

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Nobody is the uid and gid tests run foreign clients as (Debian's nobody
// and nogroup).
const Nobody = 65534

// RequireRoot skips t unless the test runs as root (needed to run a client
// as another uid).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
}

// CurlAs sends one request to the API on a unix socket with curl, run as
// uid and gid with the supplementary groups given, and returns the HTTP
// status and body. The socket's directory must let that uid reach it.
func CurlAs(t testing.TB, socket string, uid, gid uint32, groups []uint32, method, path, body string) (int, string) {
	t.Helper()
	RequireRoot(t)
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := []string{"-sS", "--max-time", "50", "--unix-socket", socket, "-X", method, "-o", "-", "-w", "\n%{http_code}"}
	if body != "" {
		args = append(args, "--data-binary", "@-", "-H", "Content-Type: application/json")
	}
	args = append(args, "http://vmsup"+path)
	cmd := exec.CommandContext(ctx, curl, args...)
	cmd.Stdin = strings.NewReader(body)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("curl as uid %d %s %s: %v: %s", uid, method, path, err, errb.String())
	}
	s := strings.TrimRight(out.String(), "\n")
	i := strings.LastIndexByte(s, '\n')
	code, err := strconv.Atoi(s[i+1:])
	if err != nil || i < 0 {
		t.Fatalf("curl as uid %d %s %s: no status in %q", uid, method, path, s)
	}
	return code, s[:i]
}
