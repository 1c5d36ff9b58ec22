package protocol_test

import (
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/internal/protocol"
	"github.com/vmsup/vmsup/tests/testkit"
)

// TestMessagesCrossTheWire: every message of the domain actor's protocol,
// and the replies the API gets from the domain, are plain data that
// survive JSON, so that they can cross a process boundary (protoactor's
// remote) later.
func TestMessagesCrossTheWire(t *testing.T) {
	req := actors.Request{RequestID: "5f3a1c-1", ParentID: "5f3a1c-2", Owner: "api start", Expires: time.Date(2026, 12, 4, 3, 0, 30, 0, time.UTC)}
	t0 := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	job := domain.JobInfo{ID: 17, Name: "shutdown", Kind: domain.JobAsync, Owner: "api shutdown", RequestID: "5f3a1c-9",
		Enqueued: t0, Started: t0.Add(time.Millisecond), Ended: t0.Add(time.Second), Step: "wait",
		QMP: &domain.QMPInFlight{Command: "system_powerdown", Since: t0.Add(2 * time.Millisecond)}, Error: "x",
		Mask: "query|destroy|suspend|abort", Report: &domain.JobProgress{Phase: "running", Current: 1, Total: 2, Percent: new(float64), Text: "running, 50%", At: t0}}
	data, err := os.ReadFile("../../testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	spec, err := domain.ParseSpec(data)
	if err != nil {
		t.Fatal(err)
	}
	testkit.CheckWireAll(t, ".",
		&protocol.StartRequest{Request: req, Paused: true},
		&protocol.ShutdownRequest{Request: req, Timeout: time.Minute, Mode: domain.ShutdownAuto},
		&protocol.DestroyRequest{Request: req},
		&protocol.PauseRequest{Request: req},
		&protocol.ResumeRequest{Request: req},
		&protocol.ResetRequest{Request: req},
		&protocol.AttachDiskRequest{Request: req, Path: "/img/data.qcow2", Format: "qcow2", ReadOnly: true},
		&protocol.DetachDiskRequest{Request: req, Target: "hot0", Timeout: 5 * time.Second},
		&protocol.AttachNICRequest{Request: req, Type: "user", MAC: "52:54:00:12:34:56", Forwards: []string{"tcp::2222-:22"}},
		&protocol.DetachNICRequest{Request: req, Target: "hnic1", Timeout: time.Second},
		&protocol.DeviceReply{Disk: &domain.LiveDisk{Node: "hot0", Path: "/img/d", Format: "raw", Bus: "hp0", Hotplugged: true},
			NIC: &domain.LiveNIC{Device: "hnic1", Netdev: "hnet1", Type: "user", MAC: "52:54:00:12:34:56", Forwards: []string{"tcp::2222-:22"}}},
		&protocol.QMPRequest{Request: req, Execute: "query-status", Arguments: json.RawMessage(`{"a":[1,"b"]}`)},
		&protocol.AgentRequest{Request: req, Command: "guest-exec", Arguments: json.RawMessage(`{"path":"/bin/true"}`)},
		&protocol.QMPReply{Return: json.RawMessage(`{"status":"running","running":true}`)},
		&protocol.JobDone{Job: job},
		&protocol.InfoRequest{},
		&protocol.JobsRequest{},
		&protocol.ExplainWaitRequest{RequestID: "5f3a1c-1"},
		&protocol.UpdateSpec{Spec: spec},
		&protocol.PrepareUndefine{},
		&protocol.CancelUndefine{},
		&protocol.Undefinable{},
		&protocol.ConsoleRequest{},
		&protocol.ConsoleTarget{Path: "/run/vmsup/web1/console.sock"},
		&protocol.InjectMonitorPanic{Reason: "test"},
		&protocol.SnapshotRequest{Request: req, Op: "create", Name: "before-upgrade"},
		&protocol.SnapshotList{Snapshots: []domain.Snapshot{{Name: "s1", State: domain.SnapshotComplete, Created: time.Unix(1700000000, 0).UTC(), VMState: "disk0", Disks: []string{"disk0"}, Job: 3}}},
		&protocol.AbortJobRequest{Request: req},
	)
	// The replies the API reads.
	for _, reply := range []any{
		&domain.Info{Name: "web1", UUID: spec.UUID, State: domain.StateRunning, Reason: domain.ReasonBooted, PID: 42,
			Job: &job, Queued: 2, Restarts: 1, Control: &domain.Control{State: domain.ControlOK},
			Live: &domain.Live{Disks: []domain.LiveDisk{{Node: "disk0", Path: "/img/a", Format: "raw"}}, NICs: []domain.LiveNIC{{Device: "nic0", Netdev: "net0", Type: "user", MAC: "52:54:00:12:34:56"}},
				Ports: []string{"hp0"}, Next: 1},
			NICs: []domain.NIC{{Index: 0, Type: "tap", MAC: "52:54:00:12:34:56", Tap: "vmsup0", Bridge: "br0", GuestIP: "10.0.2.15",
				Forwards: []domain.PortForward{{Field: "networks[0].forwards[0]", Proto: "tcp", HostAddr: "127.0.0.1", HostPort: 2222, GuestAddr: "10.0.2.15", GuestPort: 22}}}},
			Agent:       &domain.AgentStatus{State: domain.AgentAvailable, Version: "7.2.0", Since: t0},
			Confinement: &domain.Confinement{User: "vmsup-qemu", UID: 998, Cgroup: "/sys/fs/cgroup/vmsup-1/web1", MemoryMax: 1 << 30, Note: "n"},
			Problem:     "definition web1.json: unexpected EOF"},
		&domain.Jobs{Domain: "web1", Active: &job, Async: &job, Queued: []domain.JobInfo{job}, Recent: []domain.JobInfo{job}},
		&actors.Explanation{Lane: `domain "web1"`, Running: true, Holder: &actors.JobInfo{ID: 3, Name: "qmp", Kind: actors.JobQuery, Owner: "api qmp",
			Steps: []string{"qmp"}, Step: "qmp", Call: actors.Call{Command: "query-status"}}, Queued: 1, Paused: "QMP is not connected yet",
			Async: &actors.JobInfo{ID: 2, Name: "snapshot-save", Kind: actors.JobAsync, Owner: "api snapshot"}, Decision: "reset waits: snapshot-save allows query, destroy, suspend, abort"},
	} {
		testkit.CheckWire(t, reply)
	}
}
