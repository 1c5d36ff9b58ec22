package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/tests/testkit"
)

// InfoDuringSnapshot measures Info in-process on a real tiny guest while a
// snapshot job runs (its samples are those whose Info shows the
// snapshot-save job) against Info on the same guest idle.
func InfoDuringSnapshot(ctx context.Context, o Options) (*Section, error) {
	const key = "snapshot"
	const rounds = 12
	sec := &Section{Key: key}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return nil, errors.New("qemu-img not installed (qemu-utils)")
	}
	kernel, initrd, err := tinyGuest()
	if err != nil {
		return nil, err
	}
	dir, err := shortDir("vbs")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, make([]byte, 4<<20), 0o444); err != nil {
		return nil, err
	}
	d, err := openRealDriver(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer d.Close(context.Background())
	spec := &domain.Spec{Name: "snapbench", Machine: "q35", Accel: domain.AccelTCG, Memory: 256 * domain.MiB, Kernel: kernel, Initrd: initrd,
		Append: "console=ttyS0 panic=-1 vmsup.shell=0 vmsup.agent=0",
		Disks:  []domain.Disk{{Image: base, Format: domain.DiskFormatRaw, Size: 8 * domain.MiB}}}
	spec.ApplyDefaults()
	if _, err := d.Define(ctx, spec); err != nil {
		return nil, err
	}
	dom := d.Domain(spec.Name)
	if err := dom.Start(ctx, driver.StartOptions{}); err != nil {
		return nil, err
	}
	defer dom.Destroy(context.Background())
	if in, err := dom.Info(ctx); err == nil {
		NotePID(in.PID)
	}
	time.Sleep(3 * time.Second) // the guest is booting: let it settle
	var idle, during Samples
	sample := func() (*domain.Info, error) {
		t := time.Now()
		in, err := dom.Info(ctx)
		took := time.Since(t)
		if err != nil {
			return nil, err
		}
		switch {
		case in.Job == nil:
			idle.Add(took)
		case in.Job.Name == "snapshot-save":
			during.Add(took)
		}
		return in, nil
	}
	o.logf("snapshot: %d snapshots of a running tiny guest; Info in a loop meanwhile, and idle between", rounds)
	for i := 0; i < rounds; i++ {
		for k := 0; k < 5000; k++ {
			if _, err := sample(); err != nil {
				return nil, err
			}
		}
		name := "b" + strconv.Itoa(i)
		done := make(chan error, 1)
		go func() { done <- dom.CreateSnapshot(ctx, name) }()
	loop:
		for {
			select {
			case err := <-done:
				if err != nil {
					return nil, fmt.Errorf("snapshot %s: %w", name, err)
				}
				break loop
			default:
			}
			if _, err := sample(); err != nil {
				return nil, err
			}
		}
		if err := dom.DeleteSnapshot(ctx, name); err != nil {
			return nil, err
		}
	}
	if during.N() < 100 {
		return nil, fmt.Errorf("only %d Info samples while a snapshot ran", during.N())
	}
	noChange := RatioAtMost(1.20)
	noChange.Text = "no change (≤ 1.20×)"
	sec.Rows = []Row{
		{Measure: "Info in-process during a snapshot, p99", V: Secs(during.P99()), C: Secs(idle.P99()), Fmt: DurFmt,
			Against: "the same VM idle", Goal: noChange},
	}
	sec.Notes = append(sec.Notes, fmt.Sprintf("Method: a running tiny guest (256 MiB, one 8 MiB qcow2 overlay); %d rounds of 5000 idle Info calls, then Info in a loop while `CreateSnapshot` runs "+
		"(a sample counts as during the snapshot when its Info shows the snapshot-save job). During: %d samples, p50 %s p99 %s; idle: %d samples, p50 %s p99 %s. "+
		"Info reads the snapshot the domain actor published, so QEMU's save (which holds its main loop) does not reach it.",
		rounds, during.N(), Dur(during.P50()), Dur(during.P99()), idle.N(), Dur(idle.P50()), Dur(idle.P99())))
	return sec, nil
}

// tinyGuest returns the tiny guest's kernel and initrd from the cache
// ($VMSUP_CACHE or the repository's .cache), or says how to build them.
func tinyGuest() (kernel, initrd string, err error) {
	cache := os.Getenv("VMSUP_CACHE")
	if cache == "" {
		root, err := testkit.RepoRoot()
		if err != nil {
			return "", "", err
		}
		cache = filepath.Join(root, ".cache")
	}
	kernel, initrd = filepath.Join(cache, "guest", "vmlinuz"), filepath.Join(cache, "guest", "initrd.img")
	for _, f := range []string{kernel, initrd} {
		if _, err := os.Stat(f); err != nil {
			return "", "", fmt.Errorf("the tiny guest is not built (make guest): %w", err)
		}
	}
	return kernel, initrd, nil
}
