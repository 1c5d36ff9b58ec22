package monitor

import (
	"sync"
	"time"
)

// EventCounter is a Conn that counts the events it has put on its events
// channel. The monitor uses it to keep QMP's order: QEMU sends an event
// (RESUME) before the reply to the command that caused it (cont), and the
// domain must see them in that order, although events and replies reach
// the monitor on different goroutines. Transport and Simulated have it.
type EventCounter interface {
	// EventsQueued is how many events the connection has queued so far.
	EventsQueued() uint64
}

// eventOrderWait bounds how long a command's reply waits for the events
// before it to be forwarded. The forwarder only sends messages, so this
// is reached only when the process starves.
const eventOrderWait = 2 * time.Second

// eventForwarder counts the events one connection's pump has forwarded to
// the domain, so that a reply can wait for the events QEMU sent before it.
type eventForwarder struct {
	mu        sync.Mutex
	cond      *sync.Cond
	forwarded uint64
	closed    bool // the pump has ended: nothing more will be forwarded
}

func newEventForwarder() *eventForwarder {
	f := &eventForwarder{}
	f.cond = sync.NewCond(&f.mu)
	return f
}

// done records one more forwarded event.
func (f *eventForwarder) done() {
	f.mu.Lock()
	f.forwarded++
	f.mu.Unlock()
	f.cond.Broadcast()
}

// close releases every waiter: the pump has ended.
func (f *eventForwarder) close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.cond.Broadcast()
}

// waitFor returns once n events have been forwarded, the pump has ended,
// or eventOrderWait has passed; it reports whether the order was kept.
func (f *eventForwarder) waitFor(n uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.forwarded >= n || f.closed {
		return true
	}
	expired := false
	timer := time.AfterFunc(eventOrderWait, func() {
		f.mu.Lock()
		expired = true
		f.mu.Unlock()
		f.cond.Broadcast()
	})
	defer timer.Stop()
	for f.forwarded < n && !f.closed && !expired {
		f.cond.Wait()
	}
	return !expired
}
