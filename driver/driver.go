// Package driver is the entry point of vmsup: the driver actor, which owns
// the registry of domains, and the public API that embedders use.
//
//	d, err := driver.Open(ctx, driver.Config{StateDir: "/var/lib/myapp/vms"})
//	spec, err := domain.ParseSpec(yamlBytes)
//	_, err = d.Define(ctx, spec)
//	err = d.Domain("web1").Start(ctx, driver.StartOptions{})
//
// Every call takes a context.Context and never waits past it (30 s when the
// context has no deadline, as libvirt's job wait).
package driver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/confine"
	"github.com/vmsup/vmsup/domain/hostres"
	"github.com/vmsup/vmsup/domain/overlay"
	"github.com/vmsup/vmsup/domain/policy"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/domain/tap"
	"github.com/vmsup/vmsup/domain/vm"
	"github.com/vmsup/vmsup/driver/internal/protocol"
	"github.com/vmsup/vmsup/monitor"
	"github.com/vmsup/vmsup/supervision"
)

// recoverAll loads every definition with its saved status and adopts the
// QEMUs still running for them. Unreadable files are logged and skipped.
func recoverAll(st *store, runDir string, host *hostres.Manager, conf *vm.Confine, logger zerolog.Logger) ([]recovered, []brokenDef) {
	var qemuUser *confine.User
	if conf != nil {
		qemuUser = conf.User
	}
	specs, broken, problems := st.loadAll()
	for _, p := range problems {
		logger.Error().Err(p).Msg("skipping definition (list shows it as broken)")
	}
	out := make([]recovered, 0, len(specs))
	for _, spec := range specs {
		saved, err := st.loadStatus(spec.Name)
		if err != nil {
			logger.Error().Err(err).Str("domain", spec.Name).Msg("ignoring saved status")
		}
		rec := process.Recover(spec, runDir, saved, qemuUser)
		if conf != nil {
			rec.Confine(conf.User, conf.Cgroups, conf.CgroupNote)
		}
		// Taps a crash or a stopped daemon left are removed; an adopted
		// QEMU's are released when it exits.
		if release := host.Recover(spec, rec.Adopted()); release != nil {
			pid := rec.Process().PID()
			rec.Process().OnExit(func() {
				// A process that vmsup stopped watching (Recovery.Release)
				// also "exits" here while its QEMU runs on: keep its taps.
				if !processRuns(pid) {
					release()
				}
			})
		}
		out = append(out, recovered{spec: spec, recovery: rec})
	}
	return out, broken
}

// processRuns reports whether pid is a live process (not a zombie).
func processRuns(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// InjectPanic makes an actor panic, for fault tests: target is "driver",
// "domain/NAME" or "monitor/NAME". The actor restarts under supervision.
func (d *Driver) InjectPanic(ctx context.Context, target, reason string) error {
	kind, name, _ := strings.Cut(target, "/")
	var msg any
	switch kind {
	case "driver":
		msg = &supervision.InjectPanic{Reason: reason}
	case "domain":
		msg = &protocol.InjectPanicIn{Domain: name, InjectPanic: supervision.InjectPanic{Reason: reason}}
	case "monitor":
		ref, err := d.Domain(name).lookup(ctx, actors.Request{})
		if err != nil {
			return err
		}
		err = vm.InjectMonitorPanic(ctx, d.root, ref.PID, reason)
		return err
	default:
		return fmt.Errorf("inject panic: unknown target %q (driver, domain/NAME or monitor/NAME)", target)
	}
	_, err := actors.Ask(ctx, d.root, d.pid, msg)
	return err
}

// Config configures a Driver.
type Config struct {
	// StateDir holds the definitions (StateDir/domains/NAME.json). Required.
	StateDir string
	// RunDir holds per-VM runtime files (RunDir/NAME/qmp.sock, qemu.pid,
	// qemu.log). Default: StateDir/run. Keep it short: unix socket paths
	// are limited to 107 bytes.
	RunDir string
	// Logger receives vmsup's logs; nil discards them.
	Logger *zerolog.Logger
	// Policy is the host's decision about specs (package policy): the
	// emulators allowed, raw QEMU, the image roots. Define refuses a spec
	// it refuses, and records the taints it allows; a start refuses an
	// emulator outside it; Driver.CheckQMP decides raw QMP (the API server
	// calls it). Nil trusts every spec, as an embedding program that
	// writes its own specs may.
	Policy *policy.Policy
	// DestroyGrace is how long destroy waits after SIGTERM before SIGKILL
	// (default 10s).
	DestroyGrace time.Duration
	// Monitor tunes QMP connections (connect timeout, line limit, event
	// buffer).
	Monitor monitor.TransportOptions
	// MonitorReconnect is the backoff between reconnects of a broken QMP
	// monitor (default 1s doubling to 30s).
	MonitorReconnect supervision.Backoff
	// JobHooks observe every job's start and release (tests, tracing).
	JobHooks vm.JobHooks
	// Launcher starts VM processes; nil runs QEMU. Benchmarks use
	// process.NewSimulatedProcess with DialMonitor set to a simulated QMP.
	Launcher process.Launcher
	// DialMonitor makes QMP connections; nil uses monitor.NewTransport.
	DialMonitor func(socketPath string) monitor.Conn
	// QemuImg runs qemu-img for the overlays of image disks; its Timeout
	// bounds each run (default overlay.DefaultTimeout).
	QemuImg overlay.QemuImg
	// Trace records every message, job and QMP command (see package
	// actors/trace for its sinks: JSON lines, live stream, Chrome,
	// Mermaid, SVG, OpenTelemetry). Nil leaves the trace middleware out
	// entirely; a disabled recorder costs one atomic load per message.
	Trace *trace.Recorder

	// Confine, when set, runs each QEMU as Confine.User in its own
	// cgroup: what a daemon run as root does. Nil runs QEMU as this
	// process. Open makes the state and run dirs traversable (0711) and
	// checks that the user can reach them.
	Confine *vm.Confine

	// beforeWrite is a test hook: see actorConfig.beforeWrite.
	beforeWrite func(name string)
}

// Driver is an open vmsup driver. It is safe for concurrent use.
type Driver struct {
	cfg    Config
	system *actor.ActorSystem
	root   *actor.RootContext
	pid    *actor.PID
	broker *domain.Broker
	logger zerolog.Logger
	// taints are the domains' recorded uses of raw QEMU.
	taints *taints
	// domains is the registry the driver actor publishes; handles read it.
	domains *registry
	// dispatcher runs every actor's turns on pooled workers.
	dispatcher *actors.Dispatcher
	// life is what the driver actor keeps across its restarts; Close
	// waits for its job goroutines.
	life *driverLife
	// done is closed by Close: what a handle started (event streams)
	// ends then.
	done chan struct{}
	// host makes and releases the domains' overlays, seeds, forwards
	// and taps.
	host *hostres.Manager
	// store reads definitions for hot-plug's --config changes, which
	// configMu makes one read-modify-define at a time.
	store    *store
	configMu sync.Mutex

	closeOnce sync.Once
	closeErr  error
	closed    atomic.Bool
}

// checkOpen returns ErrClosed after Close.
func (d *Driver) checkOpen() error {
	if d.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Open loads the definitions under cfg.StateDir and starts the driver actor.
// Definitions that cannot be read are logged and left on disk untouched.
func Open(ctx context.Context, cfg Config) (*Driver, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cfg.StateDir == "" {
		return nil, errors.New("driver: Config.StateDir is required")
	}
	stateDir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("driver: state dir: %w", err)
	}
	cfg.StateDir = stateDir
	if cfg.RunDir == "" {
		cfg.RunDir = filepath.Join(stateDir, "run")
	}
	if cfg.RunDir, err = filepath.Abs(cfg.RunDir); err != nil {
		return nil, fmt.Errorf("driver: run dir: %w", err)
	}
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		return nil, fmt.Errorf("driver: run dir: %w", err)
	}
	logger := zerolog.Nop()
	if cfg.Logger != nil {
		logger = *cfg.Logger
	}
	st, err := newStore(stateDir)
	if err != nil {
		return nil, fmt.Errorf("driver: %w", err)
	}
	hcfg := hostres.Config{StateDir: stateDir, RunDir: cfg.RunDir, QemuImg: cfg.QemuImg, Logger: logger}
	if cfg.Confine != nil {
		if err := traversable(cfg.Confine.User, stateDir, cfg.RunDir, filepath.Join(stateDir, "disks"), filepath.Join(stateDir, "snapshots")); err != nil {
			return nil, fmt.Errorf("driver: %w", err)
		}
		hcfg.TapOwner = &tap.Owner{UID: cfg.Confine.User.UID, GID: cfg.Confine.User.GID}
	}
	if pol := cfg.Policy; pol != nil {
		hcfg.OpenUserData = func(path string) (*os.File, error) {
			return pol.OpenFile("cloud_init.user_data_file", path, false)
		}
		// qemu-img reads a base through the image root too: the define
		// step's error names the disk's field, so this one says only why.
		hcfg.QemuImg.OpenBase = func(path string) (*os.File, error) {
			f, err := pol.OpenFile("image", path, false)
			if pe := (*policy.Error)(nil); errors.As(err, &pe) {
				return nil, fmt.Errorf("%q %s", pe.Value, pe.Reason)
			}
			return f, err
		}
	}
	host := hostres.New(hcfg)
	if cfg.Policy != nil {
		cfg.Launcher = checkedLauncher(cfg.Policy, cfg.Launcher)
	}
	tainted, taintProblems := loadTaints(stateDir)
	for _, p := range taintProblems {
		logger.Error().Err(p).Msg("taint records")
	}
	// Temp files of writes a crash interrupted: nothing writes yet.
	removed, problems := st.removeStaleTemps()
	for _, path := range removed {
		logger.Info().Str("path", path).Msg("removed a temp file left by an interrupted write")
	}
	for _, p := range problems {
		logger.Error().Err(p).Msg("stale temp files")
	}
	// Find the QEMUs a previous vmsup left running, before any actor runs.
	initial, broken := recoverAll(st, cfg.RunDir, host, cfg.Confine, logger)
	dispatcher, err := actors.NewDispatcher()
	if err != nil {
		return nil, fmt.Errorf("driver: %w", err)
	}
	system := actors.NewSystem(nil)
	if cfg.Trace != nil {
		// API calls, job goroutines and event pumps all send through the
		// system's root context.
		system.Root.WithSenderMiddleware(trace.SenderMiddleware(cfg.Trace))
	}
	d := &Driver{cfg: cfg, system: system, root: system.Root, broker: domain.NewBroker(), logger: logger, domains: &registry{}, dispatcher: dispatcher, life: &driverLife{}, done: make(chan struct{}), host: host, store: st}
	life := d.life
	props := actor.PropsFromProducer(func() actor.Actor {
		return newDriverActor(actorConfig{
			store:        st,
			runDir:       cfg.RunDir,
			broker:       d.broker,
			hooks:        cfg.JobHooks,
			destroyGrace: cfg.DestroyGrace,
			monitor:      cfg.Monitor,
			reconnect:    cfg.MonitorReconnect,
			launcher:     cfg.Launcher,
			dialMonitor:  cfg.DialMonitor,
			trace:        cfg.Trace,
			logger:       logger,
			registry:     d.domains,
			dispatcher:   dispatcher,
			initial:      initial,
			broken:       broken,
			beforeWrite:  cfg.beforeWrite,
			host:         host,
			confine:      cfg.Confine,
			openImage:    openImage(cfg.Policy),
			snapshotDir:  filepath.Join(stateDir, "snapshots"),
			qemuImg:      cfg.QemuImg,
		}, life)
	}, append(append(trace.PropsOptions(cfg.Trace), actors.PropsOption(dispatcher)...), actor.WithSupervisor(supervision.ActorStrategy()))...)
	d.pid, err = system.Root.SpawnNamed(props, "driver")
	if err != nil {
		_ = dispatcher.Close(time.Second)
		return nil, fmt.Errorf("driver: spawn driver actor: %w", err)
	}
	d.taints = tainted
	return d, nil
}

// Trace returns the trace recorder of Config.Trace (nil when none).
func (d *Driver) Trace() *trace.Recorder { return d.cfg.Trace }

// apiRecord records an API call as the root span of its trace.
func (d *Driver) apiRecord(req actors.Request, began time.Time, err error) {
	if !d.cfg.Trace.Enabled() {
		return
	}
	note := "ok"
	if err != nil {
		note = "error: " + err.Error()
	}
	d.cfg.Trace.Record(trace.Record{TraceID: req.RequestID, SpanID: req.RequestID, Kind: trace.KindAPI,
		Actor: "api", MessageType: req.Owner, Started: began, Ended: trace.Now(), Note: note})
}

// Close stops the driver and domain actors. Running VMs keep running, as
// with libvirtd; their QEMU processes stay in their own sessions. Close
// waits for the actors to stop (bounded by protoactor's stop future) and
// returns ctx's error if ctx ended meanwhile. Calling it again returns the
// first call's result; handles' calls fail after it.
func (d *Driver) Close(ctx context.Context) error {
	d.closeOnce.Do(func() { d.closeErr = d.close() })
	if d.closeErr != nil {
		return d.closeErr
	}
	return ctx.Err()
}

func (d *Driver) close() error {
	d.closed.Store(true)
	close(d.done)
	var errs []error
	if err := d.root.StopFuture(d.pid).Wait(); err != nil && !errors.Is(err, actor.ErrTimeout) {
		errs = append(errs, err)
	}
	// The driver's lane closed when it stopped; its jobs' goroutines (a
	// definition being written, an undefine asking its domain) end on
	// their own, within their steps' bounds.
	if !d.life.inflight.Wait(jobWait) {
		errs = append(errs, fmt.Errorf("driver jobs still running %s after the driver stopped", jobWait))
	}
	// Handles still held find no published domain: their calls go to the
	// stopped actors and fail.
	d.domains.clear()
	d.system.Shutdown()
	// The actors have stopped: end the pooled workers. A worker still
	// busy would be a handler that never returned; report it.
	if err := d.dispatcher.Close(5 * time.Second); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("driver: close: %w", errors.Join(errs...))
	}
	return nil
}

// jobWait bounds how long Close waits for the driver's job goroutines.
const jobWait = 10 * time.Second

// Define defines a domain from spec, or updates the definition of an existing
// one (the change takes effect at its next start). The definition is
// written atomically under the state dir before Define returns.
func (d *Driver) Define(ctx context.Context, spec *domain.Spec) (*DefineResult, error) {
	return d.DefineWith(ctx, spec, DefineOptions{})
}

// DefineOptions tune DefineWith.
type DefineOptions struct {
	// Force replaces a broken definition of the same name (one on disk
	// that cannot be read or parsed; List shows it as broken). Without
	// it such a define fails with ErrBroken.
	Force bool
}

// DefineWith is Define with options.
func (d *Driver) DefineWith(ctx context.Context, spec *domain.Spec, opts DefineOptions) (*DefineResult, error) {
	if spec == nil {
		return nil, errors.New("define: no spec given")
	}
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	taints, err := d.CheckDefine(spec)
	if err != nil {
		return nil, fmt.Errorf("define %q: %w", spec.Name, err)
	}
	req, began := actors.NewRequest(ctx, "api define"), trace.Now()
	waited := time.Now()
	res, err := actors.AskAs[*DefineResult](ctx, d.root, d.pid, &protocol.DefineRequest{Request: req, Spec: spec, Force: opts.Force})
	err = d.explainWait(req, "define", waited, err)
	d.apiRecord(req, began, err)
	if err == nil {
		for _, t := range taints {
			if terr := d.taints.add(res.Name, t.What); terr != nil {
				return res, terr
			}
			d.logger.Warn().Str("domain", res.Name).Str("taint", t.What).Msg("domain tainted: raw QEMU allowed by --allow-raw-qemu")
		}
	}
	return res, err
}

// explainWait turns err, when it is the bare context error of a wait for
// a driver job that ended (Ask returns it so), into an error that names
// who held the driver's lane: a *actors.JobWaitError. The question has a
// budget of 250 ms.
func (d *Driver) explainWait(req actors.Request, job string, began time.Time, err error) error {
	if err != context.DeadlineExceeded && err != context.Canceled {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	x, xerr := actors.AskAs[*actors.Explanation](ctx, d.root, d.pid, &protocol.ExplainRequest{RequestID: req.RequestID})
	waited := time.Since(began)
	if xerr != nil {
		return fmt.Errorf("driver: %s: gave up after %s: %w", job, waited.Round(100*time.Millisecond), err)
	}
	return x.Err(job, waited, time.Now(), err)
}

// Undefine removes a domain that is shut off.
func (d *Driver) Undefine(ctx context.Context, name string) error {
	if err := domain.ValidateName(name); err != nil {
		return fmt.Errorf("undefine: %w", err)
	}
	if err := d.checkOpen(); err != nil {
		return err
	}
	req, began := actors.NewRequest(ctx, "api undefine"), trace.Now()
	waited := time.Now()
	_, err := actors.AskAs[*protocol.Undefined](ctx, d.root, d.pid, &protocol.UndefineRequest{Request: req, Name: name})
	err = d.explainWait(req, "undefine", waited, err)
	if err == nil {
		if herr := d.host.Undefine(name); herr != nil {
			err = fmt.Errorf("undefine %q: the definition is gone, but: %w", name, herr)
		}
		keep, serr := vm.RemoveSnapshotState(filepath.Join(d.cfg.StateDir, "snapshots"), name)
		if serr != nil && err == nil {
			err = fmt.Errorf("undefine %q: the definition is gone, but removing its snapshots: %w", name, serr)
		}
		if len(keep) > 0 {
			d.logger.Warn().Str("domain", name).Strs("overlays", keep).Msg("undefine: the disk-only snapshot overlays of path disks stay (they hold the writes since the snapshot; qemu-img commit merges them)")
		}
	}
	d.apiRecord(req, began, err)
	if err == nil {
		err = d.taints.remove(name)
	}
	return err
}

// List returns the Info of every domain, sorted by name. It is served by
// the driver from snapshots that each domain publishes, so a domain stuck
// in a job never slows it.
func (d *Driver) List(ctx context.Context) ([]domain.Info, error) {
	if err := d.checkOpen(); err != nil {
		return nil, err
	}
	return actors.AskAs[[]domain.Info](ctx, d.root, d.pid, &protocol.ListRequest{})
}

// Domain returns a handle on the named domain. The name is checked when the
// handle is used.
func (d *Driver) Domain(name string) *Domain {
	return &Domain{d: d, name: name}
}

// Subscribe returns the lifecycle events of every domain until ctx ends or
// the subscription is closed. buffer <= 0 means domain.DefaultEventBuffer;
// when the buffer is full, events are dropped and counted, never blocking
// an actor.
func (d *Driver) Subscribe(ctx context.Context, buffer int) *domain.Subscription {
	return d.subscribe(ctx, "", buffer)
}

func (d *Driver) subscribe(ctx context.Context, name string, buffer int) *domain.Subscription {
	sub := d.broker.Subscribe(name, buffer)
	context.AfterFunc(ctx, sub.Close)
	return sub
}

// traversable makes dirs (created when missing) searchable by the QEMU
// user, and no more: mode 0711, or what they have if that is tighter for
// group and others but already lets others search. Their parents must let
// the user through too.
func traversable(u *confine.User, dirs ...string) error {
	for _, dir := range dirs {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		fi, err := os.Lstat(dir)
		if err != nil {
			return err
		}
		if perm := fi.Mode().Perm(); perm&0o001 == 0 {
			if err := os.Chmod(dir, perm|0o011); err != nil {
				return fmt.Errorf("let the QEMU user %q into %s: %w", u.Name, dir, err)
			}
		}
		if err := u.CanEnter(dir); err != nil {
			return fmt.Errorf("QEMU runs as %q and must reach its files under %s: %w", u.Name, dir, err)
		}
	}
	return nil
}

// openImage is how domains open the files their specs name for QEMU:
// under the policy's image roots, or as named without a policy.
func openImage(p *policy.Policy) vm.OpenImage {
	if p == nil {
		return nil
	}
	return p.OpenFile
}
