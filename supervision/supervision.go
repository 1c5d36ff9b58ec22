// Package supervision holds vmsup's recovery policies: the backoff between
// restarts, crash-loop detection, and the protoactor strategies with which
// the driver supervises domain actors and a domain supervises its monitor.
package supervision

import (
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// Backoff is an exponential delay: Initial, then times Factor after each
// attempt, capped at Max.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
	Factor  float64
}

// Default restart backoff and crash-loop limit, as libvirt users expect: 1s, doubling up to 30s; at most 5 restarts in 60s.
const (
	DefaultInitial = time.Second
	DefaultMax     = 30 * time.Second
	DefaultFactor  = 2.0
	DefaultLimit   = 5
	DefaultWindow  = 60 * time.Second
)

// WithDefaults fills zero fields with the defaults.
func (b Backoff) WithDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = DefaultInitial
	}
	if b.Max <= 0 {
		b.Max = DefaultMax
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.Factor < 1 {
		b.Factor = DefaultFactor
	}
	return b
}

// Delay is the wait before attempt n (0 for the first retry).
func (b Backoff) Delay(n int) time.Duration {
	b = b.WithDefaults()
	d := float64(b.Initial)
	for i := 0; i < n && d < float64(b.Max); i++ {
		d *= b.Factor
	}
	if d > float64(b.Max) {
		return b.Max
	}
	return time.Duration(d)
}

// CrashLoop counts restarts in a sliding window. Once Limit restarts have
// happened within Window, Allow refuses: the VM is crash-looping.
type CrashLoop struct {
	Limit    int
	Window   time.Duration
	restarts []time.Time
}

// NewCrashLoop returns a detector; zero values take the defaults.
func NewCrashLoop(limit int, window time.Duration) *CrashLoop {
	if limit <= 0 {
		limit = DefaultLimit
	}
	if window <= 0 {
		window = DefaultWindow
	}
	return &CrashLoop{Limit: limit, Window: window}
}

// Allow records a restart at now and reports whether it is allowed. A
// refused restart is not recorded.
func (c *CrashLoop) Allow(now time.Time) bool {
	keep := c.restarts[:0]
	for _, t := range c.restarts {
		if now.Sub(t) < c.Window {
			keep = append(keep, t)
		}
	}
	c.restarts = keep
	if len(c.restarts) >= c.Limit {
		return false
	}
	c.restarts = append(c.restarts, now)
	return true
}

// Recent is the number of restarts inside the window at now.
func (c *CrashLoop) Recent(now time.Time) int {
	n := 0
	for _, t := range c.restarts {
		if now.Sub(t) < c.Window {
			n++
		}
	}
	return n
}

// Describe says why restarts stopped, for state reasons and events.
func (c *CrashLoop) Describe() string {
	return fmt.Sprintf("%d restarts within %s", c.Limit, c.Window)
}

// ActorStrategy is how a parent supervises a child actor that panics:
// restart it (it rebuilds its state from disk and from QEMU), up to 10
// times a minute; past that the child is stopped and its callers get
// "not found" errors instead of a restart storm.
func ActorStrategy() actor.SupervisorStrategy {
	return actor.NewOneForOneStrategy(10, time.Minute, func(any) actor.Directive {
		return actor.RestartDirective
	})
}

// InjectPanic is a test hook: every vmsup actor panics when it receives it,
// so fault tests can check that supervision restarts the actor, that the
// caller gets an error and that later calls work.
type InjectPanic struct {
	Reason string
}

// PanicError is the reply a caller gets when its message made the actor
// panic.
type PanicError struct {
	Actor   string
	Message string
	Value   any
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("%s panicked while handling %s: %v (the actor was restarted)", e.Actor, e.Message, e.Value)
}

// RecoverAndReply answers the sender of the message that made an actor
// panic, then panics again so protoactor's supervisor restarts the actor.
// Use it as `defer supervision.RecoverAndReply(ctx, name)` in Receive.
func RecoverAndReply(ctx actor.Context, name string) {
	r := recover()
	if r == nil {
		return
	}
	if sender := ctx.Sender(); sender != nil {
		ctx.Respond(&PanicError{Actor: name, Message: fmt.Sprintf("%T", ctx.Message()), Value: r})
	}
	panic(r)
}
