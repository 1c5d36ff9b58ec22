package driver

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/tests/testkit"
)

// TestMonitorEventStreams: a Domain.Monitor's event streams carry only
// their domain's QMP events, converted with QEMU's timestamp; each ends
// (channel closed) when its context ends, at Disconnect, or when the
// driver closes; Events outside a session is refused.
func TestMonitorEventStreams(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := Open(ctx, Config{StateDir: testkit.ShortDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	if _, err := d.Define(ctx, &domain.Spec{Name: "ev", Machine: "none"}); err != nil {
		t.Fatal(err)
	}
	mon := d.Domain("ev").Monitor()
	if _, err := mon.Events(ctx); !errors.Is(err, ErrMonitorNotConnected) {
		t.Fatalf("events before connect: %v", err)
	}
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	// ended waits for the stream's end, reading what is still on it.
	ended := func(what string, ch <-chan qmp.Event) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					return
				}
			case <-timeout:
				t.Fatalf("%s: stream not closed", what)
			}
		}
	}

	byCtx, stop := context.WithCancel(ctx)
	s1, err := mon.Events(byCtx)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := mon.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2024, 5, 1, 10, 0, 0, 123456000, time.UTC)
	d.broker.PublishQMP(domain.QMPEvent{Domain: "other", Name: "STOP", Time: at})
	d.broker.PublishQMP(domain.QMPEvent{Domain: "ev", Name: "STOP", Data: map[string]any{"k": "v"}, Time: at})
	for i, s := range []<-chan qmp.Event{s1, s2} {
		var ev qmp.Event
		select {
		case ev = <-s:
		case <-time.After(10 * time.Second):
			t.Fatalf("stream %d: no event", i)
		}
		if ev.Event != "STOP" || ev.Data["k"] != "v" || ev.Timestamp.Seconds != at.Unix() || ev.Timestamp.Microseconds != 123456 {
			t.Errorf("stream %d: %+v", i, ev)
		}
	}
	stop()
	ended("context", s1)
	if err := mon.Disconnect(); err != nil {
		t.Fatal(err)
	}
	ended("disconnect", s2)

	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	s3, err := mon.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ended("driver close", s3)
	if err := mon.Disconnect(); err != nil {
		t.Fatal(err)
	}
}
