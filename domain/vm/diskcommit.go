package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/overlay"
)

// Deleting a disk-only snapshot of a running VM merges each of its
// overlays into the image under it with QEMU's block-commit, one disk
// at a time, as an async job (query, suspend, destroy and abort run
// beside it; vmsup job abort sends job-cancel):
//
//	check        → the record; query-named-block-nodes for the nodes of
//	               the overlay and of its backing image
//	block-commit → per disk: block-commit (auto-dismiss off), followed
//	               through JOB_STATUS_CHANGE and query-jobs (progress in
//	               bytes); an active commit (the overlay is the disk's
//	               top) is completed with job-complete once ready
//	record       → the records without the snapshot (the next overlay's
//	               Backing is the merged image), live.json, the overlays
//
// A disk whose commit concluded is recorded as merged however the job
// ends, so an abort or a failure on a later disk leaves the snapshot
// with the disks still to merge.

// diskCommit is one disk's block-commit.
type diskCommit struct {
	key, device, top, base string
	// baseFile is the base's file, written into the header of the image
	// above the top by an intermediate commit (QEMU would write the name
	// it knows the base by: an fd set's).
	baseFile string
	// active: the overlay is the disk's top (the commit is completed
	// with job-complete, and the disk's top becomes the base).
	active bool
	done   bool
}

func makeDiskCommitPlan() *plan {
	p := newPlan("snapshot-commit-disk", actors.JobAsync,
		step{Name: "check", Call: "query-named-block-nodes", Do: stepDiskCommitCheck},
		step{Name: "block-commit", Async: true, Do: stepDiskCommit},
		step{Name: "record", Do: func(_ context.Context, r run) error { return r.Data().recordCommits(r) }})
	p.Mask = actors.SnapshotAsyncMask
	p.Start = func(c actor.Context, j *job) error {
		dom := j.Data.dom
		if err := snapshotStart(true)(c, j); err != nil {
			return err
		}
		s := j.Data.snap
		s.disk = &diskSnap{}
		if dom.live != nil {
			s.disk.live = dom.live.Clone()
			s.disk.liveFile = filepath.Join(dom.paths.Dir, liveFileName)
		}
		return nil
	}
	p.End = ending(func(dom *domainActor, j *job, _ error) {
		dom.forgetQEMUJob(j)
		if ds := j.Data.snap.disk; ds != nil && ds.switched && ds.live != nil && dom.proc != nil {
			dom.live = ds.live
		}
	})
	return p
}

// stepDiskCommitCheck finds, for each disk of the snapshot, the disk's
// top node and the nodes of the overlay and of its backing image.
func stepDiskCommitCheck(ctx context.Context, r run) error {
	d := r.Data()
	s := d.snap
	what := fmt.Sprintf("domain %q: snapshot delete %q", d.domain, s.tag)
	if err := d.dismissStale(ctx, r, false); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	recs, i, err := completeDiskSnap(s.file, s.tag)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	snap := recs[i]
	blocks, err := d.queryBlock(ctx, r)
	if err != nil {
		return err
	}
	ret, err := d.qmp(ctx, r, "query-named-block-nodes", nil)
	if err != nil {
		return err
	}
	var nodes []struct {
		NodeName string `json:"node-name"`
		Drv      string `json:"drv"`
		File     string `json:"file"`
	}
	if err := json.Unmarshal(ret, &nodes); err != nil {
		return fmt.Errorf("%s: query-named-block-nodes: unexpected reply: %w", what, err)
	}
	files := make([]*string, len(nodes))
	for i := range nodes {
		files[i] = &nodes[i].File
	}
	if err := d.realFiles(ctx, r, files...); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	nodeOf := func(file string) string {
		for _, n := range nodes {
			if n.File == file && (n.Drv == overlay.FormatQCOW2 || n.Drv == overlay.FormatRaw) {
				return n.NodeName
			}
		}
		return ""
	}
	var commits []*diskCommit
	for _, k := range slices.Sorted(maps.Keys(snap.Overlays)) {
		c := &diskCommit{key: k, top: nodeOf(snap.Overlays[k]), base: nodeOf(snap.Backing[k]), baseFile: snap.Backing[k]}
		for _, b := range blocks {
			if diskKey(b.node) == k {
				c.device, c.active = b.node, b.file == snap.Overlays[k]
			}
		}
		if c.device == "" || c.top == "" || c.base == "" {
			return fmt.Errorf("%s: disk %s: QEMU has no node for its overlay %s on %s in the disk's chain: %w", what, k, snap.Overlays[k], snap.Backing[k], domain.ErrWrongState)
		}
		commits = append(commits, c)
	}
	s.disk.commits = commits
	r.Defer("record the disks already merged", func(jobErr error) error {
		if jobErr == nil {
			return nil
		}
		return d.recordCommits(r)
	})
	return nil
}

// stepDiskCommit runs the block-commit of each disk in turn.
func stepDiskCommit(ctx context.Context, r run) error {
	d := r.Data()
	s := d.snap
	for _, c := range s.disk.commits {
		what := fmt.Sprintf("domain %q: snapshot delete %q: disk %s: block-commit %s", d.domain, s.tag, c.key, s.qemuID)
		args := map[string]any{"job-id": s.qemuID, "device": c.device, "top-node": c.top, "base-node": c.base, "auto-dismiss": false}
		if !c.active {
			args["backing-file"] = c.baseFile
		}
		if err := d.hotQMP(ctx, r, "block-commit", args); err != nil {
			return err
		}
		if err := d.followQEMUJob(ctx, r, what, followOpts{phase: c.key, unit: "bytes", complete: true}); err != nil {
			return err
		}
		c.done = true
		if c.active {
			s.disk.switched = true
		}
		// A node made by blockdev-add or -blockdev outlives the commit
		// that took it out of the chain, holding its file and its
		// backing: delete it (and the command line's file node).
		if strings.HasPrefix(c.top, "disk") {
			nodes := []string{c.top}
			if c.top == diskKey(c.top) {
				nodes = append(nodes, c.top+"-file")
			}
			for _, n := range nodes {
				if err := d.undo(r, "blockdev-del", map[string]any{"node-name": n}); err != nil {
					return fmt.Errorf("%s: the overlay is merged, but: %w", what, err)
				}
			}
		}
	}
	return nil
}

// recordCommits writes the records without the merged disks of the
// snapshot (without the snapshot once all are), points the next
// snapshot of each merged disk at the image it was merged into, records
// the running definition, and removes the merged overlays.
func (d *jobData) recordCommits(r run) error {
	s := d.snap
	ds := s.disk
	recs, err := readSnapshots(s.file)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(recs, func(x domain.Snapshot) bool { return x.Name == s.tag })
	if i < 0 {
		return nil
	}
	snap := recs[i]
	var merged []string
	for _, c := range ds.commits {
		if !c.done {
			continue
		}
		o, b := snap.Overlays[c.key], snap.Backing[c.key]
		for j := i + 1; j < len(recs); j++ {
			if recs[j].IsDisk() && recs[j].Backing[c.key] == o {
				recs[j].Backing[c.key] = b
				break
			}
		}
		if c.active && ds.live != nil {
			if n, err := ds.live.FindDisk(c.key); err == nil {
				ds.live.Disks[n].Path = b
			}
		}
		delete(snap.Overlays, c.key)
		delete(snap.Backing, c.key)
		snap.Disks = slices.DeleteFunc(snap.Disks, func(k string) bool { return k == c.key })
		merged = append(merged, o)
	}
	if len(merged) == 0 {
		return nil
	}
	if len(snap.Overlays) == 0 {
		recs = slices.Delete(recs, i, i+1)
	} else {
		recs[i] = snap
	}
	if err := writeSnapshots(s.file, recs); err != nil {
		return fmt.Errorf("domain %q: snapshot delete %q: %w", d.domain, s.tag, err)
	}
	errs := []error{d.recordDiskLive()}
	for _, o := range merged {
		if err := os.Remove(o); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
