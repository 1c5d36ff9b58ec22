package actors

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// DefaultTimeout bounds an ask whose context has no deadline, as libvirt
// bounds its job wait.
const DefaultTimeout = 30 * time.Second

// ReplyPrefix starts the process id of every one-shot reply address
// (Ask's, and the domain's per-job QMP reply). Such a process is no actor:
// the trace middleware does not stamp messages sent to it.
const ReplyPrefix = "reply-"

// askRouterID is the process id of the reply router that Ask's reply
// addresses all name; the PID's RequestId tells the calls apart.
const askRouterID = ReplyPrefix + "ask"

// ErrNoActor is returned when the target actor has stopped or never existed.
var ErrNoActor = errors.New("actor not found")

// defaultTimeout is DefaultTimeout in nanoseconds; tests shorten it.
var defaultTimeout atomic.Int64

func init() { defaultTimeout.Store(int64(DefaultTimeout)) }

// Ask sends msg to pid as a request and waits for the reply, bounded by ctx
// (DefaultTimeout when ctx has no deadline). A reply that is an error is
// returned as the error. When the wait ends, Ask returns ctx.Err() itself
// (context.DeadlineExceeded when DefaultTimeout ran out), unwrapped, so
// callers can tell "I gave up" from an error of the callee. A request to an
// actor that has stopped returns ErrNoActor at once.
//
// The reply address lives only for the call: a reply that comes after Ask
// returned is dropped. Every reply address names one process per actor
// system, the reply router, with a RequestId of its own; the router hands a
// reply to the call still waiting on that very PID. So an ask costs no
// registry entry, no goroutine and, when ctx has a deadline, no timer.
func Ask(ctx context.Context, sender actor.SenderContext, pid *actor.PID, msg any) (any, error) {
	if pid == nil {
		return nil, ErrNoActor
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r, err := routerOf(sender.ActorSystem())
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", pid.Id, err)
	}
	w := waiters.Get().(*waiter)
	replyTo := r.add(w)
	sender.RequestWithCustomSender(pid, msg, replyTo)

	var expired <-chan time.Time
	if _, ok := ctx.Deadline(); !ok {
		expired = w.arm(time.Duration(defaultTimeout.Load()))
	}
	var reply any
	select {
	case reply = <-w.replies:
	case <-ctx.Done():
		err = ctx.Err()
	case <-expired:
		err = context.DeadlineExceeded
	}
	if err != nil && !r.remove(replyTo) {
		// The reply was handed over before the entry could be taken
		// back: it is in the channel already. Drain it, so that the
		// waiter goes back to the pool empty.
		<-w.replies
	}
	w.release()
	if err != nil {
		return nil, err
	}
	switch v := reply.(type) {
	case *actor.DeadLetterResponse:
		return nil, ErrNoActor
	case error:
		return nil, v
	default:
		return v, nil
	}
}

// waiter is where one Ask waits for its reply. Waiters are pooled: one
// goes back to the pool only once it is out of the router and its channel
// is empty, so a reused waiter never sees an earlier call's reply.
type waiter struct {
	replies chan any    // buffered 1: the router's hand-over never blocks
	timer   *time.Timer // DefaultTimeout, for a context without deadline
	armed   bool        // timer is running
	pid     *actor.PID  // the call's reply address, while in the router
}

var waiters = sync.Pool{New: func() any { return &waiter{replies: make(chan any, 1)} }}

// arm starts the waiter's timer and returns its channel. Since Go 1.23 a
// stopped or reset timer delivers no stale tick, so the timer is reused.
func (w *waiter) arm(d time.Duration) <-chan time.Time {
	if w.timer == nil {
		w.timer = time.NewTimer(d)
	} else {
		w.timer.Reset(d)
	}
	w.armed = true
	return w.timer.C
}

// release stops the timer and puts the waiter back in the pool.
func (w *waiter) release() {
	if w.armed {
		w.timer.Stop()
		w.armed = false
	}
	w.pid = nil
	waiters.Put(w)
}

// router is the process behind every reply address of Ask in one actor
// system: it hands the first message sent to a reply address to the call
// waiting on it, and drops the rest.
type router struct {
	system *actor.ActorSystem
	self   *actor.PID
	ids    atomic.Uint32
	shards [routerShards]routerShard
}

const routerShards = 32

type routerShard struct {
	mu      sync.Mutex
	waiting map[uint32]*waiter
	_       [40]byte // one cache line per shard
}

// lastRouter caches the router of the system that asked last, so that a
// process with one actor system finds it without a registry lookup.
var lastRouter atomic.Pointer[router]

// routerOf returns the reply router of system, registering it on first
// use.
func routerOf(system *actor.ActorSystem) (*router, error) {
	if r := lastRouter.Load(); r != nil && r.system == system {
		return r, nil
	}
	registry := system.ProcessRegistry
	for attempt := 0; attempt < 2; attempt++ {
		if p, ok := registry.GetLocal(askRouterID); ok {
			r, ok := p.(*router)
			if !ok {
				return nil, fmt.Errorf("process %q is a %T, not the reply router", askRouterID, p)
			}
			lastRouter.Store(r)
			return r, nil
		}
		r := &router{system: system}
		for i := range r.shards {
			r.shards[i].waiting = map[uint32]*waiter{}
		}
		pid, ok := registry.Add(r, askRouterID)
		if ok {
			r.self = pid
			lastRouter.Store(r)
			return r, nil
		}
		// Another call registered one first: use that.
	}
	return nil, errors.New("cannot register the reply router")
}

func (r *router) shard(id uint32) *routerShard { return &r.shards[id%routerShards] }

// add enters w under a fresh RequestId and returns its reply address.
func (r *router) add(w *waiter) *actor.PID {
	pid := &actor.PID{Address: r.system.ProcessRegistry.Address, Id: askRouterID}
	for {
		id := r.ids.Add(1)
		if id == 0 {
			continue // 0 means "no request id" in a PID
		}
		s := r.shard(id)
		s.mu.Lock()
		if _, taken := s.waiting[id]; !taken { // a call of 2³² asks ago still waits
			pid.RequestId = id
			w.pid = pid
			s.waiting[id] = w
			s.mu.Unlock()
			return pid
		}
		s.mu.Unlock()
	}
}

// remove takes the call of pid out of the router. It returns false when
// the reply was handed over first.
func (r *router) remove(pid *actor.PID) bool {
	s := r.shard(pid.RequestId)
	s.mu.Lock()
	defer s.mu.Unlock()
	if w, ok := s.waiting[pid.RequestId]; ok && w.pid == pid {
		delete(s.waiting, pid.RequestId)
		return true
	}
	return false
}

// SendUserMessage hands message, unwrapped from its envelope, to the call
// waiting on pid. A reply to a call that no longer waits, or a second
// reply, finds no entry and is dropped. The entry must hold this very PID
// (pointer equality): a message to a reply address made by hand, or one
// left over from a call 2³² asks ago, reaches nobody.
func (r *router) SendUserMessage(pid *actor.PID, message any) {
	if pid == nil {
		return
	}
	_, msg, _ := actor.UnwrapEnvelope(message)
	s := r.shard(pid.RequestId)
	s.mu.Lock()
	if w, ok := s.waiting[pid.RequestId]; ok && w.pid == pid {
		delete(s.waiting, pid.RequestId)
		w.replies <- msg // empty and buffered: never blocks
	}
	s.mu.Unlock()
}

// SendSystemMessage drops system messages: a reply address watches nobody.
func (r *router) SendSystemMessage(*actor.PID, any) {}

// Stop does nothing: the router lives as long as its actor system.
func (r *router) Stop(*actor.PID) {}

// ReplyAddress registers a one-shot reply address under ReplyPrefix+kind.
// The first message sent to it is unwrapped from its envelope and handed
// to deliver, on the sender's goroutine (deliver must not block); later
// ones are dropped. The caller removes the address from the registry when
// it no longer waits. protoactor's own futures race when stopped while a
// reply arrives, so the domain's one-command jobs use this.
func ReplyAddress(system *actor.ActorSystem, kind string, deliver func(msg any)) (*actor.PID, error) {
	registry := system.ProcessRegistry
	pid, ok := registry.Add(&replyProcess{deliver: deliver}, replyID(kind))
	if !ok {
		return nil, fmt.Errorf("cannot register a %s reply address", kind)
	}
	return pid, nil
}

// replyIDs numbers the reply addresses of ReplyAddress.
var replyIDs atomic.Uint64

// replyID is ReplyPrefix+kind+"$"+a counter, in one allocation.
func replyID(kind string) string {
	var buf [64]byte
	b := append(buf[:0], ReplyPrefix...)
	b = append(b, kind...)
	b = append(b, '$')
	b = strconv.AppendUint(b, replyIDs.Add(1), 36)
	return string(b)
}

// replyProcess is the process behind a ReplyAddress.
type replyProcess struct {
	fired   atomic.Bool
	deliver func(msg any)
}

func (r *replyProcess) SendUserMessage(_ *actor.PID, message any) {
	if r.fired.Swap(true) {
		return // a second reply is dropped; the first one wins
	}
	_, msg, _ := actor.UnwrapEnvelope(message)
	r.deliver(msg)
}

func (r *replyProcess) SendSystemMessage(*actor.PID, any) {}

func (r *replyProcess) Stop(*actor.PID) {}

// AskAs is Ask with the reply converted to T. A reply of another type is an
// error that names both types.
func AskAs[T any](ctx context.Context, sender actor.SenderContext, pid *actor.PID, msg any) (T, error) {
	var zero T
	v, err := Ask(ctx, sender, pid, msg)
	if err != nil {
		return zero, err
	}
	t, ok := v.(T)
	if !ok {
		return zero, fmt.Errorf("unexpected reply %T to %T from %s", v, msg, pid.Id)
	}
	return t, nil
}
