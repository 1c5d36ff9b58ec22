package domain

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
	Started  func(domain string, job JobInfo)
	Released func(domain string, job JobInfo)
}

// ActorConfig is what the driver gives each domain actor.
type ActorConfig struct {
	Spec         *Spec
	RunDir       string
	Broker       *Broker
	Hooks        JobHooks
	DestroyGrace time.Duration
	Monitor      monitor.TransportOptions
	// Launcher starts the VM process; nil means LaunchQEMU.
	Launcher Launcher
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
	Snapshot *atomic.Pointer[Info]
	// Dispatcher runs the domain's and its monitor's turns; nil means
	// protoactor's default.
	Dispatcher actor.Dispatcher
	Logger     zerolog.Logger
	// Recovery is what was found of this domain when vmsup started: its
	// saved status and an adopted QEMU, if one was still running.
	Recovery *Recovery
	// SaveStatus persists the runtime status. It is called from the actor
	// after every change and must not block.
	SaveStatus func(Status)
	// Reload reads the definition and saved status back from disk; a
	// domain actor restarted after a panic rebuilds itself from them.
	Reload func() (*Spec, *Status, error)
}

// Props returns the props of a domain actor.
func Props(cfg ActorConfig) *actor.Props {
	if cfg.DestroyGrace <= 0 {
		cfg.DestroyGrace = DefaultDestroyGrace
	}
	if cfg.Broker == nil {
		cfg.Broker = NewBroker()
	}
	life := &lineage{}
	return actor.PropsFromProducer(func() actor.Actor {
		return &domainActor{cfg: cfg, spec: cfg.Spec, state: StateShutoff, reason: ReasonUnknown, life: life}
	}, append(append(trace.PropsOptions(cfg.Trace), actors.PropsOption(cfg.Dispatcher)...), actor.WithSupervisor(supervision.ActorStrategy()))...)
}

// job is one entry of the job lane.
type job struct {
	info JobInfo
	// span is the job's span in the trace; parentSpan is the span of the
	// message that queued it.
	span, parentSpan string
	enqueuedAt       time.Time
	req              actors.Request
	senders          []*actor.PID
	stopWatch        func() bool
	cancel           context.CancelCauseFunc
	run              func(e *jobEnv) (any, error)
	apply            func(m *domainActor, value any, err error)
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
type processExited struct{ proc *Process }
type attachProcess struct {
	jobTrace
	jobID  uint64
	proc   *Process
	serial *Serial
}

type domainActor struct {
	cfg    ActorConfig
	spec   *Spec
	state  State
	reason Reason
	proc   *Process
	paths  RunPaths
	mon    *actor.PID
	monErr error

	lane       actors.Lane[*job]
	async      *job
	destroying *job
	jobSeq     uint64
	recent     []JobInfo

	sawShutdown       bool
	shutdownRequested bool
	panicked          bool
	undefining        bool
	// runningSerial is the serial port of the running QEMU's spec.
	runningSerial *Serial
	// saved is the status last handed to SaveStatus (Updated zero).
	saved Status

	life         *lineage
	recovering   bool // a restarted instance waits for the old one's goroutines
	monConnected bool // the monitor of this QEMU has connected before
	restartSeq   uint64
	monErrAt     time.Time
	restartTimer *time.Timer
}

func (m *domainActor) name() string { return m.spec.Name }

func (m *domainActor) Receive(ctx actor.Context) {
	defer supervision.RecoverAndReply(ctx, "domain/"+m.name())
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		m.cfg.Logger.Debug().Str("domain", m.name()).Bool("restart", m.life.started).Msg("domain actor started")
		if m.life.started {
			m.awaitOldJobs(ctx)
		} else {
			m.life.started = true
			m.recover(ctx)
		}
	case *actor.Restarting:
		m.onRestarting(ctx)
	case *supervision.InjectPanic:
		panic(fmt.Sprintf("injected panic in domain %q: %s", m.name(), msg.Reason))
	case *InjectMonitorPanic:
		if m.mon == nil {
			ctx.Respond(fmt.Errorf("domain %q: no monitor: %w", m.name(), ErrNotRunning))
			return
		}
		ctx.RequestWithCustomSender(m.mon, &supervision.InjectPanic{Reason: msg.Reason}, ctx.Sender())
	case *InfoRequest:
		ctx.Respond(m.info())
	case *JobsRequest:
		ctx.Respond(m.jobs())
	case *ConsoleRequest:
		ctx.Respond(m.console())
	case *ExplainWaitRequest:
		// The caller gave up: its job leaves the queue now, not when the
		// context's watcher gets here, and the snapshot shows it before
		// the caller hears back.
		m.dropAbandoned(ctx, msg.RequestID)
		w := m.explain(msg.RequestID)
		m.publish()
		ctx.Respond(w)
	case *StartRequest:
		m.stopRestartTimer()
		m.enqueue(ctx, msg.Request, "start", JobModify, m.startJob(msg.Paused))
	case *ShutdownRequest:
		m.enqueue(ctx, msg.Request, "shutdown", JobAsync, m.shutdownJob(msg.Timeout))
	case *PauseRequest:
		m.enqueue(ctx, msg.Request, "pause", JobModify, m.qmpJob("stop", nil, func(m *domainActor) {
			m.setState(StatePaused, ReasonUser, "")
		}))
	case *ResumeRequest:
		m.enqueue(ctx, msg.Request, "resume", JobModify, m.qmpJob("cont", nil, func(m *domainActor) {
			m.setState(StateRunning, ReasonUnpaused, "")
		}))
	case *ResetRequest:
		m.enqueue(ctx, msg.Request, "reset", JobModify, m.qmpJob("system_reset", nil, nil))
	case *QMPRequest:
		kind := JobModify
		if strings.HasPrefix(msg.Execute, "query-") {
			kind = JobQuery
		}
		m.enqueue(ctx, msg.Request, "qmp", kind, m.rawQMPJob(msg))
	case *DestroyRequest:
		m.destroy(ctx, msg)
	case jobStep:
		if msg.from == m {
			m.onStep(msg)
		}
	case shutdownRequested:
		if msg.from == m && m.jobByID(msg.id) != nil {
			m.shutdownRequested = true
		}
	case jobGoAsync:
		if msg.from == m {
			m.onGoAsync(ctx, msg.id)
		}
	case jobDone:
		if msg.from == m {
			m.onJobDone(ctx, msg)
		}
	case *directDone:
		if msg.from == m {
			m.onDirectDone(ctx, *msg)
		}
	case jobAbandoned:
		if msg.from == m {
			m.onAbandoned(ctx, msg.id)
		}
	case restartDue:
		if msg.from == m && msg.seq == m.restartSeq {
			m.onRestartDue(ctx)
		}
	case rebuildNow:
		if msg.from == m {
			m.recovering = false
			m.rebuild(ctx)
			m.next(ctx)
		}
	case attachProcess:
		m.onAttach(ctx, msg)
	case processExited:
		m.onExit(ctx, msg.proc)
	case *monitor.Event:
		m.onQMPEvent(msg)
	case *monitor.Connected:
		m.monErr = nil
		if m.monConnected && m.proc != nil {
			// A reconnect (after a broken monitor or a monitor restart):
			// events of the gap are lost, so resync from query-status.
			m.enqueueReconnect(ctx)
		}
		m.monConnected = true
	case *monitor.Disconnected:
		m.monErr, m.monErrAt = msg.Err, time.Now()
	case *UpdateSpec:
		if msg.Spec != nil && msg.Spec.Name == m.spec.Name {
			m.spec = msg.Spec
		}
	case *PrepareUndefine:
		m.prepareUndefine(ctx)
	case *CancelUndefine:
		m.undefining = false
	case *actor.Stopping:
		m.stopRestartTimer()
		m.stopping(ctx)
	}
	m.publish()
	m.saveStatus()
}

// publish stores a fresh Info where the driver's readers find it. It runs
// after every message, and also before a job's reply and a lifecycle event
// go out, so that whoever got them reads at least that state.
func (m *domainActor) publish() {
	if m.cfg.Snapshot != nil {
		m.cfg.Snapshot.Store(m.info())
	}
}

// saveStatus hands the status to the driver's writer when it changed.
func (m *domainActor) saveStatus() {
	if m.cfg.SaveStatus == nil || m.recovering {
		return // a recovering instance has no state of its own yet
	}
	st := Status{Name: m.name(), UUID: m.spec.UUID, State: m.state, Reason: m.reason}
	if m.proc != nil {
		st.PID = m.proc.pid
	}
	if st == m.saved {
		return
	}
	m.saved = st
	st.Updated = time.Now()
	m.cfg.SaveStatus(st)
}

// enqueue puts a job in the lane. The caller leaves the queue when its
// context ends before the job starts.
func (m *domainActor) enqueue(ctx actor.Context, req actors.Request, name string, kind JobKind, run jobRunner) {
	if m.undefining {
		ctx.Respond(fmt.Errorf("domain %q: %s: %w", m.name(), name, ErrUndefining))
		return
	}
	m.jobSeq++
	j := &job{
		info:    JobInfo{ID: m.jobSeq, Name: name, Kind: kind, Owner: ownerOf(req, name), RequestID: req.RequestID, Enqueued: time.Now()},
		req:     req,
		senders: []*actor.PID{ctx.Sender()},
		run:     run.run,
		apply:   run.apply,
		direct:  run.direct,
	}
	m.traceJob(ctx, j)
	self, root, id := ctx.Self(), ctx.ActorSystem().Root, j.info.ID
	j.stopWatch = context.AfterFunc(req.Context(), func() { root.Send(self, jobAbandoned{from: m, id: id}) })
	m.lane.Enqueue(j)
	m.next(ctx)
}

func ownerOf(req actors.Request, name string) string {
	if req.Owner != "" {
		return req.Owner
	}
	return "api " + name
}

// next starts queued jobs while the lane allows. While an async job waits,
// only query jobs may start (the async job mask).
func (m *domainActor) next(ctx actor.Context) {
	if m.recovering {
		return // jobs wait until the restarted actor has rebuilt its state
	}
	allow := func(j *job) bool {
		return m.async == nil || j.info.Kind == JobQuery || j.info.Kind == JobDestroy
	}
	for {
		j, ok := m.lane.Next(allow)
		if !ok {
			return
		}
		if j.stopWatch != nil {
			j.stopWatch()
		}
		if j.info.Kind != JobDestroy {
			if err := j.req.Context().Err(); err != nil {
				m.lane.End()
				m.finish(ctx, j, nil, fmt.Errorf("domain %q: job %d %q left the queue: %w", m.name(), j.info.ID, j.info.Name, err))
				continue
			}
			if err := m.precondition(j); err != nil {
				m.lane.End()
				m.finish(ctx, j, nil, err)
				continue
			}
		}
		m.launch(ctx, j)
		return
	}
}

func (m *domainActor) precondition(j *job) error {
	switch j.info.Name {
	case "start":
		if m.proc != nil {
			return fmt.Errorf("domain %q: start: domain is already %s: %w", m.name(), m.state, ErrWrongState)
		}
		return nil
	case "pause":
		if m.proc != nil && m.state == StatePaused {
			return fmt.Errorf("domain %q: pause: domain is already paused: %w", m.name(), ErrWrongState)
		}
	case "resume":
		if m.proc != nil && m.state != StatePaused {
			return fmt.Errorf("domain %q: resume: domain is not paused (state %s): %w", m.name(), m.state, ErrWrongState)
		}
	}
	if m.proc == nil || m.mon == nil {
		return fmt.Errorf("domain %q: %s: %w (state %s/%s)", m.name(), j.info.Name, ErrNotRunning, m.state, m.reason)
	}
	return nil
}

// launch runs a job in a goroutine owned by this actor. Its result comes
// back as a jobDone message; its steps as jobStep messages.
func (m *domainActor) launch(ctx actor.Context, j *job) {
	if j.direct != nil {
		m.launchDirect(ctx, j)
		return
	}
	jctx, cancel := context.WithCancelCause(context.Background())
	j.cancel = cancel
	j.info.Started = time.Now()
	env := &jobEnv{
		ctx:     jctx,
		root:    ctx.ActorSystem().Root,
		self:    ctx.Self(),
		monitor: m.mon,
		proc:    m.proc,
		spec:    *m.spec,
		runDir:  m.cfg.RunDir,
		launch:  m.cfg.Launcher,
		grace:   m.cfg.DestroyGrace,
		job:     j.info,
		req:     j.req,
		hooks:   m.cfg.Hooks,
		span:    j.span,
		domain:  m.name(),
		owner:   m,
	}
	m.cfg.Logger.Debug().Str("domain", m.name()).Uint64("job", j.info.ID).Str("name", j.info.Name).
		Str("request", j.req.RequestID).Dur("waited", j.info.Started.Sub(j.info.Enqueued)).Msg("job started")
	run := j.run
	m.life.inflight.Add(1)
	go func() {
		defer m.life.inflight.Done()
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

func (m *domainActor) jobByID(id uint64) *job {
	if j, ok := m.lane.Active(); ok && j.info.ID == id {
		return j
	}
	if m.async != nil && m.async.info.ID == id {
		return m.async
	}
	return nil
}

func (m *domainActor) onStep(s jobStep) {
	j := m.jobByID(s.id)
	if j == nil {
		return
	}
	j.info.Step = s.step
	if s.qmp == "" {
		j.info.QMP = nil
	} else {
		j.info.QMP = &QMPInFlight{Command: s.qmp, Since: s.since}
	}
}

func (m *domainActor) onGoAsync(ctx actor.Context, id uint64) {
	j, ok := m.lane.Active()
	if !ok || j.info.ID != id {
		return
	}
	m.lane.End()
	m.async = j
	m.next(ctx)
}

func (m *domainActor) onJobDone(ctx actor.Context, d jobDone) {
	var j *job
	if a, ok := m.lane.Active(); ok && a.info.ID == d.id {
		j = a
	} else if m.async != nil && m.async.info.ID == d.id {
		j = m.async
	} else {
		return
	}
	// The job may have seen QEMU exit before its exit message arrived.
	if m.proc != nil && m.proc.exited() {
		m.onExit(ctx, m.proc)
	}
	if j.apply != nil {
		j.apply(m, d.value, d.err)
	}
	if j == m.async {
		m.async = nil
	} else {
		m.lane.End()
	}
	m.finish(ctx, j, d.value, d.err)
	m.next(ctx)
}

// finish replies to the job's callers and keeps it in the recent list.
func (m *domainActor) finish(ctx actor.Context, j *job, value any, err error) {
	m.releaseDirect(ctx, j)
	j.info.Ended = time.Now()
	j.info.QMP = nil
	reply := value
	if err != nil {
		j.info.Error = err.Error()
		reply = err
	} else if reply == nil {
		reply = &JobDone{Job: j.info}
	}
	m.recordJob(j, err)
	m.publish()
	for _, s := range j.senders {
		if s != nil {
			ctx.Send(s, reply)
		}
	}
	m.recent = append(m.recent, j.info)
	if len(m.recent) > recentJobs {
		m.recent = m.recent[len(m.recent)-recentJobs:]
	}
	ev := m.cfg.Logger.Debug()
	if err != nil {
		ev = m.cfg.Logger.Info().Err(err)
	}
	ev.Str("domain", m.name()).Uint64("job", j.info.ID).Str("name", j.info.Name).Str("request", j.req.RequestID).Msg("job ended")
}

func (m *domainActor) onAbandoned(ctx actor.Context, id uint64) {
	j, ok := m.lane.Remove(func(j *job) bool { return j.info.ID == id })
	if !ok || j.info.Kind == JobDestroy {
		if ok {
			m.lane.EnqueueFront(j)
		}
		return
	}
	m.finish(ctx, j, nil, fmt.Errorf("domain %q: job %d %q left the queue: %w", m.name(), j.info.ID, j.info.Name, j.req.Context().Err()))
}

// destroy kills QEMU at once, cancels the running jobs and queues the
// destroy job at the head of the lane.
func (m *domainActor) destroy(ctx actor.Context, msg *DestroyRequest) {
	if m.destroying != nil {
		m.destroying.senders = append(m.destroying.senders, ctx.Sender())
		return
	}
	active, busy := m.lane.Active()
	startingUp := busy && active.info.Name == "start"
	if m.proc == nil && !startingUp {
		if m.restartTimer != nil {
			// Destroy ends a pending on_crash restart: the user wants it off.
			m.stopRestartTimer()
			m.setState(StateShutoff, ReasonDestroyed, "")
			ctx.Respond(&JobDone{})
			return
		}
		ctx.Respond(fmt.Errorf("domain %q: destroy: %w (state %s/%s)", m.name(), ErrNotRunning, m.state, m.reason))
		return
	}
	m.jobSeq++
	j := &job{
		info:    JobInfo{ID: m.jobSeq, Name: "destroy", Kind: JobDestroy, Owner: ownerOf(msg.Request, "destroy"), RequestID: msg.RequestID, Enqueued: time.Now()},
		req:     msg.Request,
		senders: []*actor.PID{ctx.Sender()},
		run:     runDestroy,
		apply: func(m *domainActor, _ any, _ error) {
			m.destroying = nil
			m.life.destroying = false
			if m.proc == nil {
				m.setState(StateShutoff, ReasonDestroyed, "")
			}
		},
	}
	m.traceJob(ctx, j)
	m.destroying = j
	m.life.destroying = true
	if p := m.proc; p != nil {
		grace := m.cfg.DestroyGrace
		m.life.inflight.Add(1)
		go func() { // ends when p is reaped; SIGKILL bounds it
			defer m.life.inflight.Done()
			p.terminate(grace)
		}()
	}
	cause := fmt.Errorf("domain %q: destroyed by job %d (%s)", m.name(), j.info.ID, j.info.Owner)
	if busy && active.cancel != nil {
		active.cancel(cause)
	}
	if m.async != nil && m.async.cancel != nil {
		m.async.cancel(cause)
	}
	m.lane.EnqueueFront(j)
	m.next(ctx)
}

func (m *domainActor) onAttach(ctx actor.Context, a attachProcess) {
	j, ok := m.lane.Active()
	if !ok || j.info.ID != a.jobID || a.proc.exited() || m.destroying != nil {
		ctx.Respond(fmt.Errorf("domain %q: QEMU (pid %d) is gone before QMP was attached", m.name(), a.proc.pid))
		return
	}
	paths, err := NewRunPaths(m.cfg.RunDir, m.name())
	if err != nil {
		ctx.Respond(err)
		return
	}
	if m.mon != nil {
		// The monitor of an earlier attempt of this start, whose QEMU
		// is gone or going.
		ctx.Stop(m.mon)
		m.mon = nil
	}
	m.proc = a.proc
	m.paths = paths
	m.monConnected = false
	m.runningSerial = a.serial
	m.sawShutdown, m.shutdownRequested, m.panicked, m.monErr = false, false, false, nil
	m.setState(StatePaused, ReasonStartingUp, "")
	pid, err := ctx.SpawnNamed(monitor.Props(m.monitorConfig(paths)), fmt.Sprintf("monitor-%d", a.proc.pid))
	if err != nil {
		ctx.Respond(fmt.Errorf("domain %q: spawn monitor: %w", m.name(), err))
		return
	}
	m.mon = pid
	ctx.Respond(pid)
}

// onExit records that QEMU is gone and decides the outcome, as DESIGN.md
// says: destroy → destroyed; a start job → failed; a guest panic →
// crashed/panicked; a SHUTDOWN event or a requested shutdown → shutdown;
// anything else → crashed.
func (m *domainActor) onExit(ctx actor.Context, p *Process) {
	if p == nil || p != m.proc {
		return
	}
	m.proc = nil
	if m.mon != nil {
		ctx.Stop(m.mon)
		m.mon = nil
	}
	active, busy := m.lane.Active()
	state, reason := StateShutoff, ReasonCrashed
	switch {
	case m.destroying != nil || m.life.destroying:
		reason = ReasonDestroyed
	case busy && active.info.Name == "start":
		reason = ReasonFailed
	case m.panicked:
		state, reason = StateCrashed, ReasonPanicked
	case m.sawShutdown || m.shutdownRequested:
		reason = ReasonShutdown
	}
	cause := fmt.Errorf("domain %q: QEMU exited (%s)", m.name(), p.exitString())
	// A start job handles its own QEMU's death (and may retry with a new
	// one); destroy waits for it. Any other job is cut short.
	if busy && active.info.Kind != JobDestroy && active.info.Name != "start" && active.cancel != nil {
		active.cancel(fmt.Errorf("domain %q: QEMU exited (%s) while running job %d %q", m.name(), p.exitString(), active.info.ID, active.info.Name))
	}
	if m.async != nil && m.async.cancel != nil && reason != ReasonShutdown {
		m.async.cancel(cause)
	}
	m.cfg.Logger.Info().Str("domain", m.name()).Int("pid", p.pid).Str("exit", p.exitString()).
		Str("state", string(state)).Str("reason", string(reason)).Msg("QEMU exited")
	m.setState(state, reason, "")
	if reason == ReasonCrashed || reason == ReasonPanicked {
		m.applyCrashPolicy(ctx)
	}
}

func (m *domainActor) onQMPEvent(ev *monitor.Event) {
	if m.proc == nil {
		return
	}
	switch ev.Name {
	case "STOP":
		if m.state == StateRunning {
			m.setState(StatePaused, ReasonUser, ev.ID)
		}
	case "RESUME":
		if m.state == StatePaused && m.reason != ReasonStartingUp {
			m.setState(StateRunning, ReasonUnpaused, ev.ID)
		}
	case "SHUTDOWN":
		m.sawShutdown = true
		if m.destroying == nil {
			m.setState(StateShutdown, ReasonUser, ev.ID)
		}
	case "GUEST_PANICKED":
		m.panicked = true
		m.setState(StateCrashed, ReasonPanicked, ev.ID)
	}
}

// setState changes state and reason and publishes the lifecycle event that
// the transition means.
func (m *domainActor) setState(s State, r Reason, cause string) {
	if s == m.state && r == m.reason {
		return
	}
	prevState, prevReason := m.state, m.reason
	m.state, m.reason = s, r
	var t EventType
	switch s {
	case StateRunning:
		t = EventResumed
		if prevState != StatePaused || prevReason == ReasonStartingUp {
			t = EventStarted
		}
	case StatePaused:
		switch {
		case r == ReasonStartingUp:
			return
		case prevReason == ReasonStartingUp:
			t = EventStarted
		default:
			t = EventPaused
		}
	case StateShutdown:
		t = EventShutdown
	case StateShutoff:
		t = EventStopped
		if r == ReasonCrashed {
			t = EventCrashed
		}
	case StateCrashed:
		t = EventCrashed
	}
	m.publish()
	m.cfg.Broker.Publish(Event{Type: t, Domain: m.name(), UUID: m.spec.UUID, State: s, Reason: r, Cause: cause})
}

func (m *domainActor) prepareUndefine(ctx actor.Context) {
	if m.proc != nil || m.lane.Busy() || m.lane.Len() > 0 || m.async != nil {
		ctx.Respond(fmt.Errorf("domain %q: undefine: domain must be shut off and idle (state %s/%s, %d jobs queued); shut it down or destroy it first: %w", m.name(), m.state, m.reason, m.lane.Len(), ErrWrongState))
		return
	}
	m.undefining = true
	m.stopRestartTimer()
	ctx.Respond(&Undefinable{})
}

// stopping runs when the driver stops this actor (undefine or close). QEMU
// keeps running: it lives in its own session, as with libvirtd. Every
// waiting caller is answered, and the job goroutines end before the actor
// does, so that a driver opened next never races a job of this one.
func (m *domainActor) stopping(ctx actor.Context) {
	m.stopRestartTimer()
	m.abandonJobs(ctx, fmt.Errorf("domain %q: supervisor is stopping", m.name()))
	if !m.life.waitInflight(m.cfg.DestroyGrace + 5*time.Second) {
		m.cfg.Logger.Error().Str("domain", m.name()).Msg("job goroutines still running after the stop deadline")
	}
	// A destroy that finished while we waited ends as destroyed on disk.
	if m.proc != nil && m.proc.exited() {
		m.onExit(ctx, m.proc)
		m.stopRestartTimer()
	}
}

// abandonJobs cancels the active and async jobs and answers every caller
// of the lane with err: the caller of a running job does not wait for an
// answer that would reach a stopped actor.
func (m *domainActor) abandonJobs(ctx actor.Context, err error) {
	if j, ok := m.lane.End(); ok {
		if j.cancel != nil {
			j.cancel(err)
		}
		m.finish(ctx, j, nil, err)
	}
	if m.async != nil {
		if m.async.cancel != nil {
			m.async.cancel(err)
		}
		m.finish(ctx, m.async, nil, err)
		m.async = nil
	}
	for _, j := range m.lane.Drain() {
		if j.stopWatch != nil {
			j.stopWatch()
		}
		m.finish(ctx, j, nil, err)
	}
	m.destroying = nil
}

func (m *domainActor) info() *Info {
	if m.recovering && m.cfg.Snapshot != nil {
		// A restarted instance waiting for the old one's jobs: show what
		// the old one last showed, and say why nothing runs.
		if last := m.cfg.Snapshot.Load(); last != nil {
			in := *last
			in.Job, in.Queued = nil, m.lane.Len()
			in.Control = &Control{State: ControlRecovering, Reason: "the domain actor restarted after a panic and waits for the old instance's jobs"}
			return &in
		}
	}
	in := &Info{Name: m.spec.Name, UUID: m.spec.UUID, State: m.state, Reason: m.reason, Queued: m.lane.Len(),
		Restarts: m.life.restarts, Control: m.control(time.Now())}
	if m.proc != nil {
		in.PID = m.proc.pid
	}
	if j, ok := m.lane.Active(); ok {
		ji := j.info
		in.Job = &ji
	} else if m.async != nil {
		ji := m.async.info
		in.Job = &ji
	}
	return in
}

func (m *domainActor) jobs() *Jobs {
	js := &Jobs{Domain: m.name(), Queued: []JobInfo{}, Recent: append([]JobInfo{}, m.recent...)}
	if j, ok := m.lane.Active(); ok {
		ji := j.info
		js.Active = &ji
	}
	if m.async != nil {
		ji := m.async.info
		js.Async = &ji
	}
	for _, j := range m.lane.Waiting() {
		js.Queued = append(js.Queued, j.info)
	}
	return js
}

// dropAbandoned takes the queued jobs of requestID whose caller gave up out
// of the lane.
func (m *domainActor) dropAbandoned(ctx actor.Context, requestID string) {
	var ids []uint64
	for _, j := range m.lane.Waiting() {
		if j.req.RequestID == requestID && j.req.Context().Err() != nil {
			ids = append(ids, j.info.ID)
		}
	}
	for _, id := range ids {
		m.onAbandoned(ctx, id)
	}
}

func (m *domainActor) explain(requestID string) *WaitExplanation {
	w := &WaitExplanation{}
	if j, ok := m.lane.Active(); ok {
		if j.req.RequestID == requestID {
			w.Running = true
		}
		ji := j.info
		w.Holder = &ji
	} else if m.async != nil {
		ji := m.async.info
		w.Holder = &ji
	}
	return w
}

// console says where the running guest's serial console socket is.
func (m *domainActor) console() any {
	if m.proc == nil {
		return fmt.Errorf("domain %q: console: %w (state %s/%s)", m.name(), ErrNotRunning, m.state, m.reason)
	}
	// The running QEMU was built from the spec it was started with; m.spec
	// may have been redefined since, so use the paths of this run.
	serial := m.runningSerial
	switch {
	case serial == nil:
		return &ConsoleTarget{Path: m.paths.ConsoleSocket}
	case serial.Type == SerialSocket && serial.Path != "":
		return &ConsoleTarget{Path: serial.Path}
	case serial.Type == SerialSocket:
		return &ConsoleTarget{Path: m.paths.ConsoleSocket}
	default:
		return fmt.Errorf("domain %q: console: the serial port is %q, not a socket (set serial.type: socket): %w", m.name(), serial.Type, ErrNoConsole)
	}
}

func (m *domainActor) monitorConfig(paths RunPaths) monitor.Config {
	cfg := monitor.Config{
		Trace:      m.cfg.Trace,
		Dispatcher: m.cfg.Dispatcher,
		Domain:     m.name(),
		SocketPath: paths.QMPSocket,
		Transport:  m.cfg.Monitor,
		Reconnect:  m.cfg.MonitorReconnect,
		Logger:     m.cfg.Logger,
	}
	if dial := m.cfg.DialMonitor; dial != nil {
		socket := paths.QMPSocket
		cfg.Dial = func() monitor.Conn { return dial(socket) }
	}
	return cfg
}

// traceJob gives a job its span, under the message that queued it.
func (m *domainActor) traceJob(ctx actor.Context, j *job) {
	if m.cfg.Trace.Enabled() {
		j.span = m.name() + "/job-" + strconv.FormatUint(j.info.ID, 10)
		j.parentSpan = trace.Current(ctx).SpanID
		j.enqueuedAt = trace.Now()
	}
}

// recordJob puts a finished job in the trace.
func (m *domainActor) recordJob(j *job, err error) {
	if !m.cfg.Trace.Enabled() {
		return
	}
	r := trace.Record{TraceID: j.req.RequestID, SpanID: j.span, ParentSpanID: j.parentSpan, Kind: trace.KindJob,
		Actor: "domain/" + m.name(), MessageType: j.info.Name, Enqueued: j.enqueuedAt, Ended: trace.Now(),
		JobID: j.info.ID, Note: trace.Outcome(err)}
	if !j.info.Started.IsZero() {
		r.Started = r.Enqueued.Add(j.info.Started.Sub(j.info.Enqueued))
	}
	m.cfg.Trace.Record(r)
}
