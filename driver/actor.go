package driver

import (
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
func (d *driverActor) reload() []recovered {
	return recoverAll(d.cfg.store, d.cfg.runDir, d.cfg.host, d.cfg.logger)
}

// ErrNotFound is wrapped by errors about unknown domains.
var ErrNotFound = errors.New("not found")

// ErrClosed is returned by every call made after Driver.Close.
var ErrClosed = errors.New("driver: closed")

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
	name   string
	uuid   string
	pid    *actor.PID
	snap   *atomic.Pointer[domain.Info]
	status *statusWriter
}

type driverJob struct {
	req    actors.Request
	msg    any
	sender *actor.PID
}

type defineWritten struct {
	spec *domain.Spec
	err  error
}
type undefineRemoved struct {
	name string
	err  error
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
	dialMonitor  func(string) monitor.Conn
	trace        *trace.Recorder
	logger       zerolog.Logger
	initial      []recovered
	registry     *registry
	dispatcher   actor.Dispatcher
	host         *hostres.Manager
}

// recovered is a definition loaded at Open, with what was found of its QEMU.
type recovered struct {
	spec     *domain.Spec
	recovery *process.Recovery
}

// driverActor owns the registry: name and UUID → domain actor. Its mailbox
// does the job of libvirt's driver lock. Define and undefine are jobs of its
// lane; lookup and list are answered at once.
type driverActor struct {
	cfg     actorConfig
	life    *driverLife
	domains map[string]*entry
	uuids   map[string]string
	lane    actors.Lane[*driverJob]
}

// driverLife is what the driver keeps across restarts of its actor.
type driverLife struct {
	started bool
	gen     uint64
	// oldWriters are the status writers of the instance that panicked;
	// the next instance closes them once the old domain actors stopped.
	oldWriters []*statusWriter
}

func newDriverActor(cfg actorConfig, life *driverLife) actor.Actor {
	return &driverActor{cfg: cfg, life: life, domains: map[string]*entry{}, uuids: map[string]string{}}
}

func (d *driverActor) Receive(ctx actor.Context) {
	defer supervision.RecoverAndReply(ctx, "driver")
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		initial := d.cfg.initial
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
			initial = d.reload()
		}
		d.life.started = true
		for _, r := range initial {
			if err := d.spawn(ctx, r.spec, r.recovery); err != nil {
				r.recovery.Release()
				d.cfg.logger.Error().Err(err).Str("domain", r.spec.Name).Msg("cannot load domain")
			}
		}
	case *actor.Restarting:
		err := errors.New("driver: the driver actor restarted after a panic; retry the call")
		if j, ok := d.lane.End(); ok && j.sender != nil {
			ctx.Send(j.sender, err)
		}
		for _, j := range d.lane.Drain() {
			if j.sender != nil {
				ctx.Send(j.sender, err)
			}
		}
		for _, e := range d.domains {
			d.life.oldWriters = append(d.life.oldWriters, e.status)
		}
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
		for _, e := range d.domains {
			e.status.Close()
		}
	case *protocol.LookupRequest:
		e, ok := d.domains[msg.Name]
		if !ok {
			ctx.Respond(notFound(msg.Name))
			return
		}
		ctx.Respond(&protocol.DomainRef{Name: e.name, UUID: e.uuid, PID: e.pid})
	case *protocol.RouteRequest:
		e, ok := d.domains[msg.Name]
		if !ok {
			ctx.Respond(notFound(msg.Name))
			return
		}
		ctx.RequestWithCustomSender(e.pid, msg.Msg, ctx.Sender())
	case *protocol.ListRequest:
		ctx.Respond(d.list())
	case *protocol.DefineRequest:
		d.enqueue(ctx, msg.Request, msg)
	case *protocol.UndefineRequest:
		d.enqueue(ctx, msg.Request, msg)
	case defineWritten:
		d.onDefineWritten(ctx, msg)
	case undefineRemoved:
		d.onUndefineRemoved(ctx, msg)
	}
}

func notFound(name string) error { return fmt.Errorf("domain %q %w", name, ErrNotFound) }

func (d *driverActor) list() []domain.Info {
	out := make([]domain.Info, 0, len(d.domains))
	now := time.Now()
	for _, e := range d.domains {
		if in := e.snap.Load(); in != nil {
			out = append(out, *in.Fresh(now))
		} else {
			out = append(out, domain.Info{Name: e.name, UUID: e.uuid, State: domain.StateShutoff, Reason: domain.ReasonUnknown})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (d *driverActor) enqueue(ctx actor.Context, req actors.Request, msg any) {
	d.lane.Enqueue(&driverJob{req: req, msg: msg, sender: ctx.Sender()})
	d.next(ctx)
}

// next starts the next driver job. A job's I/O runs in a goroutine and
// comes back as a message; the lane stays held until then.
func (d *driverActor) next(ctx actor.Context) {
	for {
		j, ok := d.lane.Next(nil)
		if !ok {
			return
		}
		if err := j.req.Context().Err(); err != nil {
			d.end(ctx, fmt.Errorf("driver job left the queue: %w", err))
			continue
		}
		var err error
		switch msg := j.msg.(type) {
		case *protocol.DefineRequest:
			err = d.startDefine(ctx, msg)
		case *protocol.UndefineRequest:
			err = d.startUndefine(ctx, msg)
		}
		if err != nil {
			d.end(ctx, err)
			continue
		}
		return
	}
}

// end finishes the active driver job with reply.
func (d *driverActor) end(ctx actor.Context, reply any) {
	j, ok := d.lane.End()
	if ok && j.sender != nil {
		ctx.Send(j.sender, reply)
	}
}

func (d *driverActor) startDefine(ctx actor.Context, msg *protocol.DefineRequest) error {
	if msg.Spec == nil {
		return errors.New("define: no spec given")
	}
	spec := *msg.Spec.Clone() // the caller keeps its copy
	if spec.Name == "" {
		return errors.New(`define: spec field "name": is required`)
	}
	if e, ok := d.domains[spec.Name]; ok {
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
	self, root, st := ctx.Self(), ctx.ActorSystem().Root, d.cfg.store
	go func() {
		root.Send(self, defineWritten{spec: &spec, err: st.save(&spec)})
	}()
	return nil
}

func (d *driverActor) onDefineWritten(ctx actor.Context, w defineWritten) {
	if w.err != nil {
		d.end(ctx, fmt.Errorf("define %q: %w", w.spec.Name, w.err))
		d.next(ctx)
		return
	}
	created := false
	if e, ok := d.domains[w.spec.Name]; ok {
		vm.UpdateSpec(ctx, e.pid, w.spec)
	} else {
		if err := d.spawn(ctx, w.spec, nil); err != nil {
			d.end(ctx, fmt.Errorf("define %q: %w", w.spec.Name, err))
			d.next(ctx)
			return
		}
		created = true
	}
	state, reason := d.domains[w.spec.Name].state()
	d.cfg.broker.Publish(domain.Event{Type: domain.EventDefined, Domain: w.spec.Name, UUID: w.spec.UUID, State: state, Reason: reason})
	d.end(ctx, &DefineResult{Name: w.spec.Name, UUID: w.spec.UUID, Created: created})
	d.next(ctx)
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
	snap := &atomic.Pointer[domain.Info]{}
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
		DialMonitor:      d.cfg.dialMonitor,
		Trace:            d.cfg.trace,
		Snapshot:         snap,
		Dispatcher:       d.cfg.dispatcher,
		Logger:           d.cfg.logger,
		Recovery:         rec,
		SaveStatus:       status.Put,
		Reload:           d.reloader(spec.Name),
		Host:             d.cfg.host,
	}), fmt.Sprintf("%s@%d", spec.Name, d.life.gen))
	if err != nil {
		status.Close()
		return fmt.Errorf("spawn domain actor: %w", err)
	}
	e := &entry{name: spec.Name, uuid: spec.UUID, pid: pid, snap: snap, status: status}
	d.domains[spec.Name] = e
	d.cfg.registry.put(e)
	d.uuids[spec.UUID] = spec.Name
	return nil
}

func (d *driverActor) startUndefine(ctx actor.Context, msg *protocol.UndefineRequest) error {
	e, ok := d.domains[msg.Name]
	if !ok {
		return fmt.Errorf("undefine: %w", notFound(msg.Name))
	}
	// The driver never waits on a domain: it asks, and continues when the
	// reply comes back as a continuation.
	future := vm.PrepareUndefine(ctx, e.pid, 5*time.Second)
	ctx.ReenterAfter(future, func(res any, err error) {
		if err == nil {
			if e2, ok := res.(error); ok {
				err = e2
			}
		}
		if err != nil {
			d.end(ctx, fmt.Errorf("undefine %q: %w", msg.Name, err))
			d.next(ctx)
			return
		}
		self, root, st := ctx.Self(), ctx.ActorSystem().Root, d.cfg.store
		go func() { root.Send(self, undefineRemoved{name: msg.Name, err: st.remove(msg.Name)}) }()
	})
	return nil
}

func (d *driverActor) onUndefineRemoved(ctx actor.Context, r undefineRemoved) {
	e, ok := d.domains[r.name]
	switch {
	case !ok:
		d.end(ctx, fmt.Errorf("undefine: %w", notFound(r.name)))
	case r.err != nil:
		vm.CancelUndefine(ctx, e.pid)
		d.end(ctx, fmt.Errorf("undefine %q: %w", r.name, r.err))
	default:
		ctx.Stop(e.pid)
		e.status.Close()
		delete(d.domains, r.name)
		delete(d.uuids, e.uuid)
		d.cfg.registry.remove(r.name)
		state, reason := e.state()
		d.cfg.broker.Publish(domain.Event{Type: domain.EventUndefined, Domain: r.name, UUID: e.uuid, State: state, Reason: reason})
		d.end(ctx, &protocol.Undefined{Name: r.name})
	}
	d.next(ctx)
}
