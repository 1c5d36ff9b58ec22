package driver_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

// simulatedConfig runs domains on simulated processes and QMP monitors, so
// the actors can be exercised at scale without QEMU. Simulated pids start
// above Linux's largest pid_max, so they never name a real process.
func simulatedConfig(t testing.TB, latency time.Duration) driver.Config {
	dir, err := os.MkdirTemp("", "vmsup-sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	var nextPID atomic.Int64
	nextPID.Store(1 << 23)
	return driver.Config{
		StateDir: dir,
		Launcher: func(process.Launch) (*process.Process, error) {
			p, _ := process.NewSimulatedProcess(int(nextPID.Add(1)))
			return p, nil
		},
		DialMonitor: func(string) monitor.Conn { return monitor.NewSimulated(latency) },
	}
}

// TestSimulatedDomains drives 200 domains on simulated QEMUs through the
// whole lifecycle concurrently.
func TestSimulatedDomains(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := driver.Open(ctx, simulatedConfig(t, 100*time.Microsecond))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			if _, err := d.Define(ctx, &domain.Spec{Name: name, Machine: "none"}); err != nil {
				errs <- err
				return
			}
			vm := d.Domain(name)
			for _, step := range []func(context.Context) error{
				func(ctx context.Context) error { return vm.Start(ctx, driver.StartOptions{}) },
				vm.Pause, vm.Resume, vm.Reset, vm.Destroy,
			} {
				if err := step(ctx); err != nil {
					errs <- fmt.Errorf("%s: %w", name, err)
					return
				}
			}
		}(fmt.Sprintf("sim%03d", i))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	infos, err := d.List(ctx)
	if err != nil || len(infos) != n {
		t.Fatalf("list: %d, %v", len(infos), err)
	}
	for _, in := range infos {
		if in.State != domain.StateShutoff || in.Reason != domain.ReasonDestroyed {
			t.Fatalf("%s: %s/%s", in.Name, in.State, in.Reason)
		}
	}
}
