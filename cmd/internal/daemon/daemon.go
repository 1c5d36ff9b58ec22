// Package daemon runs the vmsup daemon: it takes the state dir's lock,
// listens on the unix socket, opens the driver and serves the API until it
// is told to stop. Stopping leaves the VMs running, as libvirtd does.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/cmd/internal/client"
	"github.com/vmsup/vmsup/cmd/internal/server"
	"github.com/vmsup/vmsup/domain"
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
	// TraceLog, when set, is a file that gets every trace record as a
	// zerolog JSON line (appended; created with mode 0600).
	TraceLog string
}

// Socket and lock permissions.
const (
	SocketMode    os.FileMode = 0o660
	SocketDirMode os.FileMode = 0o700
	LockName                  = "vmsup.lock"
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
	lock, err := Lock(filepath.Join(stateDir, LockName))
	if err != nil {
		return err
	}
	defer lock.Close()

	ln, err := Listen(ctx, socket, log)
	if err != nil {
		return err
	}
	defer ln.Close()

	rec, closeTrace, err := openTrace(cfg, log)
	if err != nil {
		return err
	}
	// Runs after the driver is closed: the sink writes what it received.
	defer closeTrace()

	drv, err := driver.Open(ctx, driver.Config{
		StateDir: stateDir,
		RunDir:   filepath.Join(stateDir, "run"),
		Logger:   &log,
		Trace:    rec,
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

	apiSrv := server.New(drv, server.Options{Logger: &log, StateDir: stateDir})
	srv := &http.Server{
		Handler:           apiSrv,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          newStdLogger(log),
	}
	srv.RegisterOnShutdown(apiSrv.Close)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info().Str("socket", socket).Str("state_dir", stateDir).Int("pid", os.Getpid()).Msg("vmsup daemon serving")
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
	log.Info().Msg("vmsup daemon stopped")
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	return nil
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
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
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

// Listen prepares the socket path and listens on it: the parent directory
// is created with mode 0700 when missing; an existing socket on which a
// daemon answers is refused, a stale one is removed; the socket gets mode
// 0660.
func Listen(ctx context.Context, socket string, log zerolog.Logger) (net.Listener, error) {
	if len(socket) > domain.MaxSocketPath {
		return nil, fmt.Errorf("socket path %s is %d bytes; unix sockets allow at most %d", socket, len(socket), domain.MaxSocketPath)
	}
	dir := filepath.Dir(socket)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, SocketDirMode); err != nil {
			return nil, fmt.Errorf("socket dir: %w", err)
		}
		// MkdirAll applies the umask; make the mode exact.
		if err := os.Chmod(dir, SocketDirMode); err != nil {
			return nil, fmt.Errorf("socket dir: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	} else if fi, err := os.Stat(dir); err == nil && fi.Mode().Perm()&0o027 != 0 {
		log.Warn().Str("dir", dir).Str("mode", fi.Mode().Perm().String()).
			Msg("the socket's directory is open to other users; 0700 or 0750 is recommended")
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
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socket, err)
	}
	if err := os.Chmod(socket, SocketMode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket mode: %w", err)
	}
	return ln, nil
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
