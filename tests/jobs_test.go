package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/vm"
	"github.com/vmsup/vmsup/driver"
)

// jobLog records every job's start and release from the job hooks.
type jobLog struct {
	active     atomic.Int32
	violations atomic.Int32
	mu         sync.Mutex
	started    []uint64
}

func (l *jobLog) hooks() vm.JobHooks {
	return vm.JobHooks{
		Started: func(_ string, j domain.JobInfo) {
			if l.active.Add(1) != 1 {
				l.violations.Add(1)
			}
			// Hold the job a little so that overlaps would be seen.
			time.Sleep(200 * time.Microsecond)
			l.mu.Lock()
			l.started = append(l.started, j.ID)
			l.mu.Unlock()
		},
		Released: func(string, domain.JobInfo) { l.active.Add(-1) },
	}
}

func (l *jobLog) startedIDs() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]uint64(nil), l.started...)
}

// TestJobInvariant: 100 goroutines issue mixed jobs on one domain. No two
// jobs may overlap, and jobs start in the order they were queued.
func TestJobInvariant(t *testing.T) {
	log := &jobLog{}
	d := openDriver(t, func(c *driver.Config) { c.JobHooks = log.hooks() })
	dom := d.define(t, "busy", "none")
	if err := dom.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("start: %v", err)
	}
	ops := []func(ctx context.Context) error{
		dom.Pause,
		dom.Resume,
		dom.Reset,
		func(ctx context.Context) error {
			_, err := dom.QMP(ctx, json.RawMessage(`{"execute":"query-status"}`))
			return err
		},
		func(ctx context.Context) error {
			_, err := dom.QMP(ctx, json.RawMessage(`{"execute":"query-name"}`))
			return err
		},
		func(ctx context.Context) error { _, err := dom.Info(ctx); return err },
		func(ctx context.Context) error { _, err := dom.Jobs(ctx); return err },
	}
	var wg sync.WaitGroup
	var calls, failures atomic.Int32
	for g := 0; g < 100; g++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			r := rand.New(rand.NewSource(seed))
			for i := 0; i < 5; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				err := ops[r.Intn(len(ops))](ctx)
				cancel()
				calls.Add(1)
				// pause/resume may be refused by state; anything else is a bug.
				if err != nil && !strings.Contains(err.Error(), "paused") {
					failures.Add(1)
					t.Errorf("job failed: %v", err)
				}
			}
		}(int64(g))
	}
	wg.Wait()
	if v := log.violations.Load(); v != 0 {
		t.Fatalf("%d times a job started while another was active", v)
	}
	ids := log.startedIDs()
	if len(ids) < 100 {
		t.Fatalf("only %d jobs ran out of %d calls", len(ids), calls.Load())
	}
	if !sort.SliceIsSorted(ids, func(i, j int) bool { return ids[i] < ids[j] }) {
		t.Fatalf("jobs did not start in FIFO order: %v", ids)
	}
	in := expectStateIn(t, dom, domain.StateRunning, domain.StatePaused)
	if in.Job != nil || in.Queued != 0 {
		t.Fatalf("lane not empty after all calls: job %+v, queued %d", in.Job, in.Queued)
	}
}

func expectStateIn(t testing.TB, dom *driver.Domain, states ...domain.State) *domain.Info {
	t.Helper()
	in, err := dom.Info(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range states {
		if in.State == s {
			return in
		}
	}
	t.Fatalf("state %s, want one of %v", in.State, states)
	return nil
}

// stuckDomain starts a domain, SIGSTOPs its QEMU and starts a query-status
// job that hangs until the QMP deadline. It returns the domain and the
// channel on which the stuck call's error arrives.
func stuckDomain(t *testing.T, d *testDriver, name string) (*driver.Domain, *domain.Info, chan error) {
	t.Helper()
	dom := d.define(t, name, "none")
	if err := dom.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("start: %v", err)
	}
	in := expectState(t, dom, domain.StateRunning, domain.ReasonBooted)
	if err := syscall.Kill(in.PID, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(in.PID, syscall.SIGCONT) })
	stuck := make(chan error, 1)
	go func() {
		_, err := dom.QMP(ctxT(t, 30*time.Second), json.RawMessage(`{"execute":"query-status"}`))
		stuck <- err
	}()
	// Wait until the job is in QMP.
	deadline := time.Now().Add(5 * time.Second)
	for {
		in, err := dom.Info(ctxT(t, time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if in.Job != nil && in.Job.QMP != nil && in.Job.QMP.Command == "query-status" {
			return dom, in, stuck
		}
		if time.Now().After(deadline) {
			t.Fatalf("job never reached QMP: %+v", in.Job)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestJobWaitTimeoutNamesHolder: a job queued behind one stuck in QMP fails
// at its caller's deadline, and the error names the holder.
func TestJobWaitTimeoutNamesHolder(t *testing.T) {
	d := openDriver(t, nil)
	dom, held, stuck := stuckDomain(t, d, "holder")
	start := time.Now()
	err := dom.Reset(ctxT(t, 500*time.Millisecond))
	waited := time.Since(start)
	var we *domain.JobWaitError
	if !errors.As(err, &we) {
		t.Fatalf("reset behind a stuck job: err = %v, want *domain.JobWaitError", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error does not wrap context.DeadlineExceeded: %v", err)
	}
	if waited > 2*time.Second {
		t.Fatalf("reset returned after %s, its deadline was 500ms", waited)
	}
	msg := err.Error()
	for _, want := range []string{
		`domain "holder": timed out after`,
		fmt.Sprintf(`held by job %d "qmp" (api qmp, trace %s) for`, held.Job.ID, held.Job.RequestID),
		`in QMP "query-status" for`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not contain %q", msg, want)
		}
	}
	if we.Holder == nil || we.Holder.ID != held.Job.ID || we.Holder.Kind != actors.JobQuery {
		t.Errorf("holder = %+v, want job %d (query)", we.Holder, held.Job.ID)
	}
	// The stuck command itself fails at its QMP deadline, naming it.
	select {
	case err := <-stuck:
		if err == nil || !strings.Contains(err.Error(), `"query-status"`) || !strings.Contains(err.Error(), "timed out") {
			t.Fatalf("stuck job error = %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("stuck QMP job never returned")
	}
}

// TestCancelledWhileQueuedNeverRuns: a caller that gives up while its job is
// queued leaves the queue; the job never starts later.
func TestCancelledWhileQueuedNeverRuns(t *testing.T) {
	log := &jobLog{}
	d := openDriver(t, func(c *driver.Config) { c.JobHooks = log.hooks() })
	dom, held, stuck := stuckDomain(t, d, "cancel")
	ctx, cancel := context.WithCancel(context.Background())
	resetErr := make(chan error, 1)
	go func() { resetErr <- dom.Reset(ctx) }()
	// Wait until it is queued, then cancel.
	deadline := time.Now().Add(5 * time.Second)
	for {
		in, err := dom.Info(ctxT(t, time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if in.Queued == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("reset never queued")
		}
		time.Sleep(2 * time.Millisecond)
	}
	cancel()
	err := <-resetErr
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled reset: %v", err)
	}
	in := expectState(t, dom, domain.StateRunning, domain.ReasonBooted)
	if in.Queued != 0 {
		t.Fatalf("cancelled job still queued: %d", in.Queued)
	}
	// Release the holder and let the lane drain.
	_ = syscall.Kill(in.PID, syscall.SIGCONT)
	<-stuck
	if _, err := dom.QMP(ctxT(t, 10*time.Second), json.RawMessage(`{"execute":"query-status"}`)); err != nil {
		t.Fatalf("query after release: %v", err)
	}
	jobs, err := dom.Jobs(ctxT(t, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var resetJob *domain.JobInfo
	for i := range jobs.Recent {
		if jobs.Recent[i].Name == "reset" {
			resetJob = &jobs.Recent[i]
		}
	}
	if resetJob == nil || !resetJob.Started.IsZero() || !strings.Contains(resetJob.Error, "left the queue") {
		t.Fatalf("reset job record = %+v, want never started and left the queue", resetJob)
	}
	for _, id := range log.startedIDs() {
		if id == resetJob.ID {
			t.Fatalf("cancelled job %d ran", id)
		}
	}
	_ = held
}

// TestDestroyPreempts: with QEMU stopped and a QMP job hung, destroy returns
// within the grace period plus a margin, and the hung job fails.
func TestDestroyPreempts(t *testing.T) {
	d := openDriver(t, nil) // DestroyGrace 2s
	dom, held, stuck := stuckDomain(t, d, "preempt")
	// A job queued behind the hung one must not delay destroy either.
	queued := make(chan error, 1)
	go func() { queued <- dom.Pause(ctxT(t, 30*time.Second)) }()
	start := time.Now()
	if err := dom.Destroy(ctxT(t, 30*time.Second)); err != nil {
		t.Fatalf("destroy: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second+3*time.Second {
		t.Fatalf("destroy took %s, grace is 2s", took)
	}
	expectState(t, dom, domain.StateShutoff, domain.ReasonDestroyed)
	if processAlive(held.PID) {
		t.Fatalf("QEMU %d alive after destroy", held.PID)
	}
	select {
	case err := <-stuck:
		if err == nil {
			t.Fatal("the hung QMP job succeeded")
		}
		if !strings.Contains(err.Error(), "destroyed by job") && !strings.Contains(err.Error(), "QEMU exited") {
			t.Errorf("hung job error does not say why: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the hung QMP job did not return after destroy")
	}
	select {
	case err := <-queued:
		if err == nil {
			t.Fatal("pause queued behind destroy succeeded on a dead domain")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("queued pause did not return after destroy")
	}
}

// TestInfoFastWhileStuck: Info is answered at once while a job is stuck in
// QMP.
func TestInfoFastWhileStuck(t *testing.T) {
	d := openDriver(t, nil)
	dom, _, _ := stuckDomain(t, d, "fastinfo")
	var lat []time.Duration
	for i := 0; i < 50; i++ {
		start := time.Now()
		in, err := dom.Info(ctxT(t, time.Second))
		lat = append(lat, time.Since(start))
		if err != nil {
			t.Fatal(err)
		}
		if in.Job == nil || in.Job.QMP == nil {
			t.Fatalf("job no longer stuck at call %d", i)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if p95 := lat[len(lat)*95/100]; p95 > 10*time.Millisecond {
		t.Fatalf("Info p95 %s while a job is stuck in QMP, want < 10ms (all: %v)", p95, lat)
	}
	infos, err := d.List(ctxT(t, time.Second))
	if err != nil || len(infos) != 1 || infos[0].Job == nil {
		t.Fatalf("list while stuck = %+v, %v", infos, err)
	}
}

// TestDestroyDuringStart: destroy sent while start is still running ends
// with shutoff/destroyed and no QEMU left, whatever step start was at.
func TestDestroyDuringStart(t *testing.T) {
	d := openDriver(t, nil)
	dom := d.define(t, "racy", "none")
	for i := 0; i < 5; i++ {
		startErr := make(chan error, 1)
		go func() { startErr <- dom.Start(ctxT(t, 30*time.Second), driver.StartOptions{}) }()
		time.Sleep(time.Duration(i) * 15 * time.Millisecond)
		err := dom.Destroy(ctxT(t, 30*time.Second))
		if err != nil && !errors.Is(err, domain.ErrNotRunning) {
			t.Fatalf("round %d: destroy: %v", i, err)
		}
		<-startErr
		if err != nil { // destroy arrived before start was queued: clean up
			if err := dom.Destroy(ctxT(t, 30*time.Second)); err != nil {
				t.Fatalf("round %d: second destroy: %v", i, err)
			}
		}
		in := expectState(t, dom, domain.StateShutoff, domain.ReasonDestroyed)
		if in.PID != 0 {
			t.Fatalf("round %d: pid %d after destroy", i, in.PID)
		}
	}
}

// TestJobStepsAreShown: a job's steps are data. The start job lists its
// steps in the order they ran and renders its progress; a one-command job
// is a one-step job.
func TestJobStepsAreShown(t *testing.T) {
	d := openDriver(t, nil)
	dom := d.define(t, "stepped", "none")
	if err := dom.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("start: %v", err)
	}
	if err := dom.Pause(ctxT(t, 10*time.Second)); err != nil {
		t.Fatalf("pause: %v", err)
	}
	js, err := dom.Jobs(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]domain.JobInfo{}
	for _, j := range js.Recent {
		byName[j.Name] = j
	}
	start, pause := byName["start"], byName["pause"]
	if got, want := strings.Join(start.Steps, ","), "prepare,spawn,attach,query-status,cont"; got != want || start.Step != "cont" {
		t.Errorf("start job steps %q (last %q), want %q ending at cont", got, start.Step, want)
	}
	if want := "start: prepare → spawn → attach → query-status → cont"; start.Progress != want {
		t.Errorf("start job progress %q, want %q", start.Progress, want)
	}
	if strings.Join(pause.Steps, ",") != "stop" || pause.Progress != "pause: stop" || pause.Error != "" {
		t.Errorf("pause job %+v, want the one step stop", pause)
	}
}
