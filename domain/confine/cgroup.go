package confine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MemoryOverhead is what a QEMU may use beside its guest's RAM before its
// cgroup's memory.max stops it: QEMU's own heap, its device models and
// the page tables of the guest's memory.
const MemoryOverhead = 256 << 20

// MemoryLimit is the memory.max of a QEMU whose guest has ram bytes: the
// RAM, a quarter more for QEMU's own use, and MemoryOverhead.
func MemoryLimit(ram uint64) uint64 { return ram + ram/4 + MemoryOverhead }

// Cgroups is where vmsup makes a cgroup v2 per QEMU: a group named after
// the daemon under the daemon's own cgroup.
type Cgroups struct {
	// Dir is the parent of the QEMUs' cgroups.
	Dir string
	// Memory reports whether the memory controller is enabled for them;
	// when it is not, MemoryNote says why.
	Memory     bool
	MemoryNote string
}

var cgroupName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// DetectCgroups finds the cgroup v2 hierarchy, makes the group name under
// the daemon's own cgroup and enables the memory controller for its
// children when the host allows. It fails when there is no writable
// cgroup v2 (a cgroup v1 only host, a read-only /sys/fs/cgroup): the
// caller runs QEMU without one and says so.
func DetectCgroups(name string) (*Cgroups, error) {
	if !cgroupName.MatchString(name) {
		return nil, fmt.Errorf("cgroup name %q: not a plain name", name)
	}
	mount, err := cgroup2Mount()
	if err != nil {
		return nil, err
	}
	own, err := ownCgroup()
	if err != nil {
		return nil, err
	}
	parent := filepath.Join(mount, own)
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("cgroup v2 at %s is not writable: %w", parent, err)
	}
	g := &Cgroups{Dir: dir}
	g.Memory, g.MemoryNote = enableMemory(parent, dir)
	return g, nil
}

// enableMemory turns the memory controller on for dir's children. A
// cgroup has memory.max when its parent's subtree_control has "memory",
// which needs the controller in the parent's own cgroup.controllers: so
// parent's subtree_control first, then dir's.
func enableMemory(parent, dir string) (bool, string) {
	if !hasController(filepath.Join(parent, "cgroup.controllers"), "memory") {
		avail, _ := os.ReadFile(filepath.Join(parent, "cgroup.controllers"))
		return false, fmt.Sprintf("the memory controller is not available in cgroup v2 at %s (its controllers: %q; a hybrid host has it on cgroup v1)", parent, strings.TrimSpace(string(avail)))
	}
	for _, d := range []string{parent, dir} {
		if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+memory"), 0); err != nil {
			return false, fmt.Sprintf("cannot enable the memory controller below %s: %v", d, err)
		}
	}
	return true, ""
}

func hasController(file, name string) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	for _, c := range strings.Fields(string(b)) {
		if c == name {
			return true
		}
	}
	return false
}

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted: the
// unified /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - fstype source super
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted")
}

// ownCgroup is the daemon's cgroup v2 path ("0::/path" in /proc/self/cgroup).
func ownCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			if !strings.HasPrefix(p, "/") || strings.Contains(p, "..") {
				return "", fmt.Errorf("own cgroup %q: not an absolute path", p)
			}
			return p, nil
		}
	}
	return "", errors.New("the daemon is in no cgroup v2 (/proc/self/cgroup has no 0:: line)")
}

// Cgroup is the cgroup of one QEMU.
type Cgroup struct {
	// Path is its directory.
	Path string
	// MemoryMax is its memory.max; 0 when no limit could be set (see Note).
	MemoryMax uint64
	// Note says what could not be applied, empty when all was.
	Note string
	dir  *os.File
}

// New makes the cgroup of domain name (a stale one left by a crash is
// emptied and replaced) with memory.max = MemoryLimit(ram) when the memory
// controller is on. Start QEMU in it with FD (SysProcAttr.UseCgroupFD).
func (g *Cgroups) New(ctx context.Context, name string, ram uint64) (*Cgroup, error) {
	if !cgroupName.MatchString(name) {
		return nil, fmt.Errorf("cgroup of domain %q: not a plain name", name)
	}
	path := filepath.Join(g.Dir, name)
	if _, err := os.Stat(path); err == nil {
		stale := &Cgroup{Path: path}
		if err := stale.Remove(ctx); err != nil {
			return nil, fmt.Errorf("stale cgroup: %w", err)
		}
	}
	if err := os.Mkdir(path, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup of domain %q: %w", name, err)
	}
	c := &Cgroup{Path: path}
	if g.Memory {
		limit := MemoryLimit(ram)
		if err := os.WriteFile(filepath.Join(path, "memory.max"), []byte(strconv.FormatUint(limit, 10)), 0); err != nil {
			c.Note = fmt.Sprintf("memory.max not set: %v", err)
		} else {
			c.MemoryMax = limit
		}
	} else {
		c.Note = "no memory limit: " + g.MemoryNote
	}
	d, err := os.Open(path)
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("cgroup of domain %q: %w", name, err)
	}
	c.dir = d
	return c, nil
}

// FD is the cgroup directory's descriptor, for SysProcAttr.CgroupFD.
func (c *Cgroup) FD() int { return int(c.dir.Fd()) }

// Procs returns the pids in the cgroup.
func (c *Cgroup) Procs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(c.Path, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids, nil
}

// Remove kills what is left in the cgroup (cgroup.kill), waits until it
// is empty (bounded by ctx) and removes it.
func (c *Cgroup) Remove(ctx context.Context) error {
	if c.dir != nil {
		c.dir.Close()
		c.dir = nil
	}
	if pids, err := c.Procs(); err == nil && len(pids) > 0 {
		if err := os.WriteFile(filepath.Join(c.Path, "cgroup.kill"), []byte("1"), 0); err != nil {
			return fmt.Errorf("kill the processes of cgroup %s: %w", c.Path, err)
		}
	}
	for {
		err := os.Remove(c.Path)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("remove cgroup %s: %w", c.Path, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove cgroup %s: still busy: %w", c.Path, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Member reports whether pid is in the cgroup.
func (c *Cgroup) Member(pid int) (bool, error) {
	pids, err := c.Procs()
	if err != nil {
		return false, err
	}
	for _, p := range pids {
		if p == pid {
			return true, nil
		}
	}
	return false, nil
}

// Adopt returns the cgroup of domain name that a previous vmsup made, when
// pid (an adopted QEMU) is in it, so that it is removed once that QEMU
// exits.
func (g *Cgroups) Adopt(name string, pid int) (*Cgroup, error) {
	if !cgroupName.MatchString(name) {
		return nil, fmt.Errorf("cgroup of domain %q: not a plain name", name)
	}
	c := &Cgroup{Path: filepath.Join(g.Dir, name)}
	if in, err := c.Member(pid); err != nil || !in {
		return nil, fmt.Errorf("cgroup %s does not hold QEMU pid %d (%v)", c.Path, pid, err)
	}
	if b, err := os.ReadFile(filepath.Join(c.Path, "memory.max")); err == nil {
		c.MemoryMax, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	if c.MemoryMax == 0 {
		c.Note = "no memory limit"
		if !g.Memory {
			c.Note += ": " + g.MemoryNote
		}
	}
	d, err := os.Open(c.Path)
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", c.Path, err)
	}
	c.dir = d
	return c, nil
}
