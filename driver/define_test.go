package driver_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/policy"
	"github.com/vmsup/vmsup/driver"
)

// A definition that does not parse shows in List as broken, with the
// reason; define replaces it only with Force, and undefine removes it.
func TestBrokenDefinitionListedAndReplacedOnlyWithForce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := simulatedConfig(t, 0)
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "domains"), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"bad1": "{not json", "bad2": `{"name": "other", "machine": "none"}`} {
		if err := os.WriteFile(filepath.Join(cfg.StateDir, "domains", name+".json"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	d, err := driver.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	list, err := d.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("list %+v, want the two broken definitions", list)
	}
	for i, want := range []string{"bad1", "bad2"} {
		in := list[i]
		if in.Name != want || in.State != domain.StateBroken || in.Reason != domain.ReasonCorrupt || !strings.Contains(in.Problem, want+".json") {
			t.Errorf("list[%d] = %+v, want %s broken with the file named", i, in, want)
		}
	}
	if !strings.Contains(list[1].Problem, `names domain "other"`) {
		t.Errorf("bad2's problem %q does not say what is wrong", list[1].Problem)
	}
	// A call on a broken name says it is broken, and why, not "not found".
	_, err = d.Domain("bad2").Info(ctx)
	if !errors.Is(err, driver.ErrBroken) || errors.Is(err, driver.ErrNotFound) || !strings.Contains(err.Error(), "bad2.json") {
		t.Fatalf("info of a broken definition: %v, want ErrBroken naming the file", err)
	}
	if err := d.Domain("bad1").Start(ctx, driver.StartOptions{}); !errors.Is(err, driver.ErrBroken) {
		t.Fatalf("start of a broken definition: %v, want ErrBroken", err)
	}
	_, err = d.Define(ctx, &domain.Spec{Name: "bad1", Machine: "none"})
	if !errors.Is(err, driver.ErrBroken) || !strings.Contains(err.Error(), "force") {
		t.Fatalf("define over a broken definition: %v, want ErrBroken naming --force", err)
	}
	if _, err := d.DefineWith(ctx, &domain.Spec{Name: "bad1", Machine: "none"}, driver.DefineOptions{Force: true}); err != nil {
		t.Fatalf("define --force over a broken definition: %v", err)
	}
	if err := d.Undefine(ctx, "bad2"); err != nil {
		t.Fatalf("undefine a broken definition: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.StateDir, "domains", "bad2.json")); !os.IsNotExist(err) {
		t.Errorf("bad2.json still there after undefine: %v", err)
	}
	list, _ = d.List(ctx)
	if len(list) != 1 || list[0].Name != "bad1" || list[0].State != domain.StateShutoff || list[0].Problem != "" {
		t.Fatalf("list after force and undefine: %+v", list)
	}
	// The replacement is a real definition: a new driver loads it.
	d.Close(ctx)
	d2, err := driver.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close(ctx)
	if list, _ := d2.List(ctx); len(list) != 1 || list[0].State != domain.StateShutoff {
		t.Fatalf("list after reopen: %+v", list)
	}
}

// Two first-time defines of one name that race are serialised by the
// driver's lane: the loser (another UUID, a conflict) never removes the
// overlay the winner made.
func TestRacingFirstDefinesKeepTheWinnersOverlay(t *testing.T) {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (qemu-utils)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for round := range 5 {
		cfg := simulatedConfig(t, 0)
		base := filepath.Join(cfg.StateDir, "base.raw")
		if err := os.WriteFile(base, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		d, err := driver.Open(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		uuids := []string{"11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = d.Define(ctx, &domain.Spec{Name: "race", UUID: uuids[i], Machine: "q35", Accel: "tcg", Disks: []domain.Disk{{Image: base}}})
			}()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
			} else if !errors.Is(err, driver.ErrConflict) {
				t.Fatalf("round %d: define: %v, want success or a conflict", round, err)
			}
		}
		if ok != 1 {
			t.Fatalf("round %d: %d defines succeeded (%v), want one", round, ok, errs)
		}
		overlay := filepath.Join(cfg.StateDir, "disks", "race", "disk0.qcow2")
		if _, err := os.Stat(overlay); err != nil {
			t.Fatalf("round %d: the winner's overlay is gone after the loser failed: %v", round, err)
		}
		d.Close(ctx)
	}
}

// Domain.QMP enforces Config.Policy for embedders: a command outside the
// safe list is refused without AllowRawQEMU.
func TestDomainQMPEnforcesPolicy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := simulatedConfig(t, 0)
	pol, err := policy.New(false, []string{"/bin/true"}, []string{cfg.StateDir})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Policy = pol
	d, err := driver.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	if _, err := d.Define(ctx, &domain.Spec{Name: "p1", Machine: "none", Emulator: "/bin/true"}); err != nil {
		t.Fatal(err)
	}
	dom := d.Domain("p1")
	if err := dom.Start(ctx, driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = dom.QMP(ctx, []byte(`{"execute": "human-monitor-command", "arguments": {"command-line": "info status"}}`))
	if !errors.Is(err, policy.ErrRefused) || !strings.Contains(err.Error(), "human-monitor-command") {
		t.Fatalf("human-monitor-command through Domain.QMP: %v, want refused by the policy", err)
	}
	if _, err := dom.QMP(ctx, []byte(`{"execute": "query-status"}`)); err != nil {
		t.Fatalf("query-status through Domain.QMP: %v", err)
	}
}
