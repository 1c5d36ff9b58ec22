package vm

import (
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/confine"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/supervision"
)

// lineage is what a domain keeps across restarts of its actor (after a
// panic): whether it ran before, and its restart bookkeeping.
type lineage struct {
	started   bool
	restarts  int
	crashLoop *supervision.CrashLoop
	// inflight counts the job goroutines and destroy kills of every
	// instance; a restarted instance waits for those of the old one.
	inflight actors.Inflight
	// destroying is set while a destroy is under way, so that an instance
	// that restarts meanwhile ends it as destroyed.
	destroying bool
}

// waitInflight waits up to d for the job goroutines; it reports whether
// they all ended.
func (l *lineage) waitInflight(d time.Duration) bool { return l.inflight.Wait(d) }

// control fills c with what Info.Control shows at now.
func (dom *domainActor) control(c *domain.Control, now time.Time) {
	*c = domain.Control{State: domain.ControlOK}
	var info actors.JobInfo
	if j := dom.lane.Active(); j != nil {
		info = j.Info()
	}
	switch {
	case dom.proc != nil && dom.monErr != nil:
		c.State, c.Since, c.Reason = domain.ControlError, dom.monErrAt, dom.monErr.Error()
	case info.ID != 0 && !info.Call.IsZero():
		c.State, c.Since = domain.ControlOccupied, info.Call.Since
	case info.ID != 0:
		c.State, c.Since = domain.ControlJob, info.Started
	}
	c.Refresh(now)
}

func (dom *domainActor) restartPolicy() (supervision.Backoff, *supervision.CrashLoop) {
	var b supervision.Backoff
	limit, window := 0, time.Duration(0)
	if r := dom.spec.Restart; r != nil {
		b = supervision.Backoff{Initial: time.Duration(r.Initial), Max: time.Duration(r.Max), Factor: r.Factor}
		limit, window = r.Limit, time.Duration(r.Window)
	}
	if dom.life.crashLoop == nil || dom.life.crashLoop.Limit != orDefault(limit, supervision.DefaultLimit) ||
		dom.life.crashLoop.Window != orDefaultDur(window, supervision.DefaultWindow) {
		dom.life.crashLoop = supervision.NewCrashLoop(limit, window)
	}
	return b.WithDefaults(), dom.life.crashLoop
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
func (dom *domainActor) applyCrashPolicy(ctx actor.Context) {
	if dom.spec.OnCrash != domain.OnCrashRestart || dom.undefining {
		return
	}
	now := time.Now()
	backoff, loop := dom.restartPolicy()
	if !loop.Allow(now) {
		dom.cfg.Logger.Warn().Str("domain", dom.name()).Str("limit", loop.Describe()).Msg("crash loop: not restarting")
		dom.setState(domain.StateCrashed, domain.ReasonCrashLoop, "")
		return
	}
	delay := backoff.Delay(loop.Recent(now) - 1)
	self, root := ctx.Self(), ctx.ActorSystem().Root
	dom.stopRestartTimer()
	seq := dom.restartSeq
	dom.restartTimer = time.AfterFunc(delay, func() { root.Send(self, restartDue{from: dom, seq: seq}) })
	dom.cfg.Logger.Info().Str("domain", dom.name()).Dur("in", delay).Msg("on_crash restart scheduled")
}

// stopRestartTimer cancels a pending restart; a restartDue already on its
// way is ignored, because its sequence number no longer matches.
func (dom *domainActor) stopRestartTimer() {
	dom.restartSeq++
	if dom.restartTimer != nil {
		dom.restartTimer.Stop()
		dom.restartTimer = nil
	}
}

// onRestartDue starts the domain again for its restart policy, unless
// something else (a user's start, destroy or undefine) happened meanwhile.
func (dom *domainActor) onRestartDue(ctx actor.Context) {
	dom.restartTimer = nil
	// A user's start, destroy or undefine cancels the timer (and bumps the
	// sequence), so only QEMU running again stops the restart here.
	if dom.proc != nil || dom.undefining {
		return
	}
	req := actors.Request{RequestID: actors.NewID(), Owner: "vmsup on_crash restart"}
	d := dom.traced(ctx, &jobData{after: func(c actor.Context, dom *domainActor, err error) {
		if err == nil {
			dom.life.restarts++
			return
		}
		dom.cfg.Logger.Error().Err(err).Str("domain", dom.name()).Msg("on_crash restart failed")
		dom.applyCrashPolicy(c)
	}})
	if !dom.undefining {
		dom.lane.Enqueue(ctx, dom.plans.start, req, d, actors.Waiter{})
	}
}

// onRestarting runs in the old actor instance before protoactor replaces
// it after a panic: every caller still waiting gets an error now, and the
// old instance's jobs and timers stop. The QEMU keeps running; the new
// instance adopts it once the old jobs have ended.
func (dom *domainActor) onRestarting(ctx actor.Context) {
	dom.stopRestartTimer()
	if dom.agent != nil {
		dom.agent.cancel() // protoactor stops its actor with this instance's children
	}
	dom.abandonJobs(ctx, fmt.Errorf("domain %q: the domain actor restarted after a panic; retry the call", dom.name()))
}

// awaitOldJobs runs in a restarted instance: jobs wait (recovering) until
// the old instance's job goroutines and kills have ended, so that none of
// them acts on a QEMU the new instance has adopted; then rebuildNow.
func (dom *domainActor) awaitOldJobs(ctx actor.Context) {
	dom.recovering = true
	dom.lane.Pause("the domain actor restarted after a panic and waits for the old instance's jobs")
	self, root, life, limit := ctx.Self(), ctx.ActorSystem().Root, dom.life, dom.cfg.DestroyGrace+15*time.Second
	go func() {
		if !life.waitInflight(limit) {
			dom.cfg.Logger.Error().Str("domain", dom.name()).Msg("old job goroutines still running; rebuilding anyway")
		}
		root.Send(self, rebuildNow{from: dom})
	}()
}

// rebuild runs in a domain actor restarted after a panic: it reads the
// definition and status back from disk and adopts the QEMU that still runs.
func (dom *domainActor) rebuild(ctx actor.Context) {
	if dom.cfg.Reload == nil {
		return
	}
	spec, status, err := dom.cfg.Reload()
	if err != nil {
		dom.cfg.Logger.Error().Err(err).Str("domain", dom.name()).Msg("restarted domain actor cannot reload its definition; using the one it had")
	} else if spec != nil {
		dom.spec = spec
	}
	var user *confine.User
	if dom.cfg.Confine != nil {
		user = dom.cfg.Confine.User
	}
	dom.cfg.Recovery = process.Recover(dom.spec, dom.cfg.RunDir, status, user)
	if c := dom.cfg.Confine; c != nil {
		dom.cfg.Recovery.Confine(c.User, c.Cgroups, c.CgroupNote)
	}
	dom.recover(ctx)
}
