package cmdline

import (
	"errors"
	"os"
	"path/filepath"
)

// Default paths, and the environment variable that names the socket.
const (
	rootSocket   = "/run/vmsup/vmsup.sock"
	rootStateDir = "/var/lib/vmsup"
	SocketEnv    = "VMSUP_SOCKET"
)

// geteuid is os.Geteuid; tests replace it.
var geteuid = os.Geteuid

// Socket resolves the daemon's socket: flag (the --socket flag) when it is
// set, else $VMSUP_SOCKET, else DefaultSocket.
func Socket(flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if s := os.Getenv(SocketEnv); s != "" {
		return s, nil
	}
	return DefaultSocket()
}

// DefaultSocket is the daemon's socket when neither --socket nor
// VMSUP_SOCKET is given: /run/vmsup/vmsup.sock for root,
// $XDG_RUNTIME_DIR/vmsup.sock otherwise.
func DefaultSocket() (string, error) {
	if geteuid() == 0 {
		return rootSocket, nil
	}
	dir := os.Getenv("XDG_RUNTIME_DIR")
	if dir == "" {
		return "", errors.New("no socket path: XDG_RUNTIME_DIR is not set; pass --socket PATH or set VMSUP_SOCKET")
	}
	return filepath.Join(dir, "vmsup.sock"), nil
}

// DefaultStateDir is the daemon's state dir when --state-dir is not given:
// /var/lib/vmsup for root, $XDG_STATE_HOME/vmsup (or
// ~/.local/state/vmsup) otherwise.
func DefaultStateDir() (string, error) {
	if geteuid() == 0 {
		return rootStateDir, nil
	}
	if dir := os.Getenv("XDG_STATE_HOME"); dir != "" {
		return filepath.Join(dir, "vmsup"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", errors.New("no state dir: neither XDG_STATE_HOME nor HOME is set; pass --state-dir DIR")
	}
	return filepath.Join(home, ".local", "state", "vmsup"), nil
}

// rootCacheDir is DefaultCacheDir for root.
const rootCacheDir = "/var/cache/vmsup"

// DefaultCacheDir is the cache of VM images that specs may name (an image
// root of the daemon beside its state dir): /var/cache/vmsup for root,
// $XDG_CACHE_HOME/vmsup (or ~/.cache/vmsup) otherwise.
func DefaultCacheDir() (string, error) {
	if geteuid() == 0 {
		return rootCacheDir, nil
	}
	if dir := os.Getenv("XDG_CACHE_HOME"); dir != "" {
		return filepath.Join(dir, "vmsup"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", errors.New("no cache dir: neither XDG_CACHE_HOME nor HOME is set; pass --image-root DIR")
	}
	return filepath.Join(home, ".cache", "vmsup"), nil
}
