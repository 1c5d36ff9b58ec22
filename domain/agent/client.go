package agent

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
)

// Run runs the agent command cmd with args (nil for none, else a value
// that marshals to a JSON object) as a job of the agent actor pid and
// returns its JSON return value.
func Run(ctx context.Context, sender actor.SenderContext, pid *actor.PID, cmd string, args any) (json.RawMessage, error) {
	var raw json.RawMessage
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return nil, fmt.Errorf("guest agent command %q: encode arguments: %w", cmd, err)
		}
		raw = b
	}
	req := &CommandRequest{Request: actors.NewRequest(ctx, "api agent "+cmd), Command: cmd, Arguments: raw}
	rep, err := actors.AskAs[*CommandReply](ctx, sender, pid, req)
	if err != nil {
		return nil, err
	}
	return rep.Return, nil
}

// run is Run decoding the return value into out.
func run(ctx context.Context, sender actor.SenderContext, pid *actor.PID, cmd string, args, out any) error {
	raw, err := Run(ctx, sender, pid, cmd, args)
	if err != nil || out == nil {
		return err
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("guest agent command %q: malformed return value: %w", cmd, err)
	}
	return nil
}

// Ping runs guest-ping.
func Ping(ctx context.Context, sender actor.SenderContext, pid *actor.PID) error {
	return run(ctx, sender, pid, "guest-ping", nil, nil)
}

// GetInfo runs guest-info.
func GetInfo(ctx context.Context, sender actor.SenderContext, pid *actor.PID) (*GuestInfo, error) {
	var gi GuestInfo
	if err := run(ctx, sender, pid, "guest-info", nil, &gi); err != nil {
		return nil, err
	}
	return &gi, nil
}

// Interfaces runs guest-network-get-interfaces.
func Interfaces(ctx context.Context, sender actor.SenderContext, pid *actor.PID) ([]Interface, error) {
	var ifs []Interface
	if err := run(ctx, sender, pid, "guest-network-get-interfaces", nil, &ifs); err != nil {
		return nil, err
	}
	return ifs, nil
}

// FSFreeze runs guest-fsfreeze-freeze and returns how many filesystems the
// guest froze.
func FSFreeze(ctx context.Context, sender actor.SenderContext, pid *actor.PID) (int, error) {
	var n int
	err := run(ctx, sender, pid, "guest-fsfreeze-freeze", nil, &n)
	return n, err
}

// FSThaw runs guest-fsfreeze-thaw and returns how many filesystems the
// guest thawed.
func FSThaw(ctx context.Context, sender actor.SenderContext, pid *actor.PID) (int, error) {
	var n int
	err := run(ctx, sender, pid, "guest-fsfreeze-thaw", nil, &n)
	return n, err
}

// Exec runs a command in the guest with guest-exec, then polls
// guest-exec-status (each a job of its own, so other agent commands run
// between them) until it has exited or ctx ends. Its output is captured
// and returned with the exit code; input, when not nil, is its stdin.
func Exec(ctx context.Context, sender actor.SenderContext, pid *actor.PID, path string, args []string, input []byte) (*ExecResult, error) {
	return ExecWith(ctx, func(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
		return Run(ctx, sender, pid, cmd, args)
	}, path, args, input)
}

// Runner runs one agent command with args (nil, or a value that marshals
// to a JSON object) and returns its JSON return value.
type Runner func(ctx context.Context, cmd string, args any) (json.RawMessage, error)

// ExecWith is Exec over any way of running agent commands (a domain's
// agent, reached through the domain actor).
func ExecWith(ctx context.Context, runCmd Runner, path string, args []string, input []byte) (*ExecResult, error) {
	call := func(ctx context.Context, cmd string, args, out any) error {
		raw, err := runCmd(ctx, cmd, args)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("guest agent command %q: malformed return value: %w", cmd, err)
		}
		return nil
	}
	req := ExecRequest{Path: path, Args: args, CaptureOutput: true}
	if input != nil {
		req.Input = base64.StdEncoding.EncodeToString(input)
	}
	var started execStarted
	if err := call(ctx, "guest-exec", req, &started); err != nil {
		return nil, err
	}
	poll := 20 * time.Millisecond
	for {
		var st execStatus
		if err := call(ctx, "guest-exec-status", map[string]int{"pid": started.PID}, &st); err != nil {
			return nil, err
		}
		if st.Exited {
			return st.result(started.PID)
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("guest-exec of %s (pid %d in the guest): %w", path, started.PID, ctx.Err())
		case <-t.C:
		}
		poll = min(2*poll, 500*time.Millisecond)
	}
}

// GetStatus asks the agent actor for its status and its jobs.
func GetStatus(ctx context.Context, sender actor.SenderContext, pid *actor.PID) (*StatusReply, error) {
	return actors.AskAs[*StatusReply](ctx, sender, pid, &StatusRequest{})
}
