package main_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmsup/vmsup/tests/testkit"
)

// pty is a pseudo-terminal: the test writes keys to the master and reads
// what the command prints.
type pty struct {
	master, slave *os.File
	out           *testkit.SyncBuffer
	done          chan struct{}
}

func openPTY(t *testing.T) *pty {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skipf("ptsname: %v", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("open pts %d: %v", n, err)
	}
	p := &pty{master: m, slave: s, out: &testkit.SyncBuffer{}, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		buf := make([]byte, 4096)
		for {
			n, err := m.Read(buf)
			p.out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { s.Close(); m.Close(); <-p.done })
	return p
}

func (p *pty) termios(t *testing.T) *unix.Termios {
	t.Helper()
	tio, err := unix.IoctlGetTermios(int(p.slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	return tio
}

// run starts vmsup with stdin, stdout and stderr on the terminal.
func (p *pty) run(t *testing.T, d *daemon, args ...string) (*exec.Cmd, chan error) {
	t.Helper()
	cmd := exec.Command(vmsupBin, args...)
	cmd.Env = append(cliEnv(), "VMSUP_SOCKET="+d.socket)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = p.slave, p.slave, p.slave
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return cmd, done
}

func exitCode(t *testing.T, done chan error, within time.Duration, p *pty) int {
	t.Helper()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(within):
		t.Fatalf("still running after %s; terminal shows:\n%q", within, p.out.String())
		return -1
	}
}

func sameTermios(a, b *unix.Termios) bool {
	return a.Iflag == b.Iflag && a.Oflag == b.Oflag && a.Lflag == b.Lflag && a.Cflag == b.Cflag
}

// TestCLIConsoleTTY: on a terminal, console puts it in raw mode, Ctrl-]
// detaches (exit 0, the VM keeps running) and the terminal is restored;
// shutdown shows a spinner with the elapsed time.
func TestCLIConsoleTTY(t *testing.T) {
	d := startDaemon(t)
	d.ok(t, "define", writeSpec(t, d.dir, "tty"))
	d.ok(t, "start", "tty")
	p := openPTY(t)
	before := p.termios(t)

	_, done := p.run(t, d, "console", "tty")
	p.out.WaitContains(t, "detach with Ctrl-]", 10*time.Second)
	// Raw mode is on once the console is attached.
	deadline := time.Now().Add(10 * time.Second)
	for p.termios(t).Lflag&unix.ICANON != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the terminal never went raw")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := p.master.Write([]byte("abc\x03\x1d")); err != nil {
		t.Fatal(err)
	}
	if code := exitCode(t, done, 10*time.Second, p); code != 0 {
		t.Fatalf("console exit %d:\n%q", code, p.out.String())
	}
	p.out.WaitContains(t, "detached from tty", 5*time.Second)
	if after := p.termios(t); !sameTermios(before, after) {
		t.Errorf("terminal not restored: before %+v, after %+v", before, after)
	}
	expectInfo(t, d.info(t, "tty"), "running", "booted")

	// The shutdown spinner, on a guest that ignores ACPI.
	_, done = p.run(t, d, "shutdown", "tty", "--timeout", "1s")
	if code := exitCode(t, done, 15*time.Second, p); code != 1 {
		t.Fatalf("shutdown exit %d:\n%q", code, p.out.String())
	}
	// The pty's last bytes may still be on their way when the exit is seen.
	p.out.WaitContains(t, "\x1b[K", 5*time.Second)
	if out := p.out.String(); !strings.Contains(out, "shutting down tty 0.") {
		t.Errorf("no spinner with elapsed time on the terminal:\n%q", out)
	}
}

// TestCLIUpTTY: `vmsup up` on a terminal boots the tiny guest; Ctrl-C
// (read as a raw byte) shuts it down gracefully, up exits 0 and the
// terminal is restored.
func TestCLIUpTTY(t *testing.T) {
	spec := requireGuest(t)
	d := startDaemon(t)
	p := openPTY(t)
	before := p.termios(t)
	_, done := p.run(t, d, "up", spec)
	p.out.WaitContains(t, guestReady, 120*time.Second)
	if _, err := p.master.Write([]byte{0x03}); err != nil {
		t.Fatal(err)
	}
	if code := exitCode(t, done, 60*time.Second, p); code != 0 {
		t.Fatalf("up exit %d:\n%q", code, p.out.String())
	}
	p.out.WaitContains(t, "tiny stopped: shutoff (shutdown)", 5*time.Second)
	if after := p.termios(t); !sameTermios(before, after) {
		t.Errorf("terminal not restored: before %+v, after %+v", before, after)
	}
	expectInfo(t, d.info(t, "tiny"), "shutoff", "shutdown")
}
