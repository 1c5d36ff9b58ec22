package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

// jobSide is one system of the job round trip: what one job costs it.
type jobSide struct {
	name   string
	run    func() error
	jobs   int
	wall   time.Duration
	allocs uint64
	bytes  uint64
	s      Samples
}

// batch runs n jobs back to back and adds their time and allocations.
// The allocations are the whole process's (runtime.MemStats), as
// testing.AllocsPerRun counts them: nothing else runs meanwhile.
func (j *jobSide) batch(n int) error {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	t0 := time.Now()
	for i := 0; i < n; i++ {
		if err := j.run(); err != nil {
			return fmt.Errorf("%s: job %d: %w", j.name, j.jobs+i, err)
		}
	}
	wall := time.Since(t0)
	runtime.ReadMemStats(&m1)
	j.jobs += n
	j.wall += wall
	j.allocs += m1.Mallocs - m0.Mallocs
	j.bytes += m1.TotalAlloc - m0.TotalAlloc
	return nil
}

// timed runs n jobs and keeps each one's latency.
func (j *jobSide) timed(n int) error {
	for i := 0; i < n; i++ {
		t := time.Now()
		if err := j.run(); err != nil {
			return fmt.Errorf("%s: %w", j.name, err)
		}
		j.s.Add(time.Since(t))
	}
	return nil
}

func (j *jobSide) perJob() time.Duration { return j.wall / time.Duration(j.jobs) }
func (j *jobSide) allocsPerJob() float64 { return float64(j.allocs) / float64(j.jobs) }
func (j *jobSide) bytesPerJob() float64  { return float64(j.bytes) / float64(j.jobs) }

// JobRoundTrip measures one raw QMP job (query-status through Domain.QMP)
// on a simulated monitor that answers at once, so that the actors are all
// there is: time and allocations per job, against the lock baseline on
// the same simulated monitor.
func JobRoundTrip(ctx context.Context, o Options) (*Section, error) {
	const key = "job"
	sec := &Section{Key: key}
	dir, err := shortDir("vb-job")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	d, err := driver.Open(ctx, driver.Config{
		StateDir:    dir,
		Launcher:    launchSimulated,
		DialMonitor: func(string) monitor.Conn { return monitor.NewSimulated(0) },
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		c, cancel := withTimeout(30 * time.Second)
		defer cancel()
		_ = d.Domain("job").Destroy(c)
		_ = d.Close(c)
	}()
	if _, err := d.Define(ctx, &domain.Spec{Name: "job", Machine: "none"}); err != nil {
		return nil, err
	}
	vm := d.Domain("job")
	if err := vm.Start(ctx, driver.StartOptions{}); err != nil {
		return nil, err
	}
	l, err := openLockOn(func() monitor.Conn { return monitor.NewSimulated(0) })
	if err != nil {
		return nil, err
	}
	defer l.Close()
	if err := l.Define(ctx, "job"); err != nil {
		return nil, err
	}
	if err := l.Start(ctx, "job"); err != nil {
		return nil, err
	}
	// The simulated monitor alone, for the notes: what of a job is the
	// simulation's own (it parses the command's JSON).
	sim := monitor.NewSimulated(0)
	defer sim.Disconnect()

	cmd := json.RawMessage(`{"execute":"query-status"}`)
	sides := []*jobSide{
		{name: "vmsup", run: func() error { _, err := vm.QMP(ctx, cmd); return err }},
		{name: "lock baseline", run: func() error { _, err := l.D.QMP(ctx, "job", cmd); return err }},
		{name: "simulated monitor", run: func() error { _, err := sim.RunContext(ctx, cmd); return err }},
	}
	for _, s := range sides { // warm up: pools, maps and stacks grow here
		if err := s.batch(2000); err != nil {
			return nil, err
		}
		*s = jobSide{name: s.name, run: s.run}
	}
	const rounds, batch = 10, 5000
	o.logf("job: %d rounds of %d query-status jobs per side, sides alternating", rounds, batch)
	for r := 0; r < rounds; r++ {
		for k := range sides {
			s := sides[(k+r)%len(sides)]
			if err := s.batch(batch); err != nil {
				return nil, err
			}
			if err := s.timed(batch / 10); err != nil {
				return nil, err
			}
		}
	}
	v, lk, sm := sides[0], sides[1], sides[2]
	sec.Rows = []Row{
		{Measure: "job round trip, simulated QMP (actors only), time per job", V: Secs(v.perJob()), C: Secs(lk.perJob()), Fmt: DurFmt,
			Against: "lock baseline", Goal: AtMost(12e-6, "≤ 12 µs")},
		{Measure: "job round trip, simulated QMP (actors only), allocations per job", V: v.allocsPerJob(), C: lk.allocsPerJob(), Fmt: CountFmt,
			Against: "lock baseline", Goal: AtMost(15, "≤ 15")},
		{Measure: "job round trip, simulated QMP (actors only), bytes allocated per job", V: v.bytesPerJob(), C: lk.bytesPerJob(), Fmt: BytesFmt,
			Against: "lock baseline"},
	}
	sec.Notes = append(sec.Notes,
		fmt.Sprintf("Method: one domain per system on simulated processes, each with a monitor.Simulated that answers at once (no latency), no trace recorder. "+
			"`Domain.QMP` with `{\"execute\":\"query-status\"}` (the lock baseline: its QMP job, libvirt's qemuDomainMonitorCommand) from one caller whose context has a deadline, "+
			"so Ask adds no timer of its own. %d rounds per side, the sides alternating; each round is %d jobs back to back, timed as a whole and counted with runtime.MemStats "+
			"(Mallocs and TotalAlloc, the whole process, as testing.AllocsPerRun counts), then %d jobs timed one by one for the quantiles. %d jobs per side in all.",
			rounds, batch, batch/10, v.jobs),
		fmt.Sprintf("Figures: vmsup %s per job (p50 %s, p99 %s), %.1f allocations and %s; lock baseline %s per job (p50 %s, p99 %s), %.1f allocations and %s. "+
			"Both counts include the simulated monitor's own work: alone it takes %s, %.1f allocations and %s per command (it decodes the command's JSON).",
			Dur(v.perJob()), Dur(v.s.P50()), Dur(v.s.P99()), v.allocsPerJob(), Bytes(v.bytesPerJob()),
			Dur(lk.perJob()), Dur(lk.s.P50()), Dur(lk.s.P99()), lk.allocsPerJob(), Bytes(lk.bytesPerJob()),
			Dur(sm.perJob()), sm.allocsPerJob(), Bytes(sm.bytesPerJob())),
		"Where the allocations are: `go test -run '^$' -bench 'JobRoundTrip/off' -benchmem -memprofile mem.prof -memprofilerate 1 ./driver/`, then "+
			"`go tool pprof -sample_index=alloc_objects -top mem.prof`. `actors.Ask`, which carries the job's request to the domain and its reply back, makes 3 of them "+
			"(its reply PID, protoactor's cache of the PID's process, and the message envelope; `go test -run '^$' -bench Ask -benchmem ./actors/`).",
	)
	return sec, nil
}
