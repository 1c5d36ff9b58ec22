package domain

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Process is one VM process: a QEMU child vmsup started, a QEMU a previous
// vmsup started and this one adopted after a restart, or a simulated one
// (benchmarks). A goroutine owned by the process waits for its exit — Wait
// on a child, poll on a pidfd for an adopted one — so an exit is seen at
// once and a child is always reaped.
type Process struct {
	pid     int
	logPath string
	started time.Time
	done    chan struct{}

	cmd   *exec.Cmd        // nil for an adopted process
	state *os.ProcessState // a child's exit, valid after done is closed

	mu    sync.Mutex // guards pidfd against use after close
	pidfd int        // an adopted process's pidfd, -1 when closed or a child
	// stop ends the watch of an adopted process without signalling it:
	// closing it wakes the poller (nil for a child).
	stop *os.File
	// simulate receives the signals of a simulated process.
	simulate func(syscall.Signal)
}

// Launcher starts a domain's VM process from the emulator and the argv
// that BuildArgs made. The default, LaunchQEMU, runs QEMU; benchmarks of
// the actors use simulated processes.
type Launcher func(emulator string, args []string, paths RunPaths) (*Process, error)

// LaunchQEMU starts QEMU as a child in its own session, logging to
// paths.QEMULog.
func LaunchQEMU(emulator string, args []string, paths RunPaths) (*Process, error) {
	return startProcess(emulator, args, paths.QEMULog)
}

// NewSimulatedProcess returns a Process that is no OS process: SIGTERM and
// SIGKILL end it at once, and so does calling exit. Benchmarks run the
// domain and monitor actors on it with a simulated QMP monitor.
func NewSimulatedProcess(pid int) (p *Process, exit func()) {
	p = &Process{pid: pid, started: time.Now(), done: make(chan struct{}), pidfd: -1}
	var once sync.Once
	exit = func() { once.Do(func() { close(p.done) }) }
	p.simulate = func(sig syscall.Signal) {
		if sig == syscall.SIGTERM || sig == syscall.SIGKILL {
			exit()
		}
	}
	return p, exit
}

// startProcess starts QEMU in its own session with stdout and stderr going to
// logPath.
func startProcess(emulator string, args []string, logPath string) (*Process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open QEMU log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(emulator, args...)
	cmd.Stdin = nil
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", emulator, err)
	}
	p := &Process{cmd: cmd, pid: cmd.Process.Pid, logPath: logPath, started: time.Now(), done: make(chan struct{}), pidfd: -1}
	go func() {
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	return p, nil
}

// adoptProcess watches a QEMU that is not our child through a pidfd. The
// watching goroutine ends when the process exits or release is called.
func adoptProcess(pid int, logPath string) (*Process, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	stopR, stopW, err := os.Pipe()
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch pid %d: %w", pid, err)
	}
	p := &Process{pid: pid, logPath: logPath, started: time.Now(), done: make(chan struct{}), pidfd: fd, stop: stopW}
	go func() {
		defer stopR.Close()
		fds := []unix.PollFd{
			{Fd: int32(fd), Events: unix.POLLIN},         // readable when the process exits
			{Fd: int32(stopR.Fd()), Events: unix.POLLIN}, // hang-up when released
		}
		for {
			if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		p.mu.Lock()
		unix.Close(p.pidfd)
		p.pidfd = -1
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended (and, for a child, been
// reaped).
func (p *Process) exited() bool {
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
	if p.exited() {
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
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd < 0 {
		return nil
	}
	err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// terminate sends SIGTERM, then SIGKILL when the process has not exited
// after grace. It returns once the process has ended.
func (p *Process) terminate(grace time.Duration) {
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

// kill sends SIGKILL and waits for the process to end.
func (p *Process) kill() {
	_ = p.signal(syscall.SIGKILL)
	<-p.done
}

// exitString says how the process ended: "exit status 1" or "signal 9".
func (p *Process) exitString() string {
	if !p.exited() {
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

// logTail returns the last lines QEMU wrote, for error messages.
func (p *Process) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	lines := strings.Split(strings.TrimSpace(string(bytes.ToValidUTF8(b, nil))), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}
