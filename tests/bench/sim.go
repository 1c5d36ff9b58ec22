package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
	"github.com/vmsup/vmsup/tests/bench/lockbase"
)

// DefaultLatency is the simulated monitor's reply time.
const DefaultLatency = 200 * time.Microsecond

// StuckCommand is a QMP command that the simulated monitors hold for
// StuckFor: a job stuck in QMP.
const StuckCommand = "x-bench-stuck"

// Monitors makes the simulated QMP monitors that vmsup and the lock
// baseline both run on, with the same latency and the same slow commands.
type Monitors struct {
	Latency  time.Duration
	StuckFor time.Duration
	// slowPermille is how many commands in a thousand take SlowFor extra.
	slowPermille atomic.Int32
	SlowFor      time.Duration
	commands     atomic.Uint64
	slowSeen     atomic.Uint64
}

// NewMonitors returns monitors answering after latency.
func NewMonitors(latency time.Duration) *Monitors {
	return &Monitors{Latency: latency, StuckFor: 3 * time.Second, SlowFor: time.Second}
}

// SetSlow makes permille commands in a thousand take SlowFor longer.
func (m *Monitors) SetSlow(permille int) { m.slowPermille.Store(int32(permille)) }

// Commands is how many commands were sent, and how many of them were slow.
func (m *Monitors) Commands() (all, slow uint64) { return m.commands.Load(), m.slowSeen.Load() }

// New returns one simulated monitor whose command times add up in stats.
// The monitor.Simulated inside answers at once; timedConn holds each
// reply on the reply clock for Latency (plus the slow or stuck delay).
func (m *Monitors) New(stats *ReplyStats) monitor.Conn {
	return &timedConn{Simulated: monitor.NewSimulated(0), mons: m, stats: stats}
}

// ReplyStats adds up how long the simulated monitors took to answer: the
// 200 µs on the clock plus the time the waiting goroutine then waits for a
// core, which grows when a system saturates the CPU.
type ReplyStats struct {
	n, sum atomic.Int64
}

// Snapshot returns the count and the total so far.
func (r *ReplyStats) Snapshot() (int64, time.Duration) {
	return r.n.Load(), time.Duration(r.sum.Load())
}

// timedConn is a simulated monitor whose replies wait on the reply clock,
// and which times its commands.
type timedConn struct {
	*monitor.Simulated
	mons  *Monitors
	stats *ReplyStats
}

func (c *timedConn) RunContext(ctx context.Context, cmd []byte) ([]byte, error) {
	if err := c.wait(ctx, "", cmd); err != nil {
		return nil, err
	}
	return c.Simulated.RunContext(ctx, cmd)
}

// RunCommand is RunContext's, for the monitor's Link
// (monitor.CommandRunner).
func (c *timedConn) RunCommand(ctx context.Context, cmd monitor.Command, deadline time.Time) (json.RawMessage, error) {
	if err := c.wait(ctx, cmd.Execute, nil); err != nil {
		return nil, err
	}
	return c.Simulated.RunCommand(ctx, cmd, deadline)
}

// wait holds a command, named name or given as cmd, for its reply time.
func (c *timedConn) wait(ctx context.Context, name string, cmd []byte) error {
	t := time.Now()
	defer func() {
		c.stats.n.Add(1)
		c.stats.sum.Add(int64(time.Since(t)))
	}()
	// Whichever fires first: the reply clock is on time when the process
	// is idle, a Go timer when it is busy (the scheduler checks timers on
	// every switch, while the clock's thread must wait for a free P).
	d := c.mons.delay(name, cmd)
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-clock.After(d):
	case <-timer.C:
	case <-ctx.Done():
		return fmt.Errorf("QMP command %s%s timed out: %w", name, cmd, ctx.Err())
	case <-c.Simulated.Done():
		return fmt.Errorf("QMP command %s%s: %w", name, cmd, monitor.ErrClosed)
	}
	return nil
}

func (c *timedConn) Run(cmd []byte) ([]byte, error) { return c.RunContext(context.Background(), cmd) }

// delay is how long a command, named name or given as cmd, waits for its
// reply.
func (m *Monitors) delay(name string, cmd []byte) time.Duration {
	return m.Latency + m.slow(name, cmd)
}

func (m *Monitors) slow(name string, cmd []byte) time.Duration {
	m.commands.Add(1)
	if name == StuckCommand || name == "" && bytes.Contains(cmd, []byte(`"`+StuckCommand+`"`)) {
		return m.StuckFor
	}
	if p := m.slowPermille.Load(); p > 0 && rand.IntN(1000) < int(p) {
		m.slowSeen.Add(1)
		return m.SlowFor
	}
	return 0
}

// simPIDs numbers simulated processes above Linux's largest pid_max.
var simPIDs atomic.Int64

func init() { simPIDs.Store(1 << 23) }

// launchSimulated is a driver Launcher of simulated processes.
func launchSimulated(process.Launch) (*process.Process, error) {
	p, _ := process.NewSimulatedProcess(int(simPIDs.Add(1)))
	return p, nil
}

// System is what the workloads drive: vmsup or the lock baseline.
type System interface {
	Name() string
	Info(ctx context.Context, name string) error
	Reset(ctx context.Context, name string) error
	QMP(ctx context.Context, name string, command json.RawMessage) error
	List(ctx context.Context) (int, error)
	Define(ctx context.Context, name string) error
	Start(ctx context.Context, name string) error
	Close()
	// Replies times this system's simulated monitor commands.
	Replies() *ReplyStats
}

// Vmsup is vmsup's driver on simulated processes and monitors.
type Vmsup struct {
	D       *driver.Driver
	dir     string
	mu      sync.RWMutex
	doms    map[string]*driver.Domain
	replies ReplyStats
}

// Replies times the simulated monitor commands.
func (v *Vmsup) Replies() *ReplyStats { return &v.replies }

// OpenVmsup opens a driver whose domains run on simulated processes and
// the monitors of mons.
func OpenVmsup(mons *Monitors) (*Vmsup, error) {
	dir, err := shortDir("vb-sim")
	if err != nil {
		return nil, err
	}
	v := &Vmsup{dir: dir, doms: map[string]*driver.Domain{}}
	cfg := driver.Config{
		StateDir:    dir,
		Launcher:    launchSimulated,
		DialMonitor: func(string) monitor.Conn { return mons.New(&v.replies) },
	}
	if v.D, err = driver.Open(context.Background(), cfg); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return v, nil
}

// Name is "vmsup".
func (v *Vmsup) Name() string { return "vmsup" }

// Dom returns the handle of a domain, made once, as an embedder keeps it.
func (v *Vmsup) Dom(name string) *driver.Domain {
	v.mu.RLock()
	h := v.doms[name]
	v.mu.RUnlock()
	if h != nil {
		return h
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if h = v.doms[name]; h == nil {
		h = v.D.Domain(name)
		v.doms[name] = h
	}
	return h
}

// Info asks for the domain's Info.
func (v *Vmsup) Info(ctx context.Context, name string) error {
	_, err := v.Dom(name).Info(ctx)
	return err
}

// Reset runs a reset job.
func (v *Vmsup) Reset(ctx context.Context, name string) error { return v.Dom(name).Reset(ctx) }

// QMP runs a raw QMP job.
func (v *Vmsup) QMP(ctx context.Context, name string, command json.RawMessage) error {
	_, err := v.Dom(name).QMP(ctx, command)
	return err
}

// List lists every domain.
func (v *Vmsup) List(ctx context.Context) (int, error) {
	in, err := v.D.List(ctx)
	return len(in), err
}

// Define defines a machine-none domain.
func (v *Vmsup) Define(ctx context.Context, name string) error {
	_, err := v.D.Define(ctx, &domain.Spec{Name: name, Machine: "none"})
	return err
}

// Start starts a domain.
func (v *Vmsup) Start(ctx context.Context, name string) error {
	return v.Dom(name).Start(ctx, driver.StartOptions{})
}

// Close destroys every running domain and closes the driver.
func (v *Vmsup) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if infos, err := v.D.List(ctx); err == nil {
		parallel(ctx, len(infos), 32, func(i int) error {
			if infos[i].PID != 0 {
				_ = v.Dom(infos[i].Name).Destroy(ctx)
			}
			return nil
		})
	}
	_ = v.D.Close(ctx)
	os.RemoveAll(v.dir)
}

// Lock is the lock baseline on simulated processes and monitors.
type Lock struct {
	D       *lockbase.Driver
	dir     string
	replies ReplyStats
}

// Replies times the simulated monitor commands.
func (l *Lock) Replies() *ReplyStats { return &l.replies }

// OpenLock returns the lock baseline whose domains run on the monitors of
// mons.
func OpenLock(mons *Monitors) (*Lock, error) {
	var l *Lock
	l, err := openLockOn(func() monitor.Conn { return mons.New(&l.replies) })
	return l, err
}

// openLockOn returns the lock baseline whose domains get their monitor
// from newMonitor.
func openLockOn(newMonitor func() monitor.Conn) (*Lock, error) {
	dir, err := shortDir("vb-lock")
	if err != nil {
		return nil, err
	}
	l := &Lock{dir: dir}
	d, err := lockbase.New(lockbase.Config{StateDir: dir, Launch: func(*domain.Spec) (*lockbase.Process, error) {
		mon := newMonitor()
		done := make(chan struct{})
		var once sync.Once
		return &lockbase.Process{
			PID:     int(simPIDs.Add(1)),
			Monitor: mon,
			Kill:    func() { once.Do(func() { close(done); _ = mon.Disconnect() }) },
			Done:    done,
		}, nil
	}})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	l.D = d
	return l, nil
}

// Name is "lock baseline".
func (l *Lock) Name() string { return "lock baseline" }

// Info reads the domain's Info.
func (l *Lock) Info(_ context.Context, name string) error {
	_, err := l.D.Info(name)
	return err
}

// Reset runs a reset job.
func (l *Lock) Reset(ctx context.Context, name string) error { return l.D.Reset(ctx, name) }

// QMP runs a raw QMP job.
func (l *Lock) QMP(ctx context.Context, name string, command json.RawMessage) error {
	_, err := l.D.QMP(ctx, name, command)
	return err
}

// List lists every domain.
func (l *Lock) List(context.Context) (int, error) { return len(l.D.List()), nil }

// Define defines a machine-none domain.
func (l *Lock) Define(_ context.Context, name string) error {
	_, err := l.D.Define(&domain.Spec{Name: name, Machine: "none"})
	return err
}

// Start starts a domain.
func (l *Lock) Start(ctx context.Context, name string) error { return l.D.Start(ctx, name) }

// Close destroys every domain.
func (l *Lock) Close() {
	l.D.Close()
	os.RemoveAll(l.dir)
}

// parallel runs f(0..n-1) on at most workers goroutines and returns the
// first error.
func parallel(ctx context.Context, n, workers int, f func(i int) error) error {
	var next atomic.Int64
	var first error
	var once sync.Once
	var wg sync.WaitGroup
	if workers > n {
		workers = n
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

// names returns n domain names with a prefix.
func names(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%05d", prefix, i)
	}
	return out
}

// defineStart defines and starts every name on sys, with workers callers
// at once, and returns how long each phase took.
func defineStart(ctx context.Context, sys System, list []string, workers int) (def, start time.Duration, err error) {
	t0 := time.Now()
	if err := parallel(ctx, len(list), workers, func(i int) error { return sys.Define(ctx, list[i]) }); err != nil {
		return 0, 0, fmt.Errorf("%s: define: %w", sys.Name(), err)
	}
	t1 := time.Now()
	if err := parallel(ctx, len(list), workers, func(i int) error { return sys.Start(ctx, list[i]) }); err != nil {
		return 0, 0, fmt.Errorf("%s: start: %w", sys.Name(), err)
	}
	return t1.Sub(t0), time.Since(t1), nil
}
