// Package vm is the domain actor, one per VM: it owns the VM's definition,
// state and reason, its QEMU process and its job lane, and supervises the
// VM's monitor actor. Code outside domain/ reaches it through the
// functions of client.go (StartJob, Info, ...), since its messages live in
// domain/internal/protocol.
package vm

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/agent"
	"github.com/vmsup/vmsup/domain/internal/protocol"
	"github.com/vmsup/vmsup/domain/overlay"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/domain/qemuargs"
	"github.com/vmsup/vmsup/monitor"
	"github.com/vmsup/vmsup/supervision"
)

// Defaults for the domain actor.
const (
	DefaultDestroyGrace    = 10 * time.Second
	DefaultShutdownTimeout = 60 * time.Second
)

// JobHooks are called from the goroutine that runs a job: Started when it
// takes the job lane and Released when it gives the lane back (at its end,
// or when an async job starts to wait). Tests and tracing use them. They
// must not block.
type JobHooks struct {
	Started  func(domain string, job domain.JobInfo)
	Released func(domain string, job domain.JobInfo)
	// Async is called when an async job enters its async phase (begins,
	// right after Released) and when it ends (!begins, before the jobs
	// it held back may start). job.Mask says what may run beside it.
	Async func(domain string, job domain.JobInfo, begins bool)
}

// Config is what the driver gives each domain actor.
type Config struct {
	Spec         *domain.Spec
	RunDir       string
	Broker       *domain.Broker
	Hooks        JobHooks
	DestroyGrace time.Duration
	Monitor      monitor.TransportOptions
	// Launcher starts the VM process; nil means LaunchQEMU.
	Launcher process.Launcher
	// Confine, when set, runs each QEMU as an unprivileged user in its
	// own cgroup (a daemon run as root).
	Confine *Confine
	// OpenImage opens the files a spec names (disks, kernel, initrd) for
	// QEMU, which gets them as file descriptors; nil opens them as
	// named (no image roots).
	OpenImage OpenImage
	// DialMonitor makes the QMP connection for a socket path; nil means
	// monitor.NewTransport. Benchmarks put a simulated monitor here.
	DialMonitor func(socketPath string) monitor.Conn
	// Trace records jobs (and, through the middleware, messages); nil
	// leaves tracing out.
	Trace *trace.Recorder
	// MonitorReconnect is the backoff of a broken monitor's reconnects.
	MonitorReconnect supervision.Backoff
	// Snapshot receives a copy of Info after every message and before
	// every job reply and lifecycle event, so that List and Info read it
	// without asking the actor.
	Snapshot *atomic.Pointer[domain.Info]
	// LiveAgent, when set, holds the running guest agent's own status
	// (nil while no agent runs), so that Info can show a status the agent
	// has just changed before the domain republishes (read-your-writes
	// for a caller whose agent command just failed).
	LiveAgent *atomic.Pointer[atomic.Pointer[domain.AgentStatus]]
	// Dispatcher runs the domain's and its monitor's turns; nil means
	// protoactor's default.
	Dispatcher actor.Dispatcher
	Logger     zerolog.Logger
	// Recovery is what was found of this domain when vmsup started: its
	// saved status and an adopted QEMU, if one was still running.
	Recovery *process.Recovery
	// SaveStatus persists the runtime status. It is called from the actor
	// after every change and must not block.
	SaveStatus func(domain.Status)
	// Reload reads the definition and saved status back from disk; a
	// domain actor restarted after a panic rebuilds itself from them.
	Reload func() (*domain.Spec, *domain.Status, error)
	// Host makes the host side of each start (forwards, taps, the files
	// behind image disks and the seed); nil means qemuargs.PlainHost.
	Host HostResources
	// SnapshotDir holds the snapshot records (SnapshotDir/NAME.json);
	// empty turns snapshots off.
	SnapshotDir string
	// QemuImg reads a stopped domain's snapshot tags.
	QemuImg overlay.QemuImg
}

// HostResources is the host side of a domain's starts (hostres.Manager).
type HostResources interface {
	// Acquire runs in the start job before QEMU is spawned. release is
	// called once that QEMU has exited, or at once when none was started.
	Acquire(ctx context.Context, spec *domain.Spec) (host *qemuargs.Host, release func(), err error)
	// NICs returns the running QEMU's NICs for Info; it must not block.
	NICs(name string) []domain.NIC
}

// Props returns the props of a domain actor.
func Props(cfg Config) *actor.Props {
	if cfg.DestroyGrace <= 0 {
		cfg.DestroyGrace = DefaultDestroyGrace
	}
	if cfg.Broker == nil {
		cfg.Broker = domain.NewBroker()
	}
	life := &lineage{}
	return actor.PropsFromProducer(func() actor.Actor {
		dom := &domainActor{cfg: cfg, spec: cfg.Spec, state: domain.StateShutoff, reason: domain.ReasonUnknown, life: life,
			who: "domain/" + cfg.Spec.Name}
		dom.lane = actors.NewLane(actors.LaneConfig[*jobData]{
			Name:       fmt.Sprintf("domain %q", cfg.Spec.Name),
			Dispatcher: cfg.Dispatcher,
			Inflight:   &life.inflight,
			Started:    dom.jobStarted,
			Released:   dom.jobReleased,
			Ended:      dom.jobEnded,
			Progressed: dom.jobProgressed,
			Refused:    dom.jobRefused,
		})
		all := sharedPlans()
		dom.plans, dom.snap, dom.hot = all, &all.snap, &all.hot
		return dom
	}, append(append(trace.PropsOptions(cfg.Trace), actors.PropsOption(cfg.Dispatcher)...), actor.WithSupervisor(supervision.ActorStrategy()))...)
}

// The messages below come from goroutines and callbacks of one actor
// instance; after a restart the new instance ignores those of the old one.
type restartDue struct {
	from *domainActor
	seq  uint64
}
type rebuildNow struct{ from *domainActor }
type processExited struct{ proc *process.Process }

type domainActor struct {
	cfg  Config
	who  string // "domain/NAME": the actor in panics and the trace
	spec *domain.Spec
	// snapFile is snapshotFile's answer, kept once made.
	snapFile string
	state    domain.State
	reason   domain.Reason
	proc     *process.Process
	paths    qemuargs.RunPaths
	mon      *actor.PID
	// link is the monitor's connection, on which job steps run their
	// QMP commands directly.
	link   *monitor.Link
	monErr error
	// agent is the running QEMU's guest agent actor and its watcher;
	// guestAddrs are the guest's addresses by MAC that it read, and
	// ipNICs the NICs of Info with them (withGuestIPs).
	agent      *agentWatch
	guestAddrs map[string]string
	ipNICs     []domain.NIC
	ipNICsSrc  *domain.NIC

	lane *actors.Lane[*jobData]
	// plans, snap and hot are the shared plans (sharedPlans).
	plans *plans
	snap  *snapshotPlans
	// qemuJobs are the QEMU jobs that snapshot jobs follow, by QEMU's id.
	qemuJobs map[string]chan string
	hot      *hotplugPlans
	// live is the running definition's devices (nil while no QEMU runs);
	// deleted are the detach jobs waiting for DEVICE_DELETED, by device.
	live       *domain.Live
	deleted    map[string]chan struct{}
	destroying *job

	sawShutdown       bool
	shutdownRequested bool
	panicked          bool
	undefining        bool
	// runningSerial is the serial port of the running QEMU's spec.
	runningSerial *domain.Serial
	// saved is the status last handed to SaveStatus (Updated zero).
	saved domain.Status

	life         *lineage
	recovering   bool // a restarted instance waits for the old one's goroutines
	monConnected bool // the monitor of this QEMU has connected before
	restartSeq   uint64
	monErrAt     time.Time
	restartTimer *time.Timer
	// published says that the snapshot was published in this turn and
	// nothing the lane did since changed it.
	published bool
	// idle is the idle Info made last, of the parts idleKey (idleInfo).
	idle    *domain.Info
	idleKey infoKey
}

func (dom *domainActor) name() string { return dom.spec.Name }

func (dom *domainActor) Receive(ctx actor.Context) {
	defer supervision.RecoverAndReply(ctx, dom.who)
	dom.published = false
	if dom.lane.Handle(ctx, ctx.Message()) {
		if !dom.published { // the job's end published it already
			dom.publish()
		}
		dom.saveStatus()
		return
	}
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		dom.cfg.Logger.Debug().Str("domain", dom.name()).Bool("restart", dom.life.started).Msg("domain actor started")
		if dom.life.started {
			dom.awaitOldJobs(ctx)
		} else {
			dom.life.started = true
			dom.recover(ctx)
		}
	case *actor.Restarting:
		dom.onRestarting(ctx)
	case *supervision.InjectPanic:
		panic(fmt.Sprintf("injected panic in domain %q: %s", dom.name(), msg.Reason))
	case *protocol.InjectMonitorPanic:
		if dom.mon == nil {
			ctx.Respond(fmt.Errorf("domain %q: no monitor: %w", dom.name(), domain.ErrNotRunning))
			return
		}
		ctx.RequestWithCustomSender(dom.mon, &supervision.InjectPanic{Reason: msg.Reason}, ctx.Sender())
	case *protocol.InfoRequest:
		ctx.Respond(dom.info().Fresh(time.Now())) // the caller's own copy
	case *protocol.JobsRequest:
		ctx.Respond(dom.jobs())
	case *protocol.ConsoleRequest:
		ctx.Respond(dom.console())
	case *protocol.ExplainWaitRequest:
		// The caller gave up: its job leaves the queue now, not when the
		// context's watcher gets here, and the snapshot shows it before
		// the caller hears back.
		x := dom.lane.Explain(ctx, msg.RequestID)
		dom.publish()
		ctx.Respond(x)
	case *protocol.StartRequest:
		dom.stopRestartTimer()
		p := dom.plans.start
		if msg.Paused {
			p = dom.plans.startPaused
		}
		dom.enqueue(ctx, p, msg.Request, nil)
	case *protocol.ShutdownRequest:
		dom.enqueue(ctx, dom.plans.shutdown, msg.Request, &jobData{timeout: msg.Timeout, mode: msg.Mode})
	case *protocol.PauseRequest:
		dom.enqueue(ctx, dom.plans.pause, msg.Request, nil)
	case *protocol.ResumeRequest:
		dom.enqueue(ctx, dom.plans.resume, msg.Request, nil)
	case *protocol.ResetRequest:
		dom.enqueue(ctx, dom.plans.reset, msg.Request, nil)
	case *protocol.QMPRequest:
		p := dom.plans.qmpModify
		if strings.HasPrefix(msg.Execute, "query-") {
			p = dom.plans.qmpQuery
		}
		dom.enqueue(ctx, p, msg.Request, &jobData{execute: msg.Execute, args: msg.Arguments})
	case *protocol.DestroyRequest:
		dom.destroy(ctx, msg)
	case *protocol.SnapshotRequest:
		dom.onSnapshot(ctx, msg)
	case *protocol.AbortJobRequest:
		dom.abortJob(ctx, msg)
	case *protocol.AttachDiskRequest:
		dom.enqueue(ctx, dom.hot.attachDisk, msg.Request, &jobData{hp: &hotplug{disk: domain.LiveDisk{Path: msg.Path, Format: msg.Format, ReadOnly: msg.ReadOnly}}})
	case *protocol.DetachDiskRequest:
		dom.enqueue(ctx, dom.hot.detachDisk, msg.Request, &jobData{hp: &hotplug{disk: domain.LiveDisk{Node: msg.Target}, timeout: msg.Timeout}})
	case *protocol.AttachNICRequest:
		dom.enqueue(ctx, dom.hot.attachNIC, msg.Request, &jobData{hp: &hotplug{nic: domain.LiveNIC{Type: msg.Type, MAC: msg.MAC, Forwards: msg.Forwards}}})
	case *protocol.DetachNICRequest:
		dom.enqueue(ctx, dom.hot.detachNIC, msg.Request, &jobData{hp: &hotplug{nic: domain.LiveNIC{Device: msg.Target}, timeout: msg.Timeout}})
	case *protocol.AgentRequest:
		dom.forwardAgent(ctx, msg)
	case guestAddrs:
		dom.setGuestAddrs(msg)
	case *agent.StatusChanged:
		// Published below: Info shows the agent's new status.
	case restartDue:
		if msg.from == dom && msg.seq == dom.restartSeq {
			dom.onRestartDue(ctx)
		}
	case rebuildNow:
		if msg.from == dom {
			dom.recovering = false
			dom.rebuild(ctx)
			dom.lane.Resume(ctx)
		}
	case processExited:
		dom.onExit(ctx, msg.proc)
	case *monitor.Event:
		dom.onQMPEvent(msg)
		if msg.Name == "DEVICE_DELETED" && dom.proc != nil {
			dom.onDeviceDeleted(ctx, msg.Data)
		}
		dom.cfg.Broker.PublishQMP(domain.QMPEvent{Domain: dom.name(), ID: msg.ID, Name: msg.Name, Data: msg.Data, Time: msg.Time})
	case *monitor.Connected:
		dom.monErr = nil
		if dom.monConnected && dom.proc != nil {
			// A reconnect (after a broken monitor or a monitor restart):
			// events of the gap are lost, so resync from query-status.
			dom.enqueueReconnect(ctx)
		}
		dom.monConnected = true
	case *monitor.Disconnected:
		dom.monErr, dom.monErrAt = msg.Err, time.Now()
	case *protocol.UpdateSpec:
		if msg.Spec != nil && msg.Spec.Name == dom.spec.Name {
			dom.spec = msg.Spec
		}
	case *protocol.PrepareUndefine:
		dom.prepareUndefine(ctx)
	case *protocol.CancelUndefine:
		dom.undefining = false
	case *actor.Stopping:
		dom.stopRestartTimer()
		dom.stopping(ctx)
	}
	dom.publish()
	dom.saveStatus()
}

// publish stores a fresh Info where the driver's readers find it. It runs
// after every message, and also before a job's reply and a lifecycle event
// go out, so that whoever got them reads at least that state.
func (dom *domainActor) publish() {
	if dom.cfg.Snapshot != nil {
		dom.cfg.Snapshot.Store(dom.info())
	}
	dom.published = true
}

// saveStatus hands the status to the driver's writer when it changed.
func (dom *domainActor) saveStatus() {
	if dom.cfg.SaveStatus == nil || dom.recovering {
		return // a recovering instance has no state of its own yet
	}
	st := domain.Status{Name: dom.name(), UUID: dom.spec.UUID, State: dom.state, Reason: dom.reason}
	if dom.proc != nil {
		st.PID = dom.proc.PID()
	}
	if st == dom.saved {
		return
	}
	dom.saved = st
	st.Updated = time.Now()
	dom.cfg.SaveStatus(st)
}

// jobStarted and jobReleased are the lane's hooks: the job took the lane,
// and gave it back.
func (dom *domainActor) jobStarted(j *job) {
	dom.published = false
	info := j.Info()
	dom.cfg.Logger.Debug().Str("domain", dom.name()).Uint64("job", info.ID).Str("name", info.Name).
		Str("request", info.RequestID).Dur("waited", info.Started.Sub(info.Enqueued)).Msg("job started")
	if h := dom.cfg.Hooks.Started; h != nil {
		h(dom.name(), jobInfo(info))
	}
	dom.traceBeside(j)
}

func (dom *domainActor) jobReleased(j *job) {
	dom.published = false
	if h := dom.cfg.Hooks.Released; h != nil {
		h(dom.name(), jobInfo(j.Info()))
	}
	dom.asyncPhase(j, true)
}

// destroy kills QEMU at once, cancels the running jobs and puts the
// destroy job at the head of the lane. Concurrent destroys share one job.
func (dom *domainActor) destroy(ctx actor.Context, msg *protocol.DestroyRequest) {
	if dom.lane.Join(dom.destroying, actors.ReplyTo(ctx.Sender())) {
		return
	}
	active := dom.lane.Active()
	startingUp := active != nil && active.Name() == "start"
	if dom.proc == nil && !startingUp {
		if dom.restartTimer != nil {
			// Destroy ends a pending on_crash restart: the user wants it off.
			dom.stopRestartTimer()
			dom.setState(domain.StateShutoff, domain.ReasonDestroyed, "")
			ctx.Respond(&protocol.JobDone{})
			return
		}
		ctx.Respond(fmt.Errorf("domain %q: destroy: %w (state %s/%s)", dom.name(), domain.ErrNotRunning, dom.state, dom.reason))
		return
	}
	dom.life.destroying = true
	if p := dom.proc; p != nil {
		grace := dom.cfg.DestroyGrace
		dom.life.inflight.Add(1)
		go func() { // ends when p is reaped; SIGKILL bounds it
			defer dom.life.inflight.Done()
			p.Terminate(grace)
		}()
	}
	d := dom.traced(ctx, &jobData{proc: dom.proc})
	dom.destroying = dom.lane.Preempt(ctx, dom.plans.destroy, msg.Request, d, actors.ReplyTo(ctx.Sender()), "destroyed")
	if dom.destroying.Ended() {
		dom.destroying = nil
	}
}

// onExit records that QEMU is gone and decides the outcome, as DESIGN.md
// says: destroy → destroyed; a start job → failed; a guest panic →
// crashed/panicked; a SHUTDOWN event or a requested shutdown → shutdown;
// anything else → crashed.
func (dom *domainActor) onExit(ctx actor.Context, p *process.Process) {
	if p == nil || p != dom.proc {
		return
	}
	dom.proc = nil
	dom.live = nil
	for dev, ch := range dom.deleted {
		close(ch) // QEMU is gone, and the device with it
		delete(dom.deleted, dev)
	}
	if dom.mon != nil {
		ctx.Stop(dom.mon)
		dom.mon, dom.link = nil, nil
	}
	dom.stopAgent(ctx)
	active := dom.lane.Active()
	state, reason := domain.StateShutoff, domain.ReasonCrashed
	switch {
	case dom.destroying != nil || dom.life.destroying:
		reason = domain.ReasonDestroyed
	case active != nil && active.Name() == "start":
		reason = domain.ReasonFailed
	case dom.panicked:
		state, reason = domain.StateCrashed, domain.ReasonPanicked
	case dom.sawShutdown || dom.shutdownRequested:
		reason = domain.ReasonShutdown
	}
	cause := fmt.Errorf("domain %q: QEMU exited (%s)", dom.name(), p.ExitString())
	// A start job handles its own QEMU's death (and may retry with a new
	// one); destroy waits for it. Any other job is cut short.
	if active != nil && active.Kind() != actors.JobDestroy && active.Name() != "start" {
		dom.lane.Cancel(ctx, active, fmt.Errorf("domain %q: QEMU exited (%s) while running job %d %q", dom.name(), p.ExitString(), active.ID(), active.Name()))
	}
	if async := dom.lane.Async(); async != nil && reason != domain.ReasonShutdown {
		dom.lane.Cancel(ctx, async, cause)
	}
	dom.cfg.Logger.Info().Str("domain", dom.name()).Int("pid", p.PID()).Str("exit", p.ExitString()).
		Str("state", string(state)).Str("reason", string(reason)).Msg("QEMU exited")
	dom.setState(state, reason, "")
	if reason == domain.ReasonCrashed || reason == domain.ReasonPanicked {
		dom.applyCrashPolicy(ctx)
	}
}

func (dom *domainActor) onQMPEvent(ev *monitor.Event) {
	if dom.proc == nil {
		return
	}
	switch ev.Name {
	case "STOP":
		if dom.state == domain.StateRunning {
			dom.setState(domain.StatePaused, domain.ReasonUser, ev.ID)
		}
	case "RESUME":
		if dom.state == domain.StatePaused && dom.reason != domain.ReasonStartingUp {
			dom.setState(domain.StateRunning, domain.ReasonUnpaused, ev.ID)
		}
	case "SHUTDOWN":
		dom.sawShutdown = true
		if dom.destroying == nil {
			dom.setState(domain.StateShutdown, domain.ReasonUser, ev.ID)
		}
	case "JOB_STATUS_CHANGE":
		dom.onJobStatus(ev)
	case "GUEST_PANICKED":
		dom.panicked = true
		dom.setState(domain.StateCrashed, domain.ReasonPanicked, ev.ID)
	case "NIC_RX_FILTER_CHANGED":
		dom.kickAgent() // the guest's addresses change now
		if nic, ok := domain.NICOfDevice(ev.Data["name"], len(dom.spec.Networks)); ok {
			dom.cfg.Broker.Publish(domain.Event{Type: domain.EventNetworkUp, Domain: dom.name(), UUID: dom.spec.UUID,
				State: dom.state, Reason: dom.reason, Cause: ev.ID, NIC: nic})
		}
	}
}

// setState changes state and reason and publishes the lifecycle event that
// the transition means.
func (dom *domainActor) setState(s domain.State, r domain.Reason, cause string) {
	if s == dom.state && r == dom.reason {
		return
	}
	prevState, prevReason := dom.state, dom.reason
	dom.state, dom.reason = s, r
	var t domain.EventType
	switch s {
	case domain.StateRunning:
		t = domain.EventResumed
		if prevState != domain.StatePaused || prevReason == domain.ReasonStartingUp {
			t = domain.EventStarted
		}
	case domain.StatePaused:
		switch {
		case r == domain.ReasonStartingUp:
			return
		case prevReason == domain.ReasonStartingUp:
			t = domain.EventStarted
		default:
			t = domain.EventPaused
		}
	case domain.StateShutdown:
		t = domain.EventShutdown
	case domain.StateShutoff:
		t = domain.EventStopped
		if r == domain.ReasonCrashed {
			t = domain.EventCrashed
		}
	case domain.StateCrashed:
		t = domain.EventCrashed
	}
	dom.publish()
	dom.cfg.Broker.Publish(domain.Event{Type: t, Domain: dom.name(), UUID: dom.spec.UUID, State: s, Reason: r, Cause: cause})
}

func (dom *domainActor) prepareUndefine(ctx actor.Context) {
	if dom.proc != nil || !dom.lane.Idle() {
		ctx.Respond(fmt.Errorf("domain %q: undefine: domain must be shut off and idle (state %s/%s, %d jobs queued); shut it down or destroy it first: %w", dom.name(), dom.state, dom.reason, dom.lane.Len(), domain.ErrWrongState))
		return
	}
	dom.undefining = true
	dom.stopRestartTimer()
	ctx.Respond(&protocol.Undefinable{})
}

// stopping runs when the driver stops this actor (undefine or close). QEMU
// keeps running: it lives in its own session, as with libvirtd. Every
// waiting caller is answered, and the job goroutines end before the actor
// does, so that a driver opened next never races a job of this one.
func (dom *domainActor) stopping(ctx actor.Context) {
	dom.stopRestartTimer()
	if dom.agent != nil {
		dom.agent.cancel() // its actor stops with this one
	}
	dom.abandonJobs(ctx, fmt.Errorf("domain %q: supervisor is stopping", dom.name()))
	if !dom.life.waitInflight(dom.cfg.DestroyGrace + 5*time.Second) {
		dom.cfg.Logger.Error().Str("domain", dom.name()).Msg("job goroutines still running after the stop deadline")
	}
	// A destroy that finished while we waited ends as destroyed on disk.
	if dom.proc != nil && dom.proc.Exited() {
		dom.onExit(ctx, dom.proc)
		dom.stopRestartTimer()
	}
}

// abandonJobs closes the lane: the running jobs are cancelled and every
// caller of the lane is answered with err, so that the caller of a running
// job does not wait for an answer that would reach a stopped actor.
func (dom *domainActor) abandonJobs(ctx actor.Context, err error) {
	dom.lane.Close(ctx, err)
	dom.destroying = nil
}

func (dom *domainActor) info() *domain.Info {
	if dom.recovering && dom.cfg.Snapshot != nil {
		// A restarted instance waiting for the old one's jobs: show what
		// the old one last showed, and say why nothing runs.
		if last := dom.cfg.Snapshot.Load(); last != nil {
			in := *last
			in.Job, in.Queued = nil, dom.lane.Len()
			in.Control = &domain.Control{State: domain.ControlRecovering, Reason: "the domain actor restarted after a panic and waits for the old instance's jobs"}
			return &in
		}
	}
	holder, busy := dom.lane.Holder()
	if !busy {
		return dom.idleInfo()
	}
	// One allocation: Info is published after nearly every message.
	box := &struct {
		in  domain.Info
		ctl domain.Control
		job domain.JobInfo
		qmp domain.QMPInFlight
	}{}
	fillJobInfo(&box.job, &box.qmp, holder)
	box.in.Job = &box.job
	now := time.Now()
	k, nics := dom.infoParts(now)
	fillInfo(&box.in, &box.ctl, k, nics, now)
	return &box.in
}

// infoKey is everything an idle Info is made of, by identity: while it
// is unchanged, the Info published last says the same.
type infoKey struct {
	spec             *domain.Spec
	state            domain.State
	reason           domain.Reason
	queued, restarts int
	ctl              domain.Control // Millis left zero
	proc             *process.Process
	pid              int
	conf             *domain.Confinement
	nic0             *domain.NIC // the NICs' first element, and their count
	nics             int
	agent            *domain.AgentStatus
	live             *domain.Live
}

// infoParts reads the parts of the domain's Info at now.
func (dom *domainActor) infoParts(now time.Time) (infoKey, []domain.NIC) {
	k := infoKey{spec: dom.spec, state: dom.state, reason: dom.reason, queued: dom.lane.Len(), restarts: dom.life.restarts}
	dom.control(&k.ctl, now)
	k.ctl.Millis = 0
	var nics []domain.NIC
	if dom.proc != nil {
		k.proc, k.pid, k.conf, k.live = dom.proc, dom.proc.PID(), dom.proc.Confinement(), dom.live
		if dom.cfg.Host != nil {
			nics = dom.withGuestIPs(dom.cfg.Host.NICs(dom.spec.Name))
		}
		if len(nics) > 0 {
			k.nic0, k.nics = &nics[0], len(nics)
		}
		if dom.agent != nil {
			k.agent = dom.agent.status.Load()
		}
	}
	return k, nics
}

// fillInfo writes the parts k and nics, read at now, into in, and the
// control state into ctl, its Control.
func fillInfo(in *domain.Info, ctl *domain.Control, k infoKey, nics []domain.NIC, now time.Time) {
	in.Name, in.UUID, in.State, in.Reason, in.Queued = k.spec.Name, k.spec.UUID, k.state, k.reason, k.queued
	in.Restarts, in.Control = k.restarts, ctl
	*ctl = k.ctl
	ctl.Refresh(now)
	if k.proc != nil {
		in.PID, in.Confinement, in.NICs, in.Agent, in.Live = k.pid, k.conf, nics, k.agent, k.live
	}
}

// idleInfo is the Info of a domain that no job holds. While its parts
// are those of the idle Info made last, that one is returned again: an
// idle domain that answers queries publishes without an allocation.
// Readers never change a published Info (they take Fresh copies), and
// its Control's age is recomputed by Fresh.
func (dom *domainActor) idleInfo() *domain.Info {
	now := time.Now()
	k, nics := dom.infoParts(now)
	if dom.idle != nil && k == dom.idleKey {
		return dom.idle
	}
	box := &struct {
		in  domain.Info
		ctl domain.Control
	}{}
	fillInfo(&box.in, &box.ctl, k, nics, now)
	dom.idle, dom.idleKey = &box.in, k
	return dom.idle
}

func (dom *domainActor) jobs() *domain.Jobs {
	snap := dom.lane.Snapshot()
	js := &domain.Jobs{Domain: dom.name(), Active: jobInfoPtr(snap.Active), Async: jobInfoPtr(snap.Async),
		Queued: make([]domain.JobInfo, 0, len(snap.Queued)), Recent: make([]domain.JobInfo, 0, len(snap.Recent))}
	for _, ji := range snap.Queued {
		js.Queued = append(js.Queued, jobInfo(ji))
	}
	for _, ji := range snap.Recent {
		js.Recent = append(js.Recent, jobInfo(ji))
	}
	return js
}

// console says where the running guest's serial console socket is.
func (dom *domainActor) console() any {
	if dom.proc == nil {
		return fmt.Errorf("domain %q: console: %w (state %s/%s)", dom.name(), domain.ErrNotRunning, dom.state, dom.reason)
	}
	// The running QEMU was built from the spec it was started with; dom.spec
	// may have been redefined since, so use the paths of this run.
	serial := dom.runningSerial
	switch {
	case serial == nil:
		return &protocol.ConsoleTarget{Path: dom.paths.ConsoleSocket}
	case serial.Type == domain.SerialSocket && serial.Path != "":
		return &protocol.ConsoleTarget{Path: serial.Path}
	case serial.Type == domain.SerialSocket:
		return &protocol.ConsoleTarget{Path: dom.paths.ConsoleSocket}
	default:
		return fmt.Errorf("domain %q: console: the serial port is %q, not a socket (set serial.type: socket): %w", dom.name(), serial.Type, domain.ErrNoConsole)
	}
}

// spawnMonitor spawns the monitor of the QEMU at paths, with a new link.
func (dom *domainActor) spawnMonitor(c actor.Context, paths qemuargs.RunPaths, pid int) error {
	cfg := dom.monitorConfig(paths)
	cfg.Link = monitor.NewLink(dom.name(), dom.cfg.Trace)
	mon, err := c.SpawnNamed(monitor.Props(cfg), fmt.Sprintf("monitor-%d", pid))
	if err != nil {
		return err
	}
	dom.mon, dom.link = mon, cfg.Link
	return nil
}

func (dom *domainActor) monitorConfig(paths qemuargs.RunPaths) monitor.Config {
	cfg := monitor.Config{
		Trace:      dom.cfg.Trace,
		Dispatcher: dom.cfg.Dispatcher,
		Domain:     dom.name(),
		SocketPath: paths.QMPSocket,
		Transport:  dom.cfg.Monitor,
		Reconnect:  dom.cfg.MonitorReconnect,
		Logger:     dom.cfg.Logger,
	}
	if cfg.Transport.Logger == nil {
		// Malformed QMP goes to the daemon's log (sampled by the
		// transport), with the domain's name.
		l := dom.cfg.Logger.With().Str("domain", dom.name()).Logger()
		cfg.Transport.Logger = &l
	}
	if dial := dom.cfg.DialMonitor; dial != nil {
		socket := paths.QMPSocket
		cfg.Dial = func() monitor.Conn { return dial(socket) }
	}
	return cfg
}
