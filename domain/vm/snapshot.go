package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/internal/protocol"
	"github.com/vmsup/vmsup/domain/overlay"
	"github.com/vmsup/vmsup/domain/qemuargs"
	"github.com/vmsup/vmsup/internal/atomicfile"
	"github.com/vmsup/vmsup/monitor"
)

// Snapshots are QEMU's job-based internal snapshots (snapshot-save,
// snapshot-load, snapshot-delete) run as async jobs of the lane: a job
// checks the disks and sends the command while it holds the lane, then
// follows QEMU's job as the lane's async job, through JOB_STATUS_CHANGE
// events and query-jobs, while the jobs its mask allows run beside it.
// Each snapshot has a record in the state dir, written "creating" before
// QEMU starts and "complete" after; whatever is left half done (a failed
// or aborted save, a daemon killed in the middle) is settled against the
// tags that QEMU or qemu-img reports.

// snapshotJobPrefix starts the id of every QEMU job vmsup makes.
const snapshotJobPrefix = "vmsup-snap-"

// snapshotPollInterval is how often a snapshot job reads query-jobs for
// its progress between events.
const snapshotPollInterval = 500 * time.Millisecond

// snapshotJobTimeout bounds each query-jobs and job-dismiss of a snapshot
// job: QEMU 7.2 saves and loads the VM state in a bottom half of its main
// loop, so QMP answers only once that is done.
const snapshotJobTimeout = 2 * time.Minute

// vmstateNode is the disk that holds the VM state of a snapshot.
var vmstateNode = qemuargs.DiskNode(0)

type snapshotPlans struct {
	create, revert, del, list, reconcile, abort *plan
	// createDisk makes a disk-only snapshot; revertDisk goes back to one
	// and deleteDisk merges one away, on a stopped domain (disksnap.go).
	createDisk, revertDisk, deleteDisk, commitDisk *plan
}

// snapOp is a snapshot job's own data.
type snapOp struct {
	op   string // "create", "revert", "delete", "list", "reconcile"
	tag  string
	file string // the domain's snapshot records
	img  overlay.QemuImg
	// disks are the files of the writable disks of a stopped domain.
	disks map[string]string
	// running is whether QEMU ran when the job started; busy whether a
	// snapshot job was the lane's async job then (a list shows its
	// "creating" record as it is).
	running, busy bool

	qemuID  string
	events  chan string // JOB_STATUS_CHANGE statuses of qemuID
	devices []string
	list    []domain.Snapshot
	// disk is a disk-only snapshot job's own data (disksnap.go).
	disk *diskSnap
}

func makeSnapshotPlans(p *snapshotPlans) {
	wait := step{Name: "wait for QEMU job", Async: true, Do: stepSnapshotWait}
	p.create = newPlan("snapshot-save", actors.JobAsync,
		step{Name: "check", Call: "query-block", Do: stepSnapshotCheck},
		step{Name: "snapshot-save", Call: "snapshot-save", Do: stepSnapshotSend},
		wait,
		step{Name: "record", Do: stepSnapshotRecord})
	p.create.Mask = actors.SnapshotAsyncMask
	p.revert = newPlan("snapshot-load", actors.JobAsync,
		step{Name: "check", Call: "query-block", Do: stepSnapshotCheck},
		step{Name: "snapshot-load", Call: "snapshot-load", Do: stepSnapshotSend},
		wait)
	p.revert.Mask = actors.DefaultAsyncMask
	p.del = newPlan("snapshot-delete", actors.JobAsync,
		step{Name: "check", Call: "query-block", Do: stepSnapshotCheck},
		step{Name: "snapshot-delete", Call: "snapshot-delete", Do: stepSnapshotSend},
		wait,
		step{Name: "record", Do: stepSnapshotRecord})
	p.del.Mask = actors.SnapshotAsyncMask
	for _, sp := range []*plan{p.create, p.revert, p.del} {
		sp.Start = snapshotStart(true)
		sp.End = ending(func(dom *domainActor, j *job, _ error) { dom.forgetQEMUJob(j) })
	}
	p.list = newPlan("snapshot-list", actors.JobQuery, step{Name: "list", Do: stepSnapshotList})
	p.list.Start = snapshotStart(false)
	p.list.End = ending(nil)
	p.reconcile = newPlan("snapshot-reconcile", actors.JobModify, step{Name: "reconcile", Do: stepSnapshotReconcile})
	p.reconcile.Start = snapshotStart(false)
	p.reconcile.End = ending(nil)
	p.abort = newPlan("abort", actors.JobAbort, step{Name: "job-cancel", Call: "job-cancel", Do: func(ctx context.Context, r run) error {
		d := r.Data()
		_, err := d.qmp(ctx, r, d.execute, d.args)
		return err
	}})
	p.abort.End = ending(nil)
	makeDiskSnapshotPlan(p)
}

// snapshotFile is where the domain's snapshot records live.
func (dom *domainActor) snapshotFile() string {
	if dom.cfg.SnapshotDir == "" {
		return ""
	}
	if dom.snapFile == "" {
		dom.snapFile = filepath.Join(dom.cfg.SnapshotDir, dom.name()+".json")
	}
	return dom.snapFile
}

// snapshotStart is the Start of the snapshot plans: QEMU must run for
// the jobs that change snapshots; list and reconcile also work on a
// stopped domain, from its disk files.
func snapshotStart(needRunning bool) func(actor.Context, *job) error {
	return func(c actor.Context, j *job) error {
		dom := j.Data.dom
		d := j.Data
		s := d.snap
		if needRunning {
			if err := dom.runningPrecondition(c, j); err != nil {
				return err
			}
		} else {
			dom.load(j)
		}
		s.file, s.img = dom.snapshotFile(), dom.cfg.QemuImg
		if s.file == "" {
			return fmt.Errorf("domain %q: %s: snapshots need a state dir (vm.Config.SnapshotDir)", dom.name(), j.Name())
		}
		s.running = dom.proc != nil && dom.mon != nil
		if a := dom.lane.Async(); a != nil && a.Data.snap != nil {
			s.busy = true
		}
		if !s.running {
			s.disks = dom.diskFiles()
			if j.Plan() != dom.snap.createDisk {
				s.disks = dom.chainFiles()
			}
		}
		if needRunning {
			s.qemuID = snapshotJobPrefix + strconv.FormatUint(j.ID(), 10) + "-" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
			s.events = make(chan string, 16)
			if dom.qemuJobs == nil {
				dom.qemuJobs = map[string]chan string{}
			}
			dom.qemuJobs[s.qemuID] = s.events
		}
		return nil
	}
}

// diskFiles are the files of the domain's writable disks, by node name.
func (dom *domainActor) diskFiles() map[string]string {
	out := map[string]string{}
	overlays, _ := dom.cfg.Host.(interface {
		OverlayPath(name string, i int) string
	})
	for i, disk := range dom.spec.Disks {
		switch {
		case disk.ReadOnly:
		case disk.Image != "" && overlays != nil:
			out[qemuargs.DiskNode(i)] = overlays.OverlayPath(dom.name(), i)
		case disk.Path != "":
			out[qemuargs.DiskNode(i)] = disk.Path
		}
	}
	return out
}

// chainFiles are diskFiles with each disk that has disk-only snapshots
// at the top of its chain: the image a start opens.
func (dom *domainActor) chainFiles() map[string]string {
	out := dom.diskFiles()
	if f := dom.snapshotFile(); f != "" {
		recs, _ := readSnapshots(f)
		for k, top := range chainTops(recs) {
			if _, ok := out[k]; ok {
				out[k] = top
			}
		}
	}
	return out
}

func (dom *domainActor) forgetQEMUJob(j *job) {
	if s := j.Data.snap; s != nil && s.qemuID != "" {
		delete(dom.qemuJobs, s.qemuID)
	}
}

// onJobStatus hands a JOB_STATUS_CHANGE event to the snapshot job that
// follows that QEMU job. It never blocks: the job also polls.
func (dom *domainActor) onJobStatus(ev *monitor.Event) {
	id, _ := ev.Data["id"].(string)
	status, _ := ev.Data["status"].(string)
	if ch := dom.qemuJobs[id]; ch != nil {
		select {
		case ch <- status:
		default:
		}
	}
}

// onSnapshot queues the job of a snapshot request.
func (dom *domainActor) onSnapshot(c actor.Context, msg *protocol.SnapshotRequest) {
	var p *plan
	switch msg.Op {
	case "create":
		p = dom.snap.create
	case "revert":
		p = dom.snap.revert
	case "delete":
		p = dom.snap.del
	case "list":
		p = dom.snap.list
	case "create-disk":
		p = dom.snap.createDisk
	default:
		c.Respond(fmt.Errorf("domain %q: snapshot: unknown operation %q (want create, revert, delete or list)", dom.name(), msg.Op))
		return
	}
	if msg.Op != "list" {
		if err := domain.ValidateSnapshotName(msg.Name); err != nil {
			c.Respond(fmt.Errorf("domain %q: snapshot %s: %w", dom.name(), msg.Op, err))
			return
		}
	}
	if msg.Op == "revert" || msg.Op == "delete" {
		if x := dom.findSnapshot(msg.Name); x != nil && x.IsDisk() {
			p = dom.snap.revertDisk
			if msg.Op == "delete" {
				p = dom.snap.deleteDisk
				if dom.proc != nil {
					p = dom.snap.commitDisk
				}
			}
		}
	}
	dom.enqueue(c, p, msg.Request, &jobData{snap: &snapOp{op: msg.Op, tag: msg.Name}})
}

// enqueueSnapshotReconcile queues the job that settles what a daemon
// killed in the middle of a snapshot left: QEMU jobs of vmsup that no job
// follows any more, and records that do not match the disks' tags.
func (dom *domainActor) enqueueSnapshotReconcile(c actor.Context) {
	if dom.snapshotFile() == "" || dom.undefining {
		return
	}
	req := actors.Request{RequestID: actors.NewID(), Owner: "vmsup reconcile"}
	dom.lane.Enqueue(c, dom.snap.reconcile, req, dom.traced(c, &jobData{snap: &snapOp{op: "reconcile"}}), actors.Waiter{})
}

// abortJob asks the async job to stop: a QEMU job is cancelled with
// job-cancel by an abort job (its kind is in every async mask); a job
// that waits on nothing of QEMU's (a shutdown's wait) is cancelled.
func (dom *domainActor) abortJob(c actor.Context, msg *protocol.AbortJobRequest) {
	a := dom.lane.Async()
	if a == nil {
		if act := dom.lane.Active(); act != nil && act.Kind() == actors.JobAsync {
			a = act
		}
	}
	if a == nil {
		c.Respond(fmt.Errorf("domain %q: abort: no async job runs: %w", dom.name(), domain.ErrWrongState))
		return
	}
	if s := a.Data.snap; s != nil && s.qemuID != "" && dom.lane.Async() == a {
		args, _ := json.Marshal(map[string]string{"id": s.qemuID})
		dom.enqueue(c, dom.snap.abort, msg.Request, &jobData{execute: "job-cancel", args: args})
		return
	}
	owner := msg.Owner
	if owner == "" {
		owner = "api abort"
	}
	dom.lane.Cancel(c, a, fmt.Errorf("domain %q: job %d %q aborted (%s)", dom.name(), a.ID(), a.Name(), owner))
	c.Respond(&protocol.JobDone{Job: jobInfo(a.Info())})
}

// blockNode is what query-block says of one disk.
type blockNode struct {
	node, drv string
	ro        bool
	tags      []string
	// file is the top image's file, size its virtual size.
	file string
	size uint64
}

// queryBlock reads the disks and their snapshot tags from QEMU.
func (d *jobData) queryBlock(ctx context.Context, r run) ([]blockNode, error) {
	ret, err := d.qmp(ctx, r, "query-block", nil)
	if err != nil {
		return nil, err
	}
	var devs []struct {
		Inserted *struct {
			NodeName string `json:"node-name"`
			Drv      string `json:"drv"`
			RO       bool   `json:"ro"`
			File     string `json:"file"`
			Image    struct {
				VirtualSize uint64 `json:"virtual-size"`
				Snapshots   []struct {
					Name string `json:"name"`
				} `json:"snapshots"`
			} `json:"image"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(ret, &devs); err != nil {
		return nil, fmt.Errorf("domain %q: query-block: unexpected reply: %w", d.domain, err)
	}
	var out []blockNode
	for _, dev := range devs {
		in := dev.Inserted
		if in == nil || !strings.HasPrefix(in.NodeName, "disk") {
			continue // an empty drive, the seed
		}
		b := blockNode{node: in.NodeName, drv: in.Drv, ro: in.RO, file: in.File, size: in.Image.VirtualSize}
		for _, s := range in.Image.Snapshots {
			b.tags = append(b.tags, s.Name)
		}
		out = append(out, b)
	}
	files := make([]*string, len(out))
	for i := range out {
		files[i] = &out[i].file
	}
	if err := d.realFiles(ctx, r, files...); err != nil {
		return nil, err
	}
	return out, nil
}

// stepSnapshotCheck checks the disks for the operation, settles what an
// earlier job left, and writes the "creating" record of a new snapshot.
func stepSnapshotCheck(ctx context.Context, r run) error {
	d := r.Data()
	s := d.snap
	what := fmt.Sprintf("domain %q: snapshot %s %q", d.domain, s.op, s.tag)
	if err := d.dismissStale(ctx, r, false); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	blocks, err := d.queryBlock(ctx, r)
	if err != nil {
		return err
	}
	var writable []blockNode
	for _, b := range blocks {
		if !b.ro {
			writable = append(writable, b)
		}
	}
	if slices.ContainsFunc(writable, func(b blockNode) bool { return b.node != diskKey(b.node) }) {
		return fmt.Errorf("%s: this QEMU's disks are on disk-only snapshot overlays; internal snapshots work again after a restart of the VM: %w", what, domain.ErrWrongState)
	}
	if len(writable) == 0 || writable[0].node != vmstateNode {
		return fmt.Errorf("%s: the VM state goes to the first disk (%s), which must be a writable qcow2 disk: %w", what, vmstateNode, domain.ErrWrongState)
	}
	s.devices = s.devices[:0]
	switch s.op {
	case "create":
		for _, b := range writable {
			if b.drv != overlay.FormatQCOW2 {
				return fmt.Errorf("%s: disk %s is %s; a snapshot needs every writable disk in qcow2 (use an image disk, whose overlay is qcow2, or a qcow2 path disk): %w", what, b.node, b.drv, domain.ErrWrongState)
			}
			if slices.Contains(b.tags, s.tag) {
				return fmt.Errorf("%s: disk %s already has a snapshot of that name: %w", what, b.node, domain.ErrWrongState)
			}
			s.devices = append(s.devices, b.node)
		}
		return d.recordCreating(r, what)
	case "revert":
		for _, b := range writable {
			if !slices.Contains(b.tags, s.tag) {
				return fmt.Errorf("%s: disk %s has no snapshot of that name: %w", what, b.node, domain.ErrNoSnapshot)
			}
			s.devices = append(s.devices, b.node)
		}
	case "delete":
		for _, b := range writable {
			if slices.Contains(b.tags, s.tag) {
				s.devices = append(s.devices, b.node)
			}
		}
		if len(s.devices) == 0 {
			recs, err := readSnapshots(s.file)
			if err == nil && slices.ContainsFunc(recs, func(x domain.Snapshot) bool { return x.Name == s.tag }) {
				// A record without tags: only the record goes.
				return writeSnapshots(s.file, slices.DeleteFunc(recs, func(x domain.Snapshot) bool { return x.Name == s.tag }))
			}
			return fmt.Errorf("%s: no disk has a snapshot of that name: %w", what, domain.ErrNoSnapshot)
		}
	}
	return nil
}

// recordCreating writes the record of the new snapshot as "creating" and
// pushes the cleanup that leaves no half snapshot when the job fails.
func (d *jobData) recordCreating(r run, what string) error {
	s := d.snap
	recs, err := readSnapshots(s.file)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	recs = slices.DeleteFunc(recs, func(x domain.Snapshot) bool { return x.Name == s.tag })
	recs = append(recs, domain.Snapshot{Name: s.tag, State: domain.SnapshotCreating, Created: time.Now().UTC(),
		VMState: vmstateNode, Disks: slices.Clone(s.devices), Job: r.ID()})
	if err := writeSnapshots(s.file, recs); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	r.Defer("remove a snapshot that did not complete", func(jobErr error) error {
		if jobErr == nil {
			return nil
		}
		return d.undoCreate(r)
	})
	return nil
}

// undoCreate removes what a failed or aborted create left: the QEMU job,
// the tag on every disk that has it, and the record. With QEMU gone, the
// record stays "creating" and the next look settles it.
func (d *jobData) undoCreate(r run) error {
	s := d.snap
	if d.proc == nil || d.proc.Gone() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*snapshotJobTimeout)
	defer cancel()
	if err := d.dismissStale(ctx, r, true); err != nil {
		return err
	}
	blocks, err := d.queryBlock(ctx, r)
	if err != nil {
		return err
	}
	if slices.ContainsFunc(blocks, func(b blockNode) bool { return slices.Contains(b.tags, s.tag) }) {
		// delvm removes the tag from every disk that has it, at once.
		args, _ := json.Marshal(map[string]string{"command-line": "delvm " + s.tag})
		if _, err := d.qmp(ctx, r, "human-monitor-command", args); err != nil {
			return err
		}
	}
	recs, err := readSnapshots(s.file)
	if err != nil {
		return err
	}
	return writeSnapshots(s.file, slices.DeleteFunc(recs, func(x domain.Snapshot) bool { return x.Name == s.tag }))
}

// stepSnapshotSend sends snapshot-save, snapshot-load or snapshot-delete.
func stepSnapshotSend(ctx context.Context, r run) error {
	d := r.Data()
	s := d.snap
	args := map[string]any{"job-id": s.qemuID, "tag": s.tag, "devices": s.devices}
	execute := "snapshot-delete"
	switch s.op {
	case "create":
		execute, args["vmstate"] = "snapshot-save", vmstateNode
	case "revert":
		execute, args["vmstate"] = "snapshot-load", vmstateNode
	}
	raw, err := json.Marshal(args)
	if err != nil {
		return err
	}
	_, err = d.qmp(ctx, r, execute, raw)
	return err
}

// qemuJob is one entry of query-jobs.
type qemuJob struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Status   string `json:"status"`
	Current  uint64 `json:"current-progress"`
	Total    uint64 `json:"total-progress"`
	ErrorMsg string `json:"error"`
}

func (d *jobData) queryJobs(ctx context.Context, r run) ([]qemuJob, error) {
	ret, err := d.longQMP(ctx, r, "query-jobs", nil)
	if err != nil {
		return nil, err
	}
	var jobs []qemuJob
	if err := json.Unmarshal(ret, &jobs); err != nil {
		return nil, fmt.Errorf("domain %q: query-jobs: unexpected reply: %w", d.domain, err)
	}
	return jobs, nil
}

// longQMP runs a command that QEMU answers only after a snapshot's
// main-loop work, with a deadline to match.
func (d *jobData) longQMP(ctx context.Context, r run, execute string, args json.RawMessage) (json.RawMessage, error) {
	if d.link == nil {
		return nil, fmt.Errorf("domain %q: %w", d.domain, domain.ErrNotRunning)
	}
	ret, err := d.link.Run(ctx, monitor.Call{Command: monitor.Command{Execute: execute, Arguments: args}, Req: r.Header(), JobID: r.ID(), Timeout: snapshotJobTimeout})
	return ret, d.failed(ctx, r, err)
}

// stepSnapshotWait follows the QEMU job to its end, as the lane's async
// job: each JOB_STATUS_CHANGE event (and a poll between them) reads
// query-jobs for the status, the progress and, at the end, the error;
// then the job is dismissed.
func stepSnapshotWait(ctx context.Context, r run) error {
	d := r.Data()
	s := d.snap
	what := fmt.Sprintf("domain %q: snapshot %s %q: QEMU job %s", d.domain, s.op, s.tag, s.qemuID)
	return d.followQEMUJob(ctx, r, what, followOpts{unit: "steps"})
}

// followOpts says how followQEMUJob shows and drives a QEMU job.
type followOpts struct {
	phase string // put before QEMU's status in the progress ("" for none)
	unit  string // the progress's unit
	// complete sends job-complete when the job is ready (an active
	// block-commit).
	complete bool
}

// followQEMUJob follows the snapshot job's QEMU job to its end: each
// JOB_STATUS_CHANGE event (and a poll between them) reads query-jobs for
// the status, the progress and, at the end, the error; job-complete once
// it is ready when o.complete, then job-dismiss once it has concluded.
// Errors start with what.
func (d *jobData) followQEMUJob(ctx context.Context, r run, what string, o followOpts) error {
	s := d.snap
	poll := time.NewTicker(snapshotPollInterval)
	defer poll.Stop()
	completed := false
	for {
		jobs, err := d.queryJobs(ctx, r)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(jobs, func(j qemuJob) bool { return j.ID == s.qemuID })
		if i < 0 {
			return fmt.Errorf("%s: gone from query-jobs before it concluded", what)
		}
		qj := jobs[i]
		phase := qj.Status
		if o.phase != "" {
			phase = o.phase + " " + qj.Status
		}
		r.Report(actors.Progress{Phase: phase, Current: qj.Current, Total: qj.Total, Unit: o.unit})
		switch {
		case qj.Status == "ready" && o.complete && !completed:
			args, _ := json.Marshal(map[string]string{"id": s.qemuID})
			if _, err := d.longQMP(ctx, r, "job-complete", args); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			completed = true
		case qj.Status == "concluded":
			args, _ := json.Marshal(map[string]string{"id": s.qemuID})
			if _, err := d.longQMP(ctx, r, "job-dismiss", args); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			if qj.ErrorMsg != "" {
				return fmt.Errorf("%s: %s", what, qj.ErrorMsg)
			}
			return nil
		}
		select {
		case <-s.events:
		case <-poll.C:
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, context.Cause(ctx))
		}
	}
}

// stepSnapshotRecord marks a new snapshot complete, or drops the record
// of a deleted one.
func stepSnapshotRecord(_ context.Context, r run) error {
	s := r.Data().snap
	recs, err := readSnapshots(s.file)
	if err != nil {
		return err
	}
	switch s.op {
	case "create":
		for i := range recs {
			if recs[i].Name == s.tag {
				recs[i].State = domain.SnapshotComplete
			}
		}
	case "delete":
		recs = slices.DeleteFunc(recs, func(x domain.Snapshot) bool { return x.Name == s.tag })
	}
	return writeSnapshots(s.file, recs)
}

// dismissStale dismisses the concluded QEMU jobs of vmsup that no job
// follows (a daemon killed in the middle of a snapshot), and, with
// cancel, cancels and waits for a running one first. A running one
// without cancel is an error: it still works on the disks.
func (d *jobData) dismissStale(ctx context.Context, r run, cancel bool) error {
	deadline := time.Now().Add(snapshotJobTimeout)
	poll := time.NewTicker(snapshotPollInterval)
	defer poll.Stop()
	for {
		jobs, err := d.queryJobs(ctx, r)
		if err != nil {
			return err
		}
		pending := ""
		for _, qj := range jobs {
			if !strings.HasPrefix(qj.ID, snapshotJobPrefix) || (qj.ID == d.snap.qemuID && !cancel) {
				continue
			}
			args, _ := json.Marshal(map[string]string{"id": qj.ID})
			switch qj.Status {
			case "concluded":
				if _, err := d.longQMP(ctx, r, "job-dismiss", args); err != nil {
					return err
				}
			case "null":
			default:
				if cancel && qj.ID == d.snap.qemuID {
					_, _ = d.longQMP(ctx, r, "job-cancel", args) // it may conclude first: the loop reads its status again
				}
				pending = qj.ID + " (" + qj.Status + ")"
			}
		}
		if pending == "" {
			return nil
		}
		if !cancel && d.snap.op != "reconcile" {
			return fmt.Errorf("QEMU job %s of an earlier vmsup still runs; try again once it has concluded", pending)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("QEMU job %s did not conclude within %s", pending, snapshotJobTimeout)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-poll.C:
		}
	}
}

// tagsNow returns the tags of every writable disk, by node: from QEMU
// when it runs, else from the disk files with qemu-img.
func (d *jobData) tagsNow(ctx context.Context, r run) (map[string][]string, error) {
	s := d.snap
	out := map[string][]string{}
	if s.running {
		blocks, err := d.queryBlock(ctx, r)
		if err != nil {
			return nil, err
		}
		for _, b := range blocks {
			if !b.ro {
				out[b.node] = b.tags
			}
		}
		return out, nil
	}
	for node, path := range s.disks {
		tags, err := s.img.Snapshots(ctx, path)
		if err != nil {
			var re *overlay.RunError
			if errors.As(err, &re) || errors.Is(err, os.ErrNotExist) {
				out[node] = nil // not an image qemu-img reads: no tags
				continue
			}
			return nil, err
		}
		out[node] = tags
	}
	return out, nil
}

// settle makes the records agree with the disks: a "creating" record
// whose tag is on every disk it names is complete, one whose tag is
// missing goes, and so does a complete record whose tag is on no disk; a
// tag on every disk without a record is listed as made outside vmsup (a
// tag on only some disks, what a save cut short leaves, is not listed). keepCreating keeps the "creating" record of a job under way.
func settle(recs []domain.Snapshot, tags map[string][]string, keepCreating bool) []domain.Snapshot {
	has := func(node, tag string) bool { return slices.Contains(tags[node], tag) }
	var out []domain.Snapshot
	for _, x := range recs {
		if x.IsDisk() {
			if x.State == domain.SnapshotComplete || keepCreating {
				out = append(out, x)
			}
			continue // settled by settleDisk
		}
		all, any := len(x.Disks) > 0, false
		for _, n := range x.Disks {
			if has(n, x.Name) {
				any = true
			} else {
				all = false
			}
		}
		switch {
		case x.State == domain.SnapshotCreating && keepCreating:
		case all:
			x.State = domain.SnapshotComplete
		case x.State == domain.SnapshotComplete && any:
		default:
			continue
		}
		out = append(out, x)
	}
	nodes := make([]string, 0, len(tags))
	for node := range tags {
		nodes = append(nodes, node)
	}
	slices.Sort(nodes)
	for _, tag := range tags[vmstateNode] {
		listed := slices.ContainsFunc(out, func(x domain.Snapshot) bool { return x.Name == tag })
		everywhere := !slices.ContainsFunc(nodes, func(n string) bool { return !has(n, tag) })
		if !listed && everywhere && !slices.ContainsFunc(recs, func(x domain.Snapshot) bool { return x.Name == tag }) {
			out = append(out, domain.Snapshot{Name: tag, State: domain.SnapshotComplete, VMState: vmstateNode, Disks: nodes})
		}
	}
	return out
}

// stepSnapshotList answers the records, settled against the disks' tags
// (without writing: a query job never changes the records).
func stepSnapshotList(ctx context.Context, r run) error {
	d := r.Data()
	s := d.snap
	recs, err := readSnapshots(s.file)
	if err != nil {
		return err
	}
	tags, err := d.tagsNow(ctx, r)
	if err != nil {
		return err
	}
	r.SetValue(&protocol.SnapshotList{Snapshots: settle(recs, tags, s.busy)})
	return nil
}

// stepSnapshotReconcile settles, after a restart, what the daemon that
// died left: vmsup's QEMU jobs are waited for and dismissed, and the
// records are made to agree with the disks.
func stepSnapshotReconcile(ctx context.Context, r run) error {
	d := r.Data()
	s := d.snap
	if s.running {
		if err := d.dismissStale(ctx, r, false); err != nil {
			return err
		}
	}
	recs, err := readSnapshots(s.file)
	if err != nil || len(recs) == 0 {
		return err
	}
	recs, err = d.settleDisk(ctx, r, recs)
	if err != nil {
		return err
	}
	tags, err := d.tagsNow(ctx, r)
	if err != nil {
		return err
	}
	return writeSnapshots(s.file, settle(recs, tags, false))
}

// snapshotRecords is the file of a domain's snapshot records.
type snapshotRecords struct {
	Snapshots []domain.Snapshot `json:"snapshots"`
}

func readSnapshots(path string) ([]domain.Snapshot, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read snapshot records: %w", err)
	}
	var f snapshotRecords
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("read snapshot records %s: %w", path, err)
	}
	return f.Snapshots, nil
}

func writeSnapshots(path string, recs []domain.Snapshot) error {
	if recs == nil {
		recs = []domain.Snapshot{}
	}
	data, err := json.MarshalIndent(snapshotRecords{Snapshots: recs}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write snapshot records: %w", err)
	}
	return atomicfile.WriteFile(path, append(data, '\n'))
}
