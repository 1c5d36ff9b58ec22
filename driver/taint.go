package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/policy"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

// Taint is a use of raw QEMU (extra_args, raw QMP beyond the safe list)
// that the host's policy allowed: from then on vmsup cannot vouch for the
// domain's QEMU, as libvirt marks a domain "tainted". It lasts until the
// domain is undefined.
type Taint struct {
	// What was used: "extra_args" or "qmp COMMAND".
	What string `json:"what"`
	// First is when it was first used.
	First time.Time `json:"first"`
}

// taints keeps each domain's taints in memory and in
// <state>/taint/<name>.json (written atomically), so they survive restarts.
type taints struct {
	dir string
	mu  sync.Mutex
	m   map[string][]Taint
}

func loadTaints(stateDir string) (*taints, []error) {
	t := &taints{dir: filepath.Join(stateDir, "taint"), m: make(map[string][]Taint)}
	entries, err := os.ReadDir(t.dir)
	if errors.Is(err, os.ErrNotExist) {
		return t, nil
	}
	if err != nil {
		return t, []error{fmt.Errorf("read %s: %w", t.dir, err)}
	}
	var problems []error
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || domain.ValidateName(name) != nil || !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(t.dir, e.Name())
		data, err := readFileNoFollow(path)
		var list []Taint
		if err == nil {
			err = json.Unmarshal(data, &list)
		}
		if err != nil {
			// Keep what can be said: the domain is tainted, how is unknown.
			problems = append(problems, fmt.Errorf("taint record %s: %w", path, err))
			list = []Taint{{What: "unknown (unreadable taint record)"}}
		}
		t.m[name] = list
	}
	return t, problems
}

// add records a taint of name unless it is already recorded.
func (t *taints) add(name, what string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.m[name]
	if slices.ContainsFunc(list, func(x Taint) bool { return x.What == what }) {
		return nil
	}
	list = append(slices.Clone(list), Taint{What: what, First: time.Now().UTC()})
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return fmt.Errorf("taint dir: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(t.dir, name+".json"), append(data, '\n')); err != nil {
		return fmt.Errorf("record taint %q of domain %q: %w", what, name, err)
	}
	t.m[name] = list
	return nil
}

func (t *taints) get(name string) []Taint {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.m[name])
}

func (t *taints) remove(name string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, name)
	if err := os.Remove(filepath.Join(t.dir, name+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove taint record of %q: %w", name, err)
	}
	return nil
}

// Taints returns the taints of domain name (none when it is clean).
func (d *Driver) Taints(name string) []Taint { return d.taints.get(name) }

// Policy returns the host's policy (Config.Policy), nil when there is none.
func (d *Driver) Policy() *policy.Policy { return d.cfg.Policy }

// CheckDefine checks spec against Config.Policy, as Define does, and
// returns the taints it would bring.
func (d *Driver) CheckDefine(spec *domain.Spec) ([]policy.Taint, error) {
	if d.cfg.Policy == nil {
		return nil, nil
	}
	rp, err := qemuargs.NewRunPaths(d.cfg.RunDir, spec.Name)
	if err != nil {
		return nil, err
	}
	return d.cfg.Policy.CheckSpec(spec, rp)
}

// CheckQMP decides a raw QMP command for domain name under Config.Policy:
// an error (a *policy.Error) when it is refused; when only AllowRawQEMU
// allows it, the domain is tainted first (durably). Without a policy every
// command passes.
func (d *Driver) CheckQMP(name, command string) error {
	if d.cfg.Policy == nil {
		return nil
	}
	taint, err := d.cfg.Policy.CheckQMP(command)
	if err != nil {
		return fmt.Errorf("domain %q: %w", name, err)
	}
	if taint != nil {
		if _, ok := d.domains.get(name); !ok {
			return notFound(name)
		}
		if err := d.taints.add(name, taint.What); err != nil {
			return err
		}
		d.logger.Warn().Str("domain", name).Str("taint", taint.What).Msg("domain tainted: raw QMP allowed by --allow-raw-qemu")
	}
	return nil
}

// checkedLauncher refuses to start an emulator the policy does not allow,
// whatever the definition says (it may predate the policy).
func checkedLauncher(p *policy.Policy, launch process.Launcher) process.Launcher {
	if launch == nil {
		launch = process.LaunchQEMU
	}
	return func(l process.Launch) (*process.Process, error) {
		if err := p.CheckEmulator(l.Emulator); err != nil {
			return nil, err
		}
		return launch(l)
	}
}
