package domain_test

import (
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
)

// TestBrokerQMPEvents: a QMP subscriber gets its domain's QMP events in
// order and no other domain's, a full buffer drops and counts without
// blocking the publisher, lifecycle subscribers see none of them, and
// Close ends the stream (twice is fine).
func TestBrokerQMPEvents(t *testing.T) {
	b := domain.NewBroker()
	web := b.SubscribeQMP("web1", 2)
	all := b.SubscribeQMP("", 8)
	life := b.Subscribe("", 8)
	t0 := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	for i, name := range []string{"STOP", "RESUME", "SHUTDOWN"} {
		b.PublishQMP(domain.QMPEvent{Domain: "web1", ID: name, Name: name, Time: t0.Add(time.Duration(i))})
	}
	b.PublishQMP(domain.QMPEvent{Domain: "db1", Name: "STOP"})
	if got := (<-web.Events()).Name + " " + (<-web.Events()).Name; got != "STOP RESUME" {
		t.Errorf("web1 got %s", got)
	}
	if web.Dropped() != 1 {
		t.Errorf("web1 dropped %d, want 1 (buffer 2, 3 events)", web.Dropped())
	}
	if n := len(all.Events()); n != 4 || all.Dropped() != 0 {
		t.Errorf("all: %d events, %d dropped, want 4 and 0", n, all.Dropped())
	}
	if n := len(life.Events()); n != 0 {
		t.Errorf("lifecycle subscriber got %d QMP events", n)
	}
	web.Close()
	web.Close()
	if _, ok := <-web.Events(); ok {
		t.Error("stream open after Close")
	}
	b.PublishQMP(domain.QMPEvent{Domain: "web1", Name: "STOP"}) // no subscriber left for web1: no panic
	all.Close()
	life.Close()
}
