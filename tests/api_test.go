package tests

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

// TestQMPThroughAPI: a reply over 64 KiB (query-qmp-schema), a QMP error
// with its class, malformed input, and an event that arrives while a
// command runs all work through the public API on real QEMU.
func TestQMPThroughAPI(t *testing.T) {
	d := openDriver(t, nil)
	dom := d.define(t, "qmp", "none")
	if err := dom.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatalf("start: %v", err)
	}

	schema, err := dom.QMP(ctxT(t, 30*time.Second), json.RawMessage(`{"execute":"query-qmp-schema"}`))
	if err != nil {
		t.Fatalf("query-qmp-schema: %v", err)
	}
	if len(schema) <= 64<<10 {
		t.Fatalf("query-qmp-schema reply is %d bytes; expected more than 64 KiB", len(schema))
	}
	var entries []map[string]any
	if err := json.Unmarshal(schema, &entries); err != nil || len(entries) < 100 {
		t.Fatalf("schema does not decode as a list of entries: %d entries, %v", len(entries), err)
	}

	_, err = dom.QMP(ctxT(t, 10*time.Second), json.RawMessage(`{"execute":"no-such-command"}`))
	var qe *monitor.QMPError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "no-such-command" {
		t.Fatalf("unknown command: err = %v, want a *monitor.QMPError of class CommandNotFound", err)
	}
	if !strings.Contains(err.Error(), `domain "qmp"`) {
		t.Errorf("QMP error does not name the domain: %v", err)
	}

	for _, bad := range []string{``, `[]`, `{"execute":""}`, `{"execute":"x","bogus":1}`, `{"execute":"stop","arguments":[1]}`} {
		if _, err := dom.QMP(ctxT(t, 5*time.Second), json.RawMessage(bad)); err == nil {
			t.Errorf("QMP %q was accepted", bad)
		}
	}

	// A raw "stop" makes QEMU emit STOP while the command runs; the domain
	// learns from the event that the guest is paused.
	events := recordEvents(t, dom.Subscribe(ctxT(t, time.Minute), 0))
	if _, err := dom.QMP(ctxT(t, 10*time.Second), json.RawMessage(`{"execute":"stop"}`)); err != nil {
		t.Fatalf("stop: %v", err)
	}
	ev := events.waitFor(t, domain.EventPaused, 2*time.Second)
	if ev.Cause == "" {
		t.Errorf("paused event has no cause (the QMP event id): %+v", ev)
	}
	expectState(t, dom, domain.StatePaused, domain.ReasonUser)
	if _, err := dom.QMP(ctxT(t, 10*time.Second), json.RawMessage(`{"execute":"cont"}`)); err != nil {
		t.Fatalf("cont: %v", err)
	}
	waitState(t, dom, domain.StateRunning, domain.ReasonUnpaused, 2*time.Second)
}

// TestBadInput: bad specs get errors naming each field, hostile names are
// refused before any file is touched, unknown domains are named.
func TestBadInput(t *testing.T) {
	d := openDriver(t, nil)
	ctx := ctxT(t, 10*time.Second)

	_, err := domain.ParseSpec([]byte("name: ../etc\nmemory: lots\ncpus: 0\naccel: warp\nbogus: 1\n"))
	if err == nil {
		t.Fatal("bad spec accepted")
	}
	for _, field := range []string{`"bogus"`} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("parse error does not name %s: %v", field, err)
		}
	}
	// Decoding problems are reported together; so are validation problems.
	_, err = domain.ParseSpec([]byte("name: ok\nmemory: lots\ncpus: many\n"))
	for _, field := range []string{`"memory"`, `"cpus"`} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name field %s: %v", field, err)
		}
	}
	_, err = domain.ParseSpec([]byte("name: ../etc\nmemory: 64M\ncpus: 300\naccel: warp\nmachine: Bad!\non_crash: explode\n"))
	for _, field := range []string{`"name"`, `"cpus"`, `"accel"`, `"machine"`, `"on_crash"`} {
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name field %s: %v", field, err)
		}
	}

	if _, err := d.Define(ctx, &domain.Spec{Name: "a/../../b", Machine: "none"}); err == nil || !strings.Contains(err.Error(), `"name"`) {
		t.Fatalf("define with a traversal name: %v", err)
	}
	if _, err := d.Define(ctx, &domain.Spec{Name: "ok", Machine: "none", Kernel: "relative/vmlinuz"}); err == nil || !strings.Contains(err.Error(), `"kernel"`) {
		t.Fatalf("define with a relative kernel path: %v", err)
	}
	if _, err := d.Domain("../../etc/passwd").Info(ctx); err == nil {
		t.Fatal("info on a traversal name succeeded")
	}
	_, err = d.Domain("ghost").Info(ctx)
	if !errors.Is(err, driver.ErrNotFound) || !strings.Contains(err.Error(), `domain "ghost" not found`) {
		t.Fatalf("unknown domain: %v", err)
	}
	if err := d.Domain("ghost").Start(ctx, driver.StartOptions{}); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("start of an unknown domain: %v", err)
	}
	if err := d.Undefine(ctx, "ghost"); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("undefine of an unknown domain: %v", err)
	}

	// Jobs on a domain that is not running fail at once, naming the state.
	dom := d.define(t, "idle", "none")
	if err := dom.Pause(ctx); !errors.Is(err, domain.ErrNotRunning) || !strings.Contains(err.Error(), "shutoff") {
		t.Fatalf("pause of a shut-off domain: %v", err)
	}
	if err := dom.Destroy(ctx); !errors.Is(err, domain.ErrNotRunning) {
		t.Fatalf("destroy of a shut-off domain: %v", err)
	}

	// A definition survives a restart of the driver, with its UUID.
	first, err := dom.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Define(ctx, &domain.Spec{Name: "idle", Machine: "none", UUID: "6f1c0b59-2d55-4b8e-9a51-3c6d1e2f4a7b"}); !errors.Is(err, driver.ErrConflict) {
		t.Fatalf("redefining a domain with another UUID: %v, want driver.ErrConflict", err)
	}
	if _, err := d.Define(ctx, &domain.Spec{Name: "other", Machine: "none", UUID: first.UUID}); !errors.Is(err, driver.ErrConflict) {
		t.Fatalf("defining a domain with a UUID in use: %v, want driver.ErrConflict", err)
	}
	d2, err := driver.Open(ctx, driver.Config{StateDir: d.dir + "/state", RunDir: d.dir + "/run2"})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close(ctx)
	again, err := d2.Domain("idle").Info(ctx)
	if err != nil || again.UUID != first.UUID {
		t.Fatalf("after reopen: %+v, %v; want uuid %s", again, err, first.UUID)
	}
}

// TestStartFailureIsReported: a QEMU that refuses its command line leaves
// the domain shutoff/failed with QEMU's own words in the error.
func TestStartFailureIsReported(t *testing.T) {
	d := openDriver(t, nil)
	ctx := ctxT(t, 30*time.Second)
	if _, err := d.Define(ctx, &domain.Spec{Name: "broken", Machine: "no-such-machine", Accel: "tcg"}); err != nil {
		t.Fatal(err)
	}
	dom := d.Domain("broken")
	err := dom.Start(ctx, driver.StartOptions{})
	if err == nil {
		t.Fatal("start with an unknown machine succeeded")
	}
	if !strings.Contains(err.Error(), "unsupported machine type") {
		t.Errorf("start error does not carry QEMU's message: %v", err)
	}
	in := expectState(t, dom, domain.StateShutoff, domain.ReasonFailed)
	if in.PID != 0 {
		t.Fatalf("failed start left pid %d", in.PID)
	}
}

// TestConsoleSocket: the default serial port is a console socket the API can
// attach to while the domain runs; a shut-off domain refuses.
func TestConsoleSocket(t *testing.T) {
	d := openDriver(t, nil)
	dom := d.define(t, "console", "none")
	if _, err := dom.Console(ctxT(t, 5*time.Second)); !errors.Is(err, domain.ErrNotRunning) {
		t.Fatalf("console of a shut-off domain: %v", err)
	}
	if err := dom.Start(ctxT(t, 30*time.Second), driver.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	conn, err := dom.Console(ctxT(t, 5*time.Second))
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	conn.Close()
}
