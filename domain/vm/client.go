package vm

import (
	"context"
	"encoding/json"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/agent"
	"github.com/vmsup/vmsup/domain/internal/protocol"
)

// This file is the domain actor's client: the only way code outside
// domain/ builds the messages of domain/internal/protocol.

// StartJob is the message of a start job; with paused the guest stays
// paused after QEMU starts.
func StartJob(r actors.Request, paused bool) any {
	return &protocol.StartRequest{Request: r, Paused: paused}
}

// ShutdownJob is the message of a shutdown job that asks the guest to
// power off as mode says and waits up to timeout (DefaultShutdownTimeout
// when zero), one deadline for all of it.
func ShutdownJob(r actors.Request, timeout time.Duration, mode domain.ShutdownMode) any {
	return &protocol.ShutdownRequest{Request: r, Timeout: timeout, Mode: mode}
}

// DestroyJob is the message of a destroy, which preempts every job.
func DestroyJob(r actors.Request) any { return &protocol.DestroyRequest{Request: r} }

// PauseJob is the message of a pause job (QMP "stop").
func PauseJob(r actors.Request) any { return &protocol.PauseRequest{Request: r} }

// ResumeJob is the message of a resume job (QMP "cont").
func ResumeJob(r actors.Request) any { return &protocol.ResumeRequest{Request: r} }

// ResetJob is the message of a reset job (QMP "system_reset").
func ResetJob(r actors.Request) any { return &protocol.ResetRequest{Request: r} }

// QMPJob is the message of a job that runs one raw QMP command.
func QMPJob(r actors.Request, execute string, args json.RawMessage) any {
	return &protocol.QMPRequest{Request: r, Execute: execute, Arguments: args}
}

// AttachDiskJob is the message of a job that hot-plugs the disk file at
// path. The caller has checked path against its policy.
func AttachDiskJob(r actors.Request, path, format string, readOnly bool) any {
	return &protocol.AttachDiskRequest{Request: r, Path: path, Format: format, ReadOnly: readOnly}
}

// DetachDiskJob is the message of a job that hot-unplugs the disk target
// names (node, device id or path), waiting up to timeout for the guest.
func DetachDiskJob(r actors.Request, target string, timeout time.Duration) any {
	return &protocol.DetachDiskRequest{Request: r, Target: target, Timeout: timeout}
}

// AttachNICJob is the message of a job that hot-plugs a NIC. forwards
// must be resolved (no host port 0).
func AttachNICJob(r actors.Request, typ, mac string, forwards []string) any {
	return &protocol.AttachNICRequest{Request: r, Type: typ, MAC: mac, Forwards: forwards}
}

// DetachNICJob is the message of a job that hot-unplugs the NIC target
// names (MAC, device id or index), waiting up to timeout for the guest.
func DetachNICJob(r actors.Request, target string, timeout time.Duration) any {
	return &protocol.DetachNICRequest{Request: r, Target: target, Timeout: timeout}
}

// DeviceOf returns the device from the reply to a hot-plug job; ok is
// false when reply is something else.
func DeviceOf(reply any) (disk *domain.LiveDisk, nic *domain.LiveNIC, ok bool) {
	r, ok := reply.(*protocol.DeviceReply)
	if !ok {
		return nil, nil, false
	}
	return r.Disk, r.NIC, true
}

// QMPReturn returns the "return" value from the reply to a QMPJob; ok is
// false when reply is something else.
func QMPReturn(reply any) (ret json.RawMessage, ok bool) {
	r, ok := reply.(*protocol.QMPReply)
	if !ok {
		return nil, false
	}
	return r.Return, true
}

// Info asks the domain actor pid for its Info, answered at once.
func Info(ctx context.Context, sender actor.SenderContext, pid *actor.PID) (*domain.Info, error) {
	return actors.AskAs[*domain.Info](ctx, sender, pid, &protocol.InfoRequest{})
}

// Jobs asks the domain actor pid for its job lane, answered at once.
func Jobs(ctx context.Context, sender actor.SenderContext, pid *actor.PID) (*domain.Jobs, error) {
	return actors.AskAs[*domain.Jobs](ctx, sender, pid, &protocol.JobsRequest{})
}

// ConsolePath asks the domain actor pid where the serial console socket of
// its running guest is.
func ConsolePath(ctx context.Context, sender actor.SenderContext, pid *actor.PID) (string, error) {
	t, err := actors.AskAs[*protocol.ConsoleTarget](ctx, sender, pid, &protocol.ConsoleRequest{})
	if err != nil {
		return "", err
	}
	return t.Path, nil
}

// ExplainWait asks the domain actor pid what the request with requestID
// waits for, after the wait for its job ended.
func ExplainWait(ctx context.Context, sender actor.SenderContext, pid *actor.PID, requestID string) (*actors.Explanation, error) {
	return actors.AskAs[*actors.Explanation](ctx, sender, pid, &protocol.ExplainWaitRequest{RequestID: requestID})
}

// InjectMonitorPanic makes the monitor actor of domain pid panic: a
// fault-test hook.
func InjectMonitorPanic(ctx context.Context, sender actor.SenderContext, pid *actor.PID, reason string) error {
	_, err := actors.Ask(ctx, sender, pid, &protocol.InjectMonitorPanic{Reason: reason})
	return err
}

// UpdateSpec tells the domain actor pid to use spec from its next start.
func UpdateSpec(ctx actor.SenderContext, pid *actor.PID, spec *domain.Spec) {
	ctx.Send(pid, &protocol.UpdateSpec{Spec: spec})
}

// PrepareUndefine asks the domain actor pid to refuse new jobs because it
// is about to be undefined. The future's result is an error when the domain
// is not shut off and idle.
func PrepareUndefine(ctx actor.SenderContext, pid *actor.PID, timeout time.Duration) *actor.Future {
	return ctx.RequestFuture(pid, &protocol.PrepareUndefine{}, timeout)
}

// CancelUndefine reverts PrepareUndefine after an undefine failed.
func CancelUndefine(ctx actor.SenderContext, pid *actor.PID) {
	ctx.Send(pid, &protocol.CancelUndefine{})
}

// SnapshotJob is the message of a snapshot job: op "create", "revert" or
// "delete" of the snapshot name, or "list" (name unused), whose reply
// SnapshotsOf reads.
func SnapshotJob(r actors.Request, op, name string) any {
	return &protocol.SnapshotRequest{Request: r, Op: op, Name: name}
}

// SnapshotsOf returns the snapshots from the reply to a "list"
// SnapshotJob; ok is false when reply is something else.
func SnapshotsOf(reply any) (snaps []domain.Snapshot, ok bool) {
	l, ok := reply.(*protocol.SnapshotList)
	if !ok {
		return nil, false
	}
	return l.Snapshots, true
}

// AbortJob is the message that asks the domain's async job to stop
// cleanly (job-cancel for a QEMU job).
func AbortJob(r actors.Request) any { return &protocol.AbortJobRequest{Request: r} }

// AgentJob is the message of one guest agent command: the domain forwards
// it to its agent actor, whose lane runs it and answers the sender. args
// are a JSON object or empty.
func AgentJob(r actors.Request, command string, args json.RawMessage) any {
	return &protocol.AgentRequest{Request: r, Command: command, Arguments: args}
}

// AgentReturn returns the agent's return value from the reply to an
// AgentJob; ok is false when reply is something else.
func AgentReturn(reply any) (ret json.RawMessage, ok bool) {
	r, ok := reply.(*agent.CommandReply)
	if !ok {
		return nil, false
	}
	return r.Return, true
}
