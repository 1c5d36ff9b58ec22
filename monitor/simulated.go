package monitor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// Simulated is a QMP connection with no QEMU behind it: every command
// answers after Latency. It keeps a run state so that "stop", "cont" and
// "query-status" behave as QEMU's do, and it emits STOP and RESUME events.
// Benchmarks use it to measure the actors without QEMU's own cost, and to
// run thousands of domains.
type Simulated struct {
	// Latency is how long each command takes to answer.
	Latency time.Duration
	// Slow returns an extra delay for a command (nil: none); benchmarks use
	// it to make some commands take a second.
	Slow func(command string) time.Duration

	mu      sync.Mutex
	running bool
	closed  bool
	events  chan qmp.Event
	onEvent func(qmp.Event)
	done    chan struct{}
}

var _ Conn = (*Simulated)(nil)

// NewSimulated returns a simulated connection whose guest is paused, as
// QEMU started with -S is.
func NewSimulated(latency time.Duration) *Simulated {
	return &Simulated{Latency: latency, events: make(chan qmp.Event, 64), done: make(chan struct{})}
}

// Connect succeeds at once.
func (s *Simulated) Connect() error { return nil }

// ConnectContext succeeds at once unless ctx has ended.
func (s *Simulated) ConnectContext(ctx context.Context) error { return ctx.Err() }

// Disconnect ends the connection; it is idempotent.
func (s *Simulated) Disconnect() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.done)
		close(s.events)
	}
	return nil
}

// Run runs a command with the default table deadline.
func (s *Simulated) Run(cmd []byte) ([]byte, error) {
	return s.RunContext(context.Background(), cmd)
}

// The simulation's replies: their "return" members, and whole lines.
const (
	simEmpty = iota
	simPaused
	simRunning
)

var (
	simReturns = [...]string{`{}`, `{"status":"paused","running":false,"singlestep":false}`, `{"status":"running","running":true,"singlestep":false}`}
	// simReturnBytes are the returns as RunCommand hands them out: shared,
	// so callers must not change them (the three-index slices make an
	// append copy).
	simReturnBytes = [...]json.RawMessage{
		json.RawMessage(simReturns[simEmpty])[:len(simReturns[simEmpty]):len(simReturns[simEmpty])],
		json.RawMessage(simReturns[simPaused])[:len(simReturns[simPaused]):len(simReturns[simPaused])],
		json.RawMessage(simReturns[simRunning])[:len(simReturns[simRunning]):len(simReturns[simRunning])],
	}
	simLines = [...]string{`{"return":{}}`, `{"return":` + simReturns[simPaused] + `}`, `{"return":` + simReturns[simRunning] + `}`}
)

// RunContext answers cmd after Latency (plus Slow), or fails at ctx's end.
func (s *Simulated) RunContext(ctx context.Context, cmd []byte) ([]byte, error) {
	r, err := s.answer(ctx, cmd, "", time.Time{})
	if err != nil {
		return nil, err
	}
	return []byte(simLines[r]), nil
}

// RunCommand answers a command whose name its caller read already (a
// CommandRunner), after Latency (plus Slow), or fails at deadline or ctx's
// end.
func (s *Simulated) RunCommand(ctx context.Context, cmd Command, deadline time.Time) (json.RawMessage, error) {
	r, err := s.answer(ctx, cmd.Wire, cmd.Execute, deadline)
	if err != nil {
		return nil, err
	}
	return simReturnBytes[r], nil
}

// answer runs a command on the simulation and says which reply it gets.
// The command is named by execute, or read from cmd when execute is "".
func (s *Simulated) answer(ctx context.Context, cmd []byte, execute string, deadline time.Time) (int, error) {
	if execute == "" {
		name, _, err := commandHeader(bytes.TrimSpace(cmd))
		if execute = jsonString(name); err != nil || execute == "" {
			return 0, fmt.Errorf("%w: %s", ErrBadCommand, cmd)
		}
	}
	delay := s.Latency
	if s.Slow != nil {
		delay += s.Slow(execute)
	}
	if delay > 0 {
		timer := time.NewTimer(delay)
		defer timer.Stop()
		var expire <-chan time.Time
		if !deadline.IsZero() {
			expiry := time.NewTimer(time.Until(deadline))
			defer expiry.Stop()
			expire = expiry.C
		}
		select {
		case <-timer.C:
		case <-ctx.Done():
			return 0, fmt.Errorf("QMP command %q timed out: %w", execute, ctx.Err())
		case <-expire:
			return 0, fmt.Errorf("QMP command %q timed out: %w", execute, context.DeadlineExceeded)
		case <-s.done:
			return 0, fmt.Errorf("QMP command %q: %w", execute, ErrClosed)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, fmt.Errorf("QMP command %q: %w", execute, ErrClosed)
	}
	switch execute {
	case "query-status":
		if s.running {
			return simRunning, nil
		}
		return simPaused, nil
	case "stop":
		s.running = false
		s.emit("STOP")
	case "cont":
		s.running = true
		s.emit("RESUME")
	}
	return simEmpty, nil
}

// emit queues an event without blocking, as the real transport does.
func (s *Simulated) emit(name string) {
	now := time.Now()
	ev := qmp.Event{Event: name}
	ev.Timestamp.Seconds, ev.Timestamp.Microseconds = now.Unix(), int64(now.Nanosecond()/1000)
	if s.onEvent != nil {
		s.onEvent(ev)
		return
	}
	select {
	case s.events <- ev:
	default:
	}
}

// RouteEvents hands every later event to fn, before the reply of the
// command that caused it, as Transport.RouteEvents does; the events on the
// channel go to fn first.
func (s *Simulated) RouteEvents(fn func(qmp.Event)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	drainEvents(s.events, fn)
	s.onEvent = fn
}

// Events returns the event channel; it is closed by Disconnect.
func (s *Simulated) Events(context.Context) (<-chan qmp.Event, error) { return s.events, nil }

// Done is closed by Disconnect.
func (s *Simulated) Done() <-chan struct{} { return s.done }

// Err is ErrClosed after Disconnect.
func (s *Simulated) Err() error {
	select {
	case <-s.done:
		return ErrClosed
	default:
		return nil
	}
}
