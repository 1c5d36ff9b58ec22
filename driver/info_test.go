package driver_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

// TestInfoReadsWhatAJobLeft: Info is read from the snapshot the domain
// publishes, without a message. Whoever got a job's reply must still read
// the state that job left, with no job active; a stuck job's control age
// grows while nothing happens; an undefined domain is not found.
func TestInfoReadsWhatAJobLeft(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := simulatedConfig(t, 0)
	cfg.DialMonitor = func(string) monitor.Conn {
		sim := monitor.NewSimulated(0)
		sim.Slow = func(command string) time.Duration {
			if command == "x-hang" {
				return time.Hour
			}
			return 0
		}
		return sim
	}
	d, err := driver.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	if _, err := d.Define(ctx, &domain.Spec{Name: "rw", Machine: "none"}); err != nil {
		t.Fatal(err)
	}
	vm := d.Domain("rw")
	if err := vm.Start(ctx, driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	expect := func(step string, state domain.State, reason domain.Reason) {
		t.Helper()
		in, err := vm.Info(ctx)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if in.State != state || in.Reason != reason || in.Job != nil || in.Control.State != domain.ControlOK {
			t.Fatalf("%s: info %s/%s job %+v control %+v, want %s/%s and no job", step, in.State, in.Reason, in.Job, in.Control, state, reason)
		}
	}
	expect("start", domain.StateRunning, domain.ReasonBooted)
	for i := 0; i < 300; i++ {
		if err := vm.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		expect("pause", domain.StatePaused, domain.ReasonUser)
		if err := vm.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		expect("resume", domain.StateRunning, domain.ReasonUnpaused)
	}

	// A QMP command that never answers within the test: the control age
	// that Info reports must grow although the domain publishes nothing.
	done := make(chan error, 1)
	go func() {
		qctx, qcancel := context.WithTimeout(ctx, 400*time.Millisecond)
		defer qcancel()
		_, err := vm.QMP(qctx, json.RawMessage(`{"execute":"x-hang"}`))
		done <- err
	}()
	var first int64 = -1
	deadline := time.Now().Add(5 * time.Second)
	for {
		in, err := vm.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if in.Control.State == domain.ControlOccupied {
			if first < 0 {
				first = in.Control.Millis
			} else if in.Control.Millis >= first+100 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("control never showed a growing occupied age: %+v", in.Control)
		}
		time.Sleep(10 * time.Millisecond)
	}
	<-done

	if err := vm.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Undefine(ctx, "rw"); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Info(ctx); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("info after undefine: %v, want ErrNotFound", err)
	}

	// After Close, a handle's Info fails instead of reading what the
	// domain published last.
	if _, err := d.Define(ctx, &domain.Spec{Name: "after", Machine: "none"}); err != nil {
		t.Fatal(err)
	}
	after := d.Domain("after")
	if _, err := after.Info(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if in, err := after.Info(ctx); !errors.Is(err, driver.ErrClosed) {
		t.Fatalf("info after Close: %+v, %v; want ErrClosed", in, err)
	}
	if err := after.Pause(ctx); !errors.Is(err, driver.ErrClosed) {
		t.Fatalf("pause after Close: %v, want ErrClosed", err)
	}
}
