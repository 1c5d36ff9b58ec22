package driver

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/agent"
	"github.com/vmsup/vmsup/domain/vm"
)

// Agent runs one raw guest agent command (qemu-ga's protocol: cmd such as
// "guest-info", args a JSON object or empty) and returns its JSON return
// value. It is a job of the domain's agent actor, never of the domain's
// lane: a hung or missing agent fails it at the command's deadline
// (domain/agent's table) and marks Info.Agent unavailable, and never
// blocks a monitor job or Info. An error reply of the agent comes back as
// an *agent.Error. guest-sync and guest-sync-delimited are refused: vmsup
// synchronises the channel itself.
func (h *Domain) Agent(ctx context.Context, cmd string, args json.RawMessage) (json.RawMessage, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, agent.Deadline(cmd)+actors.DefaultTimeout)
		defer cancel()
	}
	return h.agentCommand(ctx, cmd, args)
}

func (h *Domain) agentCommand(ctx context.Context, cmd string, args json.RawMessage) (ret json.RawMessage, err error) {
	req := actors.NewRequest(ctx, "api agent "+cmd)
	req.ParentID = req.RequestID // the API call's span
	began := time.Now()
	defer func(traceBegan time.Time) { h.d.apiRecord(req, traceBegan, err) }(trace.Now())
	if err := domain.ValidateName(h.name); err != nil {
		return nil, err
	}
	msg := vm.AgentJob(req, cmd, args)
	v, err := askDomain(ctx, h, func(ctx context.Context, sender actor.SenderContext, pid *actor.PID) (any, error) {
		return actors.Ask(ctx, sender, pid, msg)
	})
	if err == context.DeadlineExceeded || err == context.Canceled {
		return nil, fmt.Errorf("domain %q: guest agent command %q: gave up after %s: %w", h.name, cmd, time.Since(began).Round(100*time.Millisecond), err)
	}
	if err != nil {
		return nil, err
	}
	ret, ok := vm.AgentReturn(v)
	if !ok {
		return nil, fmt.Errorf("domain %q: guest agent command %q: unexpected reply %T", h.name, cmd, v)
	}
	return ret, nil
}

// Exec runs path with args in the guest through the guest agent
// (guest-exec, then guest-exec-status until it exits or ctx ends) and
// returns its exit code and output. stdin, when not nil, is its standard
// input. qemu-ga returns the output only once the command has exited, so
// nothing streams before. Each poll is a job of its own on the agent's
// lane, so other agent commands run in between.
func (h *Domain) Exec(ctx context.Context, path string, args []string, stdin []byte) (*domain.ExecResult, error) {
	run := func(ctx context.Context, cmd string, a any) (json.RawMessage, error) {
		var raw json.RawMessage
		if a != nil {
			b, err := json.Marshal(a)
			if err != nil {
				return nil, fmt.Errorf("domain %q: guest agent command %q: encode arguments: %w", h.name, cmd, err)
			}
			raw = b
		}
		cctx, cancel := context.WithTimeout(ctx, agent.Deadline(cmd)+actors.DefaultTimeout)
		defer cancel()
		return h.agentCommand(cctx, cmd, raw)
	}
	res, err := agent.ExecWith(ctx, run, path, args, stdin)
	if err != nil {
		return nil, fmt.Errorf("domain %q: exec %s: %w", h.name, path, err)
	}
	return res, nil
}
