package tests

import (
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/tests/testkit"
)

// definePanicGuest defines the tiny guest with vmsup.panic=1: its /init
// panics the kernel right after "guest ready", and -device pvpanic (added
// by vmsup on PC machines) turns that into GUEST_PANICKED.
func (d *testDriver) definePanicGuest(t *testing.T, name, onCrash string, restart *domain.RestartPolicy) *driver.Domain {
	t.Helper()
	img := testkit.RequireGuest(t)
	spec := &domain.Spec{
		Name: name, Machine: "q35", Accel: domain.AccelTCG, Memory: 256 * domain.MiB,
		Kernel: img.Kernel, Initrd: img.Initrd,
		Append:  "console=ttyS0 panic=0 vmsup.panic=1",
		Serial:  &domain.Serial{Type: domain.SerialFile, Path: filepath.Join(d.dir, name+".log")},
		OnCrash: onCrash, Restart: restart,
	}
	if _, err := d.Define(ctxT(t, 10*time.Second), spec); err != nil {
		t.Fatalf("define %s: %v", name, err)
	}
	return d.Domain(name)
}

// TestGuestPanic: a guest kernel panic becomes crashed/panicked, then the
// on_crash policy applies: destroy leaves it so with QEMU gone, preserve
// keeps the panicked QEMU paused for inspection, restart boots it again
// until the crash-loop limit.
func TestGuestPanic(t *testing.T) {
	t.Run("destroy", func(t *testing.T) {
		d := openDriver(t, nil)
		vm := d.definePanicGuest(t, "panic-destroy", domain.OnCrashDestroy, nil)
		events := recordEvents(t, vm.Subscribe(ctxT(t, 2*time.Minute), 0))
		if err := vm.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		in := waitFor(t, vm, 90*time.Second, func(in *domain.Info) bool { return in.State == domain.StateCrashed && in.PID == 0 })
		if in.Reason != domain.ReasonPanicked || in.Restarts != 0 {
			t.Fatalf("after the panic: %+v, want crashed/panicked, no restart", in)
		}
		events.waitMatch(t, "crashed/panicked", time.Second, func(ev domain.Event) bool {
			return ev.Type == domain.EventCrashed && ev.Reason == domain.ReasonPanicked
		})
	})

	t.Run("preserve", func(t *testing.T) {
		d := openDriver(t, nil)
		vm := d.definePanicGuest(t, "panic-keep", domain.OnCrashPreserve, nil)
		if err := vm.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		in := waitFor(t, vm, 90*time.Second, func(in *domain.Info) bool { return in.State == domain.StateCrashed })
		if in.Reason != domain.ReasonPanicked || in.PID == 0 || !processAlive(in.PID) {
			t.Fatalf("preserved panic: %+v, want crashed/panicked with QEMU alive", in)
		}
		ret, err := vm.QMP(ctxT(t, 10*time.Second), json.RawMessage(`{"execute":"query-status"}`))
		if err != nil {
			t.Fatal(err)
		}
		var st struct{ Status string }
		if err := json.Unmarshal(ret, &st); err != nil || st.Status != "guest-panicked" {
			t.Fatalf("QEMU status %s (%v), want guest-panicked", ret, err)
		}
		time.Sleep(time.Second) // no restart comes
		expectState(t, vm, domain.StateCrashed, domain.ReasonPanicked)
		if err := vm.Destroy(ctxT(t, 30*time.Second)); err != nil {
			t.Fatal(err)
		}
		expectState(t, vm, domain.StateShutoff, domain.ReasonDestroyed)
	})

	t.Run("restart", func(t *testing.T) {
		d := openDriver(t, nil)
		vm := d.definePanicGuest(t, "panic-loop", domain.OnCrashRestart, &domain.RestartPolicy{
			Initial: domain.Duration(100 * time.Millisecond), Limit: 1, Window: domain.Duration(10 * time.Minute)})
		if err := vm.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
			t.Fatal(err)
		}
		// It panics, restarts once, panics again: a crash loop.
		in := waitFor(t, vm, 3*time.Minute, func(in *domain.Info) bool { return in.Reason == domain.ReasonCrashLoop })
		if in.State != domain.StateCrashed || in.Restarts != 1 || in.PID != 0 {
			t.Fatalf("after the crash loop: %+v, want crashed/crash-loop after 1 restart", in)
		}
	})
}
