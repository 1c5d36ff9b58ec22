package domain

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// process is one QEMU process started by vmsup. A goroutine owned by the
// process waits for it (Wait on the child), so its exit is seen at once and
// it is always reaped.
type process struct {
	cmd     *exec.Cmd
	pid     int
	logPath string
	started time.Time
	done    chan struct{}
	state   *os.ProcessState // valid after done is closed
	waitErr error
}

// startProcess starts QEMU in its own session with stdout and stderr going to
// logPath.
func startProcess(emulator string, args []string, logPath string) (*process, error) {
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
	p := &process{cmd: cmd, pid: cmd.Process.Pid, logPath: logPath, started: time.Now(), done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has been reaped.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig unless the process has already been reaped.
func (p *process) signal(sig syscall.Signal) error {
	if p.exited() {
		return nil
	}
	err := p.cmd.Process.Signal(sig)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// terminate sends SIGTERM, then SIGKILL when the process has not exited
// after grace. It returns once the process is reaped.
func (p *process) terminate(grace time.Duration) {
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

// kill sends SIGKILL and waits for the process to be reaped.
func (p *process) kill() {
	_ = p.signal(syscall.SIGKILL)
	<-p.done
}

// exitString says how the process ended: "exit status 1" or "signal 9".
func (p *process) exitString() string {
	if p.state == nil {
		return "still running"
	}
	if ws, ok := p.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("signal %d", int(ws.Signal()))
	}
	return fmt.Sprintf("exit status %d", p.state.ExitCode())
}

// logTail returns the last lines QEMU wrote, for error messages.
func (p *process) logTail() string {
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
