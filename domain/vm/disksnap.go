package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/agent"
	"github.com/vmsup/vmsup/domain/overlay"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

// Disk-only (external) snapshots: every writable disk's current image
// becomes the read-only backing file of a new qcow2 overlay in the state
// dir (SnapshotDir/NAME/SNAP.diskN.qcow2), which takes the writes from
// then on. On a running VM it is an async job of the lane:
//
//	check   → the disks (query-block), the "creating" record
//	freeze  → guest-fsfreeze-freeze, when the agent answers guest-ping
//	overlay → qemu-img create -u per disk, blockdev-add of each overlay,
//	          one transaction of blockdev-snapshot for all disks
//	thaw    → guest-fsfreeze-thaw (also a cleanup: it runs however the
//	          job ends once a freeze was sent)
//	record  → the record "complete", the running definition (live.json)
//
// The chain is kept in the snapshot records: a disk's top image is the
// overlay of its newest disk-only snapshot, and every start opens that
// top instead of the disk's file (chainHost), so that a VM restart and a
// daemon restart both use it; the spec keeps naming the chain's base.
// On a stopped VM only the overlays are made.

// diskSnapMask is what may run beside a disk-only snapshot: query,
// destroy and abort. Not suspend: a paused guest cannot answer the
// agent's freeze or thaw, and would stay frozen until the thaw's
// deadline.
const diskSnapMask = actors.DefaultAsyncMask

// diskSnap is a disk-only snapshot job's own data.
type diskSnap struct {
	// keys are the disks ("disk0", ...), in order; by key: the image the
	// overlay goes on, its format and size, the overlay, and (running)
	// the node that is the disk's top now and the overlay's new node.
	keys     []string
	backing  map[string]string
	format   map[string]string
	size     map[string]uint64
	overlays map[string]string
	top      map[string]string
	node     map[string]string

	made, added []string // overlay files made, nodes added
	switched    bool     // QEMU writes to the overlays now

	// frozen: a freeze was sent (so a thaw is due); freezeOK: it
	// succeeded, frozenFS filesystems.
	frozen, freezeOK, thawed bool
	frozenFS                 int
	freezeNote               string

	live     *domain.Live // the running definition after the job
	liveFile string

	// commits are the block-commits of a delete on a running VM
	// (diskcommit.go).
	commits []*diskCommit
}

func makeDiskSnapshotPlan(sp *snapshotPlans) {
	p := newPlan("snapshot-disk", actors.JobAsync,
		step{Name: "check", Call: "query-block", Do: stepDiskSnapCheck},
		step{Name: "freeze", Async: true, Do: stepDiskSnapFreeze},
		step{Name: "overlay", Call: "transaction", Do: stepDiskSnapOverlay},
		step{Name: "thaw", Do: stepDiskSnapThaw},
		step{Name: "record", Do: stepDiskSnapRecord})
	p.Mask = diskSnapMask
	p.Start = func(c actor.Context, j *job) error {
		dom := j.Data.dom
		if err := snapshotStart(false)(c, j); err != nil {
			return err
		}
		s := j.Data.snap
		s.disk = &diskSnap{}
		if s.running && dom.live != nil {
			s.disk.live = dom.live.Clone()
			s.disk.liveFile = filepath.Join(dom.paths.Dir, liveFileName)
		}
		return nil
	}
	p.End = ending(func(dom *domainActor, j *job, _ error) {
		if ds := j.Data.snap.disk; ds != nil && ds.switched && ds.live != nil && dom.proc != nil {
			dom.live = ds.live
		}
	})
	sp.createDisk = p
	sp.revertDisk = makeDiskRevertPlan()
	sp.deleteDisk = makeDiskDeletePlan()
	sp.commitDisk = makeDiskCommitPlan()
}

// overlayDir is where the disk-only overlays of the domain go.
func overlayDir(snapFile string) string { return strings.TrimSuffix(snapFile, ".json") }

// diskKey is the disk of a block node: "disk0" of "disk0" and of the
// overlay node "disk0-s12".
func diskKey(node string) string {
	k, _, _ := strings.Cut(node, "-")
	return k
}

// chainTops are the top images of the disks that have disk-only
// snapshots, by disk, from the records (the newest snapshot's overlay).
func chainTops(recs []domain.Snapshot) map[string]string {
	out := map[string]string{}
	for _, x := range recs {
		if !x.IsDisk() || x.State != domain.SnapshotComplete {
			continue
		}
		for k, o := range x.Overlays {
			out[k] = o
		}
	}
	return out
}

// chainBases are the bases of the disks' chains: each disk's Backing in
// its oldest disk-only snapshot.
func chainBases(recs []domain.Snapshot) map[string]string {
	out := map[string]string{}
	for _, x := range recs {
		if !x.IsDisk() || x.State != domain.SnapshotComplete {
			continue
		}
		for k, b := range x.Backing {
			if _, ok := out[k]; !ok {
				out[k] = b
			}
		}
	}
	return out
}

// applyChains makes host open the top of each disk's chain of disk-only
// snapshots instead of the disk's file, with the images under it in
// host.Under (nearest first, down to the disk's file), so that the start
// passes the whole chain and QEMU follows no name from an overlay's
// header. A chain whose base is not the disk's file (the spec changed
// meanwhile), or whose overlays do not stack, is an error: the overlays
// would be lost, or the base written under them.
func applyChains(file string, spec *domain.Spec, host *qemuargs.Host) (*qemuargs.Host, error) {
	if file == "" || host == nil {
		return host, nil
	}
	recs, err := readSnapshots(file)
	if err != nil {
		return nil, err
	}
	if len(chainTops(recs)) == 0 {
		return host, nil
	}
	h := *host
	host = &h
	host.Disks = slices.Clone(host.Disks)
	host.Under = make([][]string, len(spec.Disks))
	for i := range spec.Disks {
		k := qemuargs.DiskNode(i)
		if i >= len(host.Disks) {
			break
		}
		own := host.Disks[i]
		chain := []string{own} // oldest first: the disk's file, then the overlays
		for _, x := range recs {
			if !x.IsDisk() || x.State != domain.SnapshotComplete || x.Overlays[k] == "" {
				continue
			}
			if x.Backing[k] != chain[len(chain)-1] {
				if len(chain) == 1 {
					return nil, fmt.Errorf("disks[%d]: its disk-only snapshots are a chain on %s, but the disk is now %s; restore the disk, or remove the snapshot records", i, x.Backing[k], own)
				}
				return nil, fmt.Errorf("disks[%d]: disk-only snapshot %q has its overlay on %s, but the chain's top is %s: the records do not stack", i, x.Name, x.Backing[k], chain[len(chain)-1])
			}
			chain = append(chain, x.Overlays[k])
		}
		if len(chain) == 1 {
			continue
		}
		host.Disks[i] = chain[len(chain)-1]
		under := chain[:len(chain)-1]
		slices.Reverse(under)
		host.Under[i] = under
	}
	return host, nil
}

// stepDiskSnapCheck finds each writable disk's top image and writes the
// "creating" record with the overlays to come.
func stepDiskSnapCheck(ctx context.Context, r run) error {
	d := r.Data()
	s := d.snap
	ds := s.disk
	what := fmt.Sprintf("domain %q: disk-only snapshot %q", d.domain, s.tag)
	recs, err := readSnapshots(s.file)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if slices.ContainsFunc(recs, func(x domain.Snapshot) bool { return x.Name == s.tag }) {
		return fmt.Errorf("%s: a snapshot of that name exists: %w", what, domain.ErrWrongState)
	}
	// An internal snapshot's tags stay in the image that becomes the
	// backing file, where snapshot-load cannot reach them.
	if i := slices.IndexFunc(recs, func(x domain.Snapshot) bool { return !x.IsDisk() }); i >= 0 {
		return fmt.Errorf("%s: the domain has the internal snapshot %q, which a disk-only snapshot would make unreachable; delete it first: %w", what, recs[i].Name, domain.ErrWrongState)
	}
	ds.backing, ds.format, ds.size = map[string]string{}, map[string]string{}, map[string]uint64{}
	ds.overlays, ds.top, ds.node = map[string]string{}, map[string]string{}, map[string]string{}
	add := func(key, file, format string, size uint64) error {
		if format != overlay.FormatQCOW2 && format != overlay.FormatRaw {
			return fmt.Errorf("%s: disk %s is %s; an overlay goes on qcow2 or raw only: %w", what, key, format, domain.ErrWrongState)
		}
		if !filepath.IsAbs(file) || strings.HasPrefix(file, "/dev/fdset/") {
			return fmt.Errorf("%s: disk %s: its image %q is not a file vmsup can stack an overlay on: %w", what, key, file, domain.ErrWrongState)
		}
		ds.keys = append(ds.keys, key)
		ds.backing[key], ds.format[key], ds.size[key] = file, format, size
		ds.overlays[key] = filepath.Join(overlayDir(s.file), s.tag+"."+key+".qcow2")
		return nil
	}
	if s.running {
		blocks, err := d.queryBlock(ctx, r)
		if err != nil {
			return err
		}
		for _, b := range blocks {
			key := diskKey(b.node)
			if b.ro || !strings.HasPrefix(key, "disk") {
				continue
			}
			if err := add(key, b.file, b.drv, b.size); err != nil {
				return err
			}
			ds.top[key] = b.node
			// Unique across daemons: a daemon killed after blockdev-add
			// leaves the node behind.
			ds.node[key] = key + "-s" + strconv.FormatInt(time.Now().UnixNano(), 36)
		}
	} else {
		tops := chainTops(recs)
		for i, disk := range d.spec.Disks {
			key := qemuargs.DiskNode(i)
			file, ok := s.disks[key]
			if !ok {
				continue // read-only
			}
			format := disk.Format
			if disk.Image != "" {
				format = overlay.FormatQCOW2
			}
			if top, ok := tops[key]; ok {
				file, format = top, overlay.FormatQCOW2
			}
			info, err := s.img.Info(ctx, file)
			if err != nil {
				return fmt.Errorf("%s: disk %s: %w", what, key, err)
			}
			if err := add(key, file, info.Format, info.VirtualSize); err != nil {
				return err
			}
			if info.Format != format {
				return fmt.Errorf("%s: disk %s: %s is %s, the definition says %s: %w", what, key, file, info.Format, format, domain.ErrWrongState)
			}
		}
	}
	if len(ds.keys) == 0 {
		return fmt.Errorf("%s: the domain has no writable disk: %w", what, domain.ErrWrongState)
	}
	recs = append(recs, ds.record(s.tag, domain.SnapshotCreating, r.ID()))
	if err := writeSnapshots(s.file, recs); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	r.Defer("remove a disk-only snapshot that did not complete", func(jobErr error) error {
		if jobErr == nil {
			return nil
		}
		return d.undoDiskSnap(r)
	})
	return nil
}

// record is the snapshot's record in state.
func (ds *diskSnap) record(name, state string, job uint64) domain.Snapshot {
	return domain.Snapshot{Name: name, State: state, Kind: domain.SnapshotDisk, Created: time.Now().UTC(),
		Disks: slices.Clone(ds.keys), Job: job, Backing: ds.backing, Overlays: ds.overlays,
		Frozen: ds.freezeOK, FrozenFS: ds.frozenFS, FreezeNote: ds.freezeNote}
}

// undoDiskSnap settles a disk-only snapshot whose job failed: before the
// switch, the overlay nodes and files go, and the record; after it (QEMU
// writes to the overlays), the record is made complete, since the chain
// is in use whatever failed later.
func (d *jobData) undoDiskSnap(r run) error {
	s := d.snap
	ds := s.disk
	recs, err := readSnapshots(s.file)
	if err != nil {
		return err
	}
	if ds.switched {
		for i := range recs {
			if recs[i].Name == s.tag {
				recs[i] = ds.record(s.tag, domain.SnapshotComplete, r.ID())
			}
		}
		return errors.Join(writeSnapshots(s.file, recs), d.recordDiskLive())
	}
	var errs []error
	for _, node := range slices.Backward(ds.added) {
		errs = append(errs, d.undo(r, "blockdev-del", map[string]any{"node-name": node}))
	}
	for _, f := range ds.made {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove overlay: %w", err))
		}
	}
	errs = append(errs, writeSnapshots(s.file, slices.DeleteFunc(recs, func(x domain.Snapshot) bool { return x.Name == s.tag })))
	return errors.Join(errs...)
}

// stepDiskSnapFreeze freezes the guest's filesystems when the agent
// answers guest-ping. A missing or silent agent costs at most the ping's
// deadline; the snapshot then goes on unfrozen, and says so. The thaw is
// pushed as a cleanup before the freeze is sent: a freeze that timed out
// may still have frozen some filesystems.
func stepDiskSnapFreeze(ctx context.Context, r run) error {
	d := r.Data()
	ds := d.snap.disk
	switch {
	case !d.snap.running:
		ds.freezeNote = "the VM was not running"
	case d.agent == nil:
		ds.freezeNote = "no guest agent channel"
	default:
		r.Calling("guest-ping")
		pctx, cancel := context.WithTimeout(ctx, agent.Deadline("guest-ping"))
		_, err := d.agentCommand(pctx, r, "guest-ping", nil)
		cancel()
		if err != nil {
			ds.freezeNote = fmt.Sprintf("the guest agent did not answer guest-ping within %s: %v", agent.Deadline("guest-ping"), err)
			break
		}
		r.Defer("thaw the guest's filesystems", func(error) error { return d.thaw(r) })
		r.Calling("guest-fsfreeze-freeze")
		fctx, cancel := context.WithTimeout(ctx, agent.Deadline("guest-fsfreeze-freeze"))
		ret, err := d.agentCommand(fctx, r, "guest-fsfreeze-freeze", nil)
		cancel()
		ds.frozen = true // thaw whatever it froze, even on an error
		if err != nil {
			return fmt.Errorf("domain %q: disk-only snapshot %q: guest-fsfreeze-freeze: %w", d.domain, d.snap.tag, err)
		}
		if err := json.Unmarshal(ret, &ds.frozenFS); err != nil {
			return fmt.Errorf("domain %q: disk-only snapshot %q: guest-fsfreeze-freeze: unexpected reply %.80q", d.domain, d.snap.tag, ret)
		}
		ds.freezeOK = true
		r.Report(actors.Progress{Phase: "frozen", Current: uint64(max(ds.frozenFS, 0)), Unit: "filesystems"})
		return nil
	}
	r.Report(actors.Progress{Phase: "not frozen: " + ds.freezeNote})
	return nil
}

// thaw thaws the guest's filesystems, once, bounded by the thaw's own
// deadline whatever the job's context says (an aborted job still thaws).
func (d *jobData) thaw(r run) error {
	ds := d.snap.disk
	if !ds.frozen || ds.thawed {
		return nil
	}
	ds.thawed = true
	r.Calling("guest-fsfreeze-thaw")
	ctx, cancel := context.WithTimeout(context.Background(), agent.Deadline("guest-fsfreeze-thaw"))
	defer cancel()
	if _, err := d.agentCommand(ctx, r, "guest-fsfreeze-thaw", nil); err != nil {
		return fmt.Errorf("domain %q: disk-only snapshot %q: guest-fsfreeze-thaw: %w", d.domain, d.snap.tag, err)
	}
	return nil
}

// stepDiskSnapOverlay makes each overlay (qemu-img, bounded by its
// timeout) and, on a running VM, switches every disk to its overlay in
// one transaction: all or none.
func stepDiskSnapOverlay(ctx context.Context, r run) error {
	d := r.Data()
	s := d.snap
	ds := s.disk
	what := fmt.Sprintf("domain %q: disk-only snapshot %q", d.domain, s.tag)
	if err := os.MkdirAll(overlayDir(s.file), 0o700); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	r.Report(actors.Progress{Phase: "overlay", Total: uint64(len(ds.keys)), Unit: "disks"})
	for _, k := range ds.keys {
		if err := s.img.CreateOn(ctx, ds.backing[k], ds.format[k], ds.overlays[k], ds.size[k]); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s: disk %s: %w (%w: a file not made by this job is in the overlay's way; move it)", what, k, err, domain.ErrWrongState)
			}
			return fmt.Errorf("%s: disk %s: %w", what, k, err)
		}
		ds.made = append(ds.made, ds.overlays[k])
		if err := d.ownOverlay(ds.overlays[k]); err != nil {
			return fmt.Errorf("%s: disk %s: %w", what, k, err)
		}
	}
	if !s.running {
		return nil
	}
	var actions []map[string]any
	for _, k := range ds.keys {
		args := map[string]any{"driver": overlay.FormatQCOW2, "node-name": ds.node[k], "backing": nil, "discard": "unmap",
			"file": map[string]any{"driver": "file", "filename": ds.overlays[k], "discard": "unmap"}}
		// Counted before it is sent: a blockdev-add cut short (an abort,
		// a deadline) may still be done by QEMU, which runs the cleanup's
		// blockdev-del after it (QMP keeps the order).
		ds.added = append(ds.added, ds.node[k])
		if err := d.hotQMP(ctx, r, "blockdev-add", args); err != nil {
			return fmt.Errorf("%s: disk %s: %w", what, k, err)
		}
		actions = append(actions, map[string]any{"type": "blockdev-snapshot", "data": map[string]any{"node": ds.top[k], "overlay": ds.node[k]}})
	}
	if err := d.hotQMP(ctx, r, "transaction", map[string]any{"actions": actions}); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	ds.switched = true
	for _, k := range ds.keys {
		if i, err := ds.live.FindDisk(k); err == nil {
			ds.live.Disks[i].Path, ds.live.Disks[i].Format = ds.overlays[k], overlay.FormatQCOW2
		}
	}
	r.Report(actors.Progress{Phase: "overlay", Current: uint64(len(ds.keys)), Total: uint64(len(ds.keys)), Unit: "disks"})
	return nil
}

// stepDiskSnapThaw thaws the filesystems the freeze froze.
func stepDiskSnapThaw(_ context.Context, r run) error {
	d := r.Data()
	if err := d.thaw(r); err != nil {
		return err
	}
	if d.snap.disk.frozen {
		r.Report(actors.Progress{Phase: "thawed"})
	}
	return nil
}

// stepDiskSnapRecord marks the snapshot complete, with the freeze's
// outcome, and records the running definition with the new tops.
func stepDiskSnapRecord(_ context.Context, r run) error {
	d := r.Data()
	s := d.snap
	recs, err := readSnapshots(s.file)
	if err != nil {
		return err
	}
	for i := range recs {
		if recs[i].Name == s.tag {
			created := recs[i].Created
			recs[i] = s.disk.record(s.tag, domain.SnapshotComplete, r.ID())
			recs[i].Created = created
		}
	}
	if err := writeSnapshots(s.file, recs); err != nil {
		return fmt.Errorf("domain %q: disk-only snapshot %q: %w", d.domain, s.tag, err)
	}
	return d.recordDiskLive()
}

func (d *jobData) recordDiskLive() error {
	ds := d.snap.disk
	if !ds.switched || ds.live == nil || ds.liveFile == "" {
		return nil
	}
	if err := writeLive(ds.liveFile, ds.live); err != nil {
		return fmt.Errorf("domain %q: disk-only snapshot %q: the disks use the overlays, but recording them: %w", d.domain, d.snap.tag, err)
	}
	return nil
}

// findSnapshot is the record of the snapshot name, or nil.
func (dom *domainActor) findSnapshot(name string) *domain.Snapshot {
	f := dom.snapshotFile()
	if f == "" {
		return nil
	}
	recs, _ := readSnapshots(f)
	for i := range recs {
		if recs[i].Name == name {
			return &recs[i]
		}
	}
	return nil
}

// settleDisk settles, after a restart, the "creating" records of
// disk-only snapshots that a daemon killed in the middle left. On a
// running QEMU a record is complete when every disk's top is its
// overlay, and otherwise goes with its overlay files. On a stopped
// domain it is kept, complete, when all its overlays exist (the chain is
// sound either way: each overlay sits on the image that was the top),
// and goes otherwise.
func (d *jobData) settleDisk(ctx context.Context, r run, recs []domain.Snapshot) ([]domain.Snapshot, error) {
	if !slices.ContainsFunc(recs, func(x domain.Snapshot) bool { return x.IsDisk() && x.State == domain.SnapshotCreating }) {
		return recs, nil
	}
	tops := map[string]string{}
	if d.snap.running {
		blocks, err := d.queryBlock(ctx, r)
		if err != nil {
			return nil, err
		}
		for _, b := range blocks {
			tops[diskKey(b.node)] = b.file
		}
	}
	var out []domain.Snapshot
	for _, x := range recs {
		if !x.IsDisk() || x.State != domain.SnapshotCreating {
			out = append(out, x)
			continue
		}
		keep := len(x.Overlays) > 0
		for k, o := range x.Overlays {
			if d.snap.running {
				keep = keep && tops[k] == o
			} else if _, err := os.Stat(o); err != nil {
				keep = false
			}
		}
		if keep {
			x.State = domain.SnapshotComplete
			out = append(out, x)
			continue
		}
		for _, o := range x.Overlays {
			if err := os.Remove(o); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("domain %q: disk-only snapshot %q: %w", d.domain, x.Name, err)
			}
		}
	}
	if d.snap.running {
		d.thawLeftover(ctx, r)
	}
	return out, nil
}

// thawLeftover thaws the guest's filesystems after a daemon that died in
// the middle of a disk-only snapshot, which may have frozen them: with
// no guest-side timeout on Linux they would stay frozen. A thaw of a
// thawed guest does nothing; a guest whose agent does not answer
// guest-ping is left as it is.
func (d *jobData) thawLeftover(ctx context.Context, r run) {
	if d.agent == nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, agent.Deadline("guest-ping"))
	_, err := d.agentCommand(pctx, r, "guest-ping", nil)
	cancel()
	if err != nil {
		return
	}
	r.Calling("guest-fsfreeze-thaw")
	tctx, cancel := context.WithTimeout(ctx, agent.Deadline("guest-fsfreeze-thaw"))
	defer cancel()
	_, _ = d.agentCommand(tctx, r, "guest-fsfreeze-thaw", nil) // best effort: the records are settled either way
}

func makeDiskRevertPlan() *plan {
	return stoppedDiskPlan("snapshot-revert-disk", step{Name: "revert", Do: stepDiskSnapRevert},
		"snapshot revert %q: a disk-only snapshot is reverted on a stopped VM (stop it first)")
}

// stoppedDiskPlan is a modify plan of one step on the disk-only
// snapshots of a stopped domain; on a running one it fails with refusal
// (a format with the snapshot's name).
func stoppedDiskPlan(name string, only step, refusal string) *plan {
	p := newPlan(name, actors.JobModify, only)
	p.Start = func(c actor.Context, j *job) error {
		dom := j.Data.dom
		if dom.proc != nil {
			return fmt.Errorf("domain %q: %s: %w", dom.name(), fmt.Sprintf(refusal, j.Data.snap.tag), domain.ErrWrongState)
		}
		return snapshotStart(false)(c, j)
	}
	p.End = ending(nil)
	return p
}

// completeDiskSnap reads the records in file and finds the complete
// disk-only snapshot tag among them.
func completeDiskSnap(file, tag string) ([]domain.Snapshot, int, error) {
	recs, err := readSnapshots(file)
	if err != nil {
		return nil, -1, err
	}
	i := slices.IndexFunc(recs, func(x domain.Snapshot) bool { return x.Name == tag })
	if i < 0 || !recs[i].IsDisk() || recs[i].State != domain.SnapshotComplete {
		return nil, -1, fmt.Errorf("no complete disk-only snapshot of that name: %w", domain.ErrNoSnapshot)
	}
	return recs, i, nil
}

// stepDiskSnapRevert takes a stopped domain's disks back to the instant
// of a disk-only snapshot: the overlays of later disk-only snapshots go,
// with their records, and the snapshot's own overlays are made again,
// empty, on their backing images (so that the snapshot stays one to go
// back to).
func stepDiskSnapRevert(ctx context.Context, r run) error {
	d := r.Data()
	s := d.snap
	what := fmt.Sprintf("domain %q: snapshot revert %q", d.domain, s.tag)
	recs, i, err := completeDiskSnap(s.file, s.tag)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	snap := recs[i]
	var keep []domain.Snapshot
	var drop []string
	for j, x := range recs {
		if j > i && x.IsDisk() {
			for _, o := range x.Overlays {
				drop = append(drop, o)
			}
			continue
		}
		keep = append(keep, x)
	}
	// The records first: a revert cut short leaves overlays that no
	// record names, never a record whose overlay is gone.
	if err := writeSnapshots(s.file, keep); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	for _, o := range drop {
		if err := os.Remove(o); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	keys := make([]string, 0, len(snap.Overlays))
	for k := range snap.Overlays {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		o, b := snap.Overlays[k], snap.Backing[k]
		info, err := s.img.Info(ctx, o)
		if err != nil {
			return fmt.Errorf("%s: disk %s: %w", what, k, err)
		}
		bformat := info.BackingFormat
		fresh := o + ".revert"
		os.Remove(fresh)
		if err := s.img.CreateOn(ctx, b, bformat, fresh, info.VirtualSize); err != nil {
			return fmt.Errorf("%s: disk %s: %w", what, k, err)
		}
		if err := d.ownOverlay(fresh); err != nil {
			os.Remove(fresh)
			return fmt.Errorf("%s: disk %s: %w", what, k, err)
		}
		if err := os.Rename(fresh, o); err != nil {
			os.Remove(fresh)
			return fmt.Errorf("%s: disk %s: %w", what, k, err)
		}
	}
	return nil
}

// ownOverlay gives an overlay to the QEMU user of a confined domain,
// which opens and writes it. Its directory stays the daemon's (0711, so
// the QEMU user can reach the file): an escaped QEMU that owned it could
// put a symlink where the daemon's qemu-img later opens an overlay by
// name.
func (d *jobData) ownOverlay(path string) error {
	if d.conf == nil || d.conf.User == nil {
		return nil
	}
	dir := filepath.Dir(path)
	if err := os.Lchown(dir, os.Getuid(), os.Getgid()); err != nil { // an older vmsup gave it away
		return fmt.Errorf("overlay dir: %w", err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return fmt.Errorf("overlay dir: %w", err)
	}
	return d.conf.User.Own(path)
}

// RemoveSnapshotState removes what the snapshots of the undefined domain
// name left in dir (vm.Config.SnapshotDir): its records and the overlays
// of its disk-only snapshots whose chain base is gone (an image disk's
// overlay, which the host resources removed at undefine). The overlays
// of a chain whose base still exists (a path disk) stay, since they hold
// the writes made since the snapshot: keep reports them (qemu-img commit
// merges them into the disk).
func RemoveSnapshotState(dir, name string) (keep []string, err error) {
	if dir == "" {
		return nil, nil
	}
	file := filepath.Join(dir, name+".json")
	recs, err := readSnapshots(file)
	if err != nil {
		return nil, err
	}
	bases := chainBases(recs)
	var errs []error
	for _, x := range recs {
		if !x.IsDisk() {
			continue
		}
		for k, o := range x.Overlays {
			if _, err := os.Stat(bases[k]); err == nil {
				keep = append(keep, o)
				continue
			}
			if err := os.Remove(o); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if len(keep) == 0 {
		if err := os.Remove(overlayDir(file)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove the overlay dir: %w", err))
		}
	}
	if err := os.Remove(file); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	slices.Sort(keep)
	return keep, errors.Join(errs...)
}

func makeDiskDeletePlan() *plan {
	return stoppedDiskPlan("snapshot-delete-disk", step{Name: "commit", Do: stepDiskSnapDelete},
		"snapshot delete %q: a disk-only snapshot is deleted (its overlays merged with qemu-img commit) on a stopped VM only; stop it first")
}

// stepDiskSnapDelete deletes a disk-only snapshot of a stopped domain:
// the instant it kept (its Backing) is given up, so each overlay's data
// is committed into its backing image, the next disk-only snapshot's
// overlay (if any) is rebased onto that backing, the records are
// written without the snapshot, and then its overlays are removed. Each
// step leaves a chain that reads the same: the commit keeps the overlay
// (-d), and a removed overlay is named by no record or header.
func stepDiskSnapDelete(ctx context.Context, r run) error {
	d := r.Data()
	s := d.snap
	what := fmt.Sprintf("domain %q: snapshot delete %q", d.domain, s.tag)
	recs, i, err := completeDiskSnap(s.file, s.tag)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	snap := recs[i]
	keys := slices.Sorted(maps.Keys(snap.Overlays))
	r.Report(actors.Progress{Phase: "commit", Total: uint64(len(keys)), Unit: "disks"})
	for n, k := range keys {
		o, b := snap.Overlays[k], snap.Backing[k]
		info, err := s.img.Info(ctx, o)
		if err != nil {
			return fmt.Errorf("%s: disk %s: %w", what, k, err)
		}
		if info.BackingFile != b {
			return fmt.Errorf("%s: disk %s: overlay %s is on %q, the record says %q; not touching it: %w", what, k, o, info.BackingFile, b, domain.ErrWrongState)
		}
		if err := d.commitOverlay(ctx, s, k, o, b, info.BackingFormat); err != nil {
			return fmt.Errorf("%s: disk %s: %w", what, k, err)
		}
		for j := i + 1; j < len(recs); j++ {
			if next := recs[j]; next.IsDisk() && next.Backing[k] == o {
				if err := s.img.Rebase(ctx, next.Overlays[k], b, info.BackingFormat); err != nil {
					return fmt.Errorf("%s: disk %s: %w", what, k, err)
				}
				recs[j].Backing[k] = b
				break
			}
		}
		r.Report(actors.Progress{Phase: "commit", Current: uint64(n + 1), Total: uint64(len(keys)), Unit: "disks"})
	}
	if err := writeSnapshots(s.file, slices.Delete(recs, i, i+1)); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	for _, k := range keys {
		if err := os.Remove(snap.Overlays[k]); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	return nil
}

// commitOverlay commits the overlay o of disk k into its backing b, both
// opened by vmsup (b through the image root when it is the disk's own
// path), so that qemu-img writes into no file a name leads it to. The
// backing's format must be the one the disk's chain implies: the header
// that says it is one QEMU could write.
func (d *jobData) commitOverlay(ctx context.Context, s *snapOp, k, o, b, headerFormat string) error {
	i, err := strconv.Atoi(strings.TrimPrefix(k, "disk"))
	if err != nil || i < 0 || i >= len(d.spec.Disks) {
		return fmt.Errorf("no disk %s in the definition", k)
	}
	disk := d.spec.Disks[i]
	format, own := domain.DiskFormatQCOW2, true // an overlay of vmsup's
	if filepath.Dir(b) != overlayDir(s.file) && disk.Image == "" {
		format, own = diskFormat(disk), false // the disk's own path
	}
	if headerFormat != format {
		return fmt.Errorf("overlay %s says its backing %s is %s, the disk's chain says %s; not touching it: %w", o, b, headerFormat, format, domain.ErrWrongState)
	}
	over, err := openOwn(k+" snapshot overlay", o, false)
	if err != nil {
		return err
	}
	defer over.Close()
	var back *os.File
	if own {
		back, err = openOwn(k+" overlay", b, true)
	} else {
		open := d.openImage
		if open == nil {
			open = openPlain
		}
		back, err = open(fmt.Sprintf("disks[%d].path", i), b, true)
	}
	if err != nil {
		return err
	}
	defer back.Close()
	return s.img.Commit(ctx, o, over, back, format)
}
