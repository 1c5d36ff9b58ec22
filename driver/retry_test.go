package driver_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

// garbledConn is a QMP connection whose handshake fails, as QEMU 7.2's
// sometimes does for a client that connects right after the socket appears.
type garbledConn struct{ *monitor.Simulated }

func (garbledConn) ConnectContext(context.Context) error {
	return errors.New("QMP greeting: a second greeting arrived (garbled session)")
}

// startWithGarbled starts a simulated domain whose first `garbled` QMP
// handshakes fail, and returns the info, the QEMUs launched and the start
// error.
func startWithGarbled(t *testing.T, garbled int32) (*domain.Info, []int, error) {
	cfg := simulatedConfig(t, 0)
	var mu sync.Mutex
	var pids []int
	launch := cfg.Launcher
	cfg.Launcher = func(l process.Launch) (*process.Process, error) {
		p, err := launch(l)
		mu.Lock()
		pids = append(pids, len(pids)+1)
		mu.Unlock()
		return p, err
	}
	var dials atomic.Int32
	cfg.DialMonitor = func(string) monitor.Conn {
		if dials.Add(1) <= garbled {
			return garbledConn{monitor.NewSimulated(0)}
		}
		return monitor.NewSimulated(0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := driver.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	if _, err := d.Define(ctx, &domain.Spec{Name: "flaky", Machine: "none"}); err != nil {
		t.Fatal(err)
	}
	vm := d.Domain("flaky")
	startErr := vm.Start(ctx, driver.StartOptions{})
	in, err := vm.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	return in, append([]int(nil), pids...), startErr
}

// TestStartRetriesAfterQMPHandshakeFailure: when the QMP handshake fails
// while QEMU runs, start kills that QEMU and starts a fresh one, once.
func TestStartRetriesAfterQMPHandshakeFailure(t *testing.T) {
	in, launches, err := startWithGarbled(t, 1)
	if err != nil {
		t.Fatalf("start with one garbled handshake: %v", err)
	}
	if in.State != domain.StateRunning || in.Reason != domain.ReasonBooted || in.PID == 0 {
		t.Fatalf("after start: %+v", in)
	}
	if len(launches) != 2 {
		t.Fatalf("%d QEMU launches, want 2 (one retry)", len(launches))
	}

	in, launches, err = startWithGarbled(t, 10)
	if err == nil || !strings.Contains(err.Error(), "QMP") || !strings.Contains(err.Error(), "garbled") {
		t.Fatalf("start with every handshake garbled: %v", err)
	}
	if len(launches) != 2 || in.State != domain.StateShutoff || in.Reason != domain.ReasonFailed || in.PID != 0 {
		t.Fatalf("after a failed start: %+v after %d launches, want shutoff/failed after 2", in, len(launches))
	}
}
