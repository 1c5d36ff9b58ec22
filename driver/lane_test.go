package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver/internal/protocol"
	"github.com/vmsup/vmsup/tests/testkit"
)

// driverLane asks the driver actor for its job lane.
func driverLane(t *testing.T, d *Driver) *actors.LaneSnapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := actors.AskAs[*actors.LaneSnapshot](ctx, d.root, d.pid, &protocol.JobsRequest{})
	if err != nil {
		t.Fatalf("driver jobs: %v", err)
	}
	return s
}

// TestDriverDefineLeavesQueueOnCancel: while one define holds the
// driver's lane (its write is held back), a second define whose caller
// gives up gets an error naming the holder and leaves the queue at once,
// not when it reaches the head; it never runs, so its domain is never
// defined. Lookup and list are
// answered while the lane is held.
func TestDriverDefineLeavesQueueOnCancel(t *testing.T) {
	dir := testkit.ShortDir(t)
	release := make(chan struct{})
	held := make(chan string, 4)
	cfg := Config{StateDir: dir, beforeWrite: func(name string) {
		held <- name
		if name == "first" {
			<-release
		}
	}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)

	firstDone := make(chan error, 1)
	go func() {
		_, err := d.Define(ctx, &domain.Spec{Name: "first", Machine: "none"})
		firstDone <- err
	}()
	if name := <-held; name != "first" {
		t.Fatalf("held define of %q, want first", name)
	}
	if _, err := d.List(ctx); err != nil {
		t.Fatalf("list while the driver's lane is held: %v", err)
	}

	gaveUp, giveUp := context.WithCancel(ctx)
	secondDone := make(chan error, 1)
	go func() {
		_, err := d.Define(gaveUp, &domain.Spec{Name: "second", Machine: "none"})
		secondDone <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for driverLane(t, d).Queued == nil || len(driverLane(t, d).Queued) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("second define never queued")
		}
		time.Sleep(5 * time.Millisecond)
	}
	giveUp()
	err = <-secondDone
	var wait *actors.JobWaitError
	if !errors.As(err, &wait) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled define: %v, want a *actors.JobWaitError for context.Canceled", err)
	}
	// The error names the holder: the first define, in its write step.
	if wait.Holder == nil || wait.Holder.Name != "define" || wait.Holder.Step != "write" || wait.Job != "define" ||
		!strings.HasPrefix(err.Error(), `driver: cancelled after `) || !strings.Contains(err.Error(), `waiting for job "define": held by job 1 "define" (api define`) {
		t.Fatalf("cancelled define: %v (holder %+v)", err, wait.Holder)
	}
	// It leaves the queue while the first define still holds the lane.
	var left *actors.JobInfo
	for left == nil {
		s := driverLane(t, d)
		if s.Active == nil || s.Active.Name != "define" || s.Active.Step != "write" {
			t.Fatalf("first define no longer holds the lane: %+v", s)
		}
		for i := range s.Recent {
			if strings.Contains(s.Recent[i].Error, "left the queue") {
				left = &s.Recent[i]
			}
		}
		if left == nil && len(s.Queued) == 0 {
			t.Fatalf("queue empty but no job left it: %+v", s)
		}
		if time.Now().After(deadline) {
			t.Fatalf("cancelled define still queued: %+v", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.HasPrefix(left.Error, `driver: job `) || !left.Started.IsZero() {
		t.Errorf("job that left the queue: %+v", left)
	}

	close(release)
	if err := <-firstDone; err != nil {
		t.Fatalf("first define: %v", err)
	}
	select {
	case name := <-held:
		t.Fatalf("define of %q ran after its caller gave up", name)
	default:
	}
	if _, err := os.Stat(filepath.Join(dir, "domains", "second.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("second.json: %v, want no file", err)
	}
	if _, err := d.Domain("second").Info(ctx); !errors.Is(err, ErrNotFound) {
		t.Errorf("info second: %v, want ErrNotFound", err)
	}
	if s := driverLane(t, d); s.Active != nil || len(s.Queued) != 0 || len(s.Recent) != 2 {
		t.Errorf("lane after both: %+v", s)
	}
}

// TestDriverUndefineSteps: an undefine's job shows its steps, refuses a
// domain that is not there with an error naming it, and removes the
// definition.
func TestDriverUndefineSteps(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := testkit.ShortDir(t)
	d, err := Open(ctx, Config{StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	if err := d.Undefine(ctx, "ghost"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"ghost"`) {
		t.Fatalf("undefine ghost: %v", err)
	}
	if _, err := d.Define(ctx, &domain.Spec{Name: "gone", Machine: "none"}); err != nil {
		t.Fatal(err)
	}
	if err := d.Undefine(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "domains", "gone.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("gone.json: %v, want no file", err)
	}
	s := driverLane(t, d)
	if len(s.Recent) != 3 {
		t.Fatalf("recent driver jobs: %+v", s.Recent)
	}
	u := s.Recent[2]
	if u.Name != "undefine" || u.Error != "" || strings.Join(u.Steps, ",") != "prepare,remove,unregister" || u.Progress() != "undefine: prepare → remove → unregister" {
		t.Errorf("undefine job %+v (%s)", u, u.Progress())
	}
	if df := s.Recent[1]; df.Name != "define" || strings.Join(df.Steps, ",") != "host,write,register" {
		t.Errorf("define job %+v", df)
	}
	if _, err := d.Domain("gone").Info(ctx); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `domain "gone" not found`) {
		t.Errorf("info after undefine: %v", err)
	}
	if err := d.Domain("gone").Pause(ctx); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `domain "gone" not found`) {
		t.Errorf("pause after undefine: %v", err)
	}
}
