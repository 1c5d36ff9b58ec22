package process

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/confine"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

// Recovery is what vmsup found of a domain when it started: the status it
// had saved, and the QEMU still running for it, if any.
type Recovery struct {
	// Saved is the last saved status, or nil.
	Saved *domain.Status
	// Found says what was found, for the log: "adopted QEMU pid 123",
	// "QEMU pid 123 is gone", ...
	Found string
	proc  *Process
}

// Adopted reports whether a running QEMU was adopted.
func (r *Recovery) Adopted() bool { return r != nil && r.proc != nil }

// PID is the adopted QEMU's pid, or 0.
func (r *Recovery) PID() int {
	if r.Adopted() {
		return r.proc.pid
	}
	return 0
}

// Initial is the state a domain starts with after Recover: the saved one;
// shutoff/exited_unsupervised when it ran and its QEMU is gone; paused when
// a QEMU was adopted without a saved state saying so (the reconnect job's
// query-status then tells).
func (r *Recovery) Initial(uuid string) (domain.State, domain.Reason) {
	state, reason := domain.StateShutoff, domain.ReasonUnknown
	if s := r.Saved; s != nil && s.UUID == uuid {
		state, reason = s.State, s.Reason
	}
	switch {
	case r.Adopted() && state == domain.StateShutoff:
		return domain.StatePaused, domain.ReasonUnknown
	case !r.Adopted() && state != domain.StateShutoff && !(state == domain.StateCrashed && reason == domain.ReasonCrashLoop):
		return domain.StateShutoff, domain.ReasonExitedUnsupervised
	}
	return state, reason
}

// Release stops watching an adopted QEMU that will not be supervised after
// all (its domain failed to load). The QEMU keeps running.
func (r *Recovery) Release() {
	if r.Adopted() {
		r.proc.release()
	}
}

// Recover looks for a QEMU that a previous vmsup started for spec and that
// is still running: the pid in its pidfile (or in the saved status) must be
// alive and its /proc/<pid>/cmdline must carry the domain's UUID, so that a
// reused pid is never taken for the VM. Such a QEMU is adopted and watched
// through a pidfd. user is the unprivileged user a root daemon runs QEMU
// as (nil: QEMU runs as the daemon): the process must run as it, or as the
// daemon itself (a QEMU started before confinement was switched on).
func Recover(spec *domain.Spec, runDir string, saved *domain.Status, user *confine.User) *Recovery {
	rec := &Recovery{Saved: saved}
	paths, err := qemuargs.NewRunPaths(runDir, spec.Name)
	if err != nil {
		rec.Found = err.Error()
		return rec
	}
	var candidates []int
	if pid, err := readPIDFile(paths.PIDFile); err == nil {
		candidates = append(candidates, pid)
	}
	if saved != nil && saved.PID > 0 && (len(candidates) == 0 || candidates[0] != saved.PID) {
		candidates = append(candidates, saved.PID)
	}
	if len(candidates) == 0 {
		rec.Found = "no QEMU pid recorded"
		return rec
	}
	recorded, idErr := readIdentityFile(paths.Identity)
	var problems []string
	for _, pid := range candidates {
		var p *Process
		var err error
		if idErr == nil {
			p, err = adoptIfIdentical(pid, spec.UUID, paths.QEMULog, recorded, user)
		} else {
			p, err = adoptIfOurs(pid, spec.UUID, paths.QEMULog)
		}
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		rec.proc = p
		rec.Found = fmt.Sprintf("adopted running QEMU pid %d", pid)
		return rec
	}
	rec.Found = strings.Join(problems, "; ")
	return rec
}

// adoptIfIdentical opens a pidfd on pid first, so the process cannot be
// swapped for another under the same pid, then checks that it is the
// process recorded at launch: same start time and boot id (so the same
// process, not a reused pid), same executable, same uid, and -uuid in its
// command line.
func adoptIfIdentical(pid int, uuid, logPath string, recorded Identity, user *confine.User) (*Process, error) {
	if recorded.UUID != uuid {
		return nil, fmt.Errorf("pid %d: the recorded QEMU identity is of UUID %q, not this domain's %s", pid, recorded.UUID, uuid)
	}
	// The record lies in a run dir that the QEMU user owns: it must name
	// a uid QEMU runs as, never another one.
	if recorded.UID != uint32(os.Getuid()) && (user == nil || recorded.UID != user.UID) {
		want := fmt.Sprintf("the daemon's uid %d", os.Getuid())
		if user != nil {
			want = fmt.Sprintf("the QEMU user %q (uid %d) or %s", user.Name, user.UID, want)
		}
		return nil, fmt.Errorf("pid %d: the recorded QEMU identity runs as uid %d, not as %s", pid, recorded.UID, want)
	}
	p, err := adoptProcess(pid, logPath)
	if err != nil {
		return nil, fmt.Errorf("QEMU pid %d is gone", pid)
	}
	now, err := ReadIdentity(pid)
	if err != nil || p.Exited() {
		p.release()
		return nil, fmt.Errorf("QEMU pid %d is gone", pid)
	}
	if diff := recorded.Mismatch(now); diff != "" {
		p.release()
		return nil, fmt.Errorf("pid %d is not the QEMU vmsup started for this domain: %s", pid, diff)
	}
	if !runsDomain(pid, uuid) {
		p.release()
		return nil, fmt.Errorf("pid %d is not this domain's QEMU (no -uuid %s in its command line)", pid, uuid)
	}
	return p, nil
}

// adoptIfOurs adopts a QEMU started before identities were recorded: it
// opens a pidfd on pid first, then checks the command line and that the
// process runs as this vmsup's uid, as QEMU then did.
func adoptIfOurs(pid int, uuid, logPath string) (*Process, error) {
	p, err := adoptProcess(pid, logPath)
	if err != nil {
		return nil, fmt.Errorf("QEMU pid %d is gone", pid)
	}
	if !runsDomain(pid, uuid) || p.Exited() {
		p.release()
		return nil, fmt.Errorf("pid %d is not this domain's QEMU (no -uuid %s in its command line)", pid, uuid)
	}
	now, err := ReadIdentity(pid)
	if err != nil || now.UID != uint32(os.Getuid()) {
		p.release()
		return nil, fmt.Errorf("pid %d is not this domain's QEMU: it runs as uid %d, not %d, and no identity was recorded", pid, now.UID, os.Getuid())
	}
	return p, nil
}

// runsDomain reports whether pid is alive and its command line carries uuid.
func runsDomain(pid int, uuid string) bool {
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return err == nil && hasArgs(cmdline, "-uuid", uuid)
}

// hasArgs reports whether the NUL-separated cmdline holds flag followed by value.
func hasArgs(cmdline []byte, flag, value string) bool {
	args := bytes.Split(bytes.TrimRight(cmdline, "\x00"), []byte{0})
	for i := 0; i+1 < len(args); i++ {
		if string(args[i]) == flag && string(args[i+1]) == value {
			return true
		}
	}
	return false
}

func readPIDFile(path string) (int, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 32)
	n, _ := f.Read(buf)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pidfile %s: bad content %q", path, buf[:n])
	}
	return pid, nil
}

// release stops watching an adopted process without signalling it; the
// watching goroutine ends. done is closed afterwards even though the
// process may still run: it is no longer this vmsup's.
func (p *Process) release() {
	if p.cmd == nil && p.pidfd != nil {
		p.mu.Lock()
		p.released = true
		p.mu.Unlock()
		p.pidfd.Close()
		<-p.done
	}
}

// Confine notes what confines an adopted QEMU, for Info: the QEMU user
// when the process runs as it, and its cgroup under cgroups (nil: none),
// which is removed once the QEMU exits. note says why a part is missing.
// Call it before the process is handed to its domain.
func (r *Recovery) Confine(user *confine.User, cgroups *confine.Cgroups, note string) {
	if !r.Adopted() || user == nil {
		return
	}
	p := r.proc
	now, err := ReadIdentity(p.pid)
	if err != nil || now.UID != user.UID {
		return // a QEMU started unconfined, by an older vmsup
	}
	conf := &domain.Confinement{User: user.Name, UID: user.UID, Note: note}
	var cg *confine.Cgroup
	if cgroups != nil {
		if cg, err = cgroups.Adopt(filepath.Base(filepath.Dir(p.logPath)), p.pid); err != nil {
			conf.Note = err.Error()
		} else {
			conf.Cgroup, conf.MemoryMax, conf.Note = cg.Path, cg.MemoryMax, cg.Note
		}
	}
	p.mu.Lock()
	p.confinement, p.cgroup = conf, cg
	p.mu.Unlock()
}

// Process is the adopted QEMU, or nil.
func (r *Recovery) Process() *Process {
	if !r.Adopted() {
		return nil
	}
	return r.proc
}

// StillRunning reads the pid in pidFile and reports it when that process is
// alive and its command line carries uuid: a QEMU that still runs the domain.
func StillRunning(pidFile, uuid string) (int, bool) {
	pid, err := readPIDFile(pidFile)
	if err != nil || !runsDomain(pid, uuid) {
		return 0, false
	}
	return pid, true
}
