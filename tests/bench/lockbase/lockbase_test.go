package lockbase

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/monitor"
)

// simLauncher starts simulated processes whose monitors count how many
// commands are in flight at once.
func simLauncher(latency time.Duration, inFlight, maxInFlight *atomic.Int32, slow func(string) time.Duration) Launcher {
	var pid atomic.Int64
	pid.Store(1 << 23)
	return func(spec *domain.Spec) (*Process, error) {
		mon := monitor.NewSimulated(latency)
		mon.Slow = slow
		done := make(chan struct{})
		var once sync.Once
		return &Process{
			PID:     int(pid.Add(1)),
			Monitor: &countingMonitor{Simulated: mon, inFlight: inFlight, max: maxInFlight},
			Kill:    func() { once.Do(func() { close(done); _ = mon.Disconnect() }) },
			Done:    done,
		}, nil
	}
}

// countingMonitor counts the commands in flight at once, exactly: from
// the call to Run until it returns.
type countingMonitor struct {
	*monitor.Simulated
	inFlight, max *atomic.Int32
}

func (c *countingMonitor) Run(cmd []byte) ([]byte, error) {
	n := c.inFlight.Add(1)
	defer c.inFlight.Add(-1)
	for {
		m := c.max.Load()
		if n <= m || c.max.CompareAndSwap(m, n) {
			break
		}
	}
	return c.Simulated.Run(cmd)
}

func TestLockBaselineJobsExclusive(t *testing.T) {
	var inFlight, maxInFlight atomic.Int32
	d, err := New(Config{StateDir: t.TempDir(), Launch: simLauncher(2*time.Millisecond, &inFlight, &maxInFlight, nil)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.Define(&domain.Spec{Name: "a", Machine: "none"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for k := 0; k < 5; k++ {
				var err error
				switch (i + k) % 3 {
				case 0:
					err = d.Reset(ctx, "a")
				case 1:
					_, err = d.QMP(ctx, "a", []byte(`{"execute":"query-status"}`))
				default:
					var in *domain.Info
					in, err = d.Info("a")
					if err == nil && in.State != domain.StateRunning {
						err = fmt.Errorf("state %s", in.State)
					}
				}
				if err != nil {
					errs <- err
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if m := maxInFlight.Load(); m != 1 {
		t.Errorf("%d commands in flight at once, want 1", m)
	}
	if err := d.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if in, _ := d.Info("a"); in.State != domain.StateShutoff || in.Reason != domain.ReasonDestroyed {
		t.Fatalf("after destroy: %s/%s", in.State, in.Reason)
	}
	if got := len(d.List()); got != 1 {
		t.Fatalf("list: %d domains", got)
	}
}

func TestLockBaselineJobWaitTimesOutAndDestroyPreempts(t *testing.T) {
	old := jobWaitTime
	jobWaitTime = 100 * time.Millisecond
	defer func() { jobWaitTime = old }()
	var inFlight, maxInFlight atomic.Int32
	slow := func(cmd string) time.Duration {
		if cmd == "system_reset" {
			return time.Hour
		}
		return 0
	}
	d, err := New(Config{StateDir: t.TempDir(), Launch: simLauncher(time.Millisecond, &inFlight, &maxInFlight, slow)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.Define(&domain.Spec{Name: "a", Machine: "none"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	stuck := make(chan error, 1)
	go func() { stuck <- d.Reset(ctx, "a") }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		in, err := d.Info("a")
		if err != nil {
			t.Fatal(err)
		}
		if in.Job != nil && in.Job.QMP != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("reset never reached the monitor")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := d.QMP(ctx, "a", []byte(`{"execute":"query-status"}`)); !errors.Is(err, ErrJobTimeout) {
		t.Fatalf("qmp behind a stuck job: %v, want %v", err, ErrJobTimeout)
	}
	if err := d.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-stuck:
		if err == nil {
			t.Fatal("stuck reset succeeded after destroy")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stuck reset did not end after destroy")
	}
}
