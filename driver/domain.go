package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/vm"
	"github.com/vmsup/vmsup/driver/internal/protocol"
	"github.com/vmsup/vmsup/monitor"
)

// Domain is a handle on one domain. Its methods are safe for concurrent use.
type Domain struct {
	d    *Driver
	name string
}

// StartOptions tune Start.
type StartOptions struct {
	// Paused leaves the guest paused after QEMU starts.
	Paused bool
}

// ShutdownOptions tune Shutdown.
type ShutdownOptions struct {
	// Timeout is the one deadline of the whole shutdown: asking the guest
	// and waiting for it to power off (default 60s).
	Timeout time.Duration
	// Mode says how to ask the guest: domain.ShutdownACPI (the default:
	// the ACPI power button, pressed again every few seconds until the
	// deadline), ShutdownAgent (the guest agent's guest-shutdown) or
	// ShutdownAuto (the agent when it answers guest-ping, else ACPI).
	Mode domain.ShutdownMode
	// Force destroys the VM when it has not powered off by the deadline;
	// it then ends shutoff/destroyed, never counted as a crash.
	Force bool
}

// Name is the domain's name.
func (h *Domain) Name() string { return h.name }

// Start starts QEMU and, unless opts.Paused, the guest.
func (h *Domain) Start(ctx context.Context, opts StartOptions) error {
	_, err := h.job(ctx, "start", func(r actors.Request) any { return vm.StartJob(r, opts.Paused) })
	return err
}

// Shutdown asks the guest to power off as opts.Mode says and waits for
// it, up to opts.Timeout and ctx. A guest that did not power off in time
// is an error wrapping domain.ErrShutdownTimeout, or, with opts.Force, is
// destroyed.
func (h *Domain) Shutdown(ctx context.Context, opts ShutdownOptions) error {
	_, err := h.job(ctx, "shutdown", func(r actors.Request) any { return vm.ShutdownJob(r, opts.Timeout, opts.Mode) })
	if err != nil && opts.Force && errors.Is(err, domain.ErrShutdownTimeout) {
		if derr := h.Destroy(ctx); derr != nil {
			return fmt.Errorf("%w; then --force destroy: %w", err, derr)
		}
		return nil
	}
	return err
}

// Destroy kills QEMU (SIGTERM, then SIGKILL after the grace period). It
// preempts any job, even one stuck in QMP.
func (h *Domain) Destroy(ctx context.Context) error {
	_, err := h.job(ctx, "destroy", func(r actors.Request) any { return vm.DestroyJob(r) })
	return err
}

// Pause pauses the guest's vCPUs.
func (h *Domain) Pause(ctx context.Context) error {
	_, err := h.job(ctx, "pause", func(r actors.Request) any { return vm.PauseJob(r) })
	return err
}

// Resume resumes a paused guest.
func (h *Domain) Resume(ctx context.Context) error {
	_, err := h.job(ctx, "resume", func(r actors.Request) any { return vm.ResumeJob(r) })
	return err
}

// Reset resets the machine, like pressing its reset button.
func (h *Domain) Reset(ctx context.Context) error {
	_, err := h.job(ctx, "reset", func(r actors.Request) any { return vm.ResetJob(r) })
	return err
}

// QMP runs one raw QMP command, given as {"execute": ..., "arguments": {...}},
// as a job, and returns the reply's "return" value. A QMP error comes back
// as a *monitor.QMPError in the error chain.
func (h *Domain) QMP(ctx context.Context, command json.RawMessage) (json.RawMessage, error) {
	execute, args, err := ParseQMPCommand(command)
	if err != nil {
		return nil, fmt.Errorf("domain %q: %w", h.name, err)
	}
	// Config.Policy decides raw QMP here too, for embedders as for the
	// API (refused, or allowed and tainted).
	if err := h.d.CheckQMP(h.name, execute); err != nil {
		return nil, err
	}
	v, err := h.job(ctx, "qmp", func(r actors.Request) any {
		return vm.QMPJob(r, execute, args)
	})
	if err != nil {
		return nil, err
	}
	ret, ok := vm.QMPReturn(v)
	if !ok {
		return nil, fmt.Errorf("domain %q: qmp: unexpected reply %T", h.name, v)
	}
	return ret, nil
}

// DefaultSnapshotTimeout bounds a snapshot call whose context has no
// deadline: the wait for the lane and QEMU's job together.
const DefaultSnapshotTimeout = 10 * time.Minute

// CreateSnapshot saves the running VM (its vCPU and device state in the
// first disk) and every writable disk under the tag name, as an async job
// beside which query, suspend, destroy and abort jobs run. Every writable
// disk must be qcow2.
func (h *Domain) CreateSnapshot(ctx context.Context, name string) error {
	return h.snapshot(ctx, "create", name)
}

// CreateDiskSnapshot makes the disk-only snapshot name: every writable
// disk's image becomes the read-only backing file of a new qcow2 overlay
// in the state dir, which the disk uses from then on (also after a
// restart of the VM or of the daemon). On a running VM it is an async
// job beside which query, destroy and abort jobs run; when the guest
// agent answers guest-ping, the guest's filesystems are frozen around
// the switch to the overlays, and thawed however the job ends.
func (h *Domain) CreateDiskSnapshot(ctx context.Context, name string) error {
	return h.snapshot(ctx, "create-disk", name)
}

// RevertSnapshot loads the snapshot name: the VM state and every disk go
// back to that instant. A disk-only snapshot is reverted on a stopped VM
// only: the overlays of later disk-only snapshots go, and the
// snapshot's own are made again, empty.
func (h *Domain) RevertSnapshot(ctx context.Context, name string) error {
	return h.snapshot(ctx, "revert", name)
}

// DeleteSnapshot removes the snapshot name from every disk and its record.
// A disk-only snapshot's overlays are committed into the images under
// them: with block-commit as an async job on a running VM (abortable),
// with qemu-img on a stopped one.
func (h *Domain) DeleteSnapshot(ctx context.Context, name string) error {
	return h.snapshot(ctx, "delete", name)
}

// Snapshots lists the domain's snapshots, its records settled against the
// tags on its disks (QEMU's for a running domain, qemu-img's otherwise).
func (h *Domain) Snapshots(ctx context.Context) ([]domain.Snapshot, error) {
	v, err := h.job(ctx, "snapshot-list", func(r actors.Request) any { return vm.SnapshotJob(r, "list", "") })
	if err != nil {
		return nil, err
	}
	snaps, ok := vm.SnapshotsOf(v)
	if !ok {
		return nil, fmt.Errorf("domain %q: snapshot list: unexpected reply %T", h.name, v)
	}
	return snaps, nil
}

// AbortJob asks the domain's async job to stop cleanly: job-cancel for a
// QEMU job (a snapshot), the end of the wait for a shutdown. It returns
// once the request is made; the job ends on its own.
func (h *Domain) AbortJob(ctx context.Context) error {
	_, err := h.job(ctx, "abort", func(r actors.Request) any { return vm.AbortJob(r) })
	return err
}

func (h *Domain) snapshot(ctx context.Context, op, name string) error {
	if err := domain.ValidateSnapshotName(name); err != nil {
		return fmt.Errorf("domain %q: snapshot %s: %w", h.name, op, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultSnapshotTimeout)
		defer cancel()
	}
	_, err := h.job(ctx, "snapshot-"+op, func(r actors.Request) any { return vm.SnapshotJob(r, op, name) })
	return err
}

// Info returns the domain's state, reason, pid and job, answered at once
// even while a job runs.
func (h *Domain) Info(ctx context.Context) (*domain.Info, error) {
	if err := h.d.checkOpen(); err != nil {
		return nil, err
	}
	if in, ok := h.d.domains.info(h.name); ok {
		return in, nil
	}
	// Not published yet (a domain actor that has not run, or a driver
	// rebuilding after a panic): ask the actors, which answer once ready.
	return askDomain(ctx, h, vm.Info)
}

// Jobs returns the active job, the async job, the queue and recent jobs.
func (h *Domain) Jobs(ctx context.Context) (*domain.Jobs, error) {
	return askDomain(ctx, h, vm.Jobs)
}

// Console connects to the running guest's serial console socket. The
// caller owns the connection and must close it.
func (h *Domain) Console(ctx context.Context) (net.Conn, error) {
	path, err := askDomain(ctx, h, vm.ConsolePath)
	if err != nil {
		return nil, err
	}
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("domain %q: console: %w", h.name, err)
	}
	return conn, nil
}

// Subscribe returns this domain's lifecycle events until ctx ends or the
// subscription is closed.
func (h *Domain) Subscribe(ctx context.Context, buffer int) *domain.Subscription {
	return h.d.subscribe(ctx, h.name, buffer)
}

// lookup finds the domain's actor; req carries the trace of the API call
// (zero for untraced queries).
func (h *Domain) lookup(ctx context.Context, req actors.Request) (*protocol.DomainRef, error) {
	if err := domain.ValidateName(h.name); err != nil {
		return nil, err
	}
	return actors.AskAs[*protocol.DomainRef](ctx, h.d.root, h.d.pid, &protocol.LookupRequest{Request: req, Name: h.name})
}

func (h *Domain) wrap(err error) error {
	if errors.Is(err, actors.ErrNoActor) {
		return notFound(h.name)
	}
	return err
}

// job sends a job request straight to the domain actor, found in the
// registry the driver publishes (the driver is not on a job's path, as
// libvirt's BeginJob releases the driver lock), and waits for the job's
// end. When the caller's context ends first, it asks the domain who held
// the job, so the error names the holder.
//
// The wait is bounded by ctx's deadline, or by DefaultTimeout when it has
// none: Ask keeps that time itself, and the request carries it as Expires,
// so the lane drops the job if it is still queued then. No timeout
// context is made per call.
func (h *Domain) job(ctx context.Context, name string, build func(actors.Request) any) (v any, err error) {
	req := actors.NewRequest(ctx, apiOwner(name))
	req.Expires = actors.Expiry(ctx)
	began := time.Now()
	defer func(traceBegan time.Time) { h.d.apiRecord(req, traceBegan, err) }(trace.Now())
	if err := domain.ValidateName(h.name); err != nil {
		return nil, err
	}
	if err := h.d.checkOpen(); err != nil {
		return nil, err
	}
	msg := build(req)
	v, err = askDomain(ctx, h, func(ctx context.Context, sender actor.SenderContext, pid *actor.PID) (any, error) {
		return actors.Ask(ctx, sender, pid, msg)
	})
	// Ask returns the bare context error when the wait ended; errors from
	// the job itself are always wrapped.
	if err == context.DeadlineExceeded || err == context.Canceled {
		return nil, h.explainWait(req, name, began, err)
	}
	return v, err
}

// apiOwners are the owners of the API's jobs, made once.
var apiOwners = func() map[string]string {
	m := make(map[string]string)
	for _, name := range []string{"start", "shutdown", "destroy", "pause", "resume", "reset", "qmp"} {
		m[name] = "api " + name
	}
	return m
}()

// apiOwner is the owner of the API's job name, as traces and wait errors
// show it.
func apiOwner(name string) string {
	if o, ok := apiOwners[name]; ok {
		return o
	}
	return "api " + name
}

func (h *Domain) explainWait(req actors.Request, name string, began time.Time, cause error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	x, err := h.explain(ctx, req)
	waited := time.Since(began)
	if err != nil {
		return fmt.Errorf("domain %q: %s: gave up after %s: %w", h.name, name, waited.Round(100*time.Millisecond), cause)
	}
	// The lane's own words: a *domain.JobWaitError (an
	// actors.JobWaitError) that names the holder.
	return x.Err(name, waited, time.Now(), cause)
}

// explain asks the domain actor who holds the job that req waits for.
func (h *Domain) explain(ctx context.Context, req actors.Request) (*actors.Explanation, error) {
	return askDomain(ctx, h, func(ctx context.Context, sender actor.SenderContext, pid *actor.PID) (*actors.Explanation, error) {
		return vm.ExplainWait(ctx, sender, pid, req.RequestID)
	})
}

// askDomain asks the domain actor with ask (one of the vm package's
// client functions, or a job request). It finds the actor in the driver's
// registry, or, when it is not there or has just stopped (a driver
// rebuilding after a panic), through the driver actor, which answers once
// it is ready. A message to a stopped actor never reached it, so asking
// the actor found next is safe even for a job. An unknown domain gives
// `domain "NAME" not found` (ErrNotFound).
func askDomain[T any](ctx context.Context, h *Domain, ask func(context.Context, actor.SenderContext, *actor.PID) (T, error)) (T, error) {
	if err := h.d.checkOpen(); err != nil {
		var zero T
		return zero, err
	}
	if e, ok := h.d.domains.get(h.name); ok {
		v, err := ask(ctx, h.d.root, e.pid)
		if !errors.Is(err, actors.ErrNoActor) {
			return v, h.wrap(err)
		}
	}
	ref, err := h.lookup(ctx, actors.Request{})
	if err != nil {
		var zero T
		return zero, h.wrap(err)
	}
	v, err := ask(ctx, h.d.root, ref.PID)
	return v, h.wrap(err)
}

// ParseQMPCommand checks a raw QMP command: exactly one JSON object whose
// members are "execute" (a non-empty string) and optionally "arguments" (an
// object), spelled exactly so — QMP's keys are case-sensitive, unlike
// encoding/json's matching — each once, with nothing after it
// (monitor.ParseCommand). args is a slice of command.
func ParseQMPCommand(command []byte) (execute string, args json.RawMessage, err error) {
	execute, args, err = monitor.ParseCommand(command)
	if err != nil {
		return "", nil, fmt.Errorf(`qmp: %w; send an object such as {"execute":"query-status","arguments":{}}`, err)
	}
	return execute, args, nil
}
