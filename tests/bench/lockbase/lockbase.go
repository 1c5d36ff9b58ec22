// Package lockbase is the baseline of vmsup's benchmarks: the lock design of
// libvirt's QEMU driver (2009–2011), which vmsup's DESIGN.md starts from,
// written literally in Go.
//
//   - Driver.mu is the driver lock (qemuDriverLock). It guards the domain
//     list and the event queue.
//   - Domain.mu is the virDomainObj lock. A lookup takes it while it still
//     holds the driver lock, as virDomainFindByName does, and returns the
//     domain locked.
//   - Domain.jobActive with Domain.jobCond is the job condition
//     (priv->jobActive, priv->jobCond). BeginJob waits on it under the
//     domain lock for at most JobWaitTime (QEMU_JOB_WAIT_TIME, 30 s), and
//     fails with "cannot acquire state change lock" after that. EndJob
//     clears the flag and signals one waiter (virCondSignal): a caller that
//     arrives meanwhile may take the job first, as in libvirt.
//   - Monitor.mu is the monitor lock (qemuMonitorLock). EnterMonitor takes
//     it and then releases the domain lock, so that state queries go on
//     while QEMU answers; ExitMonitor releases it and takes the domain lock
//     back. The WithDriver variants also release and retake the driver lock,
//     in the lock order driver → domain.
//
// Each API function follows the libvirt function named in its comment.
// There are no actors and no goroutines on the request path: the caller's
// goroutine does everything while holding the locks above.
package lockbase

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/google/uuid"

	"github.com/vmsup/vmsup/domain"
)

// JobWaitTime bounds a BeginJob wait, as QEMU_JOB_WAIT_TIME does.
const JobWaitTime = 30 * time.Second

// jobWaitTime is JobWaitTime; tests shorten it.
var jobWaitTime = JobWaitTime

// ErrJobTimeout is libvirt's VIR_ERR_OPERATION_TIMEOUT from BeginJob.
var ErrJobTimeout = errors.New("cannot acquire state change lock")

// ErrNotFound is returned for an unknown domain.
var ErrNotFound = errors.New("no domain with matching name")

// ErrNotRunning is libvirt's "domain is not running".
var ErrNotRunning = errors.New("domain is not running")

// Process is a started VM process with its connected QMP monitor.
type Process struct {
	PID int
	// Monitor is the QMP connection; Start connects it.
	Monitor qmp.Monitor
	// Kill ends the process at once (SIGKILL).
	Kill func()
	// Done is closed when the process has exited and been reaped.
	Done <-chan struct{}
}

// Launcher starts the VM process of spec.
type Launcher func(spec *domain.Spec) (*Process, error)

// Config configures a Driver.
type Config struct {
	// StateDir holds definitions (domains/NAME.json) and runtime status
	// (status/NAME.json), written atomically as libvirt writes its XML.
	StateDir string
	// Launch starts VM processes.
	Launch Launcher
}

// Driver is the driver object (struct qemud_driver).
type Driver struct {
	mu      sync.Mutex // the driver lock
	cfg     Config
	domains map[string]*Domain
	uuids   map[string]*Domain
	// events is the domain event queue, guarded by the driver lock
	// (qemuDomainEventQueue); nobody reads it in the benchmarks, it only
	// has to be paid for.
	events    [256]domain.Event
	nextEvent int
	queued    uint64
}

// Domain is a virDomainObj with its qemuDomainObjPrivate.
type Domain struct {
	mu      sync.Mutex // the domain object lock
	jobCond sync.Cond  // priv->jobCond, on mu

	jobActive bool
	job       domain.JobInfo
	jobSeq    uint64

	def    *domain.Spec
	state  domain.State
	reason domain.Reason
	proc   *Process
	mon    *Monitor
	// inMonitor is the command the job holder is in, with its start.
	inMonitor *domain.QMPInFlight
}

// Monitor is a qemuMonitor: one connection, one lock.
type Monitor struct {
	mu   sync.Mutex // the monitor lock
	conn qmp.Monitor
}

// New returns a driver with no domains.
func New(cfg Config) (*Driver, error) {
	for _, dir := range []string{"domains", "status"} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, dir), 0o700); err != nil {
			return nil, err
		}
	}
	if cfg.Launch == nil {
		return nil, errors.New("lockbase: Config.Launch is required")
	}
	return &Driver{cfg: cfg, domains: map[string]*Domain{}, uuids: map[string]*Domain{}}, nil
}

// findByName is virDomainFindByName: called with the driver lock held, it
// returns the domain LOCKED. The driver lock is held while it waits for the
// domain lock.
func (d *Driver) findByName(name string) (*Domain, error) {
	vm, ok := d.domains[name]
	if !ok {
		return nil, fmt.Errorf("%w '%s'", ErrNotFound, name)
	}
	vm.mu.Lock()
	return vm, nil
}

// beginJob is qemuDomainObjBeginJob: called with the domain lock held.
func (vm *Domain) beginJob(name string) error {
	if err := vm.waitJob(); err != nil {
		return err
	}
	vm.startJob(name)
	return nil
}

// beginJobWithDriver is qemuDomainObjBeginJobWithDriver: called with the
// driver and domain locks held. It releases the driver lock while it waits,
// and takes it back in lock order (domain unlocked first).
func (d *Driver) beginJobWithDriver(vm *Domain, name string) error {
	d.mu.Unlock()
	if err := vm.waitJob(); err != nil {
		// libvirt retakes the driver lock here with the domain still
		// locked, against its own lock order; that can deadlock with a
		// lookup, so the order is kept instead. Only a 30 s timeout gets
		// here.
		vm.mu.Unlock()
		d.mu.Lock()
		vm.mu.Lock()
		return err
	}
	vm.startJob(name)
	vm.mu.Unlock()
	d.mu.Lock()
	vm.mu.Lock()
	return nil
}

// waitJob waits on the job condition under the domain lock until no job is
// active or JobWaitTime has passed (virCondWaitUntil).
func (vm *Domain) waitJob() error {
	if !vm.jobActive {
		return nil
	}
	if vm.jobCond.L == nil {
		vm.jobCond.L = &vm.mu
	}
	deadline := time.Now().Add(jobWaitTime)
	// pthread_cond_timedwait: a timer wakes the waiters at the deadline.
	timer := time.AfterFunc(jobWaitTime, func() {
		vm.mu.Lock()
		vm.jobCond.Broadcast()
		vm.mu.Unlock()
	})
	defer timer.Stop()
	for vm.jobActive {
		if !time.Now().Before(deadline) {
			return fmt.Errorf("domain '%s': %w (held by job %d %q for %s)", vm.def.Name, ErrJobTimeout,
				vm.job.ID, vm.job.Name, time.Since(vm.job.Started).Round(time.Millisecond))
		}
		vm.jobCond.Wait()
	}
	return nil
}

func (vm *Domain) startJob(name string) {
	vm.jobActive = true
	vm.jobSeq++
	now := time.Now()
	vm.job = domain.JobInfo{ID: vm.jobSeq, Name: name, Kind: domain.JobModify, Owner: "api " + name, Enqueued: now, Started: now}
}

// endJob is qemuDomainObjEndJob: called with the domain lock held.
func (vm *Domain) endJob() {
	vm.jobActive = false
	vm.job = domain.JobInfo{}
	if vm.jobCond.L == nil {
		vm.jobCond.L = &vm.mu
	}
	vm.jobCond.Signal()
}

// enterMonitor is qemuDomainObjEnterMonitor: take the monitor lock, then
// release the domain lock.
func (vm *Domain) enterMonitor(command string) *Monitor {
	mon := vm.mon
	vm.inMonitor = &domain.QMPInFlight{Command: command, Since: time.Now()}
	mon.mu.Lock()
	vm.mu.Unlock()
	return mon
}

// exitMonitor is qemuDomainObjExitMonitor.
func (vm *Domain) exitMonitor(mon *Monitor) {
	mon.mu.Unlock()
	vm.mu.Lock()
	vm.inMonitor = nil
}

// enterMonitorWithDriver is qemuDomainObjEnterMonitorWithDriver: it also
// releases the driver lock.
func (d *Driver) enterMonitorWithDriver(vm *Domain, command string) *Monitor {
	mon := vm.enterMonitor(command)
	d.mu.Unlock()
	return mon
}

// exitMonitorWithDriver is qemuDomainObjExitMonitorWithDriver: driver lock,
// then domain lock.
func (d *Driver) exitMonitorWithDriver(vm *Domain, mon *Monitor) {
	mon.mu.Unlock()
	d.mu.Lock()
	vm.mu.Lock()
	vm.inMonitor = nil
}

// run sends one command on the monitor; the caller holds the monitor lock.
func (mon *Monitor) run(command []byte) ([]byte, error) {
	reply, err := mon.conn.Run(command)
	if err != nil {
		return nil, err
	}
	var body struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(reply, &body); err != nil {
		return nil, fmt.Errorf("malformed reply %s: %w", reply, err)
	}
	return body.Return, nil
}

// queueEvent is qemuDomainEventQueue: called with the driver lock held.
func (d *Driver) queueEvent(ev domain.Event) {
	d.events[d.nextEvent] = ev
	d.nextEvent = (d.nextEvent + 1) % len(d.events)
	d.queued++
}

// Define is qemudDomainDefine: the whole call holds the driver lock,
// including writing the definition to disk (virDomainSaveConfig).
func (d *Driver) Define(spec *domain.Spec) (created bool, err error) {
	if spec == nil {
		return false, errors.New("define: no spec given")
	}
	def := spec.Clone()
	d.mu.Lock()
	defer d.mu.Unlock()
	vm, exists := d.domains[def.Name]
	if exists {
		def.UUID = vm.def.UUID
	} else if def.UUID == "" {
		def.UUID = uuid.NewString()
	}
	def.ApplyDefaults()
	if err := def.Validate(); err != nil {
		return false, fmt.Errorf("define %q: %w", def.Name, err)
	}
	if other, ok := d.uuids[def.UUID]; ok && other.def.Name != def.Name {
		return false, fmt.Errorf("define %q: uuid %s already belongs to domain %q", def.Name, def.UUID, other.def.Name)
	}
	data, err := json.MarshalIndent(def, "", "  ")
	if err != nil {
		return false, err
	}
	if err := writeFileAtomic(filepath.Join(d.cfg.StateDir, "domains", def.Name+".json"), data); err != nil {
		return false, err
	}
	if exists {
		vm.mu.Lock()
		vm.def = def // takes effect at the next start in libvirt (newDef); simplified
		vm.mu.Unlock()
	} else {
		vm = &Domain{def: def, state: domain.StateShutoff, reason: domain.ReasonUnknown}
		vm.jobCond.L = &vm.mu
		d.domains[def.Name] = vm
		d.uuids[def.UUID] = vm
	}
	d.queueEvent(domain.Event{Type: domain.EventDefined, Domain: def.Name, UUID: def.UUID, State: domain.StateShutoff})
	return !exists, nil
}

// Start is qemudDomainStart → qemudStartVMDaemon: the driver lock is held
// throughout, except while waiting for the job and while in the monitor.
func (d *Driver) Start(ctx context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	vm, err := d.findByName(name)
	if err != nil {
		return err
	}
	defer vm.mu.Unlock()
	if err := d.beginJobWithDriver(vm, "start"); err != nil {
		return err
	}
	defer vm.endJob()
	if vm.proc != nil {
		return fmt.Errorf("domain '%s' is already running", name)
	}
	proc, err := d.cfg.Launch(vm.def)
	if err != nil {
		vm.state, vm.reason = domain.StateShutoff, domain.ReasonFailed
		return fmt.Errorf("start %s: %w", name, err)
	}
	// qemuConnectMonitor runs with both locks held.
	if err := proc.Monitor.Connect(); err != nil {
		proc.Kill()
		vm.state, vm.reason = domain.StateShutoff, domain.ReasonFailed
		return fmt.Errorf("start %s: connect monitor: %w", name, err)
	}
	vm.proc, vm.mon = proc, &Monitor{conn: proc.Monitor}
	vm.state, vm.reason = domain.StatePaused, domain.ReasonStartingUp
	go d.watch(vm, proc)
	for _, cmd := range []string{"query-status", "cont"} {
		mon := d.enterMonitorWithDriver(vm, cmd)
		_, err := mon.run([]byte(`{"execute":"` + cmd + `"}`))
		d.exitMonitorWithDriver(vm, mon)
		if err != nil {
			d.stopProcess(vm, domain.ReasonFailed)
			return fmt.Errorf("start %s: %s: %w", name, cmd, err)
		}
		if vm.proc != proc {
			return fmt.Errorf("start %s: QEMU exited during start", name)
		}
	}
	vm.state, vm.reason = domain.StateRunning, domain.ReasonBooted
	// virDomainSaveStatus, under both locks.
	if err := d.saveStatus(vm); err != nil {
		return err
	}
	d.queueEvent(domain.Event{Type: domain.EventStarted, Domain: name, UUID: vm.def.UUID, State: vm.state, Reason: vm.reason})
	return nil
}

// Info is qemudDomainGetInfo without its balloon query: vmsup's Info does
// not ask QEMU either, so both return the same fields from memory. (libvirt
// also ran a query-balloon job here whenever no job was active.)
func (d *Driver) Info(name string) (*domain.Info, error) {
	d.mu.Lock()
	vm, err := d.findByName(name)
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	in := vm.info(time.Now())
	vm.mu.Unlock()
	return in, nil
}

// info copies the state out; called with the domain lock held.
func (vm *Domain) info(now time.Time) *domain.Info {
	in := &domain.Info{Name: vm.def.Name, UUID: vm.def.UUID, State: vm.state, Reason: vm.reason, Control: &domain.Control{State: domain.ControlOK}}
	if vm.proc != nil {
		in.PID = vm.proc.PID
	}
	if vm.jobActive {
		ji := vm.job
		if vm.inMonitor != nil {
			q := *vm.inMonitor
			ji.QMP = &q
			in.Control.State, in.Control.Since = domain.ControlOccupied, q.Since
		} else {
			in.Control.State, in.Control.Since = domain.ControlJob, ji.Started
		}
		in.Job = &ji
	}
	in.Control.Refresh(now)
	return in
}

// Reset is qemuDomainReset: the driver lock only for the lookup, then a
// modify job on the domain.
func (d *Driver) Reset(ctx context.Context, name string) error {
	d.mu.Lock()
	vm, err := d.findByName(name)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	defer vm.mu.Unlock()
	if err := vm.beginJob("reset"); err != nil {
		return err
	}
	defer vm.endJob()
	if vm.proc == nil {
		return fmt.Errorf("domain '%s': %w", name, ErrNotRunning)
	}
	mon := vm.enterMonitor("system_reset")
	_, err = mon.run([]byte(`{"execute":"system_reset"}`))
	vm.exitMonitor(mon)
	return err
}

// QMP is qemuDomainMonitorCommand (virsh qemu-monitor-command): a job taken
// with the driver lock, and the command sent with EnterMonitorWithDriver.
func (d *Driver) QMP(ctx context.Context, name string, command []byte) (json.RawMessage, error) {
	var cmd struct {
		Execute string `json:"execute"`
	}
	if err := json.Unmarshal(command, &cmd); err != nil || cmd.Execute == "" {
		return nil, fmt.Errorf("qmp: bad command %s", command)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	vm, err := d.findByName(name)
	if err != nil {
		return nil, err
	}
	defer vm.mu.Unlock()
	if err := d.beginJobWithDriver(vm, "qmp"); err != nil {
		return nil, err
	}
	defer vm.endJob()
	if vm.proc == nil {
		return nil, fmt.Errorf("domain '%s': %w", name, ErrNotRunning)
	}
	mon := d.enterMonitorWithDriver(vm, cmd.Execute)
	ret, err := mon.run(command)
	d.exitMonitorWithDriver(vm, mon)
	return ret, err
}

// Destroy is qemuDomainDestroyFlags (libvirt ≥ 0.9.5): kill QEMU first, so
// that a job stuck in the monitor ends, then take the job and clean up.
func (d *Driver) Destroy(ctx context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	vm, err := d.findByName(name)
	if err != nil {
		return err
	}
	defer vm.mu.Unlock()
	if vm.proc == nil {
		return fmt.Errorf("domain '%s': %w", name, ErrNotRunning)
	}
	proc := vm.proc
	proc.Kill() // qemuProcessKill, before the job
	if err := d.beginJobWithDriver(vm, "destroy"); err != nil {
		return err
	}
	defer vm.endJob()
	// Wait for the reap with both locks held, as qemuProcessStop does.
	<-proc.Done
	if vm.proc == proc {
		d.stopProcess(vm, domain.ReasonDestroyed)
	}
	return nil
}

// stopProcess is qemuProcessStop: called with both locks held.
func (d *Driver) stopProcess(vm *Domain, reason domain.Reason) {
	if vm.mon != nil {
		_ = vm.mon.conn.Disconnect()
	}
	if vm.proc != nil {
		vm.proc.Kill()
	}
	vm.proc, vm.mon = nil, nil
	vm.state, vm.reason = domain.StateShutoff, reason
	_ = os.Remove(d.statusPath(vm.def.Name))
	d.queueEvent(domain.Event{Type: domain.EventStopped, Domain: vm.def.Name, UUID: vm.def.UUID, State: vm.state, Reason: reason})
}

// watch is the monitor's event callback path (qemuMonitorIO →
// qemuProcessHandle*): the domain lock to change state, then the driver
// lock to queue the event. At EOF it is qemuProcessHandleMonitorEOF.
func (d *Driver) watch(vm *Domain, proc *Process) {
	events, err := proc.Monitor.Events(context.Background())
	if err == nil {
		for ev := range events {
			vm.mu.Lock()
			if vm.proc != proc {
				vm.mu.Unlock()
				continue
			}
			var t domain.EventType
			switch ev.Event {
			case "STOP":
				if vm.state == domain.StateRunning {
					vm.state, vm.reason, t = domain.StatePaused, domain.ReasonUser, domain.EventPaused
				}
			case "RESUME":
				if vm.state == domain.StatePaused && vm.reason != domain.ReasonStartingUp {
					vm.state, vm.reason, t = domain.StateRunning, domain.ReasonUnpaused, domain.EventResumed
				}
			case "SHUTDOWN":
				vm.state, vm.reason, t = domain.StateShutdown, domain.ReasonUser, domain.EventShutdown
			}
			e := domain.Event{Type: t, Domain: vm.def.Name, UUID: vm.def.UUID, State: vm.state, Reason: vm.reason}
			vm.mu.Unlock()
			if t != "" {
				d.mu.Lock()
				d.queueEvent(e)
				d.mu.Unlock()
			}
		}
	}
	<-proc.Done
	d.mu.Lock()
	vm.mu.Lock()
	if vm.proc == proc && !vm.jobActive {
		d.stopProcess(vm, domain.ReasonCrashed)
	}
	vm.mu.Unlock()
	d.mu.Unlock()
}

// List is virConnectListAllDomains: the driver lock for the walk, each
// domain's lock for its copy.
func (d *Driver) List() []domain.Info {
	now := time.Now()
	d.mu.Lock()
	out := make([]domain.Info, 0, len(d.domains))
	for _, vm := range d.domains {
		vm.mu.Lock()
		out = append(out, *vm.info(now))
		vm.mu.Unlock()
	}
	d.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Close destroys every running domain.
func (d *Driver) Close() {
	d.mu.Lock()
	names := make([]string, 0, len(d.domains))
	for name := range d.domains {
		names = append(names, name)
	}
	d.mu.Unlock()
	for _, name := range names {
		_ = d.Destroy(context.Background(), name)
	}
}

// EventsQueued is how many events the driver queued.
func (d *Driver) EventsQueued() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queued
}

func (d *Driver) statusPath(name string) string {
	return filepath.Join(d.cfg.StateDir, "status", name+".json")
}

// saveStatus is virDomainSaveStatus: called with the locks held.
func (d *Driver) saveStatus(vm *Domain) error {
	st := domain.Status{Name: vm.def.Name, UUID: vm.def.UUID, State: vm.state, Reason: vm.reason, Updated: time.Now()}
	if vm.proc != nil {
		st.PID = vm.proc.PID
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(d.statusPath(vm.def.Name), data)
}

// writeFileAtomic writes like vmsup's store does: temp file, fsync,
// rename, fsync of the directory.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
