// Package vm is the domain actor, one per VM: it owns the VM's definition,
// state and reason, its QEMU process and its job lane, and supervises the
// VM's monitor actor. Code outside domain/ reaches it through the
// functions of client.go (StartJob, Info, ...), since its messages live in
// domain/internal/protocol.
package vm

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/internal/protocol"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/domain/qemuargs"
	"github.com/vmsup/vmsup/monitor"
	"github.com/vmsup/vmsup/supervision"
)

// Defaults for the domain actor.
const (
	DefaultDestroyGrace    = 10 * time.Second
	DefaultShutdownTimeout = 60 * time.Second
	recentJobs             = 32
)

// JobHooks are called from the goroutine that runs a job: Started when it
// takes the job lane and Released when it gives the lane back (at its end,
// or when an async job starts to wait). Tests and tracing use them. They
// must not block.
type JobHooks struct {
	Started  func(domain string, job domain.JobInfo)
	Released func(domain string, job domain.JobInfo)
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
		return &domainActor{cfg: cfg, spec: cfg.Spec, state: domain.StateShutoff, reason: domain.ReasonUnknown, life: life}
	}, append(append(trace.PropsOptions(cfg.Trace), actors.PropsOption(cfg.Dispatcher)...), actor.WithSupervisor(supervision.ActorStrategy()))...)
}

// job is one entry of the job lane.
type job struct {
	info domain.JobInfo
	// span is the job's span in the trace; parentSpan is the span of the
	// message that queued it.
	span, parentSpan string
	enqueuedAt       time.Time
	req              actors.Request
	senders          []*actor.PID
	stopWatch        func() bool
	cancel           context.CancelCauseFunc
	run              func(e *jobEnv) (any, error)
	apply            func(dom *domainActor, value any, err error)
	// direct is set for a job that is one QMP command, run by the actor
	// without a goroutine (see direct.go); directRun once it is launched.
	direct    *directQMP
	directRun *directRun
}

// The messages below come from goroutines and callbacks of one actor
// instance; after a restart the new instance ignores those of the old one.
type jobDone struct {
	jobTrace
	from  *domainActor
	id    uint64
	value any
	err   error
}
type jobStep struct {
	jobTrace
	from  *domainActor
	id    uint64
	step  string
	qmp   string
	since time.Time
}
type jobGoAsync struct {
	jobTrace
	from *domainActor
	id   uint64
}
type jobAbandoned struct {
	from *domainActor
	id   uint64
}
type restartDue struct {
	from *domainActor
	seq  uint64
}
type rebuildNow struct{ from *domainActor }
type processExited struct{ proc *process.Process }
type attachProcess struct {
	jobTrace
	jobID  uint64
	proc   *process.Process
	serial *domain.Serial
}

type domainActor struct {
	cfg    Config
	spec   *domain.Spec
	state  domain.State
	reason domain.Reason
	proc   *process.Process
	paths  qemuargs.RunPaths
	mon    *actor.PID
	monErr error

	lane       actors.Lane[*job]
	async      *job
	destroying *job
	jobSeq     uint64
	recent     []domain.JobInfo

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
}

func (dom *domainActor) name() string { return dom.spec.Name }

func (dom *domainActor) Receive(ctx actor.Context) {
	defer supervision.RecoverAndReply(ctx, "domain/"+dom.name())
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
		ctx.Respond(dom.info())
	case *protocol.JobsRequest:
		ctx.Respond(dom.jobs())
	case *protocol.ConsoleRequest:
		ctx.Respond(dom.console())
	case *protocol.ExplainWaitRequest:
		// The caller gave up: its job leaves the queue now, not when the
		// context's watcher gets here, and the snapshot shows it before
		// the caller hears back.
		dom.dropAbandoned(ctx, msg.RequestID)
		w := dom.explain(msg.RequestID)
		dom.publish()
		ctx.Respond(w)
	case *protocol.StartRequest:
		dom.stopRestartTimer()
		dom.enqueue(ctx, msg.Request, "start", domain.JobModify, dom.startJob(msg.Paused))
	case *protocol.ShutdownRequest:
		dom.enqueue(ctx, msg.Request, "shutdown", domain.JobAsync, dom.shutdownJob(msg.Timeout))
	case *protocol.PauseRequest:
		dom.enqueue(ctx, msg.Request, "pause", domain.JobModify, dom.qmpJob("stop", nil, func(dom *domainActor) {
			dom.setState(domain.StatePaused, domain.ReasonUser, "")
		}))
	case *protocol.ResumeRequest:
		dom.enqueue(ctx, msg.Request, "resume", domain.JobModify, dom.qmpJob("cont", nil, func(dom *domainActor) {
			dom.setState(domain.StateRunning, domain.ReasonUnpaused, "")
		}))
	case *protocol.ResetRequest:
		dom.enqueue(ctx, msg.Request, "reset", domain.JobModify, dom.qmpJob("system_reset", nil, nil))
	case *protocol.QMPRequest:
		kind := domain.JobModify
		if strings.HasPrefix(msg.Execute, "query-") {
			kind = domain.JobQuery
		}
		dom.enqueue(ctx, msg.Request, "qmp", kind, dom.rawQMPJob(msg))
	case *protocol.DestroyRequest:
		dom.destroy(ctx, msg)
	case jobStep:
		if msg.from == dom {
			dom.onStep(msg)
		}
	case shutdownRequested:
		if msg.from == dom && dom.jobByID(msg.id) != nil {
			dom.shutdownRequested = true
		}
	case jobGoAsync:
		if msg.from == dom {
			dom.onGoAsync(ctx, msg.id)
		}
	case jobDone:
		if msg.from == dom {
			dom.onJobDone(ctx, msg)
		}
	case *directDone:
		if msg.from == dom {
			dom.onDirectDone(ctx, *msg)
		}
	case jobAbandoned:
		if msg.from == dom {
			dom.onAbandoned(ctx, msg.id)
		}
	case restartDue:
		if msg.from == dom && msg.seq == dom.restartSeq {
			dom.onRestartDue(ctx)
		}
	case rebuildNow:
		if msg.from == dom {
			dom.recovering = false
			dom.rebuild(ctx)
			dom.next(ctx)
		}
	case attachProcess:
		dom.onAttach(ctx, msg)
	case processExited:
		dom.onExit(ctx, msg.proc)
	case *monitor.Event:
		dom.onQMPEvent(msg)
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

// enqueue puts a job in the lane. The caller leaves the queue when its
// context ends before the job starts.
func (dom *domainActor) enqueue(ctx actor.Context, req actors.Request, name string, kind domain.JobKind, run jobRunner) {
	if dom.undefining {
		ctx.Respond(fmt.Errorf("domain %q: %s: %w", dom.name(), name, domain.ErrUndefining))
		return
	}
	dom.jobSeq++
	j := &job{
		info:    domain.JobInfo{ID: dom.jobSeq, Name: name, Kind: kind, Owner: ownerOf(req, name), RequestID: req.RequestID, Enqueued: time.Now()},
		req:     req,
		senders: []*actor.PID{ctx.Sender()},
		run:     run.run,
		apply:   run.apply,
		direct:  run.direct,
	}
	dom.traceJob(ctx, j)
	self, root, id := ctx.Self(), ctx.ActorSystem().Root, j.info.ID
	j.stopWatch = context.AfterFunc(req.Context(), func() { root.Send(self, jobAbandoned{from: dom, id: id}) })
	dom.lane.Enqueue(j)
	dom.next(ctx)
}

func ownerOf(req actors.Request, name string) string {
	if req.Owner != "" {
		return req.Owner
	}
	return "api " + name
}

// next starts queued jobs while the lane allows. While an async job waits,
// only query jobs may start (the async job mask).
func (dom *domainActor) next(ctx actor.Context) {
	if dom.recovering {
		return // jobs wait until the restarted actor has rebuilt its state
	}
	allow := func(j *job) bool {
		return dom.async == nil || j.info.Kind == domain.JobQuery || j.info.Kind == domain.JobDestroy
	}
	for {
		j, ok := dom.lane.Next(allow)
		if !ok {
			return
		}
		if j.stopWatch != nil {
			j.stopWatch()
		}
		if j.info.Kind != domain.JobDestroy {
			if err := j.req.Context().Err(); err != nil {
				dom.lane.End()
				dom.finish(ctx, j, nil, fmt.Errorf("domain %q: job %d %q left the queue: %w", dom.name(), j.info.ID, j.info.Name, err))
				continue
			}
			if err := dom.precondition(j); err != nil {
				dom.lane.End()
				dom.finish(ctx, j, nil, err)
				continue
			}
		}
		dom.launch(ctx, j)
		return
	}
}

func (dom *domainActor) precondition(j *job) error {
	switch j.info.Name {
	case "start":
		if dom.proc != nil {
			return fmt.Errorf("domain %q: start: domain is already %s: %w", dom.name(), dom.state, domain.ErrWrongState)
		}
		return nil
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
		return fmt.Errorf("domain %q: %s: %w (state %s/%s)", dom.name(), j.info.Name, domain.ErrNotRunning, dom.state, dom.reason)
	}
	return nil
}

// launch runs a job in a goroutine owned by this actor. Its result comes
// back as a jobDone message; its steps as jobStep messages.
func (dom *domainActor) launch(ctx actor.Context, j *job) {
	if j.direct != nil {
		dom.launchDirect(ctx, j)
		return
	}
	jctx, cancel := context.WithCancelCause(context.Background())
	j.cancel = cancel
	j.info.Started = time.Now()
	env := &jobEnv{
		ctx:     jctx,
		root:    ctx.ActorSystem().Root,
		self:    ctx.Self(),
		monitor: dom.mon,
		proc:    dom.proc,
		spec:    *dom.spec,
		runDir:  dom.cfg.RunDir,
		launch:  dom.cfg.Launcher,
		grace:   dom.cfg.DestroyGrace,
		job:     j.info,
		req:     j.req,
		hooks:   dom.cfg.Hooks,
		host:    dom.cfg.Host,
		span:    j.span,
		domain:  dom.name(),
		owner:   dom,
	}
	dom.cfg.Logger.Debug().Str("domain", dom.name()).Uint64("job", j.info.ID).Str("name", j.info.Name).
		Str("request", j.req.RequestID).Dur("waited", j.info.Started.Sub(j.info.Enqueued)).Msg("job started")
	run := j.run
	dom.life.inflight.Add(1)
	go func() {
		defer dom.life.inflight.Done()
		if env.hooks.Started != nil {
			env.hooks.Started(env.domain, env.job)
		}
		value, err := run(env)
		if !env.released && env.hooks.Released != nil {
			env.hooks.Released(env.domain, env.job)
		}
		cancel(nil)
		env.root.Send(env.self, jobDone{jobTrace: env.trace(), from: env.owner, id: env.job.ID, value: value, err: err})
	}()
}

func (dom *domainActor) jobByID(id uint64) *job {
	if j, ok := dom.lane.Active(); ok && j.info.ID == id {
		return j
	}
	if dom.async != nil && dom.async.info.ID == id {
		return dom.async
	}
	return nil
}

func (dom *domainActor) onStep(s jobStep) {
	j := dom.jobByID(s.id)
	if j == nil {
		return
	}
	j.info.Step = s.step
	if s.qmp == "" {
		j.info.QMP = nil
	} else {
		j.info.QMP = &domain.QMPInFlight{Command: s.qmp, Since: s.since}
	}
}

func (dom *domainActor) onGoAsync(ctx actor.Context, id uint64) {
	j, ok := dom.lane.Active()
	if !ok || j.info.ID != id {
		return
	}
	dom.lane.End()
	dom.async = j
	dom.next(ctx)
}

func (dom *domainActor) onJobDone(ctx actor.Context, d jobDone) {
	var j *job
	if a, ok := dom.lane.Active(); ok && a.info.ID == d.id {
		j = a
	} else if dom.async != nil && dom.async.info.ID == d.id {
		j = dom.async
	} else {
		return
	}
	// The job may have seen QEMU exit before its exit message arrived.
	if dom.proc != nil && dom.proc.Exited() {
		dom.onExit(ctx, dom.proc)
	}
	if j.apply != nil {
		j.apply(dom, d.value, d.err)
	}
	if j == dom.async {
		dom.async = nil
	} else {
		dom.lane.End()
	}
	dom.finish(ctx, j, d.value, d.err)
	dom.next(ctx)
}

// finish replies to the job's callers and keeps it in the recent list.
func (dom *domainActor) finish(ctx actor.Context, j *job, value any, err error) {
	dom.releaseDirect(ctx, j)
	j.info.Ended = time.Now()
	j.info.QMP = nil
	reply := value
	if err != nil {
		j.info.Error = err.Error()
		reply = err
	} else if reply == nil {
		reply = &protocol.JobDone{Job: j.info}
	}
	dom.recordJob(j, err)
	dom.publish()
	for _, s := range j.senders {
		if s != nil {
			ctx.Send(s, reply)
		}
	}
	dom.recent = append(dom.recent, j.info)
	if len(dom.recent) > recentJobs {
		dom.recent = dom.recent[len(dom.recent)-recentJobs:]
	}
	ev := dom.cfg.Logger.Debug()
	if err != nil {
		ev = dom.cfg.Logger.Info().Err(err)
	}
	ev.Str("domain", dom.name()).Uint64("job", j.info.ID).Str("name", j.info.Name).Str("request", j.req.RequestID).Msg("job ended")
}

func (dom *domainActor) onAbandoned(ctx actor.Context, id uint64) {
	j, ok := dom.lane.Remove(func(j *job) bool { return j.info.ID == id })
	if !ok || j.info.Kind == domain.JobDestroy {
		if ok {
			dom.lane.EnqueueFront(j)
		}
		return
	}
	dom.finish(ctx, j, nil, fmt.Errorf("domain %q: job %d %q left the queue: %w", dom.name(), j.info.ID, j.info.Name, j.req.Context().Err()))
}

// destroy kills QEMU at once, cancels the running jobs and queues the
// destroy job at the head of the lane.
func (dom *domainActor) destroy(ctx actor.Context, msg *protocol.DestroyRequest) {
	if dom.destroying != nil {
		dom.destroying.senders = append(dom.destroying.senders, ctx.Sender())
		return
	}
	active, busy := dom.lane.Active()
	startingUp := busy && active.info.Name == "start"
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
	dom.jobSeq++
	j := &job{
		info:    domain.JobInfo{ID: dom.jobSeq, Name: "destroy", Kind: domain.JobDestroy, Owner: ownerOf(msg.Request, "destroy"), RequestID: msg.RequestID, Enqueued: time.Now()},
		req:     msg.Request,
		senders: []*actor.PID{ctx.Sender()},
		run:     runDestroy,
		apply: func(dom *domainActor, _ any, _ error) {
			dom.destroying = nil
			dom.life.destroying = false
			if dom.proc == nil {
				dom.setState(domain.StateShutoff, domain.ReasonDestroyed, "")
			}
		},
	}
	dom.traceJob(ctx, j)
	dom.destroying = j
	dom.life.destroying = true
	if p := dom.proc; p != nil {
		grace := dom.cfg.DestroyGrace
		dom.life.inflight.Add(1)
		go func() { // ends when p is reaped; SIGKILL bounds it
			defer dom.life.inflight.Done()
			p.Terminate(grace)
		}()
	}
	cause := fmt.Errorf("domain %q: destroyed by job %d (%s)", dom.name(), j.info.ID, j.info.Owner)
	if busy && active.cancel != nil {
		active.cancel(cause)
	}
	if dom.async != nil && dom.async.cancel != nil {
		dom.async.cancel(cause)
	}
	dom.lane.EnqueueFront(j)
	dom.next(ctx)
}

func (dom *domainActor) onAttach(ctx actor.Context, a attachProcess) {
	j, ok := dom.lane.Active()
	if !ok || j.info.ID != a.jobID || a.proc.Exited() || dom.destroying != nil {
		ctx.Respond(fmt.Errorf("domain %q: QEMU (pid %d) is gone before QMP was attached", dom.name(), a.proc.PID()))
		return
	}
	paths, err := qemuargs.NewRunPaths(dom.cfg.RunDir, dom.name())
	if err != nil {
		ctx.Respond(err)
		return
	}
	if dom.mon != nil {
		// The monitor of an earlier attempt of this start, whose QEMU
		// is gone or going.
		ctx.Stop(dom.mon)
		dom.mon = nil
	}
	dom.proc = a.proc
	dom.paths = paths
	dom.monConnected = false
	dom.runningSerial = a.serial
	dom.sawShutdown, dom.shutdownRequested, dom.panicked, dom.monErr = false, false, false, nil
	dom.setState(domain.StatePaused, domain.ReasonStartingUp, "")
	pid, err := ctx.SpawnNamed(monitor.Props(dom.monitorConfig(paths)), fmt.Sprintf("monitor-%d", a.proc.PID()))
	if err != nil {
		ctx.Respond(fmt.Errorf("domain %q: spawn monitor: %w", dom.name(), err))
		return
	}
	dom.mon = pid
	ctx.Respond(pid)
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
	if dom.mon != nil {
		ctx.Stop(dom.mon)
		dom.mon = nil
	}
	active, busy := dom.lane.Active()
	state, reason := domain.StateShutoff, domain.ReasonCrashed
	switch {
	case dom.destroying != nil || dom.life.destroying:
		reason = domain.ReasonDestroyed
	case busy && active.info.Name == "start":
		reason = domain.ReasonFailed
	case dom.panicked:
		state, reason = domain.StateCrashed, domain.ReasonPanicked
	case dom.sawShutdown || dom.shutdownRequested:
		reason = domain.ReasonShutdown
	}
	cause := fmt.Errorf("domain %q: QEMU exited (%s)", dom.name(), p.ExitString())
	// A start job handles its own QEMU's death (and may retry with a new
	// one); destroy waits for it. Any other job is cut short.
	if busy && active.info.Kind != domain.JobDestroy && active.info.Name != "start" && active.cancel != nil {
		active.cancel(fmt.Errorf("domain %q: QEMU exited (%s) while running job %d %q", dom.name(), p.ExitString(), active.info.ID, active.info.Name))
	}
	if dom.async != nil && dom.async.cancel != nil && reason != domain.ReasonShutdown {
		dom.async.cancel(cause)
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
	case "GUEST_PANICKED":
		dom.panicked = true
		dom.setState(domain.StateCrashed, domain.ReasonPanicked, ev.ID)
	case "NIC_RX_FILTER_CHANGED":
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
	if dom.proc != nil || dom.lane.Busy() || dom.lane.Len() > 0 || dom.async != nil {
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

// abandonJobs cancels the active and async jobs and answers every caller
// of the lane with err: the caller of a running job does not wait for an
// answer that would reach a stopped actor.
func (dom *domainActor) abandonJobs(ctx actor.Context, err error) {
	if j, ok := dom.lane.End(); ok {
		if j.cancel != nil {
			j.cancel(err)
		}
		dom.finish(ctx, j, nil, err)
	}
	if dom.async != nil {
		if dom.async.cancel != nil {
			dom.async.cancel(err)
		}
		dom.finish(ctx, dom.async, nil, err)
		dom.async = nil
	}
	for _, j := range dom.lane.Drain() {
		if j.stopWatch != nil {
			j.stopWatch()
		}
		dom.finish(ctx, j, nil, err)
	}
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
	in := &domain.Info{Name: dom.spec.Name, UUID: dom.spec.UUID, State: dom.state, Reason: dom.reason, Queued: dom.lane.Len(),
		Restarts: dom.life.restarts, Control: dom.control(time.Now())}
	if dom.proc != nil {
		in.PID = dom.proc.PID()
		if dom.cfg.Host != nil {
			in.NICs = dom.cfg.Host.NICs(dom.spec.Name)
		}
	}
	if j, ok := dom.lane.Active(); ok {
		ji := j.info
		in.Job = &ji
	} else if dom.async != nil {
		ji := dom.async.info
		in.Job = &ji
	}
	return in
}

func (dom *domainActor) jobs() *domain.Jobs {
	js := &domain.Jobs{Domain: dom.name(), Queued: []domain.JobInfo{}, Recent: append([]domain.JobInfo{}, dom.recent...)}
	if j, ok := dom.lane.Active(); ok {
		ji := j.info
		js.Active = &ji
	}
	if dom.async != nil {
		ji := dom.async.info
		js.Async = &ji
	}
	for _, j := range dom.lane.Waiting() {
		js.Queued = append(js.Queued, j.info)
	}
	return js
}

// dropAbandoned takes the queued jobs of requestID whose caller gave up out
// of the lane.
func (dom *domainActor) dropAbandoned(ctx actor.Context, requestID string) {
	var ids []uint64
	for _, j := range dom.lane.Waiting() {
		if j.req.RequestID == requestID && j.req.Context().Err() != nil {
			ids = append(ids, j.info.ID)
		}
	}
	for _, id := range ids {
		dom.onAbandoned(ctx, id)
	}
}

func (dom *domainActor) explain(requestID string) *domain.WaitExplanation {
	w := &domain.WaitExplanation{}
	if j, ok := dom.lane.Active(); ok {
		if j.req.RequestID == requestID {
			w.Running = true
		}
		ji := j.info
		w.Holder = &ji
	} else if dom.async != nil {
		ji := dom.async.info
		w.Holder = &ji
	}
	return w
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
	if dial := dom.cfg.DialMonitor; dial != nil {
		socket := paths.QMPSocket
		cfg.Dial = func() monitor.Conn { return dial(socket) }
	}
	return cfg
}

// traceJob gives a job its span, under the message that queued it.
func (dom *domainActor) traceJob(ctx actor.Context, j *job) {
	if dom.cfg.Trace.Enabled() {
		j.span = dom.name() + "/job-" + strconv.FormatUint(j.info.ID, 10)
		j.parentSpan = trace.Current(ctx).SpanID
		j.enqueuedAt = trace.Now()
	}
}

// recordJob puts a finished job in the trace.
func (dom *domainActor) recordJob(j *job, err error) {
	if !dom.cfg.Trace.Enabled() {
		return
	}
	r := trace.Record{TraceID: j.req.RequestID, SpanID: j.span, ParentSpanID: j.parentSpan, Kind: trace.KindJob,
		Actor: "domain/" + dom.name(), MessageType: j.info.Name, Enqueued: j.enqueuedAt, Ended: trace.Now(),
		JobID: j.info.ID, Note: trace.Outcome(err)}
	if !j.info.Started.IsZero() {
		r.Started = r.Enqueued.Add(j.info.Started.Sub(j.info.Enqueued))
	}
	dom.cfg.Trace.Record(r)
}
