package bench

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Step is one group of rows.
type Step struct {
	Key   string
	Title string
	Run   func(ctx context.Context, o Options) (*Section, error)
	// Budget bounds the step: past it the step is reported as failed,
	// its QEMUs are killed and the run goes on.
	Budget time.Duration
}

// Steps are every group of rows, in table order.
func Steps() []Step {
	return []Step{
		{Key: "job", Title: "Job round trip on simulated QMP: the actors alone", Run: JobRoundTrip, Budget: 2 * time.Minute},
		{Key: "floor", Title: "1. The floor: raw QMP against vmsup's API", Run: Floor, Budget: 2 * time.Minute},
		{Key: "info", Title: "2. State queries in-process", Run: InfoInProcess, Budget: time.Minute},
		{Key: "daemon", Title: "2. State queries over the daemon socket", Run: InfoDaemon, Budget: 2 * time.Minute},
		{Key: "contention", Title: "3. The lock baseline", Run: Contention, Budget: 3 * time.Minute},
		{Key: "scale", Title: "4. Scale: 10,000 simulated domains", Run: Scale, Budget: 5 * time.Minute},
		{Key: "real100", Title: "4. Scale: 100 real QEMUs", Run: Real100, Budget: 2 * time.Minute},
		{Key: "lifecycle", Title: "5. Real lifecycle", Run: Lifecycle, Budget: time.Minute},
		{Key: "trace", Title: "Trace: the cost of tracing on a job round trip", Run: TraceCost, Budget: 2 * time.Minute},
		{Key: "overlay", Title: "6. Guests: define with an overlay", Run: Overlay, Budget: 2 * time.Minute},
		{Key: "ssh", Title: "6. Guests: up to SSH", Run: UpToSSH, Budget: 12 * time.Minute},
		{Key: "security", Title: "7. Security: the cost of the protections", Run: Security, Budget: 3 * time.Minute},
		{Key: "snapshot", Title: "8. Snapshots: Info while a snapshot runs", Run: InfoDuringSnapshot, Budget: 3 * time.Minute},
	}
}

// Run runs the steps named in only (all when empty) and returns the
// report. A step that fails becomes a row that says why.
func Run(ctx context.Context, o Options, only []string) (*Report, error) {
	want := map[string]bool{}
	for _, k := range only {
		want[strings.TrimSpace(k)] = true
	}
	known := map[string]bool{}
	for _, s := range Steps() {
		known[s.Key] = true
	}
	for k := range want {
		if !known[k] {
			return nil, fmt.Errorf("unknown row group %q (have %s)", k, strings.Join(keys(), ", "))
		}
	}
	rep := &Report{Machine: DetectMachine()}
	before := StartOthers()
	time.Sleep(time.Second)
	rep.OthersBefore = before.Cores()
	if rep.OthersBefore > 0.2 {
		o.logf("warning: other processes keep %.2f cores busy; the figures will be noisy", rep.OthersBefore)
	}
	rep.Started = time.Now()
	defer ReapAll()
	for _, s := range Steps() {
		if len(want) > 0 && !want[s.Key] {
			continue
		}
		o.logf("== %s", s.Title)
		t0 := time.Now()
		others := StartOthers()
		sec, err := runBounded(ctx, s, o)
		ReapAll()
		if err != nil {
			o.logf("%s: failed: %v", s.Key, err)
			sec = &Section{Key: s.Key, Rows: []Row{{Section: s.Key, Measure: s.Title, Skipped: "failed: " + oneLine(err.Error()), Repro: o.repro(s.Key)}}}
		}
		sec.Title = s.Title // the step list titles every section
		sec.Took, sec.Others = time.Since(t0), others.Cores()
		o.logf("   %s took %s; other processes kept %.2f cores busy meanwhile", s.Key, sec.Took.Round(100*time.Millisecond), sec.Others)
		rep.Sections = append(rep.Sections, sec)
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
	}
	rep.Took = time.Since(rep.Started)
	return rep, nil
}

func keys() []string {
	var out []string
	for _, s := range Steps() {
		out = append(out, s.Key)
	}
	return out
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.ReplaceAll(s, "|", "/")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// runBounded runs a step within its budget. A step past its budget is
// abandoned: its goroutines may linger, but ReapAll kills its QEMUs,
// which ends any wait on them.
func runBounded(ctx context.Context, s Step, o Options) (*Section, error) {
	ctx, cancel := context.WithTimeout(ctx, s.Budget)
	defer cancel()
	type result struct {
		sec *Section
		err error
	}
	ch := make(chan result, 1)
	go func() {
		sec, err := s.Run(ctx, o)
		ch <- result{sec, err}
	}()
	select {
	case r := <-ch:
		return r.sec, r.err
	case <-ctx.Done():
		select {
		case r := <-ch:
			return r.sec, r.err
		case <-time.After(10 * time.Second):
			return nil, fmt.Errorf("did not finish within its budget of %s", s.Budget)
		}
	}
}
