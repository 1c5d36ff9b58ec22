package actors

import (
	"sync"
	"time"
)

// Inflight counts the goroutines an actor owns, across its restarts. Unlike
// a sync.WaitGroup it may be added to while someone waits and after a
// wait has returned: a restarted actor waits for its old instance's job
// goroutines while a message of the old lane can still start one (to run
// a job's cleanups). The zero value is ready to use.
type Inflight struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed when n reaches zero; nil while nobody waits
}

// Add adds delta to the count.
func (f *Inflight) Add(delta int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n += delta
	if f.n < 0 {
		panic("actors: Inflight count below zero")
	}
	if f.n == 0 && f.zero != nil {
		close(f.zero)
		f.zero = nil
	}
}

// Done subtracts one.
func (f *Inflight) Done() { f.Add(-1) }

// Wait waits up to timeout for the count to be zero and reports whether
// it was.
func (f *Inflight) Wait(timeout time.Duration) bool {
	f.mu.Lock()
	if f.n == 0 {
		f.mu.Unlock()
		return true
	}
	if f.zero == nil {
		f.zero = make(chan struct{})
	}
	zero := f.zero
	f.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-zero:
		return true
	case <-t.C:
		return false
	}
}
