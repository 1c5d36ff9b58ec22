package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/confine"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

// Confine is how a daemon run as root confines each QEMU it starts.
type Confine struct {
	// User is the unprivileged user QEMU runs as. Required.
	User *confine.User
	// Cgroups is where each QEMU gets its own cgroup; nil when cgroup v2
	// is not writable here (CgroupNote says why).
	Cgroups    *confine.Cgroups
	CgroupNote string
}

// prepare gives the QEMU user the files it must open (its run dir and
// what is in it, its overlays, its seed and their dir), checks that it may
// open the files the spec names, with an error naming the spec field, and
// makes the QEMU's cgroup. The cgroup is the caller's to remove.
func (c *Confine) prepare(ctx context.Context, spec *domain.Spec, paths qemuargs.RunPaths, host *qemuargs.Host) (*confine.Cgroup, error) {
	u := c.User
	if err := u.Own(paths.Dir); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(paths.Dir)
	if err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	for _, e := range entries {
		// What QEMU itself writes there (the serial log and sockets);
		// vmsup's own files it only reads or replaces by rename.
		if e.Type().IsRegular() || e.Type()&os.ModeSocket != 0 {
			if err := u.Own(filepath.Join(paths.Dir, e.Name())); err != nil {
				return nil, err
			}
		}
	}
	owned := map[string]bool{}
	own := func(path string) error {
		for _, p := range []string{filepath.Dir(path), path} {
			if !owned[p] {
				if err := u.Own(p); err != nil {
					return err
				}
				owned[p] = true
			}
		}
		return nil
	}
	check := func(field, path string, write bool) error {
		if err := u.CanOpen(path, write); err != nil {
			return &domain.FieldError{Field: field, Problem: err.Error()}
		}
		return nil
	}
	if spec.Kernel != "" {
		if err := check("kernel", spec.Kernel, false); err != nil {
			return nil, err
		}
	}
	if spec.Initrd != "" {
		if err := check("initrd", spec.Initrd, false); err != nil {
			return nil, err
		}
	}
	for i, d := range spec.Disks {
		switch {
		case d.Image != "":
			if host != nil && i < len(host.Disks) {
				if err := own(host.Disks[i]); err != nil {
					return nil, err
				}
			}
			if err := check(fmt.Sprintf("disks[%d].image", i), d.Image, false); err != nil {
				return nil, err
			}
		case d.Path != "":
			if err := check(fmt.Sprintf("disks[%d].path", i), d.Path, !d.ReadOnly); err != nil {
				return nil, err
			}
		}
	}
	if host != nil && host.Seed != "" {
		if err := own(host.Seed); err != nil {
			return nil, err
		}
	}
	if c.Cgroups == nil {
		return nil, nil
	}
	return c.Cgroups.New(ctx, spec.Name, spec.Memory.Bytes())
}
