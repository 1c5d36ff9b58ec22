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

// prepare gives the QEMU user its run dir and what is in it (the sockets
// and the serial log it writes, the copies of the kernel and initrd it
// reads) and makes the QEMU's cgroup. The disks, the bases and overlays of
// image disks and the seed are opened by vmsup and passed to QEMU as file
// descriptors (passFiles), so the QEMU user needs no access to them: they
// keep their owner and mode. The cgroup is the caller's to remove.
func (c *Confine) prepare(ctx context.Context, spec *domain.Spec, paths qemuargs.RunPaths) (*confine.Cgroup, error) {
	u := c.User
	if err := u.Own(paths.Dir); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(paths.Dir)
	if err != nil {
		return nil, fmt.Errorf("run dir: %w", err)
	}
	for _, e := range entries {
		// What QEMU itself writes or reads there (the serial log and
		// sockets, the kernel and initrd); vmsup's own files it only
		// reads or replaces by rename.
		if e.Type().IsRegular() || e.Type()&os.ModeSocket != 0 {
			if err := u.Own(filepath.Join(paths.Dir, e.Name())); err != nil {
				return nil, err
			}
		}
	}
	if c.Cgroups == nil {
		return nil, nil
	}
	return c.Cgroups.New(ctx, spec.Name, spec.Memory.Bytes())
}
