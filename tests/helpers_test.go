package tests

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/tests/testkit"
)

type testDriver struct {
	*driver.Driver
	dir    string
	cfg    driver.Config
	closed bool
}

// close closes the driver as a daemon stop would: VMs keep running.
func (d *testDriver) close(t testing.TB) {
	t.Helper()
	d.closed = true
	if err := d.Close(ctxT(t, 30*time.Second)); err != nil {
		t.Fatalf("close: %v", err)
	}
}

// reopen opens a new driver on the same state and run dirs, as a restarted
// daemon would.
func (d *testDriver) reopen(t testing.TB) *testDriver {
	t.Helper()
	return openDriverAt(t, d.dir, d.cfg)
}

// openDriver opens a driver on a fresh state dir. Cleanup destroys every
// running domain and closes the driver, so no QEMU outlives the test.
func openDriver(t testing.TB, mutate func(*driver.Config)) *testDriver {
	t.Helper()
	testkit.RequireQEMU(t)
	dir := testkit.ShortDir(t)
	logger := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	if testing.Verbose() {
		logger = logger.Level(zerolog.DebugLevel)
	}
	cfg := driver.Config{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"), Logger: &logger, DestroyGrace: 2 * time.Second}
	if mutate != nil {
		mutate(&cfg)
	}
	return openDriverAt(t, dir, cfg)
}

func openDriverAt(t testing.TB, dir string, cfg driver.Config) *testDriver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := driver.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open driver: %v", err)
	}
	td := &testDriver{Driver: d, dir: dir, cfg: cfg}
	t.Cleanup(func() {
		if td.closed {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		infos, err := d.List(ctx)
		if err != nil {
			t.Errorf("cleanup list: %v", err)
		}
		for _, in := range infos {
			if in.PID != 0 {
				// SIGCONT first, in case the test stopped QEMU.
				_ = syscall.Kill(in.PID, syscall.SIGCONT)
				if err := d.Domain(in.Name).Destroy(ctx); err != nil {
					t.Errorf("cleanup destroy %s: %v", in.Name, err)
				}
			}
		}
		if err := d.Close(ctx); err != nil {
			t.Errorf("close driver: %v", err)
		}
		killStrays(t, dir)
	})
	return td
}

// define defines a small VM; machine "none" unless given.
func (d *testDriver) define(t testing.TB, name, machine string) *driver.Domain {
	t.Helper()
	spec := &domain.Spec{Name: name, Machine: machine, Accel: "tcg", Memory: 64 << 20}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := d.Define(ctx, spec); err != nil {
		t.Fatalf("define %s: %v", name, err)
	}
	return d.Domain(name)
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// expectState checks a domain's state and reason.
func expectState(t testing.TB, dom *driver.Domain, state domain.State, reason domain.Reason) *domain.Info {
	t.Helper()
	in, err := dom.Info(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatalf("info %s: %v", dom.Name(), err)
	}
	if in.State != state || in.Reason != reason {
		t.Fatalf("%s: state %s/%s, want %s/%s", dom.Name(), in.State, in.Reason, state, reason)
	}
	return in
}

// waitState polls until the domain reaches state/reason or the deadline.
func waitState(t testing.TB, dom *driver.Domain, state domain.State, reason domain.Reason, within time.Duration) *domain.Info {
	t.Helper()
	deadline := time.Now().Add(within)
	var in *domain.Info
	for time.Now().Before(deadline) {
		var err error
		in, err = dom.Info(ctxT(t, 5*time.Second))
		if err != nil {
			t.Fatalf("info %s: %v", dom.Name(), err)
		}
		if in.State == state && in.Reason == reason {
			return in
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: state %s/%s after %s, want %s/%s", dom.Name(), in.State, in.Reason, within, state, reason)
	return nil
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	data, err := os.ReadFile(filepath.Join("/proc", itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state letter follows the ")" that ends the command name.
	for i := len(data) - 1; i >= 0; i-- {
		if data[i] == ')' && i+2 < len(data) {
			return data[i+2] != 'Z'
		}
	}
	return false
}

func itoa(n int) string { return strconv.Itoa(n) }

// eventRecorder collects lifecycle events in the background.
type eventRecorder struct {
	mu     sync.Mutex
	events []domain.Event
	done   chan struct{}
}

func recordEvents(t testing.TB, sub *domain.Subscription) *eventRecorder {
	r := &eventRecorder{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for ev := range sub.Events() {
			r.mu.Lock()
			r.events = append(r.events, ev)
			r.mu.Unlock()
		}
	}()
	t.Cleanup(func() { sub.Close(); <-r.done })
	return r
}

// waitFor waits until an event of type typ is recorded.
func (r *eventRecorder) waitFor(t testing.TB, typ domain.EventType, within time.Duration) domain.Event {
	t.Helper()
	return r.waitMatch(t, string(typ), within, func(ev domain.Event) bool { return ev.Type == typ })
}

// waitMatch waits until an event that match accepts is recorded.
func (r *eventRecorder) waitMatch(t testing.TB, what string, within time.Duration, match func(domain.Event) bool) domain.Event {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, ev := range r.snapshot() {
			if match(ev) {
				return ev
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no %s event within %s; got %v", what, within, r.types())
	return domain.Event{}
}

func (r *eventRecorder) snapshot() []domain.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]domain.Event(nil), r.events...)
}

func (r *eventRecorder) types() []domain.EventType {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []domain.EventType
	for _, ev := range r.events {
		out = append(out, ev.Type)
	}
	return out
}

// killStrays kills any process whose command line names dir: a QEMU that a
// failed test left behind. A passing test leaves none, so each one found
// is reported.
func killStrays(t testing.TB, dir string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || !processAlive(pid) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if !strings.Contains(string(cmdline), dir+"/") {
			continue
		}
		t.Errorf("process %d outlived its test: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
		_ = syscall.Kill(pid, syscall.SIGKILL)
		deadline := time.Now().Add(5 * time.Second)
		for processAlive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
}
