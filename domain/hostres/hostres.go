// Package hostres makes and releases the host side of a domain: at define,
// the qcow2 overlays of its image disks and its cloud-init seed, in the
// state dir; at start, the host ports of its user-network forwards and the
// taps of its tap NICs; at QEMU's exit, it releases the taps again, and at
// driver start it removes the taps that a crash or a stopped daemon left.
//
// Nothing here runs in an actor's handler: Define runs in the goroutine of
// the driver's define job (so defines of one name are serialised), Acquire
// in the start job's, and qemu-img always runs with a deadline
// (overlay.QemuImg).
package hostres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/cloudinit"
	"github.com/vmsup/vmsup/domain/netcfg"
	"github.com/vmsup/vmsup/domain/overlay"
	"github.com/vmsup/vmsup/domain/qemuargs"
	"github.com/vmsup/vmsup/domain/tap"
)

// Config configures a Manager.
type Config struct {
	// StateDir is the driver's state dir; each domain's overlays and seed
	// go to StateDir/disks/NAME/.
	StateDir string
	// RunDir is the driver's run dir; a running domain's NICs are noted
	// in RunDir/NAME/nics.json, so that a restarted daemon shows them.
	RunDir string
	// QemuImg runs qemu-img (its Timeout bounds every run).
	QemuImg overlay.QemuImg
	// Logger receives what could not be released.
	Logger zerolog.Logger
	// TapOwner, when set, owns the taps made for tap NICs: the user a
	// root daemon runs QEMU as.
	TapOwner *tap.Owner
	// OpenUserData, when set, opens a cloud-init user_data_file for the
	// seed (under the host's image roots); nil opens it as named.
	OpenUserData func(path string) (*os.File, error)
}

// Manager makes and releases the host resources of every domain of one
// driver. It is safe for concurrent use.
type Manager struct {
	cfg Config

	mu      sync.Mutex
	domains map[string]*domainRes
}

// domainRes is one domain's runtime resources. Its lock serialises the
// domain's define, acquire and release, which are rare and short.
type domainRes struct {
	mu   sync.Mutex
	gen  uint64
	nics []domain.NIC
}

// New returns a Manager.
func New(cfg Config) *Manager {
	return &Manager{cfg: cfg, domains: map[string]*domainRes{}}
}

func (m *Manager) res(name string) *domainRes {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.domains[name]
	if !ok {
		r = &domainRes{}
		m.domains[name] = r
	}
	return r
}

// Dir returns the directory of the domain's overlays and seed.
func (m *Manager) Dir(name string) string { return filepath.Join(m.cfg.StateDir, "disks", name) }

// OverlayPath returns the overlay of disk i of the domain.
func (m *Manager) OverlayPath(name string, i int) string {
	return filepath.Join(m.Dir(name), "disk"+strconv.Itoa(i)+".qcow2")
}

// SeedPath returns the cloud-init seed image of the domain.
func (m *Manager) SeedPath(name string) string { return filepath.Join(m.Dir(name), "seed.iso") }

func (m *Manager) nicsFile(name string) string { return filepath.Join(m.cfg.RunDir, name, "nics.json") }

func fieldErr(field, format string, args ...any) error {
	return &domain.FieldError{Field: field, Problem: fmt.Sprintf(format, args...)}
}

// Define makes the files of spec's host side: for each image disk an
// overlay on its base, unless one exists (it keeps the guest's writes
// across redefines; it must be on the same base in the same format), and
// the cloud-init seed, rewritten only when its files changed (and removed
// when the spec has no cloud_init). Errors name the spec field.
func (m *Manager) Define(ctx context.Context, spec *domain.Spec) error {
	if err := domain.ValidateName(spec.Name); err != nil {
		return err
	}
	r := m.res(spec.Name)
	r.mu.Lock()
	defer r.mu.Unlock()
	dir := m.Dir(spec.Name)
	needDir := spec.CloudInit != nil
	for _, d := range spec.Disks {
		needDir = needDir || d.Image != ""
	}
	if needDir {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("domain %q: disk dir: %w", spec.Name, err)
		}
	}
	var errs []error
	for i, d := range spec.Disks {
		if d.Image == "" {
			continue
		}
		if err := m.defineOverlay(ctx, spec.Name, i, d); err != nil {
			errs = append(errs, err)
		}
	}
	if spec.CloudInit != nil {
		seed, err := cloudinit.RenderWith(spec.CloudInit, spec.UUID, m.cfg.OpenUserData)
		if err != nil {
			errs = append(errs, adopt(err))
		} else if _, err := cloudinit.WriteISO(m.SeedPath(spec.Name), seed); err != nil {
			errs = append(errs, fieldErr("cloud_init", "writing the seed image: %v", err))
		}
	} else if err := os.Remove(m.SeedPath(spec.Name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("domain %q: removing the old seed: %w", spec.Name, err))
	}
	return errors.Join(errs...)
}

func (m *Manager) defineOverlay(ctx context.Context, name string, i int, d domain.Disk) error {
	field := fmt.Sprintf("disks[%d].image", i)
	path := m.OverlayPath(name, i)
	if _, err := os.Lstat(path); err == nil {
		info, err := m.cfg.QemuImg.Info(ctx, path)
		if err != nil {
			return fieldErr(field, "the existing overlay %s: %v", path, err)
		}
		if info.Format != overlay.FormatQCOW2 || info.FullBackingFile != d.Image || info.BackingFormat != d.Format {
			return fieldErr(field, "the overlay %s that holds this disk's writes is on %q (%s), not %q (%s); undefine the domain to start from another base",
				path, info.FullBackingFile, info.BackingFormat, d.Image, d.Format)
		}
		if d.Size != 0 && info.VirtualSize != d.Size.Bytes() {
			return fieldErr(fmt.Sprintf("disks[%d].size", i), "the overlay %s has %d bytes, not %d; vmsup does not resize an existing overlay", path, info.VirtualSize, d.Size.Bytes())
		}
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fieldErr(field, "overlay %s: %v", path, err)
	}
	if _, err := m.cfg.QemuImg.Create(ctx, d.Image, d.Format, path, d.Size.Bytes()); err != nil {
		if errors.Is(err, overlay.ErrTooSmall) {
			return fieldErr(fmt.Sprintf("disks[%d].size", i), "%v", err)
		}
		return fieldErr(field, "%v", err)
	}
	return nil
}

// Undefine removes the domain's overlays and seed (never a base: Remove
// deletes regular files only, and never follows a link).
func (m *Manager) Undefine(name string) error {
	if err := domain.ValidateName(name); err != nil {
		return err
	}
	r := m.res(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	dir := m.Dir(name)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("domain %q: %w", name, err)
	}
	var errs []error
	for _, e := range entries {
		if err := overlay.Remove(filepath.Join(dir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("domain %q: %w", name, err))
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("domain %q: %w", name, err))
	}
	m.mu.Lock()
	delete(m.domains, name)
	m.mu.Unlock()
	return errors.Join(errs...)
}

// Acquire makes the host side of one start of spec, in the start job
// before QEMU is spawned: it checks that the overlays and the seed exist,
// resolves the forwards (host port 0 becomes a free port; a port in use
// is an error naming its field) and creates the taps on their bridges
// (root only), after removing any a crash left. release undoes it; call it
// once QEMU has exited, or when QEMU was never started. A later Acquire
// makes an earlier release do nothing.
func (m *Manager) Acquire(ctx context.Context, spec *domain.Spec) (host *qemuargs.Host, release func(), err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	id, err := uuid.Parse(spec.UUID)
	if err != nil {
		return nil, nil, fieldErr("uuid", "must be a UUID")
	}
	r := m.res(spec.Name)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	gen := r.gen
	r.nics = nil

	host = &qemuargs.Host{}
	var errs []error
	for i, d := range spec.Disks {
		if d.Image == "" {
			host.Disks = append(host.Disks, d.Path)
			continue
		}
		p := m.OverlayPath(spec.Name, i)
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, fieldErr(fmt.Sprintf("disks[%d].image", i), "no overlay at %s (%v); define the domain again to make it", p, err))
		}
		host.Disks = append(host.Disks, p)
	}
	if spec.CloudInit != nil {
		host.Seed = m.SeedPath(spec.Name)
		if _, err := os.Stat(host.Seed); err != nil {
			errs = append(errs, fieldErr("cloud_init", "no seed image at %s (%v); define the domain again to write it", host.Seed, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}

	// Every user network's forwards at once, so the picked ports differ.
	var all []netcfg.Forward
	owner := map[int]int{} // index in all → NIC
	for i, n := range spec.Networks {
		if n.Type != netcfg.TypeUser {
			continue
		}
		fw, err := spec.Forwards(i)
		if err != nil {
			return nil, nil, adopt(err)
		}
		for _, f := range fw {
			owner[len(all)] = i
			all = append(all, f)
		}
	}
	resolved, err := netcfg.ResolveForwards(all)
	if err != nil {
		return nil, nil, adopt(err)
	}

	var taps []string
	tag := netcfg.TapTag(id)
	undo := func() {
		for _, name := range taps {
			if err := tap.Delete(name, tag); err != nil {
				m.cfg.Logger.Error().Err(err).Str("domain", spec.Name).Str("tap", name).Msg("cannot remove tap")
			}
		}
	}
	nics := make([]domain.NIC, len(spec.Networks))
	host.NICs = make([]qemuargs.NIC, len(spec.Networks))
	staleDone := false
	for i, n := range spec.Networks {
		mac, err := spec.MAC(i)
		if err != nil {
			undo()
			return nil, nil, adopt(err)
		}
		host.NICs[i].MAC = mac
		nics[i] = domain.NIC{Index: i, Type: n.Type, MAC: mac.String()}
		switch n.Type {
		case netcfg.TypeUser:
			for j, f := range resolved {
				if owner[j] != i {
					continue
				}
				host.NICs[i].Forwards = append(host.NICs[i].Forwards, f)
				nics[i].Forwards = append(nics[i].Forwards, portForward(f))
			}
		case netcfg.TypeTap:
			if !staleDone {
				staleDone = true
				if _, err := tap.DeleteStale(netcfg.TapPrefix(id), tag); err != nil && !errors.Is(err, tap.ErrPermission) {
					m.cfg.Logger.Warn().Err(err).Str("domain", spec.Name).Msg("removing stale taps")
				}
			}
			name, err := netcfg.TapName(id, i)
			if err != nil {
				undo()
				return nil, nil, fieldErr(domain.NetworkField(i), "%v", err)
			}
			hostMAC := netcfg.HostTapMAC(mac)
			if _, err := tap.Create(tap.Config{Name: name, Bridge: n.Bridge, Tag: tag, MAC: hostMAC[:], Owner: m.cfg.TapOwner}); err != nil {
				undo()
				if errors.Is(err, tap.ErrPermission) {
					return nil, nil, fieldErr(domain.NetworkField(i)+".type", "a tap network needs root (CAP_NET_ADMIN): %v", err)
				}
				return nil, nil, fieldErr(domain.NetworkField(i)+".bridge", "creating tap %s on bridge %q: %v", name, n.Bridge, err)
			}
			taps = append(taps, name)
			host.NICs[i].Tap = name
			nics[i].Tap, nics[i].Bridge = name, n.Bridge
		}
	}
	r.nics = nics
	if len(nics) > 0 {
		if err := m.saveNICs(spec.Name, nics); err != nil {
			m.cfg.Logger.Warn().Err(err).Str("domain", spec.Name).Msg("cannot note the NICs in the run dir")
		}
	}
	var once sync.Once
	release = func() {
		once.Do(func() { m.release(spec.Name, gen, taps, tag) })
	}
	return host, release, nil
}

func (m *Manager) release(name string, gen uint64, taps []string, tag string) {
	r := m.res(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gen != gen {
		return // a later start owns the domain's resources now
	}
	for _, t := range taps {
		if err := tap.Delete(t, tag); err != nil {
			m.cfg.Logger.Error().Err(err).Str("domain", name).Str("tap", t).Msg("cannot remove tap")
		}
	}
	r.nics = nil
	if err := os.Remove(m.nicsFile(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		m.cfg.Logger.Warn().Err(err).Str("domain", name).Msg("cannot remove nics.json")
	}
}

// Recover is called when the driver opens, before the domain's actor
// runs. For a domain whose QEMU still runs (adopted) it reads the NICs
// noted at its start and returns the release to call when that QEMU
// exits. For any other domain it removes the taps that a crash or a
// stopped daemon left behind, and returns nil.
func (m *Manager) Recover(spec *domain.Spec, adopted bool) (release func()) {
	id, err := uuid.Parse(spec.UUID)
	if err != nil {
		return nil
	}
	tag := netcfg.TapTag(id)
	r := m.res(spec.Name)
	r.mu.Lock()
	defer r.mu.Unlock()
	if adopted {
		var nics []domain.NIC
		if b, err := os.ReadFile(m.nicsFile(spec.Name)); err == nil && json.Unmarshal(b, &nics) == nil {
			r.nics = nics
		}
		var taps []string
		for _, n := range r.nics {
			if n.Tap != "" {
				taps = append(taps, n.Tap)
			}
		}
		r.gen++
		gen := r.gen
		var once sync.Once
		return func() { once.Do(func() { m.release(spec.Name, gen, taps, tag) }) }
	}
	hasTap := false
	for _, n := range spec.Networks {
		hasTap = hasTap || n.Type == netcfg.TypeTap
	}
	if hasTap {
		removed, err := tap.DeleteStale(netcfg.TapPrefix(id), tag)
		if err != nil && !errors.Is(err, tap.ErrPermission) {
			m.cfg.Logger.Warn().Err(err).Str("domain", spec.Name).Msg("removing stale taps")
		}
		if len(removed) > 0 {
			m.cfg.Logger.Info().Str("domain", spec.Name).Strs("taps", removed).Msg("removed stale taps")
		}
	}
	_ = os.Remove(m.nicsFile(spec.Name))
	return nil
}

// NICs returns the NICs of the domain's running QEMU (nil when it is not
// running). The slice is shared: do not change it.
func (m *Manager) NICs(name string) []domain.NIC {
	m.mu.Lock()
	r, ok := m.domains[name]
	m.mu.Unlock()
	if !ok {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nics
}

// saveNICs writes nics to the run dir atomically.
func (m *Manager) saveNICs(name string, nics []domain.NIC) error {
	path := m.nicsFile(name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(nics)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func portForward(f netcfg.Forward) domain.PortForward {
	pf := domain.PortForward{Field: f.Field, Proto: f.Proto, HostPort: int(f.HostPort), GuestPort: int(f.GuestPort)}
	if f.HostAddr.IsValid() {
		pf.HostAddr = f.HostAddr.String()
	}
	if f.GuestAddr.IsValid() {
		pf.GuestAddr = f.GuestAddr.String()
	}
	return pf
}

// adopt turns the field errors of netcfg and cloudinit into
// *domain.FieldErrors.
func adopt(err error) error {
	var out []error
	var walk func(error)
	walk = func(e error) {
		switch x := e.(type) {
		case nil:
		case *netcfg.FieldError:
			out = append(out, &domain.FieldError{Field: x.Field, Problem: x.Problem})
		case *cloudinit.FieldError:
			out = append(out, &domain.FieldError{Field: x.Field, Problem: x.Problem})
		case interface{ Unwrap() []error }:
			for _, y := range x.Unwrap() {
				walk(y)
			}
		default:
			out = append(out, e)
		}
	}
	walk(err)
	return errors.Join(out...)
}
