package domain

import (
	"encoding/json"
	"fmt"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/monitor"
)

// recover rebuilds the domain's state when its actor starts: from the
// saved status, and from the QEMU that is still running for it, which is
// adopted (never started twice) and resynced over QMP by a reconnect job.
func (m *domainActor) recover(ctx actor.Context) {
	rec := m.cfg.Recovery
	m.cfg.Recovery = nil // a restarted actor must not adopt the same process twice
	if rec == nil {
		return
	}
	if saved := rec.Saved; saved != nil && saved.UUID == m.spec.UUID {
		m.state, m.reason = saved.State, saved.Reason
	}
	state, reason := rec.Initial(m.spec.UUID)
	if !rec.Adopted() && m.life.destroying {
		// The destroy that was under way when the old instance died has
		// killed QEMU: that is a destroy, not a crash.
		m.life.destroying = false
		m.setState(StateShutoff, ReasonDestroyed, "")
		return
	}
	if !rec.Adopted() {
		if state != m.state || reason != m.reason {
			m.cfg.Logger.Warn().Str("domain", m.name()).Str("was", string(m.state)).Str("found", rec.Found).
				Msg("QEMU exited while vmsup was not running")
			m.setState(state, reason, "")
		}
		switch m.reason {
		case ReasonCrashed, ReasonPanicked, ReasonExitedUnsupervised:
			// A crash that vmsup did not get to handle (it was down, or
			// restarting): the on_crash policy still applies.
			m.applyCrashPolicy(ctx)
		}
		return
	}
	paths, err := NewRunPaths(m.cfg.RunDir, m.name())
	if err != nil {
		rec.Release()
		m.cfg.Logger.Error().Err(err).Str("domain", m.name()).Msg("cannot adopt QEMU")
		return
	}
	proc := rec.proc
	m.proc, m.paths, m.runningSerial, m.monConnected = proc, paths, m.spec.Serial, false
	m.state, m.reason = state, reason // query-status will confirm it
	self, root := ctx.Self(), ctx.ActorSystem().Root
	proc.OnExit(func() { root.Send(self, processExited{proc: proc}) })
	pid, err := ctx.SpawnNamed(monitor.Props(m.monitorConfig(paths)), fmt.Sprintf("monitor-%d", proc.pid))
	if err != nil {
		m.cfg.Logger.Error().Err(err).Str("domain", m.name()).Msg("cannot spawn monitor for adopted QEMU")
		return
	}
	m.mon = pid
	m.cfg.Logger.Info().Str("domain", m.name()).Int("pid", proc.pid).Msg(rec.Found)
	m.enqueueReconnect(ctx)
}

// enqueueReconnect queues a job that resyncs the state from query-status.
func (m *domainActor) enqueueReconnect(ctx actor.Context) {
	req := actors.Request{RequestID: actors.NewID(), Owner: "vmsup reconnect"}
	m.enqueue(ctx, req, "reconnect", JobModify, m.reconnectJob())
}

// reconnectJob asks QEMU for its run state and sets the domain's state from it.
func (m *domainActor) reconnectJob() jobRunner {
	return jobRunner{
		run: func(e *jobEnv) (any, error) {
			res, err := e.qmp("query-status", nil)
			if err != nil {
				return nil, err
			}
			var st struct {
				Status string `json:"status"`
			}
			if err := json.Unmarshal(res.Return, &st); err != nil {
				return nil, fmt.Errorf("domain %q: query-status: malformed reply: %w", e.domain, err)
			}
			return st.Status, nil
		},
		apply: func(m *domainActor, v any, err error) {
			status, _ := v.(string)
			if err != nil || m.proc == nil {
				return
			}
			switch status {
			case "running":
				if m.state != StateRunning {
					m.setState(StateRunning, ReasonUnpaused, "")
				}
			case "shutdown":
				m.setState(StateShutdown, ReasonUser, "")
			case "guest-panicked":
				m.panicked = true
				m.setState(StateCrashed, ReasonPanicked, "")
			default: // paused, prelaunch, suspended, io-error, ...
				if m.state != StatePaused {
					m.setState(StatePaused, ReasonUser, "")
				}
			}
		},
	}
}
