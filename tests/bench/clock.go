package bench

import (
	"container/heap"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// replyClock releases the simulated monitors' replies on time.
//
// monitor.Simulated waits with a Go timer. Go fires timers shorter than a
// millisecond late when the process is idle (its poller sleeps in whole
// milliseconds), so a 200 µs reply takes about 1 ms in a process that
// waits and 200 µs in one that keeps its cores busy: the busier system
// would get the faster "QEMU". The benchmarks therefore run the simulated
// monitors with no latency of their own and wait on this clock instead:
// one OS thread that sleeps in ppoll(2) with a nanosecond timeout (timer
// slack 1 ns) until the earliest reply is due, then wakes every waiter
// whose time has come. It costs one wake-up per batch of due replies and
// no CPU while nothing is due, and it serves both systems alike.
//
// When the process is busy the clock is late instead: its goroutine, back
// from ppoll, waits in the global run queue for a P. Go timers are on time
// then (every P checks them whenever it schedules), so each simulated
// command waits for whichever of the two fires first.
type replyClock struct {
	once   sync.Once
	mu     sync.Mutex
	due    dueHeap
	wakeFD int // eventfd: a new earliest deadline
}

var clock replyClock

type dueEntry struct {
	at time.Time
	ch chan struct{}
}

type dueHeap []dueEntry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueEntry)) }
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = dueEntry{}
	*h = old[:len(old)-1]
	return e
}

// After returns a channel closed once d has passed.
func (c *replyClock) After(d time.Duration) <-chan struct{} {
	c.once.Do(c.start)
	ch := make(chan struct{})
	if c.wakeFD < 0 { // no eventfd: fall back to a Go timer
		time.AfterFunc(d, func() { close(ch) })
		return ch
	}
	c.mu.Lock()
	heap.Push(&c.due, dueEntry{at: time.Now().Add(d), ch: ch})
	first := c.due[0].ch == ch
	c.mu.Unlock()
	if first {
		var one = [8]byte{1}
		_, _ = unix.Write(c.wakeFD, one[:])
	}
	return ch
}

func (c *replyClock) start() {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		c.wakeFD = -1
		return
	}
	c.wakeFD = fd
	ready := make(chan struct{})
	go c.loop(ready)
	<-ready
}

func (c *replyClock) loop(ready chan struct{}) {
	runtime.LockOSThread() // never unlocked: the thread is the clock's
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
	close(ready)
	fds := []unix.PollFd{{Fd: int32(c.wakeFD), Events: unix.POLLIN}}
	var buf [8]byte
	for {
		c.mu.Lock()
		now := time.Now()
		for len(c.due) > 0 && !c.due[0].at.After(now) {
			close(heap.Pop(&c.due).(dueEntry).ch)
		}
		var timeout *unix.Timespec
		if len(c.due) > 0 {
			ts := unix.NsecToTimespec(c.due[0].at.Sub(now).Nanoseconds())
			timeout = &ts
		}
		c.mu.Unlock()
		if _, err := unix.Ppoll(fds, timeout, nil); err == nil && fds[0].Revents&unix.POLLIN != 0 {
			_, _ = unix.Read(c.wakeFD, buf[:])
		}
	}
}
