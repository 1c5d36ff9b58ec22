package bench

// These Benchmark functions measure one side at a time, for profiling:
//
//	go test ./tests/bench -run '^$' -bench 'Info' -cpuprofile /tmp/info.prof
//
// They compile under `make test` and never run there (no -bench). The
// side-by-side table is tests/bench/cmd/benchtable (`make bench`).

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

func openSystems(b *testing.B, n int) (*Vmsup, *Lock, []string) {
	b.Helper()
	mons := NewMonitors(DefaultLatency)
	v, err := OpenVmsup(mons)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(v.Close)
	l, err := OpenLock(mons)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(l.Close)
	list := names("d", n)
	for _, sys := range []System{v, l} {
		if _, _, err := defineStart(context.Background(), sys, list, 16); err != nil {
			b.Fatal(err)
		}
	}
	return v, l, list
}

func benchSystems(b *testing.B, n int, f func(b *testing.B, sys System, list []string)) {
	v, l, list := openSystems(b, n)
	for _, sys := range []System{v, l} {
		b.Run(sys.Name(), func(b *testing.B) { f(b, sys, list) })
	}
}

// BenchmarkInfo is one Info call on an idle simulated domain.
func BenchmarkInfo(b *testing.B) {
	benchSystems(b, 1, func(b *testing.B, sys System, list []string) {
		ctx := context.Background()
		for b.Loop() {
			if err := sys.Info(ctx, list[0]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkInfoParallel is Info from GOMAXPROCS callers on 16 domains.
func BenchmarkInfoParallel(b *testing.B) {
	benchSystems(b, 16, func(b *testing.B, sys System, list []string) {
		ctx := context.Background()
		var next atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			name := list[int(next.Add(1))%len(list)]
			for pb.Next() {
				if err := sys.Info(ctx, name); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// BenchmarkQMPJob is one raw QMP job (query-status) on a simulated domain
// with 200 µs replies.
func BenchmarkQMPJob(b *testing.B) {
	benchSystems(b, 1, func(b *testing.B, sys System, list []string) {
		ctx := context.Background()
		cmd := json.RawMessage(`{"execute":"query-status"}`)
		for b.Loop() {
			if err := sys.QMP(ctx, list[0], cmd); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkMixed is the contention workload: 16 domains × 4 callers, 90 %
// Info and 10 % jobs.
func BenchmarkMixed(b *testing.B) {
	benchSystems(b, 16, func(b *testing.B, sys System, list []string) {
		ctx := context.Background()
		var next atomic.Int64
		b.SetParallelism(32) // 64 callers on 2 cores
		b.RunParallel(func(pb *testing.PB) {
			i := int(next.Add(1))
			name := list[i%len(list)]
			r := rand.New(rand.NewPCG(uint64(i), 7))
			for pb.Next() {
				if err := mixedOp(ctx, sys, name, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}

// BenchmarkList lists 10,000 domains.
func BenchmarkList(b *testing.B) {
	benchSystems(b, 10000, func(b *testing.B, sys System, list []string) {
		ctx := context.Background()
		for b.Loop() {
			n, err := sys.List(ctx)
			if err != nil || n != len(list) {
				b.Fatal(n, err)
			}
		}
	})
}

func mixedOp(ctx context.Context, sys System, name string, r *rand.Rand) error {
	switch k := r.IntN(20); {
	case k == 0:
		return sys.Reset(ctx, name)
	case k == 1:
		return sys.QMP(ctx, name, json.RawMessage(`{"execute":"query-status"}`))
	default:
		return sys.Info(ctx, name)
	}
}

// TestDurFormat checks the table's number formats (cheap; runs in make
// test).
func TestDurFormat(t *testing.T) {
	for d, want := range map[time.Duration]string{
		450 * time.Nanosecond:    "450 ns",
		17400 * time.Nanosecond:  "17.4 µs",
		2550 * time.Microsecond:  "2.55 ms",
		1234 * time.Millisecond:  "1.23 s",
		410 * time.Microsecond:   "410 µs",
		0:                        "0",
		-time.Second:             "0",
		999999 * time.Nanosecond: "1000 µs",
	} {
		if got := Dur(d); got != want {
			t.Errorf("Dur(%v) = %q, want %q", d, got, want)
		}
	}
	var s Samples
	for i := 1; i <= 100; i++ {
		s.Add(time.Duration(i))
	}
	if s.P50() != 50 || s.P99() != 99 || s.Max() != 100 {
		t.Errorf("quantiles: %v %v %v", s.P50(), s.P99(), s.Max())
	}
	if got := fmt.Sprint(Rate(4300)); got != "4.3k/s" {
		t.Errorf("Rate = %q", got)
	}
}

// BenchmarkJobs100 is jobs back to back on 100 domains, one caller each
// (the scale sweep's middle point).
func BenchmarkJobs100(b *testing.B) { benchJobs(b, 100, true) }

// heapProfile is where BenchmarkJobs10k writes a heap profile of its
// 10,000 domains, defined and started, before the jobs run (go test
// -bench Jobs10k -benchtime 1x ./tests/bench -args -heapprofile heap.prof).
var heapProfile = flag.String("heapprofile", "", "BenchmarkJobs10k: write a heap profile of the idle domains to this file")

// jobCPUProfile is where BenchmarkJobs100 and BenchmarkJobs10k write a CPU
// profile of their timed jobs only, without the set-up that -cpuprofile
// also records (go test -bench Jobs10k -benchtime 100000x ./tests/bench
// -args -jobcpuprofile cpu.prof). Each run of the benchmark overwrites it,
// so it holds the last and longest.
var jobCPUProfile = flag.String("jobcpuprofile", "", "BenchmarkJobs100/10k: write a CPU profile of the timed jobs only to this file")

// BenchmarkJobs10k is the same on 10,000 domains, vmsup only (defining
// the baseline's too would double the set-up): the sweep's last point,
// for a CPU or heap profile of vmsup at scale.
func BenchmarkJobs10k(b *testing.B) { benchJobs(b, ScaleDomains, false) }

// benchJobs runs reset and query-status in turn, back to back, one caller
// per domain, on n domains of vmsup and, when both, of the lock baseline.
func benchJobs(b *testing.B, n int, both bool) {
	run := func(b *testing.B, sys System, list []string) {
		ctx := context.Background()
		var next atomic.Int64
		b.SetParallelism((n + 1) / 2) // n callers on 2 cores
		stop := startJobCPUProfile(b)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := int(next.Add(1))
			name := list[i%len(list)]
			for pb.Next() {
				var err error
				if i++; i%2 == 0 {
					err = sys.Reset(ctx, name)
				} else {
					err = sys.QMP(ctx, name, queryStatus)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
		b.StopTimer()
		stop()
	}
	if both {
		benchSystems(b, n, run)
		return
	}
	v, err := OpenVmsup(NewMonitors(DefaultLatency))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(v.Close)
	list := names("d", n)
	if _, _, err := defineStart(context.Background(), v, list, 32); err != nil {
		b.Fatal(err)
	}
	if *heapProfile != "" {
		runtime.GC()
		if err := writeHeapProfile(*heapProfile); err != nil {
			b.Fatal(err)
		}
	}
	b.Run(v.Name(), func(b *testing.B) { run(b, v, list) })
}

// startJobCPUProfile starts the -jobcpuprofile profile, if asked for, and
// returns what stops it.
func startJobCPUProfile(b *testing.B) (stop func()) {
	if *jobCPUProfile == "" {
		return func() {}
	}
	f, err := os.Create(*jobCPUProfile)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		b.Fatalf("-jobcpuprofile (not with -cpuprofile): %v", err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

// BenchmarkFloor is one query-status on a real QEMU (-machine none)
// through go-qemu's SocketMonitor, vmsup's monitor.Transport and vmsup's
// Domain.QMP, one QEMU each.
func BenchmarkFloor(b *testing.B) {
	ctx := context.Background()
	dir, err := shortDir("vbb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ReapAll(); os.RemoveAll(dir) })
	cmd := []byte(`{"execute":"query-status"}`)
	b.Run("raw-go-qemu", func(b *testing.B) {
		q, sm, err := startConnected(filepath.Join(dir, "raw"), RealSpec("floor"))
		if err != nil {
			b.Fatal(err)
		}
		defer q.Kill()
		defer sm.Disconnect()
		for b.Loop() {
			if _, err := sm.Run(cmd); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("vmsup-transport", func(b *testing.B) {
		q, err := StartRawQEMU(filepath.Join(dir, "tr"), RealSpec("floor"))
		if err != nil {
			b.Fatal(err)
		}
		defer q.Kill()
		tr := monitor.NewTransport(q.Paths.QMPSocket, monitor.TransportOptions{})
		if err := tr.ConnectContext(ctx); err != nil {
			b.Fatal(err)
		}
		defer tr.Disconnect()
		for b.Loop() {
			if _, err := tr.RunContext(ctx, cmd); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("vmsup-api", func(b *testing.B) {
		d, err := openRealDriver(ctx, filepath.Join(dir, "api"))
		if err != nil {
			b.Fatal(err)
		}
		defer d.Close(ctx)
		if _, err := d.Define(ctx, RealSpec("floor")); err != nil {
			b.Fatal(err)
		}
		vm := d.Domain("floor")
		if err := vm.Start(ctx, driver.StartOptions{}); err != nil {
			b.Fatal(err)
		}
		defer vm.Destroy(ctx)
		for b.Loop() {
			if _, err := vm.QMP(ctx, cmd); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestGoals checks the goal helpers and the rendering of a skipped row
// (cheap; runs in make test).
func TestGoals(t *testing.T) {
	at := AtMost(15, "≤ 15")
	if !at.Check(15, 0) || at.Check(15.1, 0) {
		t.Error("AtMost(15): 15 must pass, 15.1 must fail")
	}
	if !RatioAtLeast(0.9).Check(90, 100) || RatioAtLeast(0.9).Check(89, 100) || RatioAtLeast(0.9).Check(1, 0) {
		t.Error("RatioAtLeast(0.9) is wrong at 0.90, 0.89 or a zero comparison")
	}
	if got := CountFmt(97.46); got != "97.5" {
		t.Errorf("CountFmt = %q", got)
	}
	l := &listRun{skipped: "curl is not installed"}
	rows := l.rows()
	if len(rows) != 1 || rows[0].Skipped == "" {
		t.Fatalf("skipped list rows: %+v", rows)
	}
	if _, ok := rows[0].Met(); ok {
		t.Error("a skipped row counts as a goal")
	}
	rep := &Report{Sections: []*Section{{Rows: rows}}}
	if tab := rep.Table(); !strings.Contains(tab, "not measured | curl is not installed") {
		t.Errorf("table of a skipped row:\n%s", tab)
	}
	for _, k := range keys() {
		if _, err := Run(context.Background(), Options{}, []string{k + "-typo"}); err == nil {
			t.Errorf("unknown group %q accepted", k+"-typo")
		}
	}
}

// TestRunDirHoldsStepDirs checks that, while Run runs, the steps' temp
// dirs are made inside the run's directory, and that removing it removes
// what a step left behind.
func TestRunDirHoldsStepDirs(t *testing.T) {
	root, err := openRunDir()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := shortDir("vbtest")
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(dir) != root {
		t.Errorf("shortDir made %s, outside the run directory %s", dir, root)
	}
	if err := os.WriteFile(filepath.Join(dir, "left"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	Options{}.removeRunDir(root)
	if _, err := os.Stat(root); !os.IsNotExist(err) {
		t.Errorf("run directory %s still there after removeRunDir: %v", root, err)
	}
	after, err := shortDir("vbtest")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(after)
	if filepath.Dir(after) != "/tmp" {
		t.Errorf("after the run, shortDir made %s, not in /tmp", after)
	}
}
