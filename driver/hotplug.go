package driver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/netcfg"
	"github.com/vmsup/vmsup/domain/vm"
)

// DeviceOptions say which definition a hot-plug change acts on, as
// libvirt's --live and --config: Live the running QEMU (the running
// definition), Config the persistent definition (from the next start).
// Both may be set. With neither, a running domain's change is Live and a
// shut-off domain's is Config.
type DeviceOptions struct {
	Live, Config bool
	// Timeout bounds a detach's wait for the guest to release the device
	// (vm.DefaultDetachTimeout when zero).
	Timeout time.Duration
}

// DiskOptions describe a disk to attach.
type DiskOptions struct {
	DeviceOptions
	// Format is "raw" (default) or "qcow2".
	Format   string
	ReadOnly bool
}

// DeviceResult says what a hot-plug change did.
type DeviceResult struct {
	// Disk or NIC is the device in the running definition, when the
	// change was Live.
	Disk *domain.LiveDisk `json:"disk,omitempty"`
	NIC  *domain.LiveNIC  `json:"nic,omitempty"`
	// Live and Config say which definitions changed.
	Live   bool `json:"live"`
	Config bool `json:"config"`
}

// resolve fills in the default definitions and checks that a Live change
// has a running QEMU.
func (h *Domain) resolve(ctx context.Context, job string, o *DeviceOptions) error {
	in, err := h.Info(ctx)
	if err != nil {
		return err
	}
	running := in.PID != 0
	if !o.Live && !o.Config {
		o.Live, o.Config = running, !running
	}
	if o.Live && !running {
		return fmt.Errorf("domain %q: %s --live: %w (state %s/%s); use --config to change the next start", h.name, job, domain.ErrNotRunning, in.State, in.Reason)
	}
	if o.Timeout < 0 {
		return &domain.FieldError{Field: "timeout", Problem: "must not be negative"}
	}
	return nil
}

// persistent returns a copy of the persistent definition.
func (h *Domain) persistent() (*domain.Spec, error) {
	if _, ok := h.d.domains.get(h.name); !ok {
		return nil, notFound(h.name)
	}
	spec, err := h.d.store.load(h.name)
	if err != nil {
		return nil, fmt.Errorf("domain %q: read definition: %w", h.name, err)
	}
	return spec, nil
}

// checkCandidate validates spec as define would (fields, then the host's
// policy), so a hot-plugged device passes the checks a defined one does.
func (h *Domain) checkCandidate(spec *domain.Spec) error {
	spec.ApplyDefaults()
	if err := spec.Validate(); err != nil {
		return err
	}
	_, err := h.d.CheckDefine(spec)
	return err
}

// AttachDisk attaches the disk file at path: hot-plugged into the running
// QEMU (opts.Live) and/or added to the persistent definition
// (opts.Config). The path passes the checks of define (absolute and clean,
// under the policy's image roots).
func (h *Domain) AttachDisk(ctx context.Context, path string, opts DiskOptions) (*DeviceResult, error) {
	const job = "attach-disk"
	unlock, err := h.begin(ctx, job, &opts.DeviceOptions)
	if err != nil {
		return nil, err
	}
	defer unlock()
	spec, err := h.persistent()
	if err != nil {
		return nil, err
	}
	format := opts.Format
	if format == "" {
		format = domain.DiskFormatRaw
	}
	cand := spec.Clone()
	cand.Disks = append(cand.Disks, domain.Disk{Path: path, Format: format, ReadOnly: opts.ReadOnly})
	if err := h.checkCandidate(cand); err != nil {
		return nil, fmt.Errorf("domain %q: %s: %w", h.name, job, err)
	}
	res := &DeviceResult{}
	if opts.Live {
		v, err := h.job(ctx, job, func(r actors.Request) any { return vm.AttachDiskJob(r, path, format, opts.ReadOnly) })
		if err != nil {
			return nil, err
		}
		res.Disk, _, _ = vm.DeviceOf(v)
		res.Live = true
	}
	return h.finish(ctx, job, opts.Config, res, cand)
}

// DetachDisk detaches the disk that target names. In the running
// definition target is a node ("disk0", "hot1"), device id or path; in
// the persistent one "diskN" (the spec's disks[N]) or the path. A live
// detach waits for the guest to release the device (DEVICE_DELETED), up
// to opts.Timeout; at the deadline the disk stays attached and the error
// wraps domain.ErrDetachTimeout.
func (h *Domain) DetachDisk(ctx context.Context, target string, opts DeviceOptions) (*DeviceResult, error) {
	const job = "detach-disk"
	if err := domain.ValidateName(h.name); err != nil {
		return nil, err
	}
	if err := checkTarget(target); err != nil {
		return nil, fmt.Errorf("domain %q: %s: %w", h.name, job, err)
	}
	unlock, err := h.begin(ctx, job, &opts)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var cand *domain.Spec
	if opts.Config {
		spec, err := h.persistent()
		if err != nil {
			return nil, err
		}
		i := -1
		for j, d := range spec.Disks {
			if (d.Path != "" && d.Path == target) || "disk"+strconv.Itoa(j) == target {
				i = j
				break
			}
		}
		if i < 0 {
			return nil, fmt.Errorf("domain %q: %s --config: target %q: no such disk in the definition (%d disks): %w", h.name, job, target, len(spec.Disks), domain.ErrNoDevice)
		}
		if spec.Disks[i].Image != "" {
			return nil, fmt.Errorf("domain %q: %s --config: disks[%d] is an image disk with an overlay; remove it by redefining the domain", h.name, job, i)
		}
		cand = spec.Clone()
		cand.Disks = slices.Delete(cand.Disks, i, i+1)
	}
	res := &DeviceResult{}
	if opts.Live {
		ctx, cancel := detachContext(ctx, opts.Timeout)
		defer cancel()
		v, err := h.job(ctx, job, func(r actors.Request) any { return vm.DetachDiskJob(r, target, opts.Timeout) })
		if err != nil {
			return nil, err
		}
		res.Disk, _, _ = vm.DeviceOf(v)
		res.Live = true
	}
	return h.finish(ctx, job, opts.Config, res, cand)
}

// AttachNIC attaches a NIC described as a spec's networks entry: type
// "user" (the default; only user NICs are hot-plugged, a tap NIC can be
// added with Config), an optional MAC and forwards. Without a MAC it gets
// one derived from the UUID that no NIC of either definition has, written
// into the persistent definition so that it stays the same.
func (h *Domain) AttachNIC(ctx context.Context, n domain.Network, opts DeviceOptions) (*DeviceResult, error) {
	const job = "attach-nic"
	unlock, err := h.begin(ctx, job, &opts)
	if err != nil {
		return nil, err
	}
	defer unlock()
	spec, err := h.persistent()
	if err != nil {
		return nil, err
	}
	if n.Type == "" {
		n.Type = netcfg.TypeUser
	}
	if opts.Live && n.Type != netcfg.TypeUser {
		return nil, fmt.Errorf("domain %q: %s: %w", h.name, job, &domain.FieldError{Field: "type",
			Problem: fmt.Sprintf("%q NICs cannot be hot-plugged, only %q ones; add it with --config for the next start", n.Type, netcfg.TypeUser)})
	}
	if n.MAC == "" {
		mac, err := h.freeMAC(ctx, spec)
		if err != nil {
			return nil, fmt.Errorf("domain %q: %s: %w", h.name, job, err)
		}
		n.MAC = mac
	}
	cand := spec.Clone()
	cand.Networks = append(cand.Networks, n)
	if err := h.checkCandidate(cand); err != nil {
		return nil, fmt.Errorf("domain %q: %s: %w", h.name, job, err)
	}
	res := &DeviceResult{}
	if opts.Live {
		fwds, err := cand.Forwards(len(cand.Networks) - 1)
		if err == nil {
			fwds, err = netcfg.ResolveForwards(fwds)
		}
		if err != nil {
			return nil, fmt.Errorf("domain %q: %s: %w", h.name, job, err)
		}
		resolved := make([]string, len(fwds))
		for i, f := range fwds {
			resolved[i] = f.String()
		}
		mac, _ := netcfg.ParseMAC("mac", n.MAC)
		v, err := h.job(ctx, job, func(r actors.Request) any { return vm.AttachNICJob(r, n.Type, mac.String(), resolved) })
		if err != nil {
			return nil, err
		}
		_, res.NIC, _ = vm.DeviceOf(v)
		res.Live = true
	}
	return h.finish(ctx, job, opts.Config, res, cand)
}

// DetachNIC detaches the NIC that target names: its MAC, or its index
// (in the running definition's NICs for Live, in the spec's networks for
// Config), or a running device id ("nic0", "hnic2"). The NICs left in the
// persistent definition keep their MACs (written into it). A live detach
// waits for DEVICE_DELETED as DetachDisk does.
func (h *Domain) DetachNIC(ctx context.Context, target string, opts DeviceOptions) (*DeviceResult, error) {
	const job = "detach-nic"
	if err := domain.ValidateName(h.name); err != nil {
		return nil, err
	}
	if err := checkTarget(target); err != nil {
		return nil, fmt.Errorf("domain %q: %s: %w", h.name, job, err)
	}
	unlock, err := h.begin(ctx, job, &opts)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var cand *domain.Spec
	if opts.Config {
		spec, err := h.persistent()
		if err != nil {
			return nil, err
		}
		spec.ApplyDefaults()
		cand = spec.Clone()
		found := -1
		for i := range cand.Networks {
			mac, err := cand.MAC(i)
			if err != nil {
				return nil, fmt.Errorf("domain %q: %s: %w", h.name, job, err)
			}
			cand.Networks[i].MAC = mac.String() // pinned: the indexes shift
			if strings.EqualFold(mac.String(), target) || strconv.Itoa(i) == target || "nic"+strconv.Itoa(i) == target {
				found = i
			}
		}
		if found < 0 {
			return nil, fmt.Errorf("domain %q: %s --config: target %q: no such NIC in the definition (%d networks): %w", h.name, job, target, len(spec.Networks), domain.ErrNoDevice)
		}
		cand.Networks = slices.Delete(cand.Networks, found, found+1)
	}
	res := &DeviceResult{}
	if opts.Live {
		ctx, cancel := detachContext(ctx, opts.Timeout)
		defer cancel()
		v, err := h.job(ctx, job, func(r actors.Request) any { return vm.DetachNICJob(r, target, opts.Timeout) })
		if err != nil {
			return nil, err
		}
		_, res.NIC, _ = vm.DeviceOf(v)
		res.Live = true
	}
	return h.finish(ctx, job, opts.Config, res, cand)
}

// begin starts a hot-plug change: it checks the domain's name, fills in
// the definitions the change applies to (resolve) and, for a Config
// change, takes the lock that allows one read-modify-define of the
// persistent definition at a time; the caller defers unlock.
func (h *Domain) begin(ctx context.Context, job string, opts *DeviceOptions) (unlock func(), err error) {
	if err := domain.ValidateName(h.name); err != nil {
		return nil, err
	}
	if err := h.resolve(ctx, job, opts); err != nil {
		return nil, err
	}
	if !opts.Config {
		return func() {}, nil
	}
	h.d.configMu.Lock()
	return h.d.configMu.Unlock, nil
}

// finish ends a change whose live part (if any) is in res: for a Config
// change it defines cand, the changed persistent definition.
func (h *Domain) finish(ctx context.Context, job string, config bool, res *DeviceResult, cand *domain.Spec) (*DeviceResult, error) {
	if config {
		if _, err := h.d.Define(ctx, cand); err != nil {
			return res, h.configFailed(job, res, err)
		}
		res.Config = true
	}
	return res, nil
}

func (h *Domain) configFailed(job string, res *DeviceResult, err error) error {
	if res.Live {
		return fmt.Errorf("domain %q: %s: the running QEMU changed, but the persistent definition did not: %w", h.name, job, err)
	}
	return err
}

// freeMAC returns a MAC derived from the domain's UUID that no NIC of the
// persistent or the running definition has.
func (h *Domain) freeMAC(ctx context.Context, spec *domain.Spec) (string, error) {
	id, err := uuid.Parse(spec.UUID)
	if err != nil {
		return "", &domain.FieldError{Field: "uuid", Problem: "must be a UUID"}
	}
	used := map[string]bool{}
	for i := range spec.Networks {
		if m, err := spec.MAC(i); err == nil {
			used[m.String()] = true
		}
	}
	if in, err := h.Info(ctx); err == nil && in.Live != nil {
		for _, n := range in.Live.NICs {
			used[strings.ToLower(n.MAC)] = true
		}
	}
	for i := 0; i < 1024; i++ {
		if m := netcfg.DeriveMAC(id, i).String(); !used[m] {
			return m, nil
		}
	}
	return "", errors.New("no free derived MAC; give one")
}

// maxTarget bounds a detach target (a node, device id, MAC, index or path).
const maxTarget = 4096

func checkTarget(target string) error {
	switch {
	case target == "":
		return &domain.FieldError{Field: "target", Problem: "is empty"}
	case len(target) > maxTarget:
		return &domain.FieldError{Field: "target", Problem: fmt.Sprintf("is longer than %d bytes", maxTarget)}
	case strings.ContainsRune(target, 0):
		return &domain.FieldError{Field: "target", Problem: "contains a NUL byte"}
	}
	return nil
}

// Definition returns a copy of the persistent definition, as written by
// the last define (or --config change).
func (h *Domain) Definition(ctx context.Context) (*domain.Spec, error) {
	if err := domain.ValidateName(h.name); err != nil {
		return nil, err
	}
	if err := h.d.checkOpen(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return h.persistent()
}

// detachContext gives a detach without a deadline of its own one that
// outlasts its wait for the guest (a job's default is 30 s).
func detachContext(ctx context.Context, wait time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	if wait <= 0 {
		wait = vm.DefaultDetachTimeout
	}
	return context.WithTimeout(ctx, wait+actors.DefaultTimeout)
}
