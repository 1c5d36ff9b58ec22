package vm

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

// recover rebuilds the domain's state when its actor starts: from the
// saved status, and from the QEMU that is still running for it, which is
// adopted (never started twice) and resynced over QMP by a reconnect job.
func (dom *domainActor) recover(ctx actor.Context) {
	rec := dom.cfg.Recovery
	dom.cfg.Recovery = nil // a restarted actor must not adopt the same process twice
	if rec == nil {
		return
	}
	if saved := rec.Saved; saved != nil && saved.UUID == dom.spec.UUID {
		dom.state, dom.reason = saved.State, saved.Reason
	}
	state, reason := rec.Initial(dom.spec.UUID)
	if !rec.Adopted() && dom.life.destroying {
		// The destroy that was under way when the old instance died has
		// killed QEMU: that is a destroy, not a crash.
		dom.life.destroying = false
		dom.setState(domain.StateShutoff, domain.ReasonDestroyed, "")
		return
	}
	if !rec.Adopted() {
		if state != dom.state || reason != dom.reason {
			dom.cfg.Logger.Warn().Str("domain", dom.name()).Str("was", string(dom.state)).Str("found", rec.Found).
				Msg("QEMU exited while vmsup was not running")
			dom.setState(state, reason, "")
		}
		switch dom.reason {
		case domain.ReasonCrashed, domain.ReasonPanicked, domain.ReasonExitedUnsupervised:
			// A crash that vmsup did not get to handle (it was down, or
			// restarting): the on_crash policy still applies.
			dom.applyCrashPolicy(ctx)
		}
		return
	}
	paths, err := qemuargs.NewRunPaths(dom.cfg.RunDir, dom.name())
	if err != nil {
		rec.Release()
		dom.cfg.Logger.Error().Err(err).Str("domain", dom.name()).Msg("cannot adopt QEMU")
		return
	}
	proc := rec.Process()
	dom.proc, dom.paths, dom.runningSerial, dom.monConnected = proc, paths, dom.spec.Serial, false
	dom.state, dom.reason = state, reason // query-status will confirm it
	// The running definition recorded at its start and after each
	// hot-plug; a QEMU started by an older vmsup has none, and gets the
	// devices its definition gives.
	if live, err := readLive(paths.Dir); err == nil {
		dom.live = live
	} else {
		dom.cfg.Logger.Warn().Err(err).Str("domain", dom.name()).Msg("adopted QEMU has no recorded devices; using the definition's")
		dom.live = qemuargs.LiveDevices(dom.spec, nil)
	}
	self, root := ctx.Self(), ctx.ActorSystem().Root
	proc.OnExit(func() { root.Send(self, processExited{proc: proc}) })
	if err := dom.spawnMonitor(ctx, paths, proc.PID()); err != nil {
		dom.cfg.Logger.Error().Err(err).Str("domain", dom.name()).Msg("cannot spawn monitor for adopted QEMU")
		return
	}
	// An adopted QEMU started by this vmsup has the agent channel's
	// socket in its run dir; one started by an older vmsup has none, and
	// its agent shows unavailable.
	dom.spawnAgent(ctx, dom.spec, paths, proc.PID())
	dom.cfg.Logger.Info().Str("domain", dom.name()).Int("pid", proc.PID()).Msg(rec.Found)
	dom.enqueueReconnect(ctx)
	dom.enqueueSnapshotReconcile(ctx)
}

// enqueueReconnect queues a job that resyncs the state from query-status.
func (dom *domainActor) enqueueReconnect(ctx actor.Context) {
	req := actors.Request{RequestID: actors.NewID(), Owner: "vmsup reconnect"}
	if !dom.undefining {
		dom.lane.Enqueue(ctx, dom.plans.reconnect, req, dom.traced(ctx, nil), actors.Waiter{})
	}
}

// resync sets the domain's state from QEMU's run status.
func (dom *domainActor) resync(status string) {
	switch status {
	case "running":
		if dom.state != domain.StateRunning {
			dom.setState(domain.StateRunning, domain.ReasonUnpaused, "")
		}
	case "shutdown":
		dom.setState(domain.StateShutdown, domain.ReasonUser, "")
	case "guest-panicked":
		dom.panicked = true
		dom.setState(domain.StateCrashed, domain.ReasonPanicked, "")
	default: // paused, prelaunch, suspended, io-error, ...
		// A QEMU adopted in the middle of its start (prelaunch, the
		// start job gone with the old daemon) is paused, no longer
		// starting up: nothing will continue it but the user.
		if dom.state != domain.StatePaused || dom.reason == domain.ReasonStartingUp {
			dom.setState(domain.StatePaused, domain.ReasonUser, "")
		}
	}
}
