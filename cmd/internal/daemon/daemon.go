// Package daemon runs the vmsup daemon: it takes the state dir's lock,
// listens on the unix socket, opens the driver and serves the API until it
// is told to stop. Stopping leaves the VMs running, as libvirtd does.
package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/cmd/internal/client"
	"github.com/vmsup/vmsup/cmd/internal/cmdline"
	"github.com/vmsup/vmsup/cmd/internal/peer"
	"github.com/vmsup/vmsup/cmd/internal/server"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/confine"
	"github.com/vmsup/vmsup/domain/policy"
	"github.com/vmsup/vmsup/domain/vm"
	"github.com/vmsup/vmsup/driver"
)

// Config configures the daemon.
type Config struct {
	// StateDir holds the definitions, the run dir (StateDir/run) and the
	// lock file (StateDir/vmsup.lock). Required.
	StateDir string
	// Socket is the path of the API's unix socket. Required.
	Socket string
	// Logger receives the daemon's and vmsup's logs.
	Logger zerolog.Logger
	// StopGrace bounds how long stopping waits for requests in flight
	// (default 5s).
	StopGrace time.Duration
	// OnReady, when set, is called once the API is served.
	OnReady func()
	// TraceOff starts the trace recorder switched off: the actors pay one
	// atomic load per message and the trace routes answer 409.
	TraceOff bool
	// TraceCapacity is the number of records the trace ring keeps
	// (trace.DefaultCapacity, 65536, when zero).
	TraceCapacity int
	// AdminGroup is the group (name or gid) whose members get the full
	// API, beside uid 0 and the daemon's own uid. Empty grants no group.
	AdminGroup string
	// AdminGroupOptional lets AdminGroup not exist (the default group,
	// "vmsup", on a host that has not created it): only the admin uids
	// then have access.
	AdminGroupOptional bool
	// ReaderGroup is the group whose members get the read-only routes
	// (list, info, jobs, events, trace). Empty grants none.
	ReaderGroup string
	// MaxConnections bounds the connections held at once
	// (DefaultMaxConnections when zero); past it a connection is answered
	// 503 and closed.
	MaxConnections int
	// BodyTimeout bounds the reading of a request body
	// (server.DefaultBodyTimeout when zero).
	BodyTimeout time.Duration
	// AllowRawQEMU lets specs use extra_args and raw QMP go beyond the
	// safe list; a domain that uses either is tainted.
	AllowRawQEMU bool
	// Emulators are the QEMU binaries specs may use (paths, or names
	// looked up in PATH); empty: qemu-system-x86_64 from PATH.
	Emulators []string
	// ImageRoots are the dirs that kernel, initrd and disk paths must lie
	// under; empty: the state dir and cmdline.DefaultCacheDir.
	ImageRoots []string
	// TraceLog, when set, is a file that gets every trace record as a
	// zerolog JSON line (appended; created with mode 0600).
	TraceLog string
	// QEMUUser is the unprivileged user a daemon run as root runs QEMU
	// as (confine.DefaultUser when empty). Ignored when not root.
	QEMUUser string
}

// Socket and lock permissions. The socket is open to everyone (the peer
// check decides) only when the policy grants a group access.
const (
	SocketMode          os.FileMode = 0o600
	SocketDirMode       os.FileMode = 0o700
	SharedSocketMode    os.FileMode = 0o666
	SharedSocketDirMode os.FileMode = 0o755
	LockName                        = "vmsup.lock"
)

// Run serves the API until ctx ends, then stops serving, closes the driver
// and the trace log, and returns nil. VMs keep running.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if cfg.StateDir == "" || cfg.Socket == "" {
		return errors.New("daemon: state dir and socket are required")
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 5 * time.Second
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return err
	}
	socket, err := filepath.Abs(cfg.Socket)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := CheckDir(stateDir, "state dir"); err != nil {
		return err
	}
	runDir := filepath.Join(stateDir, "run")
	if _, err := os.Lstat(runDir); err == nil {
		if err := CheckDir(runDir, "run dir"); err != nil {
			return err
		}
	}
	lock, err := Lock(filepath.Join(stateDir, LockName))
	if err != nil {
		return err
	}
	defer lock.Close()

	policy, err := buildPolicy(cfg)
	if err != nil {
		return err
	}
	if cfg.MaxConnections < 0 {
		return fmt.Errorf("max connections %d: want a positive number", cfg.MaxConnections)
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}

	mode, dirMode := SocketMode, SocketDirMode
	if policy.AdminGroup != nil || policy.ReaderGroup != nil {
		mode, dirMode = SharedSocketMode, SharedSocketDirMode
	}
	uln, err := Listen(ctx, socket, mode, dirMode, log)
	if err != nil {
		return err
	}
	ln := newLimitListener(uln, cfg.MaxConnections)
	defer ln.Close()

	pol, err := buildSpecPolicy(cfg, stateDir, log)
	if err != nil {
		return err
	}

	rec, closeTrace, err := openTrace(cfg, log)
	if err != nil {
		return err
	}
	// Runs after the driver is closed: the sink writes what it received.
	defer closeTrace()

	conf, err := buildConfinement(cfg, stateDir, log)
	if err != nil {
		return err
	}
	drv, err := driver.Open(ctx, driver.Config{
		StateDir: stateDir,
		RunDir:   runDir,
		Logger:   &log,
		Trace:    rec,
		Policy:   pol,
		Confine:  conf,
	})
	if err != nil {
		return fmt.Errorf("open driver: %w", err)
	}
	closeDriver := func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := drv.Close(cctx); err != nil {
			log.Error().Err(err).Msg("close driver")
		}
	}

	apiSrv := server.New(drv, server.Options{Logger: &log, StateDir: stateDir, Policy: &policy, BodyTimeout: cfg.BodyTimeout})
	srv := &http.Server{
		Handler:           apiSrv,
		ConnContext:       server.ConnContext,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          newStdLogger(log),
	}
	srv.RegisterOnShutdown(apiSrv.Close)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info().Str("socket", socket).Str("state_dir", stateDir).Int("pid", os.Getpid()).Msg("vmsup daemon serving")
	logAccess(log, cfg, policy)
	if cfg.OnReady != nil {
		cfg.OnReady()
	}

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info().Msg("stopping: VMs keep running")
	case serveErr = <-served:
		log.Error().Err(serveErr).Msg("serve failed")
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.StopGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn().Err(err).Msg("requests still in flight at stop; closing them")
		_ = srv.Close()
	}
	apiSrv.Close()
	closeDriver()
	if n := ln.rejected.Load(); n > 0 {
		log.Warn().Uint64("rejected", n).Int("max_connections", cfg.MaxConnections).Msg("connections refused past the limit")
	}
	log.Info().Msg("vmsup daemon stopped")
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	return nil
}

// buildPolicy resolves the admin and reader groups into the API's access
// policy: uid 0 and the daemon's own uid are admins.
// It logs nothing: logAccess does, once the daemon serves.
func buildPolicy(cfg Config) (peer.Policy, error) {
	p := peer.DefaultPolicy(uint32(os.Getuid()))
	if cfg.AdminGroup != "" {
		g, err := peer.LookupGroup(cfg.AdminGroup)
		switch {
		case err == nil:
			p.AdminGroup = g
		case errors.Is(err, peer.ErrNoSuchGroup) && cfg.AdminGroupOptional:
		default:
			return p, fmt.Errorf("admin group: %w", err)
		}
	}
	if cfg.ReaderGroup != "" {
		g, err := peer.LookupGroup(cfg.ReaderGroup)
		if err != nil {
			return p, fmt.Errorf("reader group: %w", err)
		}
		p.ReaderGroup = g
	}
	return p, nil
}

// buildSpecPolicy makes the host's policy on specs from the config.
func buildSpecPolicy(cfg Config, stateDir string, log zerolog.Logger) (*policy.Policy, error) {
	roots := cfg.ImageRoots
	if len(roots) == 0 {
		roots = []string{stateDir}
		if cache, err := cmdline.DefaultCacheDir(); err == nil {
			roots = append(roots, cache)
		}
	}
	emulators := cfg.Emulators
	if len(emulators) == 0 {
		var err error
		if emulators, err = policy.DefaultEmulators(); err != nil {
			// No QEMU on PATH: serve anyway (list, undefine); starts
			// are refused until an emulator is allowed.
			log.Warn().Err(err).Msg("no emulator allowed; pass --emulator PATH")
		}
	}
	pol, err := policy.New(cfg.AllowRawQEMU, emulators, roots)
	if err != nil {
		return nil, err
	}
	ev := log.Info().Strs("emulators", pol.Emulators).Strs("image_roots", pol.ImageRoots).Bool("allow_raw_qemu", pol.AllowRawQEMU)
	if pol.AllowRawQEMU {
		ev = log.Warn().Strs("emulators", pol.Emulators).Strs("image_roots", pol.ImageRoots).Bool("allow_raw_qemu", true)
	}
	ev.Msg("spec policy")
	return pol, nil
}

// logAccess says who may use the API.
func logAccess(log zerolog.Logger, cfg Config, p peer.Policy) {
	ev := log.Info().Uints32("admin_uids", p.AdminUIDs)
	if p.AdminGroup != nil {
		ev = ev.Uint32("admin_gid", p.AdminGroup.GID)
	} else if cfg.AdminGroup != "" {
		ev = ev.Str("admin_group_missing", cfg.AdminGroup)
	}
	if p.ReaderGroup != nil {
		ev = ev.Uint32("reader_gid", p.ReaderGroup.GID)
	}
	ev.Msg("API access")
}

// openTrace creates the daemon's trace recorder and, with TraceLog, the
// JSON-lines sink. closeTrace flushes and closes the sink.
func openTrace(cfg Config, log zerolog.Logger) (rec *trace.Recorder, closeTrace func(), err error) {
	if cfg.TraceCapacity < 0 {
		return nil, nil, fmt.Errorf("trace capacity %d: want a positive number of records", cfg.TraceCapacity)
	}
	if cfg.TraceOff && cfg.TraceLog != "" {
		return nil, nil, errors.New("a trace log needs tracing on (--trace-log with --trace=false)")
	}
	rec = trace.New(trace.Options{Capacity: cfg.TraceCapacity, Disabled: cfg.TraceOff})
	if cfg.TraceLog == "" {
		log.Info().Bool("on", rec.Enabled()).Int("capacity", rec.Capacity()).Msg("trace recorder")
		return rec, func() {}, nil
	}
	path, err := filepath.Abs(cfg.TraceLog)
	if err != nil {
		return nil, nil, fmt.Errorf("trace log: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("trace log: %w", err)
	}
	sink := rec.LogTo(f)
	log.Info().Bool("on", true).Int("capacity", rec.Capacity()).Str("log", path).Msg("trace recorder")
	return rec, func() {
		sink.Close()
		if n := sink.Dropped(); n > 0 {
			log.Warn().Uint64("dropped", n).Str("log", path).Msg("the trace log fell behind and lost records")
		}
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			if err := f.Sync(); err != nil {
				log.Error().Err(err).Str("log", path).Msg("sync trace log")
			}
		}
		if err := f.Close(); err != nil {
			log.Error().Err(err).Str("log", path).Msg("close trace log")
		}
	}, nil
}

// LockFile is the held lock of a state dir.
type LockFile struct{ f *os.File }

// Close releases the lock.
func (l *LockFile) Close() error { return l.f.Close() }

// Lock takes the exclusive lock of a state dir (flock on path) and writes
// this process's pid into it. When another daemon holds it, the error names
// that daemon's pid.
func Lock(path string) (*LockFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		data, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := "unknown pid"
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(data))); perr == nil {
				holder = "pid " + strconv.Itoa(pid)
			}
			return nil, fmt.Errorf("state dir %s is in use by another vmsup daemon (%s; lock %s)", filepath.Dir(path), holder, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &LockFile{f: f}, nil
}

// Listen prepares the socket path and listens on it with the given mode.
//
//   - The parent directory is created (dirMode) when missing. An existing
//     one must belong to this user or root and must not be writable by
//     anyone else: another user could replace the socket.
//   - An existing socket on which a daemon answers is refused, a stale one
//     is removed, anything else is never replaced.
//   - The socket is bound in a private 0700 directory beside its path,
//     given its mode, then renamed into place: nobody can connect before
//     it has its final mode, whatever the umask.
//
// Closing the listener removes the socket.
func Listen(ctx context.Context, socket string, mode, dirMode os.FileMode, log zerolog.Logger) (net.Listener, error) {
	if len(socket) > domain.MaxSocketPath {
		return nil, fmt.Errorf("socket path %s is %d bytes; unix sockets allow at most %d", socket, len(socket), domain.MaxSocketPath)
	}
	dir := filepath.Dir(socket)
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, dirMode); err != nil {
			return nil, fmt.Errorf("socket dir: %w", err)
		}
		// MkdirAll applies the umask; make the mode exact.
		if err := os.Chmod(dir, dirMode); err != nil {
			return nil, fmt.Errorf("socket dir: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if err := CheckDir(dir, "socket dir"); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(dir); err == nil && mode&0o077 != 0 && fi.Mode().Perm()&0o011 == 0 {
		log.Warn().Str("dir", dir).Str("mode", fi.Mode().Perm().String()).
			Msg("the socket's directory is closed to other users, so the admin and reader groups cannot reach the socket; 0711 or 0755 lets them")
	}
	if fi, err := os.Lstat(socket); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; refusing to replace it", socket)
		}
		if err := checkStale(ctx, socket); err != nil {
			return nil, err
		}
		log.Info().Str("socket", socket).Msg("removing stale socket")
		if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	tmp, err := os.MkdirTemp(dir, ".vs")
	if err != nil {
		return nil, fmt.Errorf("socket: private dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o700); err != nil {
		return nil, fmt.Errorf("socket: private dir: %w", err)
	}
	bound := filepath.Join(tmp, "s")
	if len(bound) > domain.MaxSocketPath {
		return nil, fmt.Errorf("socket dir %s is too long: binding needs %d bytes (%s); unix sockets allow at most %d", dir, len(bound), bound, domain.MaxSocketPath)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", bound)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socket, err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(bound, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket mode: %w", err)
	}
	if err := os.Rename(bound, socket); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket: move into place: %w", err)
	}
	return &socketListener{UnixListener: ul, path: socket}, nil
}

// socketListener removes its socket when closed.
type socketListener struct {
	*net.UnixListener
	path string
	once sync.Once
}

// Close stops listening and removes the socket, once.
func (l *socketListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() { _ = os.Remove(l.path) })
	return err
}

// buildConfinement is what confines QEMU when the daemon is root: the QEMU
// user (which must exist), and a cgroup v2 parent of this daemon's own
// (named after the state dir, so that two daemons never share one) when
// cgroup v2 is writable. A daemon that is not root confines nothing more
// than the sandbox: QEMU runs as itself.
func buildConfinement(cfg Config, stateDir string, log zerolog.Logger) (*vm.Confine, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	name := cfg.QEMUUser
	if name == "" {
		name = confine.DefaultUser
	}
	u, err := confine.LookupUser(name)
	if err != nil {
		return nil, fmt.Errorf("--qemu-user: %w", err)
	}
	conf := &vm.Confine{User: u}
	sum := sha256.Sum256([]byte(stateDir))
	cg, err := confine.DetectCgroups("vmsup-" + hex.EncodeToString(sum[:6]))
	if err != nil {
		conf.CgroupNote = "no cgroup: " + err.Error()
	} else {
		conf.Cgroups = cg
	}
	ev := log.Info().Str("qemu_user", u.Name).Uint32("qemu_uid", u.UID)
	if conf.Cgroups != nil {
		ev = ev.Str("cgroups", conf.Cgroups.Dir).Bool("memory_limit", conf.Cgroups.Memory)
		if !conf.Cgroups.Memory {
			ev = ev.Str("memory_note", conf.Cgroups.MemoryNote)
		}
	} else {
		ev = ev.Str("cgroup_note", conf.CgroupNote)
	}
	ev.Msg("QEMU confined: unprivileged user, seccomp sandbox, cgroup")
	return conf, nil
}

// CheckDir refuses a directory that is a symlink, is not owned by this
// user or root, or that anyone else may write: what (e.g. "state dir")
// names it in the error.
func CheckDir(dir, what string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("%s %s is a symlink; refusing it (give its target)", what, dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s %s is not a directory", what, dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s %s: no owner information", what, dir)
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s %s belongs to uid %d, not to this user (uid %d) or root; refusing it", what, dir, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s %s has mode %s: others may write it and replace what vmsup keeps there; refusing it (chmod go-w %s)", what, dir, fi.Mode().Perm(), dir)
	}
	return nil
}

// checkStale returns nil when nobody accepts connections on socket, and an
// error naming the daemon that answers otherwise.
func checkStale(ctx context.Context, socket string) error {
	conn, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("socket %s exists and cannot be checked: %w", socket, err)
	}
	conn.Close()
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	p, err := client.New(socket).Ping(pctx)
	if err != nil {
		return fmt.Errorf("socket %s is in use by another process; refusing to start", socket)
	}
	return fmt.Errorf("another vmsup daemon (pid %d, state dir %s) is serving on %s; refusing to start", p.PID, p.StateDir, socket)
}
