package actors

import (
	"context"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// DefaultRecentJobs is how many ended jobs a lane keeps for Snapshot.
const DefaultRecentJobs = 32

// LaneConfig configures a Lane. The hooks run in the owning actor.
type LaneConfig[T any] struct {
	// Name starts every error the lane makes, for example `domain "web1"`.
	Name string
	// Recent is how many ended jobs Snapshot keeps (DefaultRecentJobs
	// when zero).
	Recent int
	// Dispatcher runs the job goroutines: pooled workers when it is a
	// *Dispatcher; nil means a goroutine each.
	Dispatcher actor.Dispatcher
	// Inflight counts the lane's job goroutines. Share one between the
	// instances of a restarting actor to wait for the old one's jobs;
	// nil means one of the lane's own.
	Inflight *Inflight
	// Started is called when a job takes the lane; Released when it gives
	// it back (at its end, or as it enters its async phase). Tests check
	// the one-job invariant with them.
	Started, Released func(j *Job[T])
	// Ended is called when a job ends, after its plan's End and before its
	// waiters hear of it, with what they get: publish state here.
	Ended func(j *Job[T], err error)
	// Progressed is called when a running job reports its progress
	// (Run.Report): trace it here.
	Progressed func(j *Job[T], p Progress)
	// Refused is called once for a job that reaches the head of the queue
	// and must wait because the mask of async, the async job, does not
	// allow its kind (MaskDecision says it in words).
	Refused func(j, async *Job[T])
}

// Lane is the job lane of an actor: it owns the whole queue policy, so
// that an actor only says what its jobs do. Jobs start in FIFO order, at
// most one holds the lane (plus one async job in its async phase, beside
// which only the kinds of its mask start), a job whose caller gives up
// while it is queued leaves the queue and never runs, and every waiter
// hears the end of its job.
//
// A Lane belongs to one actor instance and is touched only from that
// actor's handlers: every method takes the handler's actor.Context. Job
// goroutines and context watchers reach it by messages to the actor,
// which it takes in Handle.
type Lane[T any] struct {
	cfg    LaneConfig[T]
	self   *actor.PID
	root   *actor.RootContext
	pool   *Dispatcher
	wg     *Inflight
	seq    uint64
	queue  []*Job[T]
	head   int
	active *Job[T]
	async  *Job[T]
	paused string
	closed error
	// now is the instant of the Enqueue under way: the jobs it starts
	// start then (one clock read fewer per job).
	now time.Time

	recent     []JobInfo // a ring of up to cfg.Recent, grown as jobs end
	recentNext int
	recentLen  int
}

// NewLane returns an empty lane.
func NewLane[T any](cfg LaneConfig[T]) *Lane[T] {
	if cfg.Recent <= 0 {
		cfg.Recent = DefaultRecentJobs
	}
	l := &Lane[T]{cfg: cfg, wg: cfg.Inflight}
	if l.wg == nil {
		l.wg = &Inflight{}
	}
	l.pool, _ = cfg.Dispatcher.(*Dispatcher)
	return l
}

// Name is the lane's name.
func (l *Lane[T]) Name() string { return l.cfg.Name }

func (l *Lane[T]) bind(c actor.Context) {
	if l.self == nil {
		l.self, l.root = c.Self(), c.ActorSystem().Root
	}
}

// Enqueue queues a job of plan for req (whose Ctx is the caller's
// context) and starts it if the lane allows. w hears its end. If the
// caller's context ends while the job waits, the job leaves the queue
// and w gets an error that says so. The job is returned for the actor
// to keep; it may already have ended.
func (l *Lane[T]) Enqueue(c actor.Context, plan *Plan[T], req Request, data T, w Waiter) *Job[T] {
	l.bind(c)
	j := l.newJob(plan, req, data, w)
	if l.closed != nil {
		l.finish(c, j, nil, fmt.Errorf("%s: job %d %q: %w", l.cfg.Name, j.info.ID, j.info.Name, l.closed), false)
		return j
	}
	l.push(j)
	l.now = j.info.Enqueued
	l.pump(c)
	l.now = time.Time{}
	if j.state == jobQueued {
		l.watch(j)
	}
	return j
}

// Preempt puts a job of plan at the head of the queue and cancels the
// active and async jobs with the cause `NAME: VERB by job N (OWNER)`
// ("destroyed by job 5 (api destroy)"; VERB "preempted" when empty). The
// job ignores its caller's context: what it stands for (a kill) has
// begun. It starts as soon as the active job has ended, or at once beside
// an async job whose mask allows its kind.
func (l *Lane[T]) Preempt(c actor.Context, plan *Plan[T], req Request, data T, w Waiter, verb string) *Job[T] {
	l.bind(c)
	j := l.newJob(plan, req, data, w)
	if l.closed != nil {
		l.finish(c, j, nil, fmt.Errorf("%s: job %d %q: %w", l.cfg.Name, j.info.ID, j.info.Name, l.closed), false)
		return j
	}
	j.preempt = true
	if verb == "" {
		verb = "preempted"
	}
	cause := fmt.Errorf("%s: %s by job %d (%s)", l.cfg.Name, verb, j.info.ID, j.info.Owner)
	l.pushFront(j)
	l.cancelRunning(c, cause)
	l.pump(c)
	return j
}

// Join makes w hear the end of j too (concurrent destroys share one job).
// It reports false when j has ended.
func (l *Lane[T]) Join(j *Job[T], w Waiter) bool {
	if j == nil || j.lane != l || j.state == jobEnded {
		return false
	}
	if j.waiter.IsZero() {
		j.waiter = w
	} else {
		j.more = append(j.more, w)
	}
	return true
}

func (l *Lane[T]) newJob(plan *Plan[T], req Request, data T, w Waiter) *Job[T] {
	l.seq++
	owner := req.Owner
	if owner == "" {
		owner = plan.owner
	}
	if owner == "" {
		owner = "api " + plan.Name // a plan not made by NewPlan
	}
	names := plan.names
	if names == nil && len(plan.Steps) > 0 {
		names = make([]string, len(plan.Steps)) // a plan not made by NewPlan
		for i, s := range plan.Steps {
			names[i] = s.Name
		}
	}
	return &Job[T]{
		Data: data, lane: l, plan: plan, reqCtx: req.Ctx, expires: req.Expires, parent: req.ParentID, waiter: w,
		info: JobInfo{ID: l.seq, Name: plan.Name, Kind: plan.Kind, Owner: owner, RequestID: req.RequestID,
			Enqueued: time.Now(), Steps: names, Mask: plan.asyncMask()},
	}
}

// watch makes a queued job leave the queue when its caller's context
// ends. A context that can never end (context.Background) costs nothing.
func (l *Lane[T]) watch(j *Job[T]) {
	ctx := j.reqCtx
	if ctx == nil || ctx.Done() == nil || j.preempt {
		return
	}
	root, self, e := l.root, l.self, &jobEvent[T]{job: j, what: evLeft}
	j.watch = context.AfterFunc(ctx, func() { root.Send(self, e) })
}

func (l *Lane[T]) push(j *Job[T]) { l.queue = append(l.queue, j) }

func (l *Lane[T]) pushFront(j *Job[T]) {
	if l.head > 0 {
		l.head--
		l.queue[l.head] = j
		return
	}
	l.queue = append(l.queue, nil)
	copy(l.queue[1:], l.queue)
	l.queue[0] = j
}

func (l *Lane[T]) pop() *Job[T] {
	j := l.queue[l.head]
	l.queue[l.head] = nil
	l.head++
	if l.head == len(l.queue) {
		l.queue, l.head = l.queue[:0], 0
	}
	return j
}

func (l *Lane[T]) remove(j *Job[T]) bool {
	for i := l.head; i < len(l.queue); i++ {
		if l.queue[i] == j {
			copy(l.queue[i:], l.queue[i+1:])
			l.queue[len(l.queue)-1] = nil
			l.queue = l.queue[:len(l.queue)-1]
			if l.head == len(l.queue) {
				l.queue, l.head = l.queue[:0], 0
			}
			return true
		}
	}
	return false
}

// pump starts queued jobs while the lane allows: nothing holds it, the
// lane is not paused, and, while an async job waits, the head's kind is in
// its mask. A refused head stays where it is: the queue stays FIFO.
func (l *Lane[T]) pump(c actor.Context) {
	for l.active == nil && l.paused == "" && l.closed == nil && l.head < len(l.queue) {
		j := l.queue[l.head]
		if l.async != nil && !l.async.plan.mask().Allows(j.info.Kind) {
			if !j.refused && l.cfg.Refused != nil {
				j.refused = true
				l.cfg.Refused(j, l.async)
			}
			return
		}
		l.pop()
		if j.watch != nil {
			j.watch()
			j.watch = nil
		}
		if err := l.gone(j); err != nil {
			l.finish(c, j, nil, leftErr(l, j, err), false) // a dead job at the head
			continue
		}
		l.start(c, j)
	}
}

// gone is j.callerGone at the lane's clock; it reads the clock only for
// a job whose request has an Expires.
func (l *Lane[T]) gone(j *Job[T]) error {
	if j.expires.IsZero() {
		return j.callerGone(time.Time{})
	}
	return j.callerGone(l.clock())
}

// clock is the time of the event being handled, when the lane has read
// it already, or now.
func (l *Lane[T]) clock() time.Time {
	if !l.now.IsZero() {
		return l.now
	}
	return time.Now()
}

// leftErr is the error of a job that left l's queue because its caller
// stopped waiting (cause).
func leftErr[T any](l *Lane[T], j *Job[T], cause error) error {
	return fmt.Errorf("%s: job %d %q left the queue: %w", l.cfg.Name, j.info.ID, j.info.Name, cause)
}

// start makes j the active job and runs it.
func (l *Lane[T]) start(c actor.Context, j *Job[T]) {
	j.state = jobActive
	l.active = j
	j.info.Started = l.now
	if j.info.Started.IsZero() {
		j.info.Started = time.Now()
	}
	j.ctx, j.cancel = context.WithCancelCause(context.Background())
	if len(j.plan.Steps) > 0 {
		l.showStep(j, 0, j.info.Started)
	}
	if start := j.plan.Start; start != nil {
		if err := start(c, j); err != nil {
			j.info.Step, j.info.Call = "", Call{}
			l.finish(c, j, nil, err, false)
			return
		}
	}
	j.holding = true
	if l.cfg.Started != nil {
		l.cfg.Started(j)
	}
	l.advance(c, j)
}

// showStep makes step i the job's current step.
func (l *Lane[T]) showStep(j *Job[T], i int, at time.Time) {
	s := &j.plan.Steps[i]
	j.info.Step = s.Name
	if s.Call != "" {
		j.info.Call = Call{Via: j.plan.Via, Command: s.Call, Since: at}
	} else {
		j.info.Call = Call{}
	}
}

// enterStep shows step i and, for an async step, moves the job to the
// async slot so that the jobs its mask allows may start.
func (l *Lane[T]) enterStep(j *Job[T], i int, at time.Time) {
	l.showStep(j, i, at)
	if j.plan.Steps[i].Async {
		l.goAsync(j)
	}
}

// goAsync moves the active job j to the async slot. A lane has one async
// job at a time: j keeps holding the lane while another one is there.
func (l *Lane[T]) goAsync(j *Job[T]) {
	if l.active != j || l.async != nil {
		return
	}
	l.active, l.async, j.state = nil, j, jobAsync
	l.release(j)
}

// release calls the Released hook once for a job that took the lane.
func (l *Lane[T]) release(j *Job[T]) {
	if j.holding {
		j.holding = false
		if l.cfg.Released != nil {
			l.cfg.Released(j)
		}
	}
}

// advance runs the job from j.next: InActor steps here, goroutine steps
// in a segment; at the end it finishes the job, or runs its cleanups in a
// last segment first.
func (l *Lane[T]) advance(c actor.Context, j *Job[T]) {
	steps := j.plan.Steps
	if len(steps) == 0 {
		return // the actor ends it with Finish
	}
	if j.next == 0 && steps[0].Async {
		l.goAsync(j)
	}
	for {
		if j.next >= len(steps) || j.err != nil {
			j.next = len(steps)
			if len(j.cleanups) == 0 {
				l.finish(c, j, j.value, j.err, true)
				return
			}
			l.goSegment(j)
			return
		}
		s := &steps[j.next]
		if s.InActor == nil {
			l.goSegment(j)
			return
		}
		if j.ctx.Err() != nil {
			j.err = j.stoppedBefore(s.Name)
			continue
		}
		err := j.doActorStep(c, s)
		j.next++
		if err != nil && !j.retry(err) {
			j.err = j.withCause(err)
			continue
		}
		if j.next < len(steps) {
			l.enterStep(j, j.next, time.Now())
		}
	}
}

// goSegment runs the job's next goroutine segment.
func (l *Lane[T]) goSegment(j *Job[T]) {
	l.wg.Add(1)
	switch {
	case l.pool != nil:
		l.pool.goTask(j)
	case l.cfg.Dispatcher != nil:
		l.cfg.Dispatcher.Schedule(j.runSegment)
	default:
		go j.runSegment()
	}
}

// finish ends j: its plan's End (when it started), the Ended hook, the
// recent list, then every waiter hears of it. It does not start the next
// job; the caller pumps.
func (l *Lane[T]) finish(c actor.Context, j *Job[T], value any, err error, started bool) {
	if j.state == jobEnded {
		return
	}
	switch j {
	case l.active:
		l.active = nil
	case l.async:
		l.async = nil
	}
	j.state = jobEnded
	if j.watch != nil {
		j.watch()
		j.watch = nil
	}
	if j.cancel != nil {
		j.cancel(err)
	}
	l.release(j)
	if started && j.plan.End != nil {
		value, err = j.plan.End(c, j, value, err)
	}
	j.info.Ended = time.Now()
	j.info.Call = Call{}
	if err != nil {
		j.info.Error = err.Error()
	}
	if l.cfg.Ended != nil {
		l.cfg.Ended(j, err)
	}
	l.remember(j.info)
	var reply any
	switch {
	case err != nil:
		reply = err
	case value != nil:
		reply = value
	case j.waiter.IsZero() && len(j.more) == 0:
	default:
		reply = &JobDone{Job: j.info}
	}
	j.waiter.send(c, reply)
	for _, w := range j.more {
		w.send(c, reply)
	}
	j.waiter, j.more = Waiter{}, nil
}

func (l *Lane[T]) remember(info JobInfo) {
	if len(l.recent) < l.cfg.Recent {
		// The ring grows as jobs end, so that a domain that ran a few
		// jobs holds a few (10,000 idle domains held 8 KiB each when
		// the ring was made full at the first job's end).
		l.recent = append(l.recent, info)
		l.recentNext = len(l.recent) % l.cfg.Recent
		l.recentLen = len(l.recent)
		return
	}
	l.recent[l.recentNext] = info
	l.recentNext = (l.recentNext + 1) % len(l.recent)
	if l.recentLen < len(l.recent) {
		l.recentLen++
	}
}

// Handle takes the lane's own messages (a job's steps and end, a caller
// leaving the queue) and reports whether msg was one. Call it first in
// the actor's Receive. Messages of a lane of an earlier instance of the
// actor (before a restart) are taken too, and only let that job's
// cleanups run.
func (l *Lane[T]) Handle(c actor.Context, msg any) bool {
	e, ok := msg.(*jobEvent[T])
	if !ok {
		return false
	}
	j := e.job
	if j.lane != l {
		j.lane.orphaned(e)
		return true
	}
	switch e.what {
	case evLeft:
		if j.state == jobQueued && l.remove(j) {
			j.watch = nil
			cause := j.callerGone(time.Now())
			if cause == nil {
				cause = context.Cause(j.reqCtx)
			}
			l.finish(c, j, nil, leftErr(l, j, cause), false)
		}
	case evStep:
		if j.Running() {
			l.enterStep(j, e.step, e.at)
		}
	case evCall:
		if j.Running() {
			if e.call == "" {
				j.info.Call = Call{}
			} else {
				j.info.Call = Call{Via: j.plan.Via, Command: e.call, Since: e.at}
			}
		}
	case evProgress:
		if j.Running() {
			j.info.Report = e.report
			if l.cfg.Progressed != nil {
				l.cfg.Progressed(j, *e.report)
			}
		}
	case evActorStep:
		if j.state == jobEnded {
			l.orphaned(e)
			break
		}
		l.enterStep(j, j.next, time.Now())
		l.advance(c, j)
	case evDone:
		l.finish(c, j, j.value, j.err, true)
	}
	l.pump(c)
	return true
}

// orphaned lets a job that ended without its goroutine (the lane closed,
// the actor restarted) run its cleanups when it stops at an actor step.
func (l *Lane[T]) orphaned(e *jobEvent[T]) {
	j := e.job
	if e.what != evActorStep {
		return
	}
	if j.err == nil {
		j.err = context.Cause(j.ctx)
	}
	j.next = len(j.plan.Steps)
	if len(j.cleanups) > 0 {
		l.goSegment(j)
	}
}

// Finish ends j, a job of a plan without steps that the actor runs itself,
// with value or err. It reports false when j was not running.
func (l *Lane[T]) Finish(c actor.Context, j *Job[T], value any, err error) bool {
	if j == nil || j.lane != l || !j.Running() || len(j.plan.Steps) > 0 {
		return false
	}
	l.finish(c, j, value, err, true)
	l.pump(c)
	return true
}

// Cancel cancels j with cause: a queued job leaves the queue and never
// runs; a running job's context ends with cause, and it ends when its
// step returns (a job without steps ends at once).
func (l *Lane[T]) Cancel(c actor.Context, j *Job[T], cause error) {
	if j == nil || j.lane != l {
		return
	}
	switch j.state {
	case jobQueued:
		if l.remove(j) {
			l.finish(c, j, nil, fmt.Errorf("%s: job %d %q cancelled before it started: %w", l.cfg.Name, j.info.ID, j.info.Name, cause), false)
		}
	case jobActive, jobAsync:
		l.cancelJob(c, j, cause)
	}
	l.pump(c)
}

// CancelRunning cancels the active and the async job with cause.
func (l *Lane[T]) CancelRunning(c actor.Context, cause error) {
	l.cancelRunning(c, cause)
	l.pump(c)
}

func (l *Lane[T]) cancelRunning(c actor.Context, cause error) {
	if j := l.active; j != nil {
		l.cancelJob(c, j, cause)
	}
	if j := l.async; j != nil {
		l.cancelJob(c, j, cause)
	}
}

func (l *Lane[T]) cancelJob(c actor.Context, j *Job[T], cause error) {
	j.cancel(cause)
	if len(j.plan.Steps) == 0 {
		l.finish(c, j, nil, fmt.Errorf("%w (job %d %q)", cause, j.info.ID, j.info.Name), true)
	}
}

// Pause stops the lane from starting jobs, for reason (shown by Explain),
// until Resume. Running jobs go on.
func (l *Lane[T]) Pause(reason string) {
	if reason == "" {
		reason = "paused"
	}
	l.paused = reason
}

// Resume lets a paused lane start jobs again.
func (l *Lane[T]) Resume(c actor.Context) {
	l.paused = ""
	l.pump(c)
}

// Kick starts what the lane allows now; call it when a plan's Start may
// decide otherwise than before.
func (l *Lane[T]) Kick(c actor.Context) { l.pump(c) }

// FailQueued ends every queued job with err (they never run).
func (l *Lane[T]) FailQueued(c actor.Context, err error) {
	for l.head < len(l.queue) {
		j := l.pop()
		l.finish(c, j, nil, fmt.Errorf("%s: job %d %q not started: %w", l.cfg.Name, j.info.ID, j.info.Name, err), false)
	}
}

// Close ends the lane: the running jobs are cancelled with err and, like
// the queued ones, end at once with err (naming the job), without their plans' End (their
// goroutines finish their cleanups on their own; Wait waits for them).
// Later jobs end with err at Enqueue. Call it when the actor stops or
// restarts.
func (l *Lane[T]) Close(c actor.Context, err error) {
	if l.closed != nil {
		return
	}
	l.closed = err
	for _, j := range []*Job[T]{l.active, l.async} {
		if j != nil {
			l.finish(c, j, nil, fmt.Errorf("job %d %q: %w", j.info.ID, j.info.Name, err), false)
		}
	}
	l.FailQueued(c, err)
}

// Wait waits up to timeout for the lane's job goroutines to end and
// reports whether they did.
func (l *Lane[T]) Wait(timeout time.Duration) bool { return l.wg.Wait(timeout) }

// Active is the job that holds the lane, or nil.
func (l *Lane[T]) Active() *Job[T] { return l.active }

// Async is the job in its async phase, or nil.
func (l *Lane[T]) Async() *Job[T] { return l.async }

// Len is the number of queued jobs.
func (l *Lane[T]) Len() int { return len(l.queue) - l.head }

// Idle reports whether no job is running or queued.
func (l *Lane[T]) Idle() bool { return l.active == nil && l.async == nil && l.Len() == 0 }

// Find returns the first running or queued job that match accepts: the
// active job, the async job, then the queue from its head.
func (l *Lane[T]) Find(match func(*Job[T]) bool) *Job[T] {
	if l.active != nil && match(l.active) {
		return l.active
	}
	if l.async != nil && match(l.async) {
		return l.async
	}
	for _, j := range l.queue[l.head:] {
		if match(j) {
			return j
		}
	}
	return nil
}

// Holder is what the job holding the lane shows: the active job, else
// the async job.
func (l *Lane[T]) Holder() (JobInfo, bool) {
	switch {
	case l.active != nil:
		return l.active.info, true
	case l.async != nil:
		return l.async.info, true
	}
	return JobInfo{}, false
}

// LaneSnapshot is a copy of a lane, for Info and Jobs. It is plain data.
type LaneSnapshot struct {
	Active *JobInfo  `json:"active"`
	Async  *JobInfo  `json:"async"`
	Queued []JobInfo `json:"queued"`
	// Recent are the jobs that ended last, oldest first.
	Recent []JobInfo `json:"recent"`
	// Paused says why the lane starts no job, when it is paused.
	Paused string `json:"paused,omitempty"`
}

// Snapshot copies the lane.
func (l *Lane[T]) Snapshot() LaneSnapshot {
	s := LaneSnapshot{Queued: make([]JobInfo, 0, l.Len()), Recent: make([]JobInfo, 0, l.recentLen), Paused: l.paused}
	if l.active != nil {
		ji := l.active.info
		s.Active = &ji
	}
	if l.async != nil {
		ji := l.async.info
		s.Async = &ji
	}
	for _, j := range l.queue[l.head:] {
		s.Queued = append(s.Queued, j.info)
	}
	for i := range l.recentLen {
		s.Recent = append(s.Recent, l.recent[(l.recentNext-l.recentLen+i+len(l.recent))%len(l.recent)])
	}
	return s
}
