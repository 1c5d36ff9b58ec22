package monitor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp/raw"
)

// closedConn fails every command as not sent, as a Transport closed under
// it does; the first command also replaces the link's connection.
type closedConn struct {
	*Simulated
	replace func()
	// sent makes the command fail as one that reached QEMU before the
	// connection closed (its reply lost).
	sent bool
}

func (c *closedConn) RunReturn(ctx context.Context, cmd []byte) (json.RawMessage, error) {
	_, err := c.RunContext(ctx, cmd)
	return nil, err
}

func (c *closedConn) RunContext(context.Context, []byte) ([]byte, error) {
	if c.replace != nil {
		c.replace()
		c.replace = nil
	}
	if c.sent {
		return nil, fmt.Errorf("QMP command \"query-status\": no reply: %w", ErrClosed)
	}
	return nil, fmt.Errorf("QMP command \"query-status\" %w: %w", ErrNotSent, ErrClosed)
}

func TestLinkWaitsForTheConnection(t *testing.T) {
	l := NewLink("vm1", nil)
	l.connecting(func(any) {})
	got := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ret, err := l.Run(ctx, Call{Execute: "query-status", Wire: []byte(`{"execute":"query-status"}`)})
		if err == nil && !strings.Contains(string(ret), `"status":"paused"`) {
			err = fmt.Errorf("return %s", ret)
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("Run returned before the connection was up: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	l.up(NewSimulated(0), 1)
	if err := <-got; err != nil {
		t.Fatal(err)
	}

	// A context that ends while the monitor connects ends the wait.
	l.connecting(func(any) {})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := l.Run(ctx, Call{Execute: "stop", Wire: []byte(`{"execute":"stop"}`)})
	if !errors.Is(err, ErrNotSent) || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `domain "vm1"`) {
		t.Fatalf("Run while connecting: %v", err)
	}

	// A broken monitor fails a command at once, naming why.
	l.down(errors.New("monitor marked broken"))
	_, err = l.Run(context.Background(), Call{Execute: "cont", Wire: []byte(`{"execute":"cont"}`)})
	if !errors.Is(err, ErrNotSent) || !strings.Contains(err.Error(), `"cont"`) || !strings.Contains(err.Error(), "marked broken") {
		t.Fatalf("Run while broken: %v", err)
	}
}

func TestLinkResendsWhatWasNotSentOnTheNewConnection(t *testing.T) {
	l := NewLink("vm1", nil)
	l.connecting(func(any) {})
	fresh := NewSimulated(0)
	old := &closedConn{Simulated: NewSimulated(0), replace: func() { l.up(fresh, 2) }}
	l.up(old, 1)
	if _, err := l.Run(context.Background(), Call{Execute: "query-status", Wire: []byte(`{"execute":"query-status"}`)}); err != nil {
		t.Fatalf("Run across the monitor's new connection: %v", err)
	}
	// On a connection that is still the link's, the error stands.
	l.up(&closedConn{Simulated: NewSimulated(0)}, 3)
	if _, err := l.Run(context.Background(), Call{Execute: "query-status", Wire: []byte(`{"execute":"query-status"}`)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run on a closed connection: %v", err)
	}
}

// A query whose reply a closing connection lost is sent again on the
// monitor's new connection (a restarted monitor closes the old one); a
// command that changes state is not, since QEMU may have run it.
func TestLinkResendsALostQueryButNotACommand(t *testing.T) {
	l := NewLink("vm1", nil)
	l.connecting(func(any) {})
	l.up(&closedConn{Simulated: NewSimulated(0), sent: true, replace: func() { l.up(NewSimulated(0), 2) }}, 1)
	if _, err := l.Run(context.Background(), Call{Execute: "query-status", Wire: []byte(`{"execute":"query-status"}`)}); err != nil {
		t.Fatalf("a query across the monitor's new connection: %v", err)
	}
	l.up(&closedConn{Simulated: NewSimulated(0), sent: true, replace: func() { l.up(NewSimulated(0), 4) }}, 3)
	if _, err := l.Run(context.Background(), Call{Execute: "stop", Wire: []byte(`{"execute":"stop"}`)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("stop whose reply was lost: %v, want ErrClosed (not sent again)", err)
	}
}

func TestLinkTimeoutTellsTheMonitor(t *testing.T) {
	told := make(chan any, 1)
	l := NewLink("vm1", nil)
	l.connecting(func(msg any) { told <- msg })
	sim := NewSimulated(0)
	sim.Slow = func(string) time.Duration { return time.Hour }
	l.up(sim, 7)
	_, err := l.Run(context.Background(), Call{Execute: "query-status", Wire: []byte(`{"execute":"query-status"}`), Timeout: 30 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "monitor marked broken") {
		t.Fatalf("Run past its deadline: %v", err)
	}
	select {
	case msg := <-told:
		if to, ok := msg.(commandTimedOut); !ok || to.gen != 7 {
			t.Fatalf("the monitor was told %#v", msg)
		}
	case <-time.After(time.Second):
		t.Fatal("the monitor was not told of the timeout")
	}
}

func TestLinkMonitorRunsTypedCommands(t *testing.T) {
	l := NewLink("vm1", nil)
	l.connecting(func(any) {})
	l.up(NewSimulated(0), 1)
	m := raw.NewMonitor(l.Monitor(context.Background(), Call{}.Req, 1))
	if err := m.Cont(); err != nil {
		t.Fatal(err)
	}
	st, err := m.QueryStatus()
	if err != nil || st.Status != raw.RunStateRunning || !st.Running {
		t.Fatalf("query-status after cont: %+v, %v", st, err)
	}
}
