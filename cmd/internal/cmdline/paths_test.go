package cmdline

import (
	"strings"
	"testing"
)

func TestDefaultPaths(t *testing.T) {
	orig := geteuid
	t.Cleanup(func() { geteuid = orig })

	geteuid = func() int { return 0 }
	if s, err := DefaultSocket(); err != nil || s != "/run/vmsup/vmsup.sock" {
		t.Errorf("root socket %q %v", s, err)
	}
	if s, err := DefaultStateDir(); err != nil || s != "/var/lib/vmsup" {
		t.Errorf("root state dir %q %v", s, err)
	}

	geteuid = func() int { return 1000 }
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	if s, err := DefaultSocket(); err != nil || s != "/run/user/1000/vmsup.sock" {
		t.Errorf("user socket %q %v", s, err)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if _, err := DefaultSocket(); err == nil || !strings.Contains(err.Error(), "XDG_RUNTIME_DIR is not set") || !strings.Contains(err.Error(), "--socket") {
		t.Errorf("no XDG_RUNTIME_DIR: %v", err)
	}
	t.Setenv("XDG_STATE_HOME", "/home/u/.state")
	if s, err := DefaultStateDir(); err != nil || s != "/home/u/.state/vmsup" {
		t.Errorf("user state dir %q %v", s, err)
	}
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if s, err := DefaultStateDir(); err != nil || s != "/home/u/.local/state/vmsup" {
		t.Errorf("user state dir without XDG_STATE_HOME %q %v", s, err)
	}
}

// TestSocket: --socket, then VMSUP_SOCKET, then the default; a user
// without XDG_RUNTIME_DIR gets an error naming both ways out.
func TestSocket(t *testing.T) {
	orig := geteuid
	t.Cleanup(func() { geteuid = orig })
	geteuid = func() int { return 1000 }
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	t.Setenv(SocketEnv, "/env.sock")
	if s, err := Socket("/flag.sock"); err != nil || s != "/flag.sock" {
		t.Errorf("with the flag: %q %v", s, err)
	}
	if s, err := Socket(""); err != nil || s != "/env.sock" {
		t.Errorf("with the env: %q %v", s, err)
	}
	t.Setenv(SocketEnv, "")
	if s, err := Socket(""); err != nil || s != "/run/user/1000/vmsup.sock" {
		t.Errorf("default: %q %v", s, err)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if _, err := Socket(""); err == nil || !strings.Contains(err.Error(), "--socket") || !strings.Contains(err.Error(), SocketEnv) {
		t.Errorf("no XDG_RUNTIME_DIR: %v", err)
	}
}
