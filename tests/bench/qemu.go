package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

// RealSpec is the spec of every real QEMU in the benchmarks: machine none,
// 64 MiB, the accelerator vmsup would choose.
func RealSpec(name string) *domain.Spec {
	s := &domain.Spec{Name: name, Machine: "none", Memory: 64 << 20}
	s.ApplyDefaults()
	return s
}

// RawQEMU is a QEMU started without vmsup, with the argv vmsup builds for
// the same spec.
type RawQEMU struct {
	Paths qemuargs.RunPaths
	cmd   *exec.Cmd
	done  chan struct{}
}

var (
	liveMu  sync.Mutex
	liveRaw = map[*RawQEMU]struct{}{}
	// livePIDs are QEMUs vmsup started, killed by ReapAll if still there.
	livePIDs = map[int]struct{}{}
)

// NotePID records a QEMU pid that vmsup started, so that ReapAll can kill
// it if the benchmark did not destroy it.
func NotePID(pid int) {
	liveMu.Lock()
	livePIDs[pid] = struct{}{}
	liveMu.Unlock()
}

// ReapAll kills every raw QEMU still running and every recorded vmsup
// QEMU that is still alive.
func ReapAll() {
	liveMu.Lock()
	raws := make([]*RawQEMU, 0, len(liveRaw))
	for q := range liveRaw {
		raws = append(raws, q)
	}
	pids := make([]int, 0, len(livePIDs))
	for pid := range livePIDs {
		pids = append(pids, pid)
	}
	livePIDs = map[int]struct{}{}
	liveMu.Unlock()
	for _, q := range raws {
		q.Kill()
	}
	for _, pid := range pids {
		if pid > 0 && pid < 1<<22 && isQEMU(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// isQEMU reports whether pid is a live QEMU (not a zombie, not a reused
// pid of something else).
func isQEMU(pid int) bool {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return false
	}
	return len(comm) >= 4 && string(comm[:4]) == "qemu"
}

// StartRawQEMU starts QEMU for spec under runDir with vmsup's argv, in its
// own session, as vmsup does. It returns once the process is started.
func StartRawQEMU(runDir string, spec *domain.Spec) (*RawQEMU, error) {
	return StartRawQEMUHost(runDir, spec, nil)
}

// StartRawQEMUHost is StartRawQEMU with the host resources of the argv
// (image disks' overlays, forwards, seed) given; nil means PlainHost.
func StartRawQEMUHost(runDir string, spec *domain.Spec, host *qemuargs.Host) (*RawQEMU, error) {
	paths, err := qemuargs.NewRunPaths(runDir, spec.Name)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(paths.Dir, 0o700); err != nil {
		return nil, err
	}
	for _, stale := range []string{paths.QMPSocket, paths.PIDFile, paths.ConsoleSocket} {
		_ = os.Remove(stale)
	}
	log, err := os.OpenFile(paths.QEMULog, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	args, err := qemuargs.BuildArgs(spec, paths, qemuargs.ResolveAccel(spec.Accel), host)
	if err != nil {
		return nil, err
	}
	fds, err := process.ListenFDs(paths, args)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, f := range fds {
			f.Close()
		}
	}()
	cmd := exec.Command(spec.EmulatorPath(), args...)
	cmd.ExtraFiles = fds
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	q := &RawQEMU{Paths: paths, cmd: cmd, done: make(chan struct{})}
	liveMu.Lock()
	liveRaw[q] = struct{}{}
	liveMu.Unlock()
	go func() {
		_ = cmd.Wait()
		close(q.done)
		liveMu.Lock()
		delete(liveRaw, q)
		liveMu.Unlock()
	}()
	return q, nil
}

// PID is the QEMU's pid.
func (q *RawQEMU) PID() int { return q.cmd.Process.Pid }

// WaitGreeting connects to the QMP socket (bound before QEMU ran, so the
// first dial connects; it polls every millisecond should the socket be
// missing) and reads the greeting line.
func (q *RawQEMU) WaitGreeting(timeout time.Duration) error {
	return q.waitGreeting(timeout, time.Millisecond, time.Millisecond)
}

// waitGreeting polls with a delay that starts at first and doubles up to
// max.
func (q *RawQEMU) waitGreeting(timeout, first, max time.Duration) error {
	deadline := time.Now().Add(timeout)
	delay := first
	for {
		conn, err := net.DialTimeout("unix", q.Paths.QMPSocket, time.Until(deadline))
		if err == nil {
			defer conn.Close()
			_ = conn.SetReadDeadline(deadline)
			line, err := bufio.NewReader(conn).ReadSlice('\n')
			if err != nil {
				return fmt.Errorf("QMP greeting: %w", err)
			}
			if len(line) < 8 || string(line[:7]) != `{"QMP":` {
				return fmt.Errorf("QMP greeting: unexpected %q", line)
			}
			return nil
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("QMP socket %s: %w", q.Paths.QMPSocket, err)
		}
		select {
		case <-q.done:
			return fmt.Errorf("QEMU exited before its QMP greeting (see %s)", q.Paths.QEMULog)
		case <-time.After(delay):
		}
		delay = min(2*delay, max)
	}
}

// Connect opens a go-qemu SocketMonitor on the QMP socket (waiting for it
// to appear) and continues the guest, as vmsup's start does. go-qemu's
// Connect and Run have no deadline: if they have not returned after
// timeout, the QEMU is killed, which ends them, and an error says so.
func (q *RawQEMU) Connect(timeout time.Duration) (*qmp.SocketMonitor, error) {
	type result struct {
		mon *qmp.SocketMonitor
		err error
	}
	ch := make(chan result, 1)
	go func() {
		mon, err := q.connect(timeout)
		ch <- result{mon, err}
	}()
	select {
	case r := <-ch:
		return r.mon, r.err
	case <-time.After(timeout + 5*time.Second):
		q.Kill()
		<-ch
		return nil, fmt.Errorf("go-qemu SocketMonitor: Connect or cont hung for %s; QEMU killed", timeout+5*time.Second)
	}
}

func (q *RawQEMU) connect(timeout time.Duration) (*qmp.SocketMonitor, error) {
	deadline := time.Now().Add(timeout)
	delay := dialFirst
	for {
		mon, err := qmp.NewSocketMonitor("unix", q.Paths.QMPSocket, 2*time.Second)
		if err == nil {
			if err := mon.Connect(); err != nil {
				return nil, err
			}
			if _, err := mon.Run([]byte(`{"execute":"cont"}`)); err != nil {
				mon.Disconnect()
				return nil, err
			}
			return mon, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(delay)
		delay = min(2*delay, dialMax)
	}
}

// dialFirst and dialMax pace the raw clients' dial retries, which happen
// only when the socket is missing: StartRawQEMU binds it before QEMU runs
// (process.ListenQMP), as vmsup does, so the first dial connects. (With
// QEMU binding the socket itself, QEMU 7.2 here mishandled a client that
// connected within about a millisecond of the socket appearing: 0.3–0.7 %
// of 600 starts with 1 ms polling got a second greeting, a "JSON parse
// error" or no reply.)
const (
	dialFirst = 5 * time.Millisecond
	dialMax   = 100 * time.Millisecond
)

// Handshake opens a QMP connection with a minimal client that has a
// deadline on every step: dial (see dialFirst),
// greeting, qmp_capabilities, cont. A second greeting or an event before
// a reply is skipped. The connection stays open; the caller closes
// it. The real100 row uses it instead of go-qemu's SocketMonitor, whose
// Connect has no deadline.
func (q *RawQEMU) Handshake(timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	var conn net.Conn
	delay := dialFirst
	for {
		c, err := net.DialTimeout("unix", q.Paths.QMPSocket, time.Until(deadline))
		if err == nil {
			conn = c
			break
		}
		if time.Now().After(deadline) || (!errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED)) {
			return nil, fmt.Errorf("QMP socket %s: %w", q.Paths.QMPSocket, err)
		}
		time.Sleep(delay)
		delay = min(2*delay, dialMax)
	}
	_ = conn.SetDeadline(deadline)
	br := bufio.NewReaderSize(conn, 4096)
	fail := func(step string, err error) (net.Conn, error) {
		conn.Close()
		return nil, fmt.Errorf("QMP %s: %w", step, err)
	}
	if line, err := br.ReadSlice('\n'); err != nil || !bytes.HasPrefix(line, []byte(`{"QMP":`)) {
		return fail("greeting", fmt.Errorf("%q %v", line, err))
	}
	for _, cmd := range []string{"qmp_capabilities", "cont"} {
		if _, err := conn.Write([]byte(`{"execute":"` + cmd + `"}` + "\n")); err != nil {
			return fail(cmd, err)
		}
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				return fail(cmd, err)
			}
			if bytes.HasPrefix(line, []byte(`{"return"`)) {
				break
			}
			if bytes.HasPrefix(line, []byte(`{"error"`)) {
				return fail(cmd, fmt.Errorf("%s", line))
			}
		}
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// Kill sends SIGKILL and waits for the reap.
func (q *RawQEMU) Kill() {
	_ = q.cmd.Process.Signal(syscall.SIGKILL)
	<-q.done
}

// Done is closed once the QEMU is reaped.
func (q *RawQEMU) Done() <-chan struct{} { return q.done }

// withTimeout is context.WithTimeout on Background.
func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// realAccel is the accelerator the real QEMUs run with here.
func realAccel() string { return qemuargs.ResolveAccel(RealSpec("x").Accel) }
