package domain

import (
	"testing"
	"time"
)

// Fresh gives the caller its own copy, with and without a job, and the
// Control age recomputed at the time given.
func TestInfoFreshIsACopyRefreshedAtNow(t *testing.T) {
	since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := since.Add(1500 * time.Millisecond)
	idle := &Info{Name: "a", State: StateRunning, Control: &Control{State: ControlOK}}
	busy := &Info{Name: "b", State: StateRunning, Control: &Control{State: ControlOccupied, Since: since},
		Job: &JobInfo{Name: "qmp", QMP: &QMPInFlight{Command: "query-status"}}}
	for _, in := range []*Info{idle, busy, {Name: "c"}} {
		got := in.Fresh(now)
		if got == in || got.Name != in.Name || (got.Control == nil) != (in.Control == nil) || (got.Job == nil) != (in.Job == nil) {
			t.Fatalf("Fresh(%s) = %+v", in.Name, got)
		}
		if got.Control != nil && got.Control == in.Control {
			t.Errorf("Fresh(%s) shares Control", in.Name)
		}
		if got.Job != nil && (got.Job == in.Job || got.Job.QMP == in.Job.QMP || got.Job.QMP.Command != "query-status") {
			t.Errorf("Fresh(%s) shares or loses the job: %+v", in.Name, got.Job)
		}
	}
	got := busy.Fresh(now)
	if got.Control.Millis != 1500 || busy.Control.Millis != 0 {
		t.Errorf("Control age %d ms (published %d), want 1500 in the copy only", got.Control.Millis, busy.Control.Millis)
	}
	got.Job.QMP.Command = "changed"
	if busy.Job.QMP.Command != "query-status" {
		t.Error("changing the copy changed the published snapshot")
	}
}
