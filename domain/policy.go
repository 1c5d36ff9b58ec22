package domain

import (
	"fmt"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/supervision"
)

// ReasonCrashLoop is the crashed reason of a domain that crashed too often
// under on_crash: restart; vmsup stopped restarting it.
const ReasonCrashLoop Reason = "crash-loop"

// lineage is what a domain keeps across restarts of its actor (after a
// panic): whether it ran before, and its restart bookkeeping.
type lineage struct {
	started   bool
	restarts  int
	crashLoop *supervision.CrashLoop
	// inflight counts the job goroutines and destroy kills of every
	// instance; a restarted instance waits for those of the old one.
	inflight sync.WaitGroup
	// destroying is set while a destroy is under way, so that an instance
	// that restarts meanwhile ends it as destroyed.
	destroying bool
}

// waitInflight waits up to d for the job goroutines; it reports whether
// they all ended.
func (l *lineage) waitInflight(d time.Duration) bool {
	done := make(chan struct{})
	go func() { l.inflight.Wait(); close(done) }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-done:
		return true
	case <-timer.C:
		return false
	}
}

// Control is modelled on libvirt's domcontrol: can vmsup talk to the VM
// right now?
type Control struct {
	// State is "ok", "job" (a job holds the domain), "occupied" (a QMP
	// command is waiting for QEMU), "error" (the monitor is broken) or
	// "recovering" (the actor restarted after a panic).
	State string `json:"state"`
	// Since is when the job started, when the QMP command was sent or when
	// the monitor broke.
	Since time.Time `json:"since,omitzero"`
	// Millis is how long it has been so, at the time of the Info.
	Millis int64 `json:"ms"`
	// Reason says why the monitor is broken.
	Reason string `json:"reason,omitempty"`
}

// Control states.
const (
	ControlOK       = "ok"
	ControlJob      = "job"
	ControlOccupied = "occupied"
	ControlError    = "error"
	// ControlRecovering: the domain actor restarted after a panic and
	// rebuilds its state; jobs wait.
	ControlRecovering = "recovering"
)

// Refresh recomputes Millis at now; List uses it on snapshots.
func (c *Control) Refresh(now time.Time) {
	if c != nil && !c.Since.IsZero() {
		c.Millis = now.Sub(c.Since).Milliseconds()
	}
}

func (m *domainActor) control(now time.Time) *Control {
	c := &Control{State: ControlOK}
	job, _ := m.lane.Active()
	switch {
	case m.proc != nil && m.monErr != nil:
		c.State, c.Since, c.Reason = ControlError, m.monErrAt, m.monErr.Error()
	case job != nil && job.info.QMP != nil:
		c.State, c.Since = ControlOccupied, job.info.QMP.Since
	case job != nil:
		c.State, c.Since = ControlJob, job.info.Started
	}
	c.Refresh(now)
	return c
}

func (m *domainActor) restartPolicy() (supervision.Backoff, *supervision.CrashLoop) {
	var b supervision.Backoff
	limit, window := 0, time.Duration(0)
	if r := m.spec.Restart; r != nil {
		b = supervision.Backoff{Initial: time.Duration(r.Initial), Max: time.Duration(r.Max), Factor: r.Factor}
		limit, window = r.Limit, time.Duration(r.Window)
	}
	if m.life.crashLoop == nil || m.life.crashLoop.Limit != orDefault(limit, supervision.DefaultLimit) ||
		m.life.crashLoop.Window != orDefaultDur(window, supervision.DefaultWindow) {
		m.life.crashLoop = supervision.NewCrashLoop(limit, window)
	}
	return b.WithDefaults(), m.life.crashLoop
}

func orDefault(v, d int) int {
	if v <= 0 {
		return d
	}
	return v
}

func orDefaultDur(v, d time.Duration) time.Duration {
	if v <= 0 {
		return d
	}
	return v
}

// applyCrashPolicy runs after QEMU exited unexpectedly (or panicked). With
// on_crash: restart it schedules a start after the backoff, unless the
// crash-loop limit is reached; destroy and preserve leave the state as it is.
func (m *domainActor) applyCrashPolicy(ctx actor.Context) {
	if m.spec.OnCrash != OnCrashRestart || m.undefining {
		return
	}
	now := time.Now()
	backoff, loop := m.restartPolicy()
	if !loop.Allow(now) {
		m.cfg.Logger.Warn().Str("domain", m.name()).Str("limit", loop.Describe()).Msg("crash loop: not restarting")
		m.setState(StateCrashed, ReasonCrashLoop, "")
		return
	}
	delay := backoff.Delay(loop.Recent(now) - 1)
	self, root := ctx.Self(), ctx.ActorSystem().Root
	m.stopRestartTimer()
	seq := m.restartSeq
	m.restartTimer = time.AfterFunc(delay, func() { root.Send(self, restartDue{from: m, seq: seq}) })
	m.cfg.Logger.Info().Str("domain", m.name()).Dur("in", delay).Msg("on_crash restart scheduled")
}

// stopRestartTimer cancels a pending restart; a restartDue already on its
// way is ignored, because its sequence number no longer matches.
func (m *domainActor) stopRestartTimer() {
	m.restartSeq++
	if m.restartTimer != nil {
		m.restartTimer.Stop()
		m.restartTimer = nil
	}
}

// onRestartDue starts the domain again for its restart policy, unless
// something else (a user's start, destroy or undefine) happened meanwhile.
func (m *domainActor) onRestartDue(ctx actor.Context) {
	m.restartTimer = nil
	// A user's start, destroy or undefine cancels the timer (and bumps the
	// sequence), so only QEMU running again stops the restart here.
	if m.proc != nil || m.undefining {
		return
	}
	req := actors.Request{RequestID: actors.NewID(), Owner: "vmsup on_crash restart"}
	run := m.startJob(false)
	inner := run.apply
	run.apply = func(m *domainActor, v any, err error) {
		inner(m, v, err)
		if err == nil {
			m.life.restarts++
		} else {
			m.cfg.Logger.Error().Err(err).Str("domain", m.name()).Msg("on_crash restart failed")
			m.applyCrashPolicy(ctx)
		}
	}
	m.enqueue(ctx, req, "start", JobModify, run)
}

// onRestarting runs in the old actor instance before protoactor replaces
// it after a panic: every caller still waiting gets an error now, and the
// old instance's jobs and timers stop. The QEMU keeps running; the new
// instance adopts it once the old jobs have ended.
func (m *domainActor) onRestarting(ctx actor.Context) {
	m.stopRestartTimer()
	m.abandonJobs(ctx, fmt.Errorf("domain %q: the domain actor restarted after a panic; retry the call", m.name()))
}

// awaitOldJobs runs in a restarted instance: jobs wait (recovering) until
// the old instance's job goroutines and kills have ended, so that none of
// them acts on a QEMU the new instance has adopted; then rebuildNow.
func (m *domainActor) awaitOldJobs(ctx actor.Context) {
	m.recovering = true
	self, root, life, limit := ctx.Self(), ctx.ActorSystem().Root, m.life, m.cfg.DestroyGrace+15*time.Second
	go func() {
		if !life.waitInflight(limit) {
			m.cfg.Logger.Error().Str("domain", m.name()).Msg("old job goroutines still running; rebuilding anyway")
		}
		root.Send(self, rebuildNow{from: m})
	}()
}

// rebuild runs in a domain actor restarted after a panic: it reads the
// definition and status back from disk and adopts the QEMU that still runs.
func (m *domainActor) rebuild(ctx actor.Context) {
	if m.cfg.Reload == nil {
		return
	}
	spec, status, err := m.cfg.Reload()
	if err != nil {
		m.cfg.Logger.Error().Err(err).Str("domain", m.name()).Msg("restarted domain actor cannot reload its definition; using the one it had")
	} else if spec != nil {
		m.spec = spec
	}
	m.cfg.Recovery = Recover(m.spec, m.cfg.RunDir, status)
	m.recover(ctx)
}
