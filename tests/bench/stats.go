// Package bench measures vmsup against its baselines: raw QMP (the floor),
// libvirt's lock design (tests/bench/lockbase) and raw QEMU processes. Each
// comparison runs in one process, both sides alternating. The table
// generator (tests/bench/cmd/benchtable, run by `make bench`) runs the rows
// and writes docs/BENCHMARKS.md; the Benchmark functions in this package
// are for profiling one side at a time (go test -bench ... -cpuprofile).
// Nothing here runs under plain `go test ./...`.
package bench

import (
	"fmt"
	"math"
	"os"
	"runtime/metrics"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Samples is a set of latencies.
type Samples struct {
	d      []time.Duration
	sorted bool
}

// Add records one latency.
func (s *Samples) Add(d time.Duration) {
	s.d = append(s.d, d)
	s.sorted = false
}

// Merge adds every latency of o.
func (s *Samples) Merge(o *Samples) {
	s.d = append(s.d, o.d...)
	s.sorted = false
}

// N is the number of samples.
func (s *Samples) N() int { return len(s.d) }

// Q returns the q-quantile (0 < q ≤ 1) by the nearest-rank method.
func (s *Samples) Q(q float64) time.Duration {
	if len(s.d) == 0 {
		return 0
	}
	if !s.sorted {
		sort.Slice(s.d, func(i, j int) bool { return s.d[i] < s.d[j] })
		s.sorted = true
	}
	i := int(math.Ceil(q*float64(len(s.d)))) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(s.d) {
		i = len(s.d) - 1
	}
	return s.d[i]
}

// P50 is the median.
func (s *Samples) P50() time.Duration { return s.Q(0.50) }

// P99 is the 99th percentile.
func (s *Samples) P99() time.Duration { return s.Q(0.99) }

// Max is the largest sample.
func (s *Samples) Max() time.Duration { return s.Q(1) }

// Sum is the total of the samples.
func (s *Samples) Sum() time.Duration {
	var t time.Duration
	for _, d := range s.d {
		t += d
	}
	return t
}

// Dur formats a duration with three significant digits in a fitting unit.
func Dur(d time.Duration) string {
	switch {
	case d <= 0:
		return "0"
	case d < time.Microsecond:
		return fmt.Sprintf("%d ns", d.Nanoseconds())
	case d < time.Millisecond:
		return sig3(float64(d)/float64(time.Microsecond)) + " µs"
	case d < time.Second:
		return sig3(float64(d)/float64(time.Millisecond)) + " ms"
	default:
		return sig3(d.Seconds()) + " s"
	}
}

func sig3(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// Rate formats operations per second.
func Rate(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM/s", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk/s", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk/s", v/1e3)
	default:
		return fmt.Sprintf("%.0f/s", v)
	}
}

// Bytes formats a size in KiB or MiB.
func Bytes(v float64) string {
	switch {
	case v >= 1<<20:
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	default:
		return fmt.Sprintf("%.1f KiB", v/1024)
	}
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// CPUMeter measures how busy the process kept the cores over a span.
type CPUMeter struct {
	cpu  time.Duration
	wall time.Time
}

// StartCPU begins a span.
func StartCPU() CPUMeter { return CPUMeter{cpu: cpuTime(), wall: time.Now()} }

// Cores is the average number of cores the process used since StartCPU.
func (m CPUMeter) Cores() float64 {
	wall := time.Since(m.wall)
	if wall <= 0 {
		return 0
	}
	return float64(cpuTime()-m.cpu) / float64(wall)
}

// hostBusy is the CPU time all processes on the host have used so far
// (user, nice, system, irq, softirq and steal from /proc/stat).
func hostBusy() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
		v, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ is 100 on Linux
}

// OthersMeter measures how many cores other processes kept busy over a
// span: the benchmarks share the machine with whatever else runs on it.
type OthersMeter struct {
	host, own time.Duration
	wall      time.Time
}

// StartOthers begins a span.
func StartOthers() OthersMeter {
	return OthersMeter{host: hostBusy(), own: cpuTime(), wall: time.Now()}
}

// Cores is the average number of cores used by other processes (and this
// process's children, such as QEMU) since StartOthers.
func (m OthersMeter) Cores() float64 {
	wall := time.Since(m.wall)
	if wall <= 0 {
		return 0
	}
	v := float64((hostBusy()-m.host)-(cpuTime()-m.own)) / float64(wall)
	if v < 0 {
		v = 0
	}
	return v
}

// SchedMeter measures how long goroutines waited, runnable, for a core
// (runtime/metrics /sched/latencies:seconds) over a span: when it grows to
// tens of microseconds the process has more work than its cores.
type SchedMeter struct {
	counts []uint64
}

func schedHist() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64Histogram {
		return nil
	}
	return s[0].Value.Float64Histogram()
}

// StartSched begins a span.
func StartSched() SchedMeter {
	h := schedHist()
	if h == nil {
		return SchedMeter{}
	}
	return SchedMeter{counts: append([]uint64(nil), h.Counts...)}
}

// Wait returns the number of scheduling events since StartSched and their
// total wait, estimated from the histogram's bucket midpoints.
func (m SchedMeter) Wait() (n uint64, total time.Duration) {
	h := schedHist()
	if h == nil || len(m.counts) != len(h.Counts) {
		return 0, 0
	}
	var sum float64
	for i, c := range h.Counts {
		d := c - m.counts[i]
		if d == 0 {
			continue
		}
		lo, hi := h.Buckets[i], h.Buckets[i+1]
		mid := (lo + hi) / 2
		switch {
		case math.IsInf(lo, -1):
			mid = hi
		case math.IsInf(hi, 1):
			mid = lo
		}
		n += d
		sum += float64(d) * mid
	}
	return n, time.Duration(sum * float64(time.Second))
}
