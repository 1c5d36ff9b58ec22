package driver_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/tests/testkit"
)

// TestOpenRemovesStaleTemps: temp files that a SIGKILL between create and
// rename left in the definitions and status dirs are removed at Open; a
// definition, a directory or a symlink with a temp file's name, and other
// files, are left alone.
func TestOpenRemovesStaleTemps(t *testing.T) {
	cfg := simulatedConfig(t, 0)
	domains := filepath.Join(cfg.StateDir, "domains")
	status := filepath.Join(cfg.StateDir, "status")
	for _, d := range []string{domains, status} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path, data string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(domains, "a.json"), `{"name":"a","machine":"none"}`)
	stale := []string{
		filepath.Join(domains, ".a.json.tmp-123456"),
		filepath.Join(domains, ".b.json.tmp-99"),
		filepath.Join(status, ".a.json.tmp-42"),
	}
	for _, p := range stale {
		write(p, `{"name":"a","mach`)
	}
	keep := []string{filepath.Join(domains, "notes.txt"), filepath.Join(domains, ".a.json")}
	for _, p := range keep {
		write(p, "x")
	}
	if err := os.Mkdir(filepath.Join(domains, ".c.json.tmp-1"), 0o700); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(cfg.StateDir, "precious")
	write(target, "precious")
	if err := os.Symlink(target, filepath.Join(status, ".d.json.tmp-7")); err != nil {
		t.Fatal(err)
	}
	log := &testkit.SyncBuffer{}
	logger := zerolog.New(log)
	cfg.Logger = &logger
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := driver.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	for _, p := range stale {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("stale temp file %s still there (%v)", p, err)
		}
		if !strings.Contains(log.String(), p) {
			t.Errorf("the log does not name the removed %s", p)
		}
	}
	for _, p := range append(keep, filepath.Join(domains, ".c.json.tmp-1"), filepath.Join(status, ".d.json.tmp-7"), target) {
		if _, err := os.Lstat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
	if _, err := d.Domain("a").Info(ctx); err != nil {
		t.Errorf("the definition beside the temp files: %v", err)
	}
}

// TestDefinitionSymlinkRefused: a definition that is a symlink (to a file
// an attacker wants vmsup to read or treat as its own) is not followed.
func TestDefinitionSymlinkRefused(t *testing.T) {
	cfg := simulatedConfig(t, 0)
	domains := filepath.Join(cfg.StateDir, "domains")
	if err := os.MkdirAll(domains, 0o700); err != nil {
		t.Fatal(err)
	}
	elsewhere := filepath.Join(cfg.StateDir, "elsewhere.json")
	if err := os.WriteFile(elsewhere, []byte(`{"name":"l","machine":"none"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(domains, "l.json")); err != nil {
		t.Fatal(err)
	}
	log := &testkit.SyncBuffer{}
	logger := zerolog.New(log)
	cfg.Logger = &logger
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := driver.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	if _, err := d.Domain("l").Info(ctx); err == nil {
		t.Error("a symlinked definition was loaded")
	}
	if !strings.Contains(log.String(), "is a symlink; refusing to follow it") {
		t.Errorf("the log does not say why the definition was skipped:\n%s", log.String())
	}
}
