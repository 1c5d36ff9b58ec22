package driver

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/hostres"
	"github.com/vmsup/vmsup/domain/overlay"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/domain/vm"
	"github.com/vmsup/vmsup/driver/internal/protocol"
	"github.com/vmsup/vmsup/monitor"
	"github.com/vmsup/vmsup/supervision"
)

// reloader reads a domain's definition and status back from disk, for a
// domain actor that restarts after a panic.
func (d *driverActor) reloader(name string) func() (*domain.Spec, *domain.Status, error) {
	st := d.cfg.store
	return func() (*domain.Spec, *domain.Status, error) {
		spec, err := st.load(name)
		if err != nil {
			return nil, nil, err
		}
		status, err := st.loadStatus(name)
		return spec, status, err
	}
}

// reload reads every definition and status from disk and adopts running
// QEMUs, as Open does.
func (d *driverActor) reload() ([]recovered, []brokenDef) {
	return recoverAll(d.cfg.store, d.cfg.runDir, d.cfg.host, d.cfg.confine, d.cfg.logger)
}

// ErrNotFound is wrapped by errors about unknown domains.
var ErrNotFound = errors.New("not found")

// ErrClosed is returned by every call made after Driver.Close.
var ErrClosed = errors.New("driver: closed")

// ErrBroken is wrapped when a define would replace a definition on disk
// that cannot be read or parsed, without force.
var ErrBroken = errors.New("broken definition")

// ErrConflict is wrapped when a definition clashes with another: a UUID
// that belongs to another domain, or a redefinition with another UUID.
var ErrConflict = errors.New("conflict")

// DefineResult is the reply to DefineRequest.
type DefineResult struct {
	Name    string `json:"name"`
	UUID    string `json:"uuid"`
	Created bool   `json:"created"`
}

type entry struct {
	name string
	uuid string
	pid  *actor.PID
	snap *atomic.Pointer[domain.Info]
	// agent is the running guest agent's live status (vm.Config.LiveAgent).
	agent  *atomic.Pointer[atomic.Pointer[domain.AgentStatus]]
	status *statusWriter
}

// info is a copy of the domain's last published Info, refreshed at now,
// with the guest agent's live status in place of the published one, or
// nil when the domain has published nothing yet. The agent stores its
// status before it answers a command, so a caller whose agent command
// just failed reads the new status here at once.
func (e *entry) info(now time.Time) *domain.Info {
	in := e.snap.Load()
	if in == nil {
		return nil
	}
	out := in.Fresh(now)
	if out.Agent != nil && e.agent != nil {
		if live := e.agent.Load(); live != nil {
			if st := live.Load(); st != nil {
				out.Agent = st
			}
		}
	}
	return out
}

// driverJob is the data of one driver job: define or undefine.
type driverJob struct {
	// spec is the definition a define writes, complete once its plan's
	// Start has run.
	spec *domain.Spec
	// name is the domain an undefine removes; entry is its registry
	// entry, found at the job's start (nil for a broken definition).
	name  string
	entry *entry
	// force lets a define replace a broken definition; existed says the
	// domain was defined when the define started (its host files are
	// then not removed if the define fails).
	force, existed bool
	// span is the job's trace span, parent the span of the request that
	// queued it, enqueued when (trace clock); empty when not tracing.
	span, parent string
	enqueued     time.Time
}

type actorConfig struct {
	store        *store
	runDir       string
	broker       *domain.Broker
	hooks        vm.JobHooks
	destroyGrace time.Duration
	monitor      monitor.TransportOptions
	reconnect    supervision.Backoff
	launcher     process.Launcher
	confine      *vm.Confine
	openImage    vm.OpenImage
	dialMonitor  func(string) monitor.Conn
	trace        *trace.Recorder
	logger       zerolog.Logger
	initial      []recovered
	broken       []brokenDef
	registry     *registry
	dispatcher   actor.Dispatcher
	// beforeWrite, when set, runs in a define job's goroutine before the
	// definition is written (a test hook: it may block to hold the lane).
	beforeWrite func(name string)
	host        *hostres.Manager
	snapshotDir string
	qemuImg     overlay.QemuImg
}

// recovered is a definition loaded at Open, with what was found of its QEMU.
type recovered struct {
	spec     *domain.Spec
	recovery *process.Recovery
}

// driverActor owns the registry: name and UUID → domain actor. Its mailbox
// does the job of libvirt's driver lock. Define and undefine are jobs of
// its lane; lookup and list are answered at once. Domain jobs never pass
// through it: API calls reach the domain actors through the registry.
type driverActor struct {
	cfg     actorConfig
	life    *driverLife
	domains map[string]*entry
	uuids   map[string]string
	// broken are the definitions on disk that cannot be used, by name,
	// with the reason.
	broken map[string]string
	lane   *actors.Lane[*driverJob]
	define *actors.Plan[*driverJob]
	remove *actors.Plan[*driverJob]
}

// driverLife is what the driver keeps across restarts of its actor.
type driverLife struct {
	started bool
	gen     uint64
	// oldWriters are the status writers of the instance that panicked;
	// the next instance closes them once the old domain actors stopped.
	oldWriters []*statusWriter
	// inflight counts the job goroutines of every instance, so that a
	// stopping driver waits for those of an instance that panicked.
	inflight actors.Inflight
}

func newDriverActor(cfg actorConfig, life *driverLife) actor.Actor {
	d := &driverActor{cfg: cfg, life: life, domains: map[string]*entry{}, uuids: map[string]string{}, broken: map[string]string{}}
	d.lane = actors.NewLane(actors.LaneConfig[*driverJob]{Name: "driver", Dispatcher: cfg.dispatcher, Inflight: &life.inflight, Ended: d.recordJob})
	d.define = d.definePlan()
	d.remove = d.undefinePlan()
	return d
}

func (d *driverActor) Receive(ctx actor.Context) {
	defer supervision.RecoverAndReply(ctx, "driver")
	defer d.clearOnPanic()
	if d.lane.Handle(ctx, ctx.Message()) {
		return
	}
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		initial, broken := d.cfg.initial, d.cfg.broken
		if d.life.started {
			// Restarted after a panic: the old domain actors have stopped
			// (protoactor stops children first); rebuild from disk.
			for _, w := range d.life.oldWriters {
				w.Close()
			}
			d.life.oldWriters = nil
			// Readers fall back to asking this actor until it has
			// spawned the new domain actors.
			d.cfg.registry.clear()
			initial, broken = d.reload()
		}
		d.life.started = true
		for _, b := range broken {
			d.broken[b.name] = b.problem
		}
		for _, r := range initial {
			if err := d.spawn(ctx, r.spec, r.recovery); err != nil {
				r.recovery.Release()
				d.cfg.logger.Error().Err(err).Str("domain", r.spec.Name).Msg("cannot load domain")
			}
		}
	case *actor.Restarting:
		// The domain actors are about to stop: from now on handles find
		// no PID in the registry and ask this actor, whose next instance
		// answers once it has spawned the new ones. (A job sent to a
		// stopping domain actor might never be answered.)
		d.cfg.registry.clear()
		d.lane.Close(ctx, errors.New("driver: the driver actor restarted after a panic; retry the call"))
		for _, e := range d.domains {
			d.life.oldWriters = append(d.life.oldWriters, e.status)
		}
	case *actor.Stopping:
		d.lane.Close(ctx, ErrClosed)
	case *supervision.InjectPanic:
		panic("injected panic in driver: " + msg.Reason)
	case *protocol.InjectPanicIn:
		e, ok := d.domains[msg.Domain]
		if !ok {
			ctx.Respond(notFound(msg.Domain))
			return
		}
		ctx.RequestWithCustomSender(e.pid, &msg.InjectPanic, ctx.Sender())
	case *actor.Stopped:
		// The domain actors have stopped: flush their last status.
		// (Driver.Close waits for the job goroutines, not this handler.)
		for _, e := range d.domains {
			e.status.Close()
		}
	case *protocol.LookupRequest:
		e, ok := d.domains[msg.Name]
		if !ok {
			if problem, broken := d.broken[msg.Name]; broken {
				ctx.Respond(brokenDomain(msg.Name, problem))
				return
			}
			ctx.Respond(notFound(msg.Name))
			return
		}
		ctx.Respond(&protocol.DomainRef{Name: e.name, UUID: e.uuid, PID: e.pid})
	case *protocol.ListRequest:
		ctx.Respond(d.list())
	case *protocol.ExplainRequest:
		ctx.Respond(d.lane.Explain(ctx, msg.RequestID))
	case *protocol.JobsRequest:
		s := d.lane.Snapshot()
		ctx.Respond(&s)
	case *protocol.DefineRequest:
		d.enqueue(ctx, d.define, msg.Request, &driverJob{spec: msg.Spec, force: msg.Force})
	case *protocol.UndefineRequest:
		d.enqueue(ctx, d.remove, msg.Request, &driverJob{name: msg.Name})
	}
}

// enqueue queues a driver job for the request ctx is handling; its sender
// hears the job's end.
func (d *driverActor) enqueue(ctx actor.Context, plan *actors.Plan[*driverJob], req actors.Request, data *driverJob) {
	if d.cfg.trace.Enabled() {
		data.span, data.parent, data.enqueued = trace.NewSpanID(), trace.Current(ctx).SpanID, trace.Now()
	}
	d.lane.Enqueue(ctx, plan, req, data, actors.ReplyTo(ctx.Sender()))
}

// startJob gives a starting job its trace span.
func startJob(j *actors.Job[*driverJob]) {
	if j.Data.span != "" {
		j.SetSpan(j.Data.span)
	}
}

// recordJob puts an ended driver job in the trace, under the request that
// queued it.
func (d *driverActor) recordJob(j *actors.Job[*driverJob], err error) {
	if j.Data.span == "" || !d.cfg.trace.Enabled() {
		return
	}
	info := j.Info()
	r := trace.Record{TraceID: info.RequestID, SpanID: j.Data.span, ParentSpanID: j.Data.parent, Kind: trace.KindJob,
		Actor: "driver", MessageType: info.Name, Enqueued: j.Data.enqueued, Ended: trace.Now(),
		JobID: info.ID, Note: trace.Outcome(err)}
	if !info.Started.IsZero() {
		r.Started = r.Enqueued.Add(info.Started.Sub(info.Enqueued))
	}
	d.cfg.trace.Record(r)
}

// clearOnPanic empties the registry when a handler panics, before the
// caller hears of the panic and before the domain actors stop with this
// instance: from then on handles ask the next instance for a domain's
// PID, which answers once it has spawned the new domain actors, instead
// of sending jobs to domain actors that are stopping.
func (d *driverActor) clearOnPanic() {
	if p := recover(); p != nil {
		d.cfg.registry.clear()
		panic(p)
	}
}

func notFound(name string) error { return fmt.Errorf("domain %q %w", name, ErrNotFound) }

// brokenDomain is the answer for a name whose definition on disk cannot
// be used: it is listed (as broken), so "not found" would be wrong.
func brokenDomain(name, problem string) error {
	return fmt.Errorf("domain %q: its definition on disk is broken (%s); define it again with force (vmsup define --force) or undefine it: %w", name, problem, ErrBroken)
}

func (d *driverActor) list() []domain.Info {
	out := make([]domain.Info, 0, len(d.domains))
	now := time.Now()
	for _, e := range d.domains {
		if in := e.info(now); in != nil {
			out = append(out, *in)
		} else {
			out = append(out, domain.Info{Name: e.name, UUID: e.uuid, State: domain.StateShutoff, Reason: domain.ReasonUnknown})
		}
	}
	for name, problem := range d.broken {
		out = append(out, domain.Info{Name: name, State: domain.StateBroken, Reason: domain.ReasonCorrupt, Problem: problem})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// definePlan is the define job: check the spec against the registry (at
// the job's start, in the actor), make its host files (overlays and seed)
// and write it (in the job's goroutine), then spawn or update the domain
// actor (in the actor). Defines of one name are serialised by the lane, so
// a failed first define removes only the files it made itself.
func (d *driverActor) definePlan() *actors.Plan[*driverJob] {
	p := actors.NewPlan("define", actors.JobModify,
		actors.Step[*driverJob]{Name: "host", Do: d.defineHost},
		actors.Step[*driverJob]{Name: "write", Do: d.writeDefinition},
		actors.Step[*driverJob]{Name: "register", InActor: d.registerDefinition},
	)
	p.Start = d.checkDefinition
	return p
}

// checkDefinition completes and validates the job's spec: a UUID of its
// own (or the existing domain's), defaults, no clash with another domain.
func (d *driverActor) checkDefinition(_ actor.Context, j *actors.Job[*driverJob]) error {
	startJob(j)
	if j.Data.spec == nil {
		return errors.New("define: no spec given")
	}
	spec := j.Data.spec.Clone() // the caller keeps its copy
	if spec.Name == "" {
		return errors.New(`define: spec field "name": is required`)
	}
	if problem, ok := d.broken[spec.Name]; ok && !j.Data.force {
		return fmt.Errorf("define %q: its definition on disk is broken (%s); define with force (vmsup define --force) to replace it, or undefine it: %w",
			spec.Name, problem, ErrBroken)
	}
	e, existed := d.domains[spec.Name]
	j.Data.existed = existed
	if existed {
		if spec.UUID != "" && spec.UUID != e.uuid {
			return fmt.Errorf("define: domain %q exists with uuid %s, not %s: %w", spec.Name, e.uuid, spec.UUID, ErrConflict)
		}
		spec.UUID = e.uuid
	} else if spec.UUID == "" {
		spec.UUID = uuid.NewString()
	}
	spec.ApplyDefaults()
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("define %q: %w", spec.Name, err)
	}
	if other, ok := d.uuids[spec.UUID]; ok && other != spec.Name {
		return fmt.Errorf("define %q: uuid %s already belongs to domain %q: %w", spec.Name, spec.UUID, other, ErrConflict)
	}
	j.Data.spec = spec
	return nil
}

// defineHost makes the overlays of the spec's image disks and its seed.
// When the domain was not defined before, a failed define removes them.
func (d *driverActor) defineHost(ctx context.Context, r actors.Run[*driverJob]) error {
	data := r.Data()
	spec := data.spec
	if d.cfg.host == nil {
		return nil
	}
	if !data.existed {
		host, name := d.cfg.host, spec.Name
		r.Defer("remove the disks of a failed define", func(jobErr error) error {
			if jobErr != nil {
				if err := host.Undefine(name); err != nil {
					return fmt.Errorf("removing the disks of a failed define: %w", err)
				}
			}
			return nil
		})
	}
	if err := d.cfg.host.Define(ctx, spec); err != nil {
		return fmt.Errorf("define %q: %w", spec.Name, err)
	}
	return nil
}

func (d *driverActor) writeDefinition(_ context.Context, r actors.Run[*driverJob]) error {
	spec := r.Data().spec
	if hook := d.cfg.beforeWrite; hook != nil {
		hook(spec.Name)
	}
	if err := d.cfg.store.save(spec); err != nil {
		return fmt.Errorf("define %q: %w", spec.Name, err)
	}
	return nil
}

// registerDefinition makes the written definition live: a new domain
// actor, or the existing one told to use it from its next start.
func (d *driverActor) registerDefinition(ctx actor.Context, r actors.Run[*driverJob]) error {
	spec := r.Data().spec
	created := false
	delete(d.broken, spec.Name)
	if e, ok := d.domains[spec.Name]; ok {
		vm.UpdateSpec(ctx, e.pid, spec)
	} else {
		if err := d.spawn(ctx, spec, nil); err != nil {
			return fmt.Errorf("define %q: %w", spec.Name, err)
		}
		created = true
	}
	state, reason := d.domains[spec.Name].state()
	d.cfg.broker.Publish(domain.Event{Type: domain.EventDefined, Domain: spec.Name, UUID: spec.UUID, State: state, Reason: reason})
	r.SetValue(&DefineResult{Name: spec.Name, UUID: spec.UUID, Created: created})
	return nil
}

// state is the domain's last published state and reason.
func (e *entry) state() (domain.State, domain.Reason) {
	if in := e.snap.Load(); in != nil {
		return in.State, in.Reason
	}
	return domain.StateShutoff, domain.ReasonUnknown
}

func (d *driverActor) spawn(ctx actor.Context, spec *domain.Spec, rec *process.Recovery) error {
	if other, ok := d.uuids[spec.UUID]; ok && other != spec.Name {
		return fmt.Errorf("uuid %s already belongs to domain %q: %w", spec.UUID, other, ErrConflict)
	}
	status, err := d.cfg.store.newStatusWriter(spec.Name, d.cfg.logger)
	if err != nil {
		return err
	}
	snap, agent := &atomic.Pointer[domain.Info]{}, &atomic.Pointer[atomic.Pointer[domain.AgentStatus]]{}
	if rec != nil {
		// List is right before the domain actor has run: seed its snapshot
		// with the state it will start with.
		state, reason := rec.Initial(spec.UUID)
		snap.Store(&domain.Info{Name: spec.Name, UUID: spec.UUID, State: state, Reason: reason, PID: rec.PID()})
	}
	d.life.gen++
	pid, err := ctx.SpawnNamed(vm.Props(vm.Config{
		Spec:             spec,
		RunDir:           d.cfg.runDir,
		Broker:           d.cfg.broker,
		Hooks:            d.cfg.hooks,
		DestroyGrace:     d.cfg.destroyGrace,
		Monitor:          d.cfg.monitor,
		MonitorReconnect: d.cfg.reconnect,
		Launcher:         d.cfg.launcher,
		Confine:          d.cfg.confine,
		OpenImage:        d.cfg.openImage,
		DialMonitor:      d.cfg.dialMonitor,
		Trace:            d.cfg.trace,
		Snapshot:         snap,
		LiveAgent:        agent,
		Dispatcher:       d.cfg.dispatcher,
		Logger:           d.cfg.logger,
		Recovery:         rec,
		SaveStatus:       status.Put,
		Reload:           d.reloader(spec.Name),
		Host:             d.cfg.host,
		SnapshotDir:      d.cfg.snapshotDir,
		QemuImg:          d.cfg.qemuImg,
	}), fmt.Sprintf("%s@%d", spec.Name, d.life.gen))
	if err != nil {
		status.Close()
		return fmt.Errorf("spawn domain actor: %w", err)
	}
	e := &entry{name: spec.Name, uuid: spec.UUID, pid: pid, snap: snap, agent: agent, status: status}
	d.domains[spec.Name] = e
	d.cfg.registry.put(e)
	d.uuids[spec.UUID] = spec.Name
	return nil
}

// undefineAsk bounds the undefine job's ask to its domain.
const undefineAsk = 5 * time.Second

// undefinePlan is the undefine job: the domain agrees to end (it must be
// shut off and idle, and refuses new jobs from then on; asked from the
// job's goroutine), the definition is removed from disk, then the domain
// actor is stopped and unregistered (in the actor). Should the removal
// fail, the domain takes jobs again.
func (d *driverActor) undefinePlan() *actors.Plan[*driverJob] {
	p := actors.NewPlan("undefine", actors.JobModify,
		actors.Step[*driverJob]{Name: "prepare", Do: d.prepareUndefine},
		actors.Step[*driverJob]{Name: "remove", Do: d.removeDefinition},
		actors.Step[*driverJob]{Name: "unregister", InActor: d.unregister},
	)
	p.Start = func(_ actor.Context, j *actors.Job[*driverJob]) error {
		startJob(j)
		e, ok := d.domains[j.Data.name]
		if !ok {
			if _, broken := d.broken[j.Data.name]; broken {
				return nil // only its file goes
			}
			return fmt.Errorf("undefine: %w", notFound(j.Data.name))
		}
		j.Data.entry = e
		return nil
	}
	return p
}

func (d *driverActor) prepareUndefine(ctx context.Context, r actors.Run[*driverJob]) error {
	if r.Data().entry == nil {
		return nil // a broken definition: no domain actor
	}
	name, pid := r.Data().name, r.Data().entry.pid
	res, err := vm.PrepareUndefine(r.Root(), pid, undefineAsk).Result()
	if err == nil {
		if e, ok := res.(error); ok {
			err = e
		}
	}
	if err != nil {
		return fmt.Errorf("undefine %q: %w", name, err)
	}
	r.Defer("cancel-undefine", func(jobErr error) error {
		if jobErr != nil {
			vm.CancelUndefine(r.Root(), pid)
		}
		return nil
	})
	return ctx.Err()
}

func (d *driverActor) removeDefinition(_ context.Context, r actors.Run[*driverJob]) error {
	name := r.Data().name
	if err := d.cfg.store.remove(name); err != nil {
		return fmt.Errorf("undefine %q: %w", name, err)
	}
	return nil
}

func (d *driverActor) unregister(ctx actor.Context, r actors.Run[*driverJob]) error {
	name, e := r.Data().name, r.Data().entry
	if e == nil {
		delete(d.broken, name)
		r.SetValue(&protocol.Undefined{Name: name})
		return nil
	}
	if d.domains[name] != e {
		return fmt.Errorf("undefine: %w", notFound(name))
	}
	ctx.Stop(e.pid)
	e.status.Close()
	delete(d.domains, name)
	delete(d.uuids, e.uuid)
	d.cfg.registry.remove(name)
	state, reason := e.state()
	d.cfg.broker.Publish(domain.Event{Type: domain.EventUndefined, Domain: name, UUID: e.uuid, State: state, Reason: reason})
	r.SetValue(&protocol.Undefined{Name: name})
	return nil
}
