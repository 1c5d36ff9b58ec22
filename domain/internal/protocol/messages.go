// Package protocol holds the messages of the domain actor. They are plain
// data with exported fields, so that they can cross a process boundary
// later; only domain/vm builds and answers them.
package protocol

import (
	"encoding/json"
	"time"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
)

// StartRequest starts QEMU (a modify job). With Paused the VM stays paused
// after start-up.
type StartRequest struct {
	actors.Request
	Paused bool
}

// ShutdownRequest asks the guest to power off (ACPI system_powerdown) and
// waits up to Timeout (DefaultShutdownTimeout when zero). It is an async
// job: query jobs may run while it waits for the guest.
type ShutdownRequest struct {
	actors.Request
	Timeout time.Duration
	// Mode says how to ask the guest ("" is acpi).
	Mode domain.ShutdownMode
}

// DestroyRequest kills QEMU: SIGTERM, then SIGKILL after the grace period.
// It preempts: the kill happens at once, and the destroy job runs before any
// queued job.
type DestroyRequest struct {
	actors.Request
}

// PauseRequest stops the guest's vCPUs (QMP "stop").
type PauseRequest struct{ actors.Request }

// ResumeRequest restarts the guest's vCPUs (QMP "cont").
type ResumeRequest struct{ actors.Request }

// ResetRequest resets the machine (QMP "system_reset").
type ResetRequest struct{ actors.Request }

// QMPRequest sends one raw QMP command as a job. Commands named "query-*"
// are query jobs; all others are modify jobs.
type QMPRequest struct {
	actors.Request
	Execute   string
	Arguments json.RawMessage
}

// AgentRequest runs one guest agent command. The domain forwards it to
// its agent actor, a job of the agent's own lane, which answers the
// sender: a hung agent never holds the domain's lane. Arguments are a
// JSON object or empty.
type AgentRequest struct {
	actors.Request
	Command   string
	Arguments json.RawMessage
}

// QMPReply is the "return" value of a raw QMP command.
type QMPReply struct {
	Return json.RawMessage
}

// JobDone is the reply to a lifecycle job that succeeded.
type JobDone struct {
	Job domain.JobInfo
}

// InfoRequest asks for the domain's Info; answered at once.
type InfoRequest struct{}

// JobsRequest asks for the domain's Jobs; answered at once.
type JobsRequest struct{}

// ExplainWaitRequest asks what the request with RequestID is waiting for.
// It is answered at once with the lane's *actors.Explanation. The API sends it after a
// job wait timed out, to name the holder.
type ExplainWaitRequest struct {
	RequestID string
}

// UpdateSpec replaces the definition; it takes effect at the next start.
// The driver tells it after a define of an existing domain.
type UpdateSpec struct {
	Spec *domain.Spec
}

// PrepareUndefine asks the domain to refuse new jobs because it is about to
// be undefined. It fails unless the domain is shut off and idle.
type PrepareUndefine struct{}

// CancelUndefine reverts PrepareUndefine after an undefine failed.
type CancelUndefine struct{}

// Undefinable is the reply to a successful PrepareUndefine.
type Undefinable struct{}

// ConsoleRequest asks where the serial console socket of a running domain
// is; answered at once with a *ConsoleTarget, or an error when the domain is
// not running or its serial port is not a socket.
type ConsoleRequest struct{}

// ConsoleTarget is the serial console socket of a running domain.
type ConsoleTarget struct {
	Path string
}

// InjectMonitorPanic is a fault-test hook: the domain forwards a
// supervision.InjectPanic to its monitor actor, which panics.
type InjectMonitorPanic struct {
	Reason string
}

// SnapshotRequest runs a snapshot job: Op "create", "revert" or "delete"
// (async jobs), or "list" (a query job, answered with a SnapshotList).
type SnapshotRequest struct {
	actors.Request
	Op   string
	Name string
}

// SnapshotList is the reply to a SnapshotRequest of Op "list".
type SnapshotList struct {
	Snapshots []domain.Snapshot
}

// AbortJobRequest asks the async job to stop cleanly (job-cancel for a
// QEMU job); the reply comes once the request is made, not when the job
// has ended.
type AbortJobRequest struct{ actors.Request }

// AttachDiskRequest hot-plugs the file at Path (checked by the driver
// against its policy) into the running QEMU: a modify job.
type AttachDiskRequest struct {
	actors.Request
	Path     string
	Format   string
	ReadOnly bool
}

// DetachDiskRequest hot-unplugs the disk that Target names (its node,
// device id or path) and waits up to Timeout (DefaultDetachTimeout when
// zero) for the guest to release it.
type DetachDiskRequest struct {
	actors.Request
	Target  string
	Timeout time.Duration
}

// AttachNICRequest hot-plugs a NIC of Type ("user") with MAC and the
// resolved Forwards (host port never 0) into the running QEMU.
type AttachNICRequest struct {
	actors.Request
	Type     string
	MAC      string
	Forwards []string
}

// DetachNICRequest hot-unplugs the NIC that Target names (its MAC, device
// id or index) and waits up to Timeout for the guest to release it.
type DetachNICRequest struct {
	actors.Request
	Target  string
	Timeout time.Duration
}

// DeviceReply is the reply to a hot-plug job: the device it attached or
// detached.
type DeviceReply struct {
	Disk *domain.LiveDisk
	NIC  *domain.LiveNIC
}
