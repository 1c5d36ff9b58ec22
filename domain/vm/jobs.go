package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/digitalocean/go-qemu/qmp/raw"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/agent"
	"github.com/vmsup/vmsup/domain/confine"
	"github.com/vmsup/vmsup/domain/internal/protocol"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/domain/qemuargs"
	"github.com/vmsup/vmsup/monitor"
)

// The domain's jobs are plans of the actor's job lane (actors.Lane): a
// named list of steps. The lane owns the queue policy; this file says
// only what each job does. Steps marked Do run in a goroutine the lane
// owns and may wait; InActor steps run in the actor and change its state.

type (
	job  = actors.Job[*jobData]
	run  = actors.Run[*jobData]
	step = actors.Step[*jobData]
	plan = actors.Plan[*jobData]
)

// jobData is one job's own data: what the request asked, what the plan's
// Start copied from the actor, and what the steps found. While a step
// goroutine runs, only it touches the data; the actor reads it in End.
type jobData struct {
	// dom is the actor instance that queued the job. Only the plans'
	// hooks that run in that actor (Start, End, InActor steps) may use
	// it; goroutine steps read the copies below.
	dom *domainActor
	// From the request.
	timeout time.Duration
	mode    domain.ShutdownMode
	execute string
	args    json.RawMessage
	// after runs in the actor after the plan's End (the on_crash restart
	// counts its outcome here).
	after func(c actor.Context, dom *domainActor, err error)
	// hp is a hot-plug job's device (hotplug.go).
	hp *hotplug
	// The trace: the span of the message that queued the job, and when.
	parentSpan string
	enqueuedAt time.Time

	// Copied from the actor when the job starts.
	domain string
	spec   *domain.Spec // the actor's, shared: specs are never changed in place
	runDir string
	launch process.Launcher
	grace  time.Duration
	proc   *process.Process
	link   *monitor.Link
	host   HostResources
	agent  *actor.PID // the guest agent actor, nil when none
	conf   *Confine
	// openImage opens spec files for QEMU; nil opens them as named.
	openImage OpenImage
	// snapFile holds the snapshot records, and with them the chains of
	// the disk-only snapshots that a start opens.
	snapFile string

	// Found by the steps.
	paths   qemuargs.RunPaths
	argv    []string
	status  string
	release func() // the host resources of this start
	cgroup  *confine.Cgroup
	files   passedFiles // closed once QEMU is spawned, or when the start job ends
	// snap is a snapshot job's own data (snapshot.go).
	snap *snapOp
	// async is set while the job is the lane's async job.
	async bool
	live  *domain.Live
	// reply is a raw QMP job's reply, kept here to save an allocation.
	reply protocol.QMPReply
	// deadline ends the whole shutdown; viaAgent says the agent took it.
	deadline time.Time
	viaAgent bool
}

// plans are the domain actor's jobs. They are made once, for every
// domain (sharedPlans): their hooks that run in the actor (Start, End,
// InActor steps) find their actor instance in the job's data
// (jobData.dom), so that a domain costs no plans of its own.
type plans struct {
	start, startPaused, shutdown, destroy, pause, resume, reset, qmpQuery, qmpModify, reconnect *plan

	snap snapshotPlans
	hot  hotplugPlans
}

// sharedPlans are the plans of every domain actor, made at first use.
var sharedPlans = sync.OnceValue(func() *plans {
	p := &plans{}
	makePlans(p)
	makeSnapshotPlans(&p.snap)
	makeHotplugPlans(&p.hot)
	return p
})

// startRetries is how often start spawns QEMU again when the QMP
// handshake fails while QEMU runs: QEMU 7.2 now and then garbles the QMP
// session of a client that connects right after the socket appears (a
// second greeting, a parse error), and a fresh QEMU is the reliable way
// out.
const startRetries = 1

func makePlans(p *plans) {
	startSteps := []step{
		{Name: "prepare", Do: stepPrepare},
		{Name: "spawn", Do: stepSpawn},
		{Name: "attach", InActor: func(c actor.Context, r run) error { return r.Data().dom.stepAttach(c, r) }},
		{Name: "query-status", Call: "query-status", Do: stepHandshake},
	}
	cont := step{Name: "cont", Call: "cont", Do: func(ctx context.Context, r run) error {
		d := r.Data()
		if err := d.typed(ctx, r, "cont", (*raw.Monitor).Cont); err != nil {
			return d.abort("cont", err)
		}
		return nil
	}}
	p.start = newPlan("start", actors.JobModify, append(startSteps, cont)...)
	p.startPaused = newPlan("start", actors.JobModify, startSteps...)
	for _, sp := range []*plan{p.start, p.startPaused} {
		sp.Retries = startRetries
		sp.Start = startPrecondition
		paused := sp == p.startPaused
		sp.End = ending(func(dom *domainActor, _ *job, err error) {
			switch {
			case err != nil && dom.proc == nil:
				dom.setState(domain.StateShutoff, domain.ReasonFailed, "")
			case err == nil && dom.proc != nil && paused:
				dom.setState(domain.StatePaused, domain.ReasonUser, "")
			case err == nil && dom.proc != nil:
				dom.setState(domain.StateRunning, domain.ReasonBooted, "")
			}
		})
	}

	p.shutdown = newPlan("shutdown", actors.JobAsync,
		step{Name: "request", Do: stepShutdownRequest},
		step{Name: "wait for power-off", Async: true, Do: stepAwaitPowerOff})
	p.shutdown.Start = func(c actor.Context, j *job) error {
		dom := j.Data.dom
		mode, err := domain.ParseShutdownMode(string(j.Data.mode))
		if err != nil {
			return fmt.Errorf("domain %q: shutdown: %w", dom.name(), err)
		}
		if err := dom.runningPrecondition(c, j); err != nil {
			return err
		}
		if mode == domain.ShutdownAgent && dom.agent == nil {
			return fmt.Errorf("domain %q: shutdown --mode agent: the domain has no guest agent channel (machine %s): %w", dom.name(), dom.spec.Machine, domain.ErrWrongState)
		}
		j.Data.mode = mode
		timeout := j.Data.timeout
		if timeout <= 0 {
			timeout = DefaultShutdownTimeout
		}
		j.Data.timeout, j.Data.deadline = timeout, time.Now().Add(timeout)
		dom.shutdownRequested = true
		return nil
	}
	p.shutdown.End = ending(func(dom *domainActor, _ *job, err error) {
		if err != nil {
			dom.shutdownRequested = false
		}
	})

	p.destroy = newPlan("destroy", actors.JobDestroy, step{Name: "wait for exit", Do: stepAwaitExit})
	p.destroy.Start = func(_ actor.Context, j *job) error {
		// The kill has begun: no precondition. The step waits for the
		// process that destroy killed.
		killed := j.Data.proc
		j.Data.dom.load(j)
		j.Data.proc = killed
		return nil
	}
	p.destroy.End = ending(func(dom *domainActor, _ *job, _ error) {
		dom.destroying = nil
		dom.life.destroying = false
		if dom.proc == nil {
			dom.setState(domain.StateShutoff, domain.ReasonDestroyed, "")
		}
	})

	p.pause = oneCommand("pause", "stop", (*raw.Monitor).Stop, func(dom *domainActor) { dom.setState(domain.StatePaused, domain.ReasonUser, "") })
	p.pause.Kind = actors.JobSuspend // a snapshot's mask lets it run beside
	p.resume = oneCommand("resume", "cont", (*raw.Monitor).Cont, func(dom *domainActor) { dom.setState(domain.StateRunning, domain.ReasonUnpaused, "") })
	p.reset = oneCommand("reset", "system_reset", (*raw.Monitor).SystemReset, nil)

	rawQMP := func(kind actors.JobKind) *plan {
		rp := newPlan("qmp", kind, step{Name: "qmp", Do: func(ctx context.Context, r run) error {
			d := r.Data()
			ret, err := d.qmp(ctx, r, d.execute, d.args)
			if err != nil {
				return err
			}
			d.reply.Return = ret
			r.SetValue(&d.reply)
			return nil
		}})
		rp.Start = func(c actor.Context, j *job) error {
			dom := j.Data.dom
			if j.Data.execute == "" {
				return fmt.Errorf("domain %q: qmp: the command has no \"execute\" name", dom.name())
			}
			if err := dom.runningPrecondition(c, j); err != nil {
				return err
			}
			j.SetCall(j.Data.execute)
			return nil
		}
		rp.End = ending(nil)
		return rp
	}
	p.qmpQuery, p.qmpModify = rawQMP(actors.JobQuery), rawQMP(actors.JobModify)

	p.reconnect = newPlan("reconnect", actors.JobModify, step{Name: "query-status", Call: "query-status", Do: func(ctx context.Context, r run) error {
		d := r.Data()
		return d.typed(ctx, r, "query-status", func(m *raw.Monitor) error {
			st, err := m.QueryStatus()
			d.status = st.Status.String()
			return err
		})
	}})
	p.reconnect.Start = runningPrecondition
	p.reconnect.End = ending(func(dom *domainActor, j *job, err error) {
		if err == nil && dom.proc != nil {
			dom.resync(j.Data.status)
		}
	})
}

// newPlan makes a plan whose jobs need a running QEMU and copy the
// actor's state at their start.
func newPlan(name string, kind actors.JobKind, steps ...step) *plan {
	p := actors.NewPlan(name, kind, steps...)
	p.Start = runningPrecondition
	return p
}

// oneCommand is a job of one QMP command: a one-step plan. onSuccess runs
// in the actor when the command succeeded and QEMU still runs.
func oneCommand(name, execute string, send func(*raw.Monitor) error, onSuccess func(dom *domainActor)) *plan {
	p := newPlan(name, actors.JobModify, step{Name: execute, Call: execute, Do: func(ctx context.Context, r run) error {
		return r.Data().typed(ctx, r, execute, send)
	}})
	p.End = ending(func(dom *domainActor, _ *job, err error) {
		if err == nil && onSuccess != nil && dom.proc != nil {
			onSuccess(dom)
		}
	})
	return p
}

// ending is the End of every plan: first the QEMU exit the job may have
// seen before its message arrived, then apply, then the job's own after.
func ending(apply func(dom *domainActor, j *job, err error)) func(actor.Context, *job, any, error) (any, error) {
	return func(c actor.Context, j *job, value any, err error) (any, error) {
		dom := j.Data.dom
		if dom.proc != nil && dom.proc.Exited() {
			dom.onExit(c, dom.proc)
		}
		if apply != nil {
			apply(dom, j, err)
		}
		if j.Data.after != nil {
			j.Data.after(c, dom, err)
		}
		return value, err
	}
}

// load copies what a job's steps may use from the actor.
func (dom *domainActor) load(j *job) {
	d := j.Data
	d.domain, d.spec, d.runDir, d.launch, d.grace = dom.name(), dom.spec, dom.cfg.RunDir, dom.cfg.Launcher, dom.cfg.DestroyGrace
	d.proc, d.link, d.host = dom.proc, dom.link, dom.cfg.Host
	if dom.agent != nil {
		d.agent = dom.agent.pid
	}
	d.snapFile = dom.snapshotFile()
	d.proc, d.link, d.host, d.conf, d.openImage = dom.proc, dom.link, dom.cfg.Host, dom.cfg.Confine, dom.cfg.OpenImage
	if dom.cfg.Trace.Enabled() {
		j.SetSpan(jobSpan(dom.name(), j.ID()))
	}
}

func jobSpan(name string, id uint64) string { return name + "/job-" + strconv.FormatUint(id, 10) }

// runningPrecondition is the Start of a job that needs a running QEMU.
func runningPrecondition(c actor.Context, j *job) error { return j.Data.dom.runningPrecondition(c, j) }

// runningPrecondition loads j from the actor and checks that QEMU runs
// (and, for pause and resume, that the state allows them).
func (dom *domainActor) runningPrecondition(_ actor.Context, j *job) error {
	dom.load(j)
	switch j.Name() {
	case "pause":
		if dom.proc != nil && dom.state == domain.StatePaused {
			return fmt.Errorf("domain %q: pause: domain is already paused: %w", dom.name(), domain.ErrWrongState)
		}
	case "resume":
		if dom.proc != nil && dom.state != domain.StatePaused {
			return fmt.Errorf("domain %q: resume: domain is not paused (state %s): %w", dom.name(), dom.state, domain.ErrWrongState)
		}
	}
	if dom.proc == nil || dom.mon == nil {
		return fmt.Errorf("domain %q: %s: %w (state %s/%s)", dom.name(), j.Name(), domain.ErrNotRunning, dom.state, dom.reason)
	}
	return nil
}

// startPrecondition is the Start of a start job.
func startPrecondition(c actor.Context, j *job) error { return j.Data.dom.startPrecondition(c, j) }

func (dom *domainActor) startPrecondition(_ actor.Context, j *job) error {
	dom.load(j)
	if dom.proc != nil {
		return fmt.Errorf("domain %q: start: domain is already %s: %w", dom.name(), dom.state, domain.ErrWrongState)
	}
	return nil
}

// stepPrepare makes the run directory, the host resources (forwards,
// taps, the files behind image disks and the seed) and the QEMU argv.
// Never a second QEMU for a domain: one that vmsup does not supervise (it
// failed to adopt it) still owns the VM's disks and sockets.
func stepPrepare(ctx context.Context, r run) error {
	d := r.Data()
	d.proc = nil // a retry's earlier QEMU is dead (stepHandshake)
	paths, err := qemuargs.NewRunPaths(d.runDir, d.domain)
	if err != nil {
		return d.fail("run paths", err)
	}
	if err := os.MkdirAll(paths.Dir, 0o700); err != nil {
		return d.fail("prepare run dir", err)
	}
	if pid, ok := process.StillRunning(paths.PIDFile, d.spec.UUID); ok {
		return d.fail("check", fmt.Errorf("QEMU pid %d is still running for this domain (not supervised); stop it first", pid))
	}
	for _, stale := range []string{paths.QMPSocket, paths.AgentSocket, paths.PIDFile} {
		if err := os.Remove(stale); err != nil && !errors.Is(err, os.ErrNotExist) {
			return d.fail("remove stale "+stale, err)
		}
	}
	d.paths = paths
	var host *qemuargs.Host
	if d.host != nil {
		h, release, err := d.host.Acquire(ctx, d.spec)
		if err != nil {
			return d.fail("host resources", err)
		}
		host, d.release = h, release
		// Released when the QEMU of this start exits (stepSpawn), or
		// here when none was started. A later Acquire (a retry) makes
		// an earlier release a no-op.
		r.Defer("release the host resources of a start without QEMU", func(error) error {
			if d.proc == nil {
				release()
			}
			return nil
		})
	}
	if host == nil {
		if host, err = qemuargs.PlainHost(d.spec); err != nil {
			return d.fail("command line", err)
		}
	}
	// The tops of the disks' chains of disk-only snapshots, with the
	// images under them.
	if host, err = applyChains(d.snapFile, d.spec, host); err != nil {
		return d.fail("disk-only snapshots", err)
	}
	// vmsup opens every file QEMU needs and passes it as an fd, so that
	// nothing swapped in since define (a symlink out of the image root)
	// is opened by name.
	host, files, err := passFiles(d.spec, paths, host, d.openImage)
	if err != nil {
		return d.fail("open files", err)
	}
	d.files = files
	r.Defer("close the files of a start that spawned no QEMU", func(error) error {
		files.Close()
		return nil
	})
	argv, err := qemuargs.BuildArgs(d.spec, paths, qemuargs.ResolveAccel(d.spec.Accel), host)
	if err != nil {
		return d.fail("command line", err)
	}
	d.argv = argv
	d.cgroup = nil
	if d.conf != nil {
		cg, err := d.conf.prepare(ctx, d.spec, paths)
		if err != nil {
			return d.fail("confine QEMU", err)
		}
		if cg != nil {
			d.cgroup = cg
			// The process owns it once QEMU is started in it.
			r.Defer("remove the cgroup of a start without QEMU", func(error) error {
				if d.proc == nil {
					rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					return cg.Remove(rctx)
				}
				return nil
			})
		}
	}
	// The running definition of this QEMU, for hot-plug and adoption
	// (written once it runs, in stepSpawn).
	d.live = qemuargs.LiveDevices(d.spec, host)
	return nil
}

// stepSpawn starts QEMU paused. From here on the process must not outlive
// a failed start: a cleanup kills it.
func stepSpawn(_ context.Context, r run) error {
	d := r.Data()
	launch := d.launch
	if launch == nil {
		launch = process.LaunchQEMU
	}
	l := process.Launch{Emulator: d.spec.EmulatorPath(), Args: d.argv, Paths: d.paths, Files: d.files}
	if d.conf != nil {
		l.User, l.Cgroup, l.Note = d.conf.User, d.cgroup, d.conf.CgroupNote
	}
	proc, err := launch(l)
	// QEMU has its own copies of the passed files from the exec on.
	d.files.Close()
	d.files = nil
	if err != nil {
		return d.fail("spawn QEMU", err)
	}
	d.proc = proc
	if d.release != nil {
		proc.OnExit(d.release)
	}
	root, self := r.Root(), r.Self()
	proc.OnExit(func() { root.Send(self, processExited{proc: proc}) })
	r.Defer("kill QEMU of a failed start", func(jobErr error) error {
		if jobErr != nil {
			proc.Kill()
		}
		return nil
	})
	if err := writeLive(filepath.Join(d.paths.Dir, liveFileName), d.live); err != nil {
		return d.fail("record devices", err)
	}
	return nil
}

// stepAttach makes the new QEMU the domain's and spawns its monitor.
func (dom *domainActor) stepAttach(c actor.Context, r run) error {
	d := r.Data()
	if d.proc.Exited() || dom.destroying != nil {
		return d.abort("attach monitor", fmt.Errorf("QEMU (pid %d) is gone before QMP was attached", d.proc.PID()))
	}
	if dom.mon != nil {
		// The monitor of an earlier attempt of this start, whose QEMU
		// is gone or going.
		c.Stop(dom.mon)
		dom.mon, dom.link = nil, nil
	}
	dom.stopAgent(c)
	dom.proc, dom.paths, dom.monConnected, dom.runningSerial = d.proc, d.paths, false, d.spec.Serial
	dom.sawShutdown, dom.shutdownRequested, dom.panicked, dom.monErr = false, false, false, nil
	dom.live, dom.deleted = d.live, nil
	dom.setState(domain.StatePaused, domain.ReasonStartingUp, "")
	if err := dom.spawnMonitor(c, d.paths, d.proc.PID()); err != nil {
		return d.abort("attach monitor", fmt.Errorf("spawn monitor: %w", err))
	}
	d.link = dom.link
	dom.spawnAgent(c, d.spec, d.paths, d.proc.PID())
	return nil
}

// stepHandshake checks QMP with query-status. A failed handshake while
// QEMU still runs starts again from a fresh QEMU (startRetries).
func stepHandshake(ctx context.Context, r run) error {
	d := r.Data()
	if err := d.typed(ctx, r, "query-status", func(m *raw.Monitor) error { _, err := m.QueryStatus(); return err }); err != nil {
		running := !d.proc.Exited()
		err = d.abort("QMP", err)
		if running {
			return actors.Retry("prepare", err)
		}
		return err
	}
	// QEMU has read the kernel and initrd into guest memory at machine
	// init (a reset boots from that copy): the run dir's copies would
	// only hold memory on a tmpfs.
	removeCopies(d.paths)
	return nil
}

// Shutdown pacing: ACPI powerdown is pressed again every acpiResend (a
// press before the guest's OS is up is lost), and an auto shutdown that
// the agent took falls back to ACPI after agentGrace.
var (
	acpiResend = 3 * time.Second
	agentGrace = 10 * time.Second
)

// stepShutdownRequest asks the guest to power off: with the agent
// (guest-shutdown) in mode agent, or in mode auto when the agent answers
// guest-ping; else with ACPI (system_powerdown). All within the
// shutdown's deadline.
func stepShutdownRequest(ctx context.Context, r run) error {
	d := r.Data()
	ctx, cancel := context.WithDeadline(ctx, d.deadline)
	defer cancel()
	useAgent := d.mode == domain.ShutdownAgent
	if d.mode == domain.ShutdownAuto && d.agent != nil {
		// The ping's deadline covers its wait on the agent's lane too,
		// so that a busy or missing agent costs ACPI at most that.
		r.Calling("guest-ping")
		pctx, pcancel := context.WithTimeout(ctx, agent.Deadline("guest-ping"))
		_, err := d.agentCommand(pctx, r, "guest-ping", nil)
		pcancel()
		useAgent = err == nil
	}
	if useAgent {
		r.Calling("guest-shutdown")
		if _, err := d.agentCommand(ctx, r, "guest-shutdown", json.RawMessage(`{"mode":"powerdown"}`)); err != nil {
			return fmt.Errorf("domain %q: shutdown job %d: %w", d.domain, r.ID(), err)
		}
		d.viaAgent = true
		return nil
	}
	return d.powerdown(ctx, r)
}

// powerdown presses the ACPI power button.
func (d *jobData) powerdown(ctx context.Context, r run) error {
	r.Calling("system_powerdown")
	return d.typed(ctx, r, "system_powerdown", (*raw.Monitor).SystemPowerdown)
}

// agentCommand runs one guest agent command for the job on the domain's
// agent actor, under the job's trace.
func (d *jobData) agentCommand(ctx context.Context, r run, cmd string, args json.RawMessage) (json.RawMessage, error) {
	if d.agent == nil {
		return nil, fmt.Errorf("guest agent command %q: no guest agent: %w", cmd, domain.ErrNotRunning)
	}
	rep, err := actors.AskAs[*agent.CommandReply](ctx, r.Root(), d.agent, &agent.CommandRequest{Request: r.Header().Child(ctx, r.Header().ParentID), Command: cmd, Arguments: args})
	if err != nil {
		return nil, err
	}
	return rep.Return, nil
}

// stepAwaitPowerOff waits, as the lane's async job, for the guest to power
// off, until the shutdown's deadline. After ACPI it presses the power
// button again every acpiResend; after the agent took an auto shutdown, it
// falls back to ACPI once agentGrace has passed.
func stepAwaitPowerOff(ctx context.Context, r run) error {
	d := r.Data()
	timer := time.NewTimer(time.Until(d.deadline))
	defer timer.Stop()
	var pressTimer *time.Timer
	// press is the next ACPI press; none after a shutdown mode agent
	// that the agent took.
	var press <-chan time.Time
	if !d.viaAgent || d.mode == domain.ShutdownAuto {
		first := acpiResend
		if d.viaAgent {
			first = agentGrace
		}
		t := time.NewTimer(first)
		defer t.Stop()
		press, pressTimer = t.C, t
	}
	presses := 0
	for {
		select {
		case <-d.proc.Done():
			return nil
		case <-press:
			// A failed press (QEMU going away) is not the job's error: the
			// exit or the deadline decides.
			if d.powerdown(ctx, r) == nil {
				presses++
			}
			pressTimer.Reset(acpiResend)
		case <-timer.C:
			how := fmt.Sprintf("ACPI powerdown (pressed %d times)", presses+1)
			if d.viaAgent {
				how = fmt.Sprintf("the guest agent's guest-shutdown and %d ACPI presses", presses)
			}
			return fmt.Errorf("domain %q: guest did not power off within %s after %s: %w",
				d.domain, d.timeout, how, domain.ErrShutdownTimeout)
		case <-ctx.Done():
			select {
			case <-d.proc.Done():
				return nil // QEMU exited: that is what we waited for
			default:
			}
			return fmt.Errorf("domain %q: shutdown job %d: %w", d.domain, r.ID(), context.Cause(ctx))
		}
	}
}

// stepAwaitExit waits for the process that destroy killed to be reaped.
func stepAwaitExit(_ context.Context, r run) error {
	d := r.Data()
	if d.proc == nil {
		return nil
	}
	limit := d.grace + 10*time.Second
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-d.proc.Done():
		return nil
	case <-timer.C:
		return fmt.Errorf("domain %q: destroy: QEMU (pid %d) still not reaped %s after SIGTERM", d.domain, d.proc.PID(), limit)
	}
}

// fail is the error of a start step.
func (d *jobData) fail(step string, err error) error {
	return fmt.Errorf("domain %q: start: %s: %w", d.domain, step, err)
}

// abort kills the QEMU of a failing start and says what it printed.
func (d *jobData) abort(step string, err error) error {
	d.proc.Kill()
	err = d.fail(step, err)
	if tail := d.proc.LogTail(); tail != "" {
		return fmt.Errorf("%w; QEMU (%s) said: %s", err, d.proc.ExitString(), tail)
	}
	return fmt.Errorf("%w; QEMU: %s", err, d.proc.ExitString())
}

// qmp runs one raw QMP command on the monitor's link, from the job's
// goroutine, and returns the reply's "return" member. args were checked
// at the edge (a JSON object, or empty).
func (d *jobData) qmp(ctx context.Context, r run, execute string, args json.RawMessage) (json.RawMessage, error) {
	return d.qmpFile(ctx, r, execute, args, nil)
}

// qmpFile is qmp with file sent along with the command (SCM_RIGHTS).
func (d *jobData) qmpFile(ctx context.Context, r run, execute string, args json.RawMessage, file *os.File) (json.RawMessage, error) {
	if d.link == nil {
		return nil, fmt.Errorf("domain %q: %w", d.domain, domain.ErrNotRunning)
	}
	if len(args) > 0 && (args[0] != '{' || !json.Valid(args)) {
		// The edge checked it; a message from elsewhere must not smuggle
		// members into the command.
		return nil, fmt.Errorf("domain %q: job %d %q: QMP command %q: arguments are not one JSON object", d.domain, r.ID(), r.Name(), execute)
	}
	ret, err := d.link.Run(ctx, monitor.Call{Command: monitor.Command{Execute: execute, Arguments: args, File: file}, Req: r.Header(), JobID: r.ID()})
	return ret, d.failed(ctx, r, err)
}

// typed sends one of the domain's own commands, execute, with go-qemu's
// typed commands (qmp/raw) on the monitor's link.
func (d *jobData) typed(ctx context.Context, r run, execute string, send func(*raw.Monitor) error) error {
	if d.link == nil {
		return fmt.Errorf("domain %q: %w", d.domain, domain.ErrNotRunning)
	}
	return d.failed(ctx, r, send(raw.NewMonitor(d.link.Monitor(ctx, r.Header(), r.ID()))))
}

// failed says which job a command failed for and, when the connection
// broke because QEMU died, waits a moment for the news and says so.
func (d *jobData) failed(ctx context.Context, r run, err error) error {
	if err == nil {
		return nil
	}
	d.settle(ctx, err)
	err = fmt.Errorf("job %d %q: %w", r.ID(), r.Name(), err)
	if d.proc != nil && d.proc.Gone() && ctx.Err() == nil {
		// The connection broke because QEMU died: say so rather than
		// only "connection reset".
		err = fmt.Errorf("%w; QEMU (pid %d) has exited", err, d.proc.PID())
	}
	return err
}

// exitSettle is how long a job whose QMP connection broke waits for the
// news that QEMU exited: the kernel resets QEMU's sockets a moment before
// the process counts as exited, and "QEMU exited (signal 9)" says more
// than "connection reset by peer".
const exitSettle = 100 * time.Millisecond

// settle waits up to exitSettle for the job to be cancelled by QEMU's exit
// when a QMP command failed without a QMP error reply while the process
// still seemed alive.
func (d *jobData) settle(ctx context.Context, err error) {
	var qerr *monitor.QMPError
	if errors.As(err, &qerr) || d.proc == nil || ctx.Err() != nil {
		return
	}
	timer := time.NewTimer(exitSettle)
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-d.proc.Done():
	case <-timer.C:
	}
}

// enqueue queues a job of p for the request that ctx is handling. The
// sender hears its end.
func (dom *domainActor) enqueue(c actor.Context, p *plan, req actors.Request, d *jobData) {
	if dom.undefining {
		c.Respond(fmt.Errorf("domain %q: %s: %w", dom.name(), p.Name, domain.ErrUndefining))
		return
	}
	dom.lane.Enqueue(c, p, req, dom.traced(c, d), actors.ReplyTo(c.Sender()))
}

// traced makes d the data of a job of this actor: it names the actor,
// for the shared plans' hooks, and notes the trace span of the message
// that queues the job.
func (dom *domainActor) traced(c actor.Context, d *jobData) *jobData {
	if d == nil {
		d = &jobData{}
	}
	d.dom = dom
	if dom.cfg.Trace.Enabled() {
		d.parentSpan = trace.Current(c).SpanID
		d.enqueuedAt = trace.Now()
	}
	return d
}

// jobInfo is what the domain model shows of a lane's job, with its
// progress rendered (for Jobs and wait errors).
func jobInfo(ji actors.JobInfo) domain.JobInfo {
	var out domain.JobInfo
	fillJobInfo(&out, new(domain.QMPInFlight), ji)
	if len(ji.Steps) > 0 {
		out.Progress = ji.Progress()
	}
	return out
}

// fillJobInfo fills out, and qmp when a command is in flight, from ji,
// without rendering the progress (Info is published after nearly every
// message: it must stay cheap).
func fillJobInfo(out *domain.JobInfo, qmp *domain.QMPInFlight, ji actors.JobInfo) {
	*out = domain.JobInfo{ID: ji.ID, Name: ji.Name, Kind: jobKind(ji.Kind), Owner: ji.Owner, RequestID: ji.RequestID,
		Enqueued: ji.Enqueued, Started: ji.Started, Ended: ji.Ended, Steps: ji.Steps, Step: ji.Step, Error: ji.Error}
	if !ji.Call.IsZero() {
		*qmp = domain.QMPInFlight{Command: ji.Call.Command, Since: ji.Call.Since}
		out.QMP = qmp
	}
	if ji.Mask != 0 {
		out.Mask = ji.Mask.String()
	}
	if p := ji.Report; p != nil {
		out.Report = &domain.JobProgress{Phase: p.Phase, Current: p.Current, Total: p.Total, Text: p.String(), At: p.At}
		if pct, ok := p.Percent(); ok {
			out.Report.Percent = &pct
		}
	}
}

func jobInfoPtr(ji *actors.JobInfo) *domain.JobInfo {
	if ji == nil {
		return nil
	}
	out := jobInfo(*ji)
	return &out
}

func jobKind(k actors.JobKind) domain.JobKind {
	switch k {
	case actors.JobQuery:
		return domain.JobQuery
	case actors.JobDestroy:
		return domain.JobDestroy
	case actors.JobAsync:
		return domain.JobAsync
	case actors.JobSuspend:
		return domain.JobSuspend
	case actors.JobAbort:
		return domain.JobAbort
	}
	return domain.JobModify
}

// jobEnded is the lane's Ended hook: the job's trace record and log line,
// and a fresh snapshot and status before its waiters hear of it.
func (dom *domainActor) jobEnded(j *job, err error) {
	dom.asyncPhase(j, false)
	info := j.Info()
	if dom.cfg.Trace.Enabled() {
		d := j.Data
		r := trace.Record{TraceID: info.RequestID, SpanID: jobSpan(dom.name(), info.ID), ParentSpanID: d.parentSpan, Kind: trace.KindJob,
			Actor: "domain/" + dom.name(), MessageType: info.Name, Enqueued: d.enqueuedAt, Ended: trace.Now(),
			JobID: info.ID, Note: trace.Outcome(err)}
		if !info.Started.IsZero() {
			r.Started = r.Enqueued.Add(info.Started.Sub(info.Enqueued))
		}
		dom.cfg.Trace.Record(r)
	}
	dom.publish()
	dom.saveStatus() // before the caller hears: it may kill the daemon next
	ev := dom.cfg.Logger.Debug()
	if err != nil {
		ev = dom.cfg.Logger.Info().Err(err)
	}
	ev.Str("domain", dom.name()).Uint64("job", info.ID).Str("name", info.Name).Str("request", info.RequestID).Msg("job ended")
}
