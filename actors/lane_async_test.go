package actors

import (
	"context"
	"strings"
	"testing"
	"time"
)

// An async job's progress and mask are data in the lane's snapshot, and a
// job its mask refuses times out with an error that names the async job,
// its progress and the mask's decision.
func TestLaneAsyncProgressAndMaskDecision(t *testing.T) {
	f := newFixture(t, func(f *fixture) {
		p := NewPlan("snapshot-save", JobAsync,
			Step[*tdata]{Name: "prepare", Do: func(context.Context, Run[*tdata]) error { return nil }},
			Step[*tdata]{Name: "save", Async: true, Do: func(ctx context.Context, r Run[*tdata]) error {
				r.Report(Progress{Phase: "saving", Current: 3 << 20, Total: 12 << 20})
				return f.wait(ctx, r.Data().name)
			}})
		p.Mask = SnapshotAsyncMask
		f.plans["snapshot-save"] = p
	})
	snap := f.submit("snapshot-save", "s", 0)
	f.eventually("progress reported", func() bool { s := f.snapshot(); return s.Async != nil && s.Async.Report != nil })
	s := f.snapshot()
	if s.Async.Mask != SnapshotAsyncMask {
		t.Fatalf("async job's mask = %v, want %v", s.Async.Mask, SnapshotAsyncMask)
	}
	if pct, ok := s.Async.Report.Percent(); !ok || pct != 25 {
		t.Fatalf("percent = %v %v, want 25", pct, ok)
	}
	if got := s.Async.Report.String(); got != "saving, 25% (3.0 MiB of 12.0 MiB)" {
		t.Fatalf("progress text %q", got)
	}
	// A suspend runs beside it; a modify waits until its caller gives up.
	if r := f.get(f.submit("suspend", "p", 0)); r.err != nil {
		t.Fatalf("suspend beside a snapshot: %v", r.err)
	}
	mod := f.submit("modify", "reset", 300*time.Millisecond)
	if r := f.get(mod); r.err == nil {
		t.Fatal("the modify job ran beside the snapshot")
	}
	v, err := f.ask(&explainMsg{RequestID: "req-reset"})
	if err != nil {
		t.Fatal(err)
	}
	x := v.(*Explanation)
	werr := x.Err("reset", 300*time.Millisecond, time.Now(), context.DeadlineExceeded)
	for _, want := range []string{`held by job 1 "snapshot-save"`, "at saving, 25% (3.0 MiB of 12.0 MiB)",
		"; modify waits: snapshot-save allows query, destroy, suspend, abort"} {
		if !strings.Contains(werr.Error(), want) {
			t.Errorf("wait error %q lacks %q", werr, want)
		}
	}
	if x.Queued != 0 {
		t.Fatalf("the refused job is still queued: %+v", x)
	}
	f.open("s")
	if r := f.get(snap); r.err != nil {
		t.Fatal(r.err)
	}
	// A plan that is not async shows no mask.
	if info := f.endedInfos()["p"]; info.Mask != 0 {
		t.Fatalf("suspend job shows mask %v", info.Mask)
	}
}
