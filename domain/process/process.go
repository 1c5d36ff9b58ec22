// Package process runs and watches QEMU processes: LaunchQEMU starts one in
// its own session, a pidfd tells when it ends, and Recover adopts a QEMU that
// a previous vmsup started, after checking its pidfile and command line.
package process

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/confine"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

// Process is one VM process: a QEMU child vmsup started, a QEMU a previous
// vmsup started and this one adopted after a restart, or a simulated one
// (benchmarks). A goroutine owned by the process waits for its exit on a
// pidfd through Go's network poller, so an exit is seen at once, a child
// is always reaped, and a waiting VM holds no OS thread.
type Process struct {
	pid     int
	logPath string
	started time.Time
	done    chan struct{}

	cmd   *exec.Cmd        // nil for an adopted process
	state *os.ProcessState // a child's exit, valid after done is closed

	// pidfd refers to the process (nil for a simulated one, or a child
	// on a kernel without pidfd_open). Closing it ends the watch of an
	// adopted process without signalling it.
	pidfd *os.File

	mu     sync.Mutex
	ended  bool     // done is closed or about to be
	onExit []func() // called once when the process has ended
	// simulate receives the signals of a simulated process.
	simulate func(syscall.Signal)

	// confinement is what applies to a QEMU vmsup started as root;
	// cgroup is removed after the process has ended, before done closes.
	confinement *domain.Confinement
	cgroup      *confine.Cgroup
	cgroupErr   error // guarded by mu
	released    bool  // guarded by mu: an adopted QEMU no longer watched
}

// Confinement is what keeps the process away from the rest of the host,
// or nil when nothing does (a daemon that is not root, a QEMU an older
// vmsup started unconfined). It is set at launch or adoption and never
// changes after: callers must not modify it.
func (p *Process) Confinement() *domain.Confinement {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.confinement
}

// OnExit calls fn once the process has ended (at once if it has). fn runs
// on the watching goroutine and must not block: a message send.
func (p *Process) OnExit(fn func()) {
	p.mu.Lock()
	if p.ended {
		p.mu.Unlock()
		fn()
		return
	}
	p.onExit = append(p.onExit, fn)
	p.mu.Unlock()
}

// markEnded closes done and calls the OnExit functions.
func (p *Process) markEnded() {
	p.mu.Lock()
	p.ended = true
	fns := p.onExit
	p.onExit = nil
	p.mu.Unlock()
	close(p.done)
	for _, fn := range fns {
		fn()
	}
}

// openPidfd returns a non-blocking pidfd on pid, registered with Go's
// network poller. (O_NONBLOCK is set with fcntl rather than
// PIDFD_NONBLOCK, which needs Linux 5.10; pidfd_open needs 5.3.)
func openPidfd(pid int) (*os.File, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pidfd of %d: %w", pid, err)
	}
	return os.NewFile(uintptr(fd), fmt.Sprintf("pidfd:%d", pid)), nil
}

// pidfdReadable polls a pidfd for up to timeoutMs milliseconds (0: just
// look); it turns readable when the process has exited.
func pidfdReadable(fd uintptr, timeoutMs int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, timeoutMs)
	return err == nil && n > 0
}

// waitPidfd returns when the process behind f has ended (its pidfd turns
// readable) or f is closed. The goroutine parks in the network poller; on
// a kernel whose pidfd the poller cannot watch it blocks in poll(2).
func waitPidfd(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	err = rc.Read(func(fd uintptr) bool { return pidfdReadable(fd, 0) })
	if err != nil && !errors.Is(err, os.ErrClosed) {
		// Not pollable here: wait in poll(2), holding a thread.
		var blockErr error
		if cerr := rc.Control(func(fd uintptr) {
			for !pidfdReadable(fd, 1000) {
				if _, statErr := f.Stat(); statErr != nil {
					blockErr = statErr
					return
				}
			}
		}); cerr != nil {
			return cerr
		}
		return blockErr
	}
	return err
}

// Launch is what a Launcher starts: the emulator, the argv that BuildArgs
// made, the run paths, and the confinement of a daemon run as root.
type Launch struct {
	Emulator string
	Args     []string
	Paths    qemuargs.RunPaths
	// User, when set, is the unprivileged user QEMU runs as: privileges
	// are dropped before exec (QEMU's -runas is forbidden by
	// -sandbox elevateprivileges=deny).
	User *confine.User
	// Cgroup, when set, is the cgroup QEMU is started in (clone3 with
	// CLONE_INTO_CGROUP, so it never runs outside it). The process owns
	// it from then on and removes it once QEMU has ended.
	Cgroup *confine.Cgroup
	// Note says why a part of the confinement does not apply (no
	// cgroup v2 here, no memory limit), for Info.
	Note string
	// Files are the files vmsup opened for QEMU, which finds them on
	// fds qemuargs.FirstPassedFD onwards (the argv's -add-fd). The
	// caller closes them once QEMU has started.
	Files []*os.File
}

// Launcher starts a domain's VM process. The default, LaunchQEMU, runs
// QEMU; benchmarks of the actors use simulated processes.
type Launcher func(l Launch) (*Process, error)

// LaunchQEMU starts QEMU as a child in its own session, logging to
// l.Paths.QEMULog, with the QMP socket listening on fd QMPListenFD and,
// when the args have the guest agent's channel, its socket on fd
// AgentListenFD, as l.User in l.Cgroup when they are set. vmsup binds both
// sockets, so they are vmsup's whoever QEMU runs as.
func LaunchQEMU(l Launch) (*Process, error) {
	paths := l.Paths
	fds, err := ListenFDs(paths, l.Args)
	if err != nil {
		return nil, err
	}
	defer func() { // the child has its own copies
		for _, f := range fds {
			f.Close()
		}
	}()
	extra := fds
	if len(l.Files) > 0 {
		if len(extra) < qemuargs.FirstPassedFD-3 {
			// No agent channel: its fd stays closed in QEMU.
			extra = append(extra, nil)
		}
		extra = append(extra, l.Files...)
	}
	p, err := startProcess(l, extra...)
	if err != nil {
		return nil, err
	}
	// Record who this QEMU is, so that a later vmsup adopts it and no
	// other process (Recover). Without the record it could never be
	// adopted: stop it.
	id, err := ReadIdentity(p.pid)
	if err == nil {
		id.UUID = argAfter(l.Args, "-uuid")
		err = writeIdentity(paths.Identity, id)
	}
	if err != nil {
		if p.Gone() {
			// QEMU exited at once: the start reports that, with its log.
			return p, nil
		}
		p.Kill()
		return nil, fmt.Errorf("QEMU pid %d: %w", p.pid, err)
	}
	return p, nil
}

// argAfter returns the argument that follows flag in args, or "".
func argAfter(args []string, flag string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

// ListenFDs binds the sockets QEMU serves for args (from BuildArgs) and
// returns their listeners as exec.Cmd.ExtraFiles: the QMP socket (fd
// QMPListenFD) and, when args have the guest agent's channel, the agent's
// (fd AgentListenFD). vmsup binds them, so their owner and mode are
// vmsup's whoever QEMU runs as. The caller closes the files once QEMU
// has started.
func ListenFDs(paths qemuargs.RunPaths, args []string) ([]*os.File, error) {
	qmp, err := ListenQMP(paths)
	if err != nil {
		return nil, err
	}
	if !qemuargs.HasAgentChannel(args) {
		return []*os.File{qmp}, nil
	}
	ag, err := listenUnix(paths.AgentSocket, "guest agent")
	if err != nil {
		qmp.Close()
		os.Remove(paths.QMPSocket)
		return nil, err
	}
	return []*os.File{qmp, ag}, nil
}

// ListenQMP binds paths.QMPSocket (replacing a stale socket file) and
// returns the listening socket, to be passed to QEMU as fd QMPListenFD
// (exec.Cmd.ExtraFiles[0]). The socket file stays when the returned file
// is closed: QEMU owns the listener from then on.
func ListenQMP(paths qemuargs.RunPaths) (*os.File, error) {
	return listenUnix(paths.QMPSocket, "QMP")
}

// listenUnix binds the unix socket path (replacing a stale socket file)
// and returns its listener as a file; what names it in errors.
func listenUnix(path, what string) (*os.File, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale %s socket: %w", what, err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on the %s socket: %w", what, err)
	}
	l.SetUnlinkOnClose(false)
	defer l.Close()
	f, err := l.File()
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("%s socket: %w", what, err)
	}
	return f, nil
}

// NewSimulatedProcess returns a Process that is no OS process: SIGTERM and
// SIGKILL end it at once, and so does calling exit. Benchmarks run the
// domain and monitor actors on it with a simulated QMP monitor.
func NewSimulatedProcess(pid int) (p *Process, exit func()) {
	p = &Process{pid: pid, started: time.Now(), done: make(chan struct{})}
	var once sync.Once
	exit = func() { once.Do(p.markEnded) }
	p.simulate = func(sig syscall.Signal) {
		if sig == syscall.SIGTERM || sig == syscall.SIGKILL {
			exit()
		}
	}
	return p, exit
}

// startProcess starts QEMU in its own session with stdout and stderr going to
// l.Paths.QEMULog, confined as l says.
func startProcess(l Launch, extra ...*os.File) (*Process, error) {
	logPath := l.Paths.QEMULog
	// Never through a symlink: one planted in the run dir would have QEMU's
	// log truncate the file it points at.
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("open QEMU log: %s is a symlink; refusing to follow it", logPath)
	}
	if err != nil {
		return nil, fmt.Errorf("open QEMU log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(l.Emulator, l.Args...)
	cmd.Stdin = nil
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.ExtraFiles = extra
	attr := &syscall.SysProcAttr{Setsid: true}
	var conf *domain.Confinement
	if l.User != nil || l.Cgroup != nil {
		conf = &domain.Confinement{Note: l.Note}
	}
	if l.User != nil {
		attr.Credential = l.User.Credential()
		conf.User, conf.UID = l.User.Name, l.User.UID
	}
	if l.Cgroup != nil {
		attr.UseCgroupFD, attr.CgroupFD = true, l.Cgroup.FD()
		conf.Cgroup, conf.MemoryMax = l.Cgroup.Path, l.Cgroup.MemoryMax
		if l.Cgroup.Note != "" {
			conf.Note = strings.TrimPrefix(conf.Note+"; "+l.Cgroup.Note, "; ")
		}
	}
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", l.Emulator, err)
	}
	p := &Process{cmd: cmd, pid: cmd.Process.Pid, logPath: logPath, started: time.Now(), done: make(chan struct{}),
		confinement: conf, cgroup: l.Cgroup}
	// The child cannot be reaped before Wait, so its pid is still its own.
	if f, err := openPidfd(p.pid); err == nil {
		p.pidfd = f
	}
	go func() {
		if p.pidfd != nil {
			_ = waitPidfd(p.pidfd) // then Wait returns at once
		}
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		if p.pidfd != nil {
			p.pidfd.Close()
		}
		p.removeCgroup()
		p.markEnded()
	}()
	return p, nil
}

// cgroupRemoveTimeout bounds the removal of an ended QEMU's cgroup (the
// kill of anything left in it included).
const cgroupRemoveTimeout = 10 * time.Second

// removeCgroup removes the cgroup of a process that has ended, killing
// whatever it left there. A failure is kept (CgroupError): the next
// start of the domain removes a stale cgroup before it makes a new one.
func (p *Process) removeCgroup() {
	p.mu.Lock()
	cg, released := p.cgroup, p.released
	p.mu.Unlock()
	if cg == nil || released {
		return // a released QEMU runs on in its cgroup
	}
	ctx, cancel := context.WithTimeout(context.Background(), cgroupRemoveTimeout)
	defer cancel()
	if err := cg.Remove(ctx); err != nil {
		p.mu.Lock()
		p.cgroupErr = err
		p.mu.Unlock()
	}
}

// CgroupError is why the cgroup of an ended process could not be
// removed, or nil.
func (p *Process) CgroupError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cgroupErr
}

// adoptProcess watches a QEMU that is not our child through a pidfd. The
// watching goroutine ends when the process exits or release is called.
func adoptProcess(pid int, logPath string) (*Process, error) {
	f, err := openPidfd(pid)
	if err != nil {
		return nil, err
	}
	p := &Process{pid: pid, logPath: logPath, started: time.Now(), done: make(chan struct{}), pidfd: f}
	go func() {
		_ = waitPidfd(f)
		f.Close()
		p.removeCgroup()
		p.markEnded()
	}()
	return p, nil
}

// Gone reports whether the process has ended, even if the watching
// goroutine has not noted it yet: its pidfd is readable.
func (p *Process) Gone() bool {
	if p.Exited() {
		return true
	}
	if p.pidfd == nil {
		return false
	}
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		return false
	}
	readable := false
	_ = rc.Control(func(fd uintptr) { readable = pidfdReadable(fd, 0) })
	return readable
}

// Exited reports whether the process has ended (and, for a child, been
// reaped).
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig unless the process has already ended. An adopted process
// is signalled through its pidfd, so a reused pid is never hit.
func (p *Process) signal(sig syscall.Signal) error {
	if p.Exited() {
		return nil
	}
	if p.simulate != nil {
		p.simulate(sig)
		return nil
	}
	if p.cmd != nil {
		err := p.cmd.Process.Signal(sig)
		if errors.Is(err, os.ErrProcessDone) {
			return nil
		}
		return err
	}
	rc, err := p.pidfd.SyscallConn()
	if err != nil {
		return nil // closed: the process has ended or was released
	}
	if cerr := rc.Control(func(fd uintptr) { err = unix.PidfdSendSignal(int(fd), sig, nil, 0) }); cerr != nil {
		return nil
	}
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// Terminate sends SIGTERM, then SIGKILL when the process has not exited
// after grace. It returns once the process has ended.
func (p *Process) Terminate(grace time.Duration) {
	_ = p.signal(syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return
	case <-timer.C:
	}
	_ = p.signal(syscall.SIGKILL)
	<-p.done // SIGKILL cannot be ignored, even by a stopped process
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Process) Kill() {
	_ = p.signal(syscall.SIGKILL)
	<-p.done
}

// ExitString says how the process ended: "exit status 1" or "signal 9".
func (p *Process) ExitString() string {
	if !p.Exited() {
		return "still running"
	}
	if p.simulate != nil {
		return "simulated exit"
	}
	if p.state == nil {
		return "exit status unknown: adopted, not a child of this vmsup"
	}
	if ws, ok := p.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("signal %d", int(ws.Signal()))
	}
	return fmt.Sprintf("exit status %d", p.state.ExitCode())
}

// LogTail returns the last lines QEMU wrote, for error messages.
func (p *Process) LogTail() string {
	f, err := os.OpenFile(p.logPath, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return ""
	}
	defer f.Close()
	const tail = 2048
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return ""
	} else if fi.Size() > tail {
		if _, err := f.Seek(fi.Size()-tail, io.SeekStart); err != nil {
			return ""
		}
	}
	b, err := io.ReadAll(io.LimitReader(f, tail))
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(bytes.ToValidUTF8(b, nil))), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// PID is the process id.
func (p *Process) PID() int { return p.pid }

// Done is closed once the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }
