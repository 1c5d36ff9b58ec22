package protocol_test

import (
	"os"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/driver/internal/protocol"
	"github.com/vmsup/vmsup/supervision"
	"github.com/vmsup/vmsup/tests/testkit"
)

// TestMessagesCrossTheWire: every message of the driver actor's protocol,
// and the replies the API gets from the driver, are plain data that
// survive JSON, so that they can cross a process boundary (protoactor's
// remote) later. A domain's PID is data too: protoactor's remote sends it.
func TestMessagesCrossTheWire(t *testing.T) {
	req := actors.Request{RequestID: "5f3a1c-1", ParentID: "5f3a1c-2", Owner: "api define", Expires: time.Date(2026, 12, 4, 3, 0, 30, 0, time.UTC)}
	data, err := os.ReadFile("../../../domain/testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	spec, err := domain.ParseSpec(data)
	if err != nil {
		t.Fatal(err)
	}
	testkit.CheckWireAll(t, ".",
		&protocol.InjectPanicIn{Domain: "web1", InjectPanic: supervision.InjectPanic{Reason: "test"}},
		&protocol.DefineRequest{Request: req, Spec: spec, Force: true},
		&protocol.UndefineRequest{Request: req, Name: "web1"},
		&protocol.Undefined{Name: "web1"},
		&protocol.LookupRequest{Request: req, Name: "web1"},
		&protocol.DomainRef{Name: "web1", UUID: spec.UUID, PID: actor.NewPID("host-a:8090", "driver/web1@1")},
		&protocol.ListRequest{},
		&protocol.JobsRequest{},
		&protocol.ExplainRequest{RequestID: "5f3a1c-1"},
	)
	t0 := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	job := actors.JobInfo{ID: 3, Name: "define", Kind: actors.JobModify, Owner: "api define", RequestID: "5f3a1c-1",
		Enqueued: t0, Started: t0.Add(time.Millisecond), Ended: t0.Add(2 * time.Millisecond),
		Steps: []string{"write", "register"}, Step: "write", Call: actors.Call{Command: "x", Since: t0}, Error: "x"}
	for _, reply := range []any{
		&driver.DefineResult{Name: "web1", UUID: spec.UUID, Created: true},
		&actors.Explanation{Lane: "driver", Running: true, Holder: &job, Queued: 2, Paused: "x", Async: &job, Decision: "define waits: x allows query"},
		&actors.LaneSnapshot{Active: &job, Async: &job, Queued: []actors.JobInfo{job}, Recent: []actors.JobInfo{job}, Paused: "x"},
	} {
		testkit.CheckWire(t, reply)
	}
}
