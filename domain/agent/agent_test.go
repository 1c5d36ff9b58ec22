package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/tests/testkit"
)

// fakeAgent is a scripted guest agent on a unix socket: handle gets each
// command line (the leading 0xFF of a resync stripped) and writes what it
// wants.
type fakeAgent struct {
	path string
	l    net.Listener
}

func newFakeAgent(t *testing.T, handle func(w net.Conn, cmd map[string]any, raw string)) *fakeAgent {
	t.Helper()
	path := testkit.ShortSocketPath(t)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					line = strings.TrimPrefix(line, "\xff")
					var cmd map[string]any
					if json.Unmarshal([]byte(line), &cmd) != nil {
						c.Write([]byte(`{"error":{"class":"GenericError","desc":"JSON parse error"}}` + "\n"))
						continue
					}
					handle(c, cmd, line)
				}
			}()
		}
	}()
	return &fakeAgent{path: path, l: l}
}

// syncReply answers guest-sync-delimited as qga does.
func syncReply(w net.Conn, cmd map[string]any) bool {
	if cmd["execute"] != "guest-sync-delimited" {
		return false
	}
	id := cmd["arguments"].(map[string]any)["id"].(float64)
	b, _ := json.Marshal(map[string]any{"return": uint64(id)})
	w.Write(append([]byte{0xff}, append(b, '\n')...))
	return true
}

func spawn(t *testing.T, cfg Config) (*actor.ActorSystem, *actor.PID) {
	t.Helper()
	sys := actor.NewActorSystem()
	pid := sys.Root.Spawn(Props(cfg))
	t.Cleanup(func() { sys.Root.StopFuture(pid).Wait() })
	return sys, pid
}

func TestConnSyncSkipsStaleReplies(t *testing.T) {
	var calls atomic.Int32
	fa := newFakeAgent(t, func(w net.Conn, cmd map[string]any, raw string) {
		if cmd["execute"] == "guest-sync-delimited" {
			// A stale reply and a parse error come before the delimiter,
			// a stale reply after it, then the sync reply.
			w.Write([]byte(`{"return": {"stale": 1}}` + "\n" + `{"error":{"class":"GenericError","desc":"stray"}}` + "\n"))
			w.Write([]byte{0xff})
			w.Write([]byte(`{"return": 12}` + "\n"))
			syncReply(w, cmd)
			return
		}
		calls.Add(1)
		w.Write([]byte(`{"return": {"version": "9.9"}}` + "\n"))
	})
	ctx := context.Background()
	c, err := Dial(ctx, fa.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Sync(ctx, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	var gi GuestInfo
	if err := c.Run(ctx, 2*time.Second, "guest-info", nil, &gi); err != nil || gi.Version != "9.9" {
		t.Fatalf("guest-info = %+v, %v", gi, err)
	}
}

func TestActorErrorReplyKeepsAgentAvailable(t *testing.T) {
	fa := newFakeAgent(t, func(w net.Conn, cmd map[string]any, raw string) {
		if syncReply(w, cmd) {
			return
		}
		w.Write([]byte(`{"error":{"class":"CommandNotFound","desc":"no such \u0007command"}}` + "\n"))
	})
	st := &atomic.Pointer[Status]{}
	sys, pid := spawn(t, Config{Domain: "d1", Socket: fa.path, Status: st})
	_, err := Run(context.Background(), sys.Root, pid, "guest-frobnicate", nil)
	var ae *Error
	if !errors.As(err, &ae) || ae.Class != "CommandNotFound" || ae.Desc != "no such ?command" {
		t.Fatalf("err = %v, want a CommandNotFound agent error with its control character replaced", err)
	}
	if !strings.Contains(err.Error(), `domain "d1"`) || !strings.Contains(err.Error(), "guest-frobnicate") {
		t.Fatalf("err = %q, want the domain and the command named", err)
	}
	if s := st.Load(); s.State != StateAvailable {
		t.Fatalf("status = %+v, want available (the agent answered)", s)
	}
}

func TestActorHungAgentFailsAtDeadlineAndStatusAnswers(t *testing.T) {
	saved := deadlines["guest-ping"]
	deadlines["guest-ping"] = 700 * time.Millisecond
	t.Cleanup(func() { deadlines["guest-ping"] = saved })
	hung := make(chan struct{})
	t.Cleanup(func() { close(hung) })
	var answer atomic.Bool
	fa := newFakeAgent(t, func(w net.Conn, cmd map[string]any, raw string) {
		if syncReply(w, cmd) {
			return
		}
		if answer.Load() {
			w.Write([]byte(`{"return": {}}` + "\n"))
		}
		// Otherwise: never answer, like a stopped agent.
	})
	st := &atomic.Pointer[Status]{}
	sys, pid := spawn(t, Config{Domain: "d2", Socket: fa.path, Status: st})
	ctx := context.Background()

	done := make(chan error, 1)
	began := time.Now()
	go func() { done <- Ping(ctx, sys.Root, pid) }()
	// While the ping hangs, the status answers at once.
	time.Sleep(100 * time.Millisecond)
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	rep, err := GetStatus(sctx, sys.Root, pid)
	cancel()
	if err != nil {
		t.Fatalf("status while a command hangs: %v", err)
	}
	if rep.Jobs.Active == nil || rep.Jobs.Active.Call.Command != "guest-ping" {
		t.Fatalf("jobs = %+v, want guest-ping in flight", rep.Jobs)
	}
	err = <-done
	took := time.Since(began)
	if err == nil || !strings.Contains(err.Error(), `"guest-ping"`) || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("ping = %v, want a deadline error naming guest-ping", err)
	}
	if took < 600*time.Millisecond || took > 10*time.Second {
		t.Fatalf("ping failed after %v, want about its 700ms deadline", took)
	}
	if s := st.Load(); s.State != StateUnavailable || !strings.Contains(s.Reason, "guest-ping") {
		t.Fatalf("status = %+v, want unavailable naming guest-ping", s)
	}
	// The agent comes back: the next command resyncs and succeeds.
	answer.Store(true)
	if err := Ping(ctx, sys.Root, pid); err != nil {
		t.Fatalf("ping after the agent came back: %v", err)
	}
	if s := st.Load(); s.State != StateAvailable {
		t.Fatalf("status = %+v, want available again", s)
	}
}

func TestActorRefusesBadCommandNames(t *testing.T) {
	fa := newFakeAgent(t, func(w net.Conn, cmd map[string]any, raw string) { syncReply(w, cmd) })
	sys, pid := spawn(t, Config{Domain: "d3", Socket: fa.path})
	for _, name := range []string{"", "guest-sync-delimited", `guest"ping`, strings.Repeat("a", 65), "guest ping\n"} {
		if _, err := Run(context.Background(), sys.Root, pid, name, nil); err == nil {
			t.Errorf("command %q accepted", name)
		}
	}
}

func TestConnLineTooLong(t *testing.T) {
	fa := newFakeAgent(t, func(w net.Conn, cmd map[string]any, raw string) {
		if syncReply(w, cmd) {
			return
		}
		big := make([]byte, 300<<10)
		for i := range big {
			big[i] = 'a'
		}
		w.Write(big)
	})
	ctx := context.Background()
	c, err := Dial(ctx, fa.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Sync(ctx, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	c.maxLine = 200 << 10
	_, err = c.RunRaw(ctx, 10*time.Second, "guest-info", nil)
	if !errors.Is(err, ErrLineTooLong) || c.Synced() {
		t.Fatalf("err = %v, synced %v; want ErrLineTooLong and the channel out of sync", err, c.Synced())
	}
}
