package monitor

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
)

// orderParent runs commands on its monitor child's link one after another,
// each from a goroutine that tells it the reply (as a domain's job step
// does), and checks that the event each command causes (STOP for stop,
// RESUME for cont) reached it before the command's reply, as QEMU sent
// them.
type orderParent struct {
	props    *actor.Props
	link     *Link
	mon      *actor.PID
	left     int
	sent     string
	events   int
	replies  int
	lastSeen string
	done     chan error
}

func (p *orderParent) send(ctx actor.Context) {
	p.sent = "stop"
	if p.left%2 == 0 {
		p.sent = "cont"
	}
	p.left--
	root, self, sent := ctx.ActorSystem().Root, ctx.Self(), p.sent
	go func() {
		ret, err := p.link.Run(context.Background(), Call{Command: Command{Execute: sent}})
		if err != nil {
			root.Send(self, err)
			return
		}
		root.Send(self, orderReply(ret))
	}()
}

type orderReply []byte

func (p *orderParent) Receive(ctx actor.Context) {
	switch msg := ctx.Message().(type) {
	case *actor.Started:
		p.mon = ctx.Spawn(p.props)
	case *Connected:
		p.send(ctx)
	case *Event:
		p.events++
		p.lastSeen = msg.Name
	case orderReply:
		p.replies++
		want := map[string]string{"stop": "STOP", "cont": "RESUME"}[p.sent]
		if p.events != p.replies || p.lastSeen != want {
			p.done <- fmt.Errorf("reply %d to %q arrived after %d events, the last %q; want its %s first", p.replies, p.sent, p.events, p.lastSeen, want)
			return
		}
		if p.left == 0 {
			p.done <- nil
			return
		}
		p.send(ctx)
	case error:
		p.done <- msg
	}
}

// TestMonitorKeepsEventsBeforeTheirReply: events reach the domain from
// the connection's reader, replies through the job step that waits on the
// link; the domain must still get each event before the reply that QEMU
// sent after it, or a late RESUME would undo the pause that followed it.
func TestMonitorKeepsEventsBeforeTheirReply(t *testing.T) {
	system := actors.NewSystem(nil)
	done := make(chan error, 1)
	link := NewLink("order", nil)
	props := Props(Config{Domain: "order", NoReconnect: true, Dial: func() Conn { return NewSimulated(0) }, Link: link})
	parent := system.Root.Spawn(actor.PropsFromProducer(func() actor.Actor {
		return &orderParent{props: props, link: link, left: 2000, done: done}
	}))
	defer func() {
		if err := system.Root.StopFuture(parent).Wait(); err != nil {
			t.Errorf("stop: %v", err)
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("2000 commands did not finish within a minute")
	}
}

// TestMonitorActorSurvivesAPanickingConn: a Conn that panics in RunContext
// fails that command with an error that says so; the monitor goes on.
func TestMonitorActorSurvivesAPanickingConn(t *testing.T) {
	f := newFakeConn(t)
	f.run = func(ctx context.Context, name string) ([]byte, error) {
		if name == "boom" {
			panic("scripted panic")
		}
		return []byte(okReply), nil
	}
	h := startMonitor(t, Config{Domain: "vm1", SocketPath: "/run/vmsup/vm1/qmp.sock", Dial: f.dial}, 16)
	waitMsg[*Connected](h)
	_, err := h.ask(h.command("boom"))
	expectErr(t, "boom", err, `"boom"`, "panicked", "scripted panic")
	if _, err := h.ask(h.command("query-status")); err != nil {
		t.Fatalf("the command after the panic: %v", err)
	}
}
