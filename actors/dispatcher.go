package actors

import (
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/panjf2000/ants/v2"
)

// Dispatcher runs actors' mailbox turns on a pool of long-lived worker
// goroutines (github.com/panjf2000/ants), instead of protoactor's default
// of one new goroutine per turn. A new goroutine starts with a 2 KiB
// stack and grows it, by copying, on every turn that calls deep (JSON,
// logging); a pooled worker keeps the stack it has grown. Measured on the
// job round trip, stack growth was a third of vmsup's CPU time.
//
// The pool has no size limit, so a turn never waits for a worker: an
// actor whose handler blocks holds one worker, as it held one goroutine
// before. Idle workers end after IdleWorker. Close stops the pool; turns
// scheduled after it run on goroutines of their own.
type Dispatcher struct {
	pool       *ants.Pool
	tasks      *ants.PoolWithFunc // job goroutines: a pointer argument, no closure
	throughput int
}

// task is work that the dispatcher runs without a closure: a job segment.
type task interface{ runSegment() }

func runTask(arg any) { arg.(task).runSegment() }

// IdleWorker is how long a pooled worker waits for a turn before ending.
const IdleWorker = 10 * time.Second

// DefaultThroughput is how many messages an actor handles in one turn
// before it yields, protoactor's default.
const DefaultThroughput = 300

var _ actor.Dispatcher = (*Dispatcher)(nil)

// NewDispatcher starts a worker pool.
func NewDispatcher() (*Dispatcher, error) {
	pool, err := ants.NewPool(-1, ants.WithExpiryDuration(IdleWorker), ants.WithNonblocking(true))
	if err != nil {
		return nil, fmt.Errorf("actors: dispatcher pool: %w", err)
	}
	tasks, err := ants.NewPoolWithFunc(-1, runTask, ants.WithExpiryDuration(IdleWorker), ants.WithNonblocking(true))
	if err != nil {
		pool.Release()
		return nil, fmt.Errorf("actors: dispatcher task pool: %w", err)
	}
	return &Dispatcher{pool: pool, tasks: tasks, throughput: DefaultThroughput}, nil
}

// Schedule runs fn, a mailbox turn, on an idle worker or a new one.
func (d *Dispatcher) Schedule(fn func()) {
	if err := d.pool.Submit(fn); err != nil {
		go fn() // the pool is closed: the actors still drain
	}
}

// goTask runs t on a pooled worker, or on a goroutine of its own once
// the pool is closed.
func (d *Dispatcher) goTask(t task) {
	if err := d.tasks.Invoke(t); err != nil {
		go t.runSegment()
	}
}

// Throughput is the number of messages per turn.
func (d *Dispatcher) Throughput() int { return d.throughput }

// PropsOption runs an actor's turns on d; a nil d leaves protoactor's
// default dispatcher.
func PropsOption(d actor.Dispatcher) []actor.PropsOption {
	if d == nil {
		return nil
	}
	return []actor.PropsOption{actor.WithDispatcher(d)}
}

// Close ends the idle workers and waits up to timeout for busy ones.
func (d *Dispatcher) Close(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	if err := d.pool.ReleaseTimeout(timeout); err != nil {
		d.tasks.Release()
		return fmt.Errorf("actors: dispatcher: %d workers still busy after %s: %w", d.pool.Running(), timeout, err)
	}
	if err := d.tasks.ReleaseTimeout(max(time.Until(deadline), time.Millisecond)); err != nil {
		return fmt.Errorf("actors: dispatcher: %d job goroutines still busy after %s: %w", d.tasks.Running(), timeout, err)
	}
	return nil
}
