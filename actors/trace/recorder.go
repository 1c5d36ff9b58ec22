package trace

import (
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
)

// DefaultCapacity is the number of records a Recorder keeps by default.
const DefaultCapacity = 65536

// DefaultSubscriptionBuffer is the channel buffer of a subscription that
// asks for none.
const DefaultSubscriptionBuffer = 1024

// Options configure a Recorder.
type Options struct {
	// Capacity is how many of the newest records the ring buffer keeps;
	// DefaultCapacity when zero or negative.
	Capacity int
	// Disabled starts the recorder switched off; SetEnabled switches it on.
	Disabled bool
}

// Recorder keeps the newest records in a bounded ring buffer and hands
// every record to its subscribers. It is safe for concurrent use, and
// Record never waits on anything but a slot's lock, which is held only to
// copy one record: writers claim a slot with an atomic counter, and a
// subscriber whose channel is full loses the record (its drop counter
// counts it). The buffer is allocated when recording is first switched
// on, so a recorder that stays off costs no memory.
//
// A nil *Recorder is valid and records nothing.
type Recorder struct {
	enabled atomic.Bool
	next    atomic.Uint64 // sequence number of the next record
	ring    atomic.Pointer[[]slot]
	ringMu  sync.Mutex // allocation of the ring
	cap     uint64

	subs    atomic.Pointer[[]*Subscription] // copy on write, under subMu
	subMu   sync.Mutex
	dropped atomic.Uint64 // records lost by closed subscriptions
}

// slot holds one record of the ring; seq says which (the slot of sequence
// number n is n % capacity).
type slot struct {
	mu    sync.Mutex
	valid bool
	seq   uint64
	rec   Record
}

// New returns a Recorder.
func New(opts Options) *Recorder {
	if opts.Capacity <= 0 {
		opts.Capacity = DefaultCapacity
	}
	r := &Recorder{cap: uint64(opts.Capacity)}
	r.SetEnabled(!opts.Disabled)
	return r
}

// Enabled reports whether the recorder records.
func (r *Recorder) Enabled() bool {
	return r != nil && r.enabled.Load()
}

// SetEnabled switches recording on or off. Records already kept stay.
// The ring buffer is allocated when recording is first switched on.
func (r *Recorder) SetEnabled(on bool) {
	if r == nil {
		return
	}
	if on {
		r.allocate()
	}
	r.enabled.Store(on)
}

// Capacity is the number of records the ring buffer keeps.
func (r *Recorder) Capacity() int {
	if r == nil {
		return 0
	}
	return int(r.cap)
}

// Record stores rec, evicting the oldest record when the buffer is full,
// and offers it to every subscriber. It does nothing but one atomic load
// when the recorder is off, and it never waits for a subscriber.
func (r *Recorder) Record(rec Record) {
	if r == nil || !r.enabled.Load() {
		return
	}
	r.record(&rec)
}

func (r *Recorder) record(rec *Record) {
	ring := r.ring.Load()
	if ring == nil {
		ring = r.allocate()
	}
	seq := r.next.Add(1) - 1
	s := &(*ring)[seq%r.cap]
	s.mu.Lock()
	// A writer that lost the race for this slot to a newer record (the
	// ring wrapped around meanwhile) leaves it alone.
	if !s.valid || s.seq < seq {
		s.valid, s.seq, s.rec = true, seq, *rec
	}
	s.mu.Unlock()
	if subs := r.subs.Load(); subs != nil {
		for _, sub := range *subs {
			sub.offer(rec)
		}
	}
}

func (r *Recorder) allocate() *[]slot {
	r.ringMu.Lock()
	defer r.ringMu.Unlock()
	if ring := r.ring.Load(); ring != nil {
		return ring
	}
	ring := make([]slot, r.cap)
	r.ring.Store(&ring)
	return &ring
}

// Snapshot returns the records in the buffer, oldest first (in the order
// Record was called).
func (r *Recorder) Snapshot() []Record {
	return r.collect(nil)
}

// ByTrace returns the buffered records of one trace, ordered by Started
// then Enqueued.
func (r *Recorder) ByTrace(traceID string) []Record {
	out := r.collect(func(rec *Record) bool { return rec.TraceID == traceID })
	Sort(out)
	return out
}

// Filter returns the buffered records for which keep is true, oldest
// first.
func (r *Recorder) Filter(keep func(Record) bool) []Record {
	return r.collect(func(rec *Record) bool { return keep(*rec) })
}

func (r *Recorder) collect(keep func(*Record) bool) []Record {
	if r == nil {
		return nil
	}
	ring := r.ring.Load()
	if ring == nil {
		return []Record{}
	}
	n := r.next.Load()
	first := uint64(0)
	if n > r.cap {
		first = n - r.cap
	}
	out := make([]Record, 0, min(n-first, 1024))
	var rec Record
	for seq := first; seq < n; seq++ {
		s := &(*ring)[seq%r.cap]
		s.mu.Lock()
		// A slot that holds another sequence number is still being written,
		// or was overwritten since n was read.
		ok := s.valid && s.seq == seq
		if ok {
			rec = s.rec
		}
		s.mu.Unlock()
		if ok && (keep == nil || keep(&rec)) {
			out = append(out, rec)
		}
	}
	return out
}

// Len is the number of records in the buffer.
func (r *Recorder) Len() int {
	if r == nil {
		return 0
	}
	return int(min(r.next.Load(), r.cap))
}

// Evicted is the number of records that were pushed out of the full ring
// buffer by newer ones.
func (r *Recorder) Evicted() uint64 {
	if r == nil {
		return 0
	}
	if n := r.next.Load(); n > r.cap {
		return n - r.cap
	}
	return 0
}

// Dropped is the number of records that subscribers lost because their
// channel was full, summed over all subscriptions ever made.
func (r *Recorder) Dropped() uint64 {
	if r == nil {
		return 0
	}
	n := r.dropped.Load() // of closed subscriptions
	if subs := r.subs.Load(); subs != nil {
		for _, s := range *subs {
			n += s.dropped.Load()
		}
	}
	return n
}

// Subscription is a live stream of records. Read them from C; a reader
// that falls behind loses records instead of slowing the recorder, and
// Dropped counts them.
type Subscription struct {
	// C delivers the records. It is closed by Close.
	C <-chan Record

	ch       chan Record
	filter   func(Record) bool
	rec      *Recorder
	inflight atomic.Int64 // offers under way; Close waits for them
	closed   atomic.Bool
	once     sync.Once
	dropped  atomic.Uint64
}

// Subscribe starts a live stream of the records for which filter returns
// true (all records when filter is nil), buffered by buffer records
// (DefaultSubscriptionBuffer when zero or negative). filter runs in the
// goroutine that calls Record and must be quick. Call Close to end it.
// On a nil Recorder it returns a subscription whose channel is closed.
func (r *Recorder) Subscribe(buffer int, filter func(Record) bool) *Subscription {
	if buffer <= 0 {
		buffer = DefaultSubscriptionBuffer
	}
	ch := make(chan Record, buffer)
	s := &Subscription{C: ch, ch: ch, filter: filter, rec: r}
	if r == nil {
		s.Close()
		return s
	}
	r.subMu.Lock()
	defer r.subMu.Unlock()
	var subs []*Subscription
	if old := r.subs.Load(); old != nil {
		subs = slices.Clone(*old)
	}
	subs = append(subs, s)
	r.subs.Store(&subs)
	return s
}

// offer sends rec to the subscriber unless its channel is full. It takes
// no lock: Close marks the subscription closed, then waits until no offer
// is under way before it closes the channel.
func (s *Subscription) offer(rec *Record) {
	if s.filter != nil && !s.filter(*rec) {
		return
	}
	if len(s.ch) == cap(s.ch) { // full: the cheap path of a stalled reader
		if !s.closed.Load() {
			s.dropped.Add(1)
		}
		return
	}
	s.inflight.Add(1)
	if !s.closed.Load() {
		select {
		case s.ch <- *rec:
		default:
			s.dropped.Add(1)
		}
	}
	s.inflight.Add(-1)
}

// Dropped is the number of records this subscription lost because its
// channel was full.
func (s *Subscription) Dropped() uint64 {
	return s.dropped.Load()
}

// Close ends the subscription and closes C. Records already in C can
// still be read. Close may be called more than once.
func (s *Subscription) Close() {
	s.once.Do(func() {
		if r := s.rec; r != nil {
			r.subMu.Lock()
			if old := r.subs.Load(); old != nil {
				subs := slices.DeleteFunc(slices.Clone(*old), func(x *Subscription) bool { return x == s })
				r.subs.Store(&subs)
			}
			r.subMu.Unlock()
		}
		s.closed.Store(true)
		for s.inflight.Load() != 0 {
			runtime.Gosched()
		}
		close(s.ch)
		if r := s.rec; r != nil {
			r.dropped.Add(s.dropped.Load())
		}
	})
}
