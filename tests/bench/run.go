package bench

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// Step is one group of rows.
type Step struct {
	Key string // the -only name
	// Group labels every row of the step in the table ("2 info"); its
	// number, if it has one, also numbers the section's heading.
	Group string
	Title string // the section's heading, without the number
	Run   func(ctx context.Context, o Options) (*Section, error)
	// Budget bounds the step: past it the step is reported as failed,
	// its QEMUs are killed and the run goes on.
	Budget time.Duration
}

// Steps are every group of rows, in table order.
func Steps() []Step {
	return []Step{
		{Key: "job", Group: "job", Title: "Job round trip on simulated QMP: the actors alone", Run: JobRoundTrip, Budget: 2 * time.Minute},
		{Key: "floor", Group: "1 floor", Title: "The floor: raw QMP against vmsup's API", Run: Floor, Budget: 2 * time.Minute},
		{Key: "info", Group: "2 info", Title: "State queries in-process", Run: InfoInProcess, Budget: time.Minute},
		{Key: "daemon", Group: "2 info", Title: "State queries over the daemon socket", Run: InfoDaemon, Budget: 2 * time.Minute},
		{Key: "contention", Group: "3 locks", Title: "The lock baseline", Run: Contention, Budget: 3 * time.Minute},
		{Key: "scale", Group: "4 scale", Title: "Scale: 10,000 simulated domains", Run: Scale, Budget: 5 * time.Minute},
		{Key: "real100", Group: "4 scale", Title: "Scale: 100 real QEMUs", Run: Real100, Budget: 2 * time.Minute},
		{Key: "lifecycle", Group: "5 lifecycle", Title: "Real lifecycle", Run: Lifecycle, Budget: time.Minute},
		{Key: "trace", Group: "trace", Title: "Trace: the cost of tracing on a job round trip", Run: TraceCost, Budget: 2 * time.Minute},
		{Key: "overlay", Group: "6 guests", Title: "Guests: define with an overlay", Run: Overlay, Budget: 2 * time.Minute},
		{Key: "ssh", Group: "6 guests", Title: "Guests: up to SSH", Run: UpToSSH, Budget: 12 * time.Minute},
		{Key: "security", Group: "7 security", Title: "Security: the cost of the protections", Run: Security, Budget: 3 * time.Minute},
		{Key: "snapshot", Group: "8 snapshots", Title: "Snapshots: Info while a snapshot runs", Run: InfoDuringSnapshot, Budget: 3 * time.Minute},
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
	root, err := openRunDir()
	if err != nil {
		return nil, err
	}
	defer o.removeRunDir(root)
	rep.Started = time.Now()
	defer ReapAll() // before the run's directory goes: no QEMU still uses it
	for _, s := range Steps() {
		if len(want) > 0 && !want[s.Key] {
			continue
		}
		o.logf("== %s", s.heading())
		t0 := time.Now()
		others := StartOthers()
		sec, err := runBounded(ctx, s, o)
		ReapAll()
		if err != nil {
			o.logf("%s: failed: %v", s.Key, err)
			sec = &Section{Key: s.Key, Rows: []Row{{Measure: s.Title, Skipped: "failed: " + oneLine(err.Error())}}}
		}
		s.label(sec, o)
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

// heading is the section's heading: the group's number, if it has one,
// then the title.
func (s Step) heading() string {
	if num, _, ok := strings.Cut(s.Group, " "); ok && num != "" && strings.Trim(num, "0123456789") == "" {
		return num + ". " + s.Title
	}
	return s.Title
}

// label gives sec, and each of its rows, what the step list says about
// them: the heading, the rows' group and the command that reproduces them.
// The step functions therefore say only what they measure.
func (s Step) label(sec *Section, o Options) {
	sec.Title = s.heading()
	for i := range sec.Rows {
		sec.Rows[i].Section = s.Group
		sec.Rows[i].Repro = o.repro(s.Key)
	}
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

// runDir, while Run runs, is the directory that holds every step's temp
// dirs (shortDir), so that Run removes what a step abandoned past its
// budget leaves behind, its deferred clean-up never having run.
var runDir atomic.Pointer[string]

// openRunDir makes the run's directory. Its mode is 0711: a daemon run as
// root confines QEMU to an unprivileged user, which must be able to enter
// the directories below it.
func openRunDir() (string, error) {
	root, err := os.MkdirTemp("/tmp", "vbench")
	if err != nil {
		return "", fmt.Errorf("bench: run directory: %w", err)
	}
	if err := os.Chmod(root, 0o711); err != nil {
		os.RemoveAll(root)
		return "", fmt.Errorf("bench: run directory: %w", err)
	}
	runDir.Store(&root)
	return root, nil
}

// removeRunDir removes the run's directory and whatever the steps left in
// it.
func (o Options) removeRunDir(root string) {
	runDir.Store(nil)
	if err := os.RemoveAll(root); err != nil {
		o.logf("warning: %v", err)
	}
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
