package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/internal/protocol"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/domain/qemuargs"
	"github.com/vmsup/vmsup/monitor"
)

// jobRunner is a job's body, run in the job goroutine, and the change it
// makes to the actor's state, applied in the actor when the job ends.
type jobRunner struct {
	run   func(e *jobEnv) (any, error)
	apply func(dom *domainActor, value any, err error)
	// direct, instead of run, makes a job of one QMP command that the
	// actor sends itself (see direct.go).
	direct *directQMP
}

// jobEnv is what a job goroutine may use: a copy of the actor's state at
// launch, and message sends back to the actor. It never touches the actor's
// fields.
type jobEnv struct {
	ctx      context.Context
	root     *actor.RootContext
	self     *actor.PID
	monitor  *actor.PID
	proc     *process.Process
	spec     domain.Spec
	runDir   string
	launch   process.Launcher
	grace    time.Duration
	job      domain.JobInfo
	req      actors.Request
	hooks    JobHooks
	host     HostResources
	domain   string
	released bool
	// owner identifies the actor instance, to tag messages; the job
	// goroutine never touches its fields.
	owner *domainActor
	// span is the job's trace span, the parent of its QMP commands.
	span string
}

// jobTrace puts a job goroutine's messages to its actor in the job's trace
// (the middleware reads Header), under the job's span.
type jobTrace struct{ req actors.Request }

// Header is the job's request, with the job's span as the parent.
func (t jobTrace) Header() actors.Request { return t.req }

func (e *jobEnv) trace() jobTrace {
	return jobTrace{req: actors.Request{RequestID: e.req.RequestID, ParentID: e.span, Owner: e.req.Owner}}
}

// step reports the job's current step to the actor.
func (e *jobEnv) step(step, qmp string) {
	s := jobStep{jobTrace: e.trace(), from: e.owner, id: e.job.ID, step: step, qmp: qmp}
	if qmp != "" {
		s.since = time.Now()
	}
	e.root.Send(e.self, s)
}

// goAsync releases the job lane while an async job waits.
func (e *jobEnv) goAsync() {
	if e.hooks.Released != nil {
		e.hooks.Released(e.domain, e.job)
	}
	e.released = true
	e.root.Send(e.self, jobGoAsync{jobTrace: e.trace(), from: e.owner, id: e.job.ID})
}

// cause turns an error seen while the job context was cancelled into the
// reason it was cancelled (QEMU exited, destroy, ...).
func (e *jobEnv) cause(err error) error {
	if c := context.Cause(e.ctx); c != nil && !errors.Is(c, context.Canceled) {
		return fmt.Errorf("%w (%v)", c, err)
	}
	return err
}

// qmp runs one QMP command through the monitor actor.
func (e *jobEnv) qmp(execute string, args json.RawMessage) (*monitor.Result, error) {
	if e.monitor == nil {
		return nil, fmt.Errorf("domain %q: %w", e.domain, domain.ErrNotRunning)
	}
	e.step("qmp "+execute, execute)
	defer e.step("", "")
	res, err := actors.AskAs[*monitor.Result](e.ctx, e.root, e.monitor, &monitor.Command{
		Request:   e.req.Child(e.ctx, e.span),
		JobID:     e.job.ID,
		Execute:   execute,
		Arguments: args,
	})
	if err != nil {
		e.settle(err)
		return nil, e.cause(fmt.Errorf("job %d %q: %w", e.job.ID, e.job.Name, err))
	}
	return res, nil
}

// exitSettle is how long a job whose QMP connection broke waits for the
// news that QEMU exited: the kernel resets QEMU's sockets a moment before
// the process counts as exited, and "QEMU exited (signal 9)" says more
// than "connection reset by peer".
const exitSettle = 100 * time.Millisecond

// settle waits up to exitSettle for the job to be cancelled by QEMU's exit
// when a QMP command failed without a QMP error reply while the process
// still seemed alive.
func (e *jobEnv) settle(err error) {
	var qerr *monitor.QMPError
	if errors.As(err, &qerr) || e.proc == nil || e.ctx.Err() != nil {
		return
	}
	timer := time.NewTimer(exitSettle)
	defer timer.Stop()
	select {
	case <-e.ctx.Done():
	case <-e.proc.Done():
	case <-timer.C:
	}
}

func (dom *domainActor) qmpJob(execute string, args json.RawMessage, onSuccess func(dom *domainActor)) jobRunner {
	return jobRunner{
		direct: &directQMP{execute: execute, args: args},
		apply: func(dom *domainActor, _ any, err error) {
			if err == nil && onSuccess != nil && dom.proc != nil {
				onSuccess(dom)
			}
		},
	}
}

func (dom *domainActor) rawQMPJob(req *protocol.QMPRequest) jobRunner {
	if req.Execute == "" {
		return jobRunner{run: func(e *jobEnv) (any, error) {
			return nil, fmt.Errorf("domain %q: qmp: the command has no \"execute\" name", e.domain)
		}}
	}
	return jobRunner{direct: &directQMP{execute: req.Execute, args: req.Arguments, value: func(res *monitor.Result) any {
		return &protocol.QMPReply{Return: res.Return}
	}}}
}

func (dom *domainActor) startJob(paused bool) jobRunner {
	return jobRunner{
		run: func(e *jobEnv) (any, error) { return nil, e.start(paused) },
		apply: func(dom *domainActor, _ any, err error) {
			switch {
			case err != nil && dom.proc == nil:
				dom.setState(domain.StateShutoff, domain.ReasonFailed, "")
			case err == nil && dom.proc != nil && paused:
				dom.setState(domain.StatePaused, domain.ReasonUser, "")
			case err == nil && dom.proc != nil:
				dom.setState(domain.StateRunning, domain.ReasonBooted, "")
			}
		},
	}
}

// startAttempts bounds how often start spawns QEMU when the QMP handshake
// fails while QEMU runs: QEMU 7.2 now and then garbles the QMP session of a
// client that connects right after the socket appears (a second greeting,
// a parse error), and a fresh QEMU is the reliable way out.
const startAttempts = 2

// start runs QEMU paused, hands it to the actor (which spawns the monitor),
// checks QMP and continues the guest unless paused was asked for.
func (e *jobEnv) start(paused bool) error {
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		var retry bool
		if retry, err = e.startOnce(paused); err == nil || !retry || e.ctx.Err() != nil {
			return err
		}
		e.step(fmt.Sprintf("retry start (attempt %d failed: %v)", attempt, err), "")
	}
	return err
}

// startOnce makes one attempt. retry reports a QMP handshake failure while
// QEMU was still running, which a fresh QEMU may not have.
func (e *jobEnv) startOnce(paused bool) (retry bool, err error) {
	fail := func(step string, err error) error {
		return fmt.Errorf("domain %q: start: %s: %w", e.domain, step, err)
	}
	paths, err := qemuargs.NewRunPaths(e.runDir, e.domain)
	if err != nil {
		return false, fail("run paths", err)
	}
	e.step("prepare run dir", "")
	if err := os.MkdirAll(paths.Dir, 0o700); err != nil {
		return false, fail("prepare run dir", err)
	}
	// Never a second QEMU for a domain: one that vmsup does not supervise
	// (it failed to adopt it) still owns the VM's disks and sockets.
	if pid, ok := process.StillRunning(paths.PIDFile, e.spec.UUID); ok {
		return false, fail("check", fmt.Errorf("QEMU pid %d is still running for this domain (not supervised); stop it first", pid))
	}
	for _, stale := range []string{paths.QMPSocket, paths.PIDFile} {
		if err := os.Remove(stale); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, fail("remove stale "+stale, err)
		}
	}
	accel := qemuargs.ResolveAccel(e.spec.Accel)
	var host *qemuargs.Host
	release := func() {}
	if e.host != nil {
		e.step("host resources", "")
		if host, release, err = e.host.Acquire(e.ctx, &e.spec); err != nil {
			return false, fail("host resources", err)
		}
	}
	args, err := qemuargs.BuildArgs(&e.spec, paths, accel, host)
	if err != nil {
		release()
		return false, fail("command line", err)
	}
	e.step("spawn qemu", "")
	launch := e.launch
	if launch == nil {
		launch = process.LaunchQEMU
	}
	proc, err := launch(e.spec.EmulatorPath(), args, paths)
	if err != nil {
		release()
		return false, fail("spawn QEMU", err)
	}
	proc.OnExit(release)
	// From here on the process must not outlive a failed start.
	abort := func(step string, err error) error {
		proc.Kill()
		err = fail(step, err)
		if tail := proc.LogTail(); tail != "" {
			err = fmt.Errorf("%w; QEMU (%s) said: %s", err, proc.ExitString(), tail)
		} else {
			err = fmt.Errorf("%w; QEMU: %s", err, proc.ExitString())
		}
		return err
	}
	root, self := e.root, e.self
	proc.OnExit(func() { root.Send(self, processExited{proc: proc}) })
	e.step("attach monitor", "")
	mon, err := actors.AskAs[*actor.PID](e.ctx, e.root, e.self, attachProcess{jobTrace: e.trace(), jobID: e.job.ID, proc: proc, serial: e.spec.Serial})
	if err != nil {
		return false, abort("attach monitor", e.cause(err))
	}
	e.monitor = mon
	if _, err := e.qmp("query-status", nil); err != nil {
		running := !proc.Exited()
		return running, abort("QMP", err)
	}
	if !paused {
		if _, err := e.qmp("cont", nil); err != nil {
			return false, abort("cont", err)
		}
	}
	return false, nil
}

func (dom *domainActor) shutdownJob(timeout time.Duration) jobRunner {
	if timeout <= 0 {
		timeout = DefaultShutdownTimeout
	}
	return jobRunner{
		run: func(e *jobEnv) (any, error) {
			return nil, e.shutdown(timeout)
		},
		apply: func(dom *domainActor, _ any, err error) {
			if err != nil {
				dom.shutdownRequested = false
			}
		},
	}
}

// shutdown sends the ACPI power button press, then waits as an async job for
// the guest to power off.
func (e *jobEnv) shutdown(timeout time.Duration) error {
	e.root.Send(e.self, shutdownRequested{jobTrace: e.trace(), from: e.owner, id: e.job.ID})
	sent := time.Now()
	if _, err := e.qmp("system_powerdown", nil); err != nil {
		return err
	}
	e.step("wait for guest power-off", "")
	e.goAsync()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-e.proc.Done():
		return nil
	case <-timer.C:
		return fmt.Errorf("domain %q: guest did not power off within %s after ACPI powerdown (sent %s): %w",
			e.domain, timeout, sent.Format("15:04:05"), domain.ErrShutdownTimeout)
	case <-e.ctx.Done():
		select {
		case <-e.proc.Done():
			return nil // QEMU exited: that is what we waited for
		default:
		}
		return fmt.Errorf("domain %q: shutdown job %d: %w", e.domain, e.job.ID, context.Cause(e.ctx))
	}
}

// runDestroy waits for the process that destroy killed to be reaped.
func runDestroy(e *jobEnv) (any, error) {
	if e.proc == nil {
		return nil, nil
	}
	e.step("wait for QEMU to exit", "")
	timer := time.NewTimer(e.grace + 10*time.Second)
	defer timer.Stop()
	select {
	case <-e.proc.Done():
		return nil, nil
	case <-timer.C:
		return nil, fmt.Errorf("domain %q: destroy: QEMU (pid %d) still not reaped %s after SIGTERM", e.domain, e.proc.PID(), e.grace+10*time.Second)
	}
}

type shutdownRequested struct {
	jobTrace
	from *domainActor
	id   uint64
}
