package domain

import (
	"sync"
	"sync/atomic"
	"time"
)

// EventType names a lifecycle event.
type EventType string

// The lifecycle events.
const (
	EventDefined   EventType = "defined"
	EventUndefined EventType = "undefined"
	EventStarted   EventType = "started"
	EventPaused    EventType = "paused"
	EventResumed   EventType = "resumed"
	EventShutdown  EventType = "shutdown"
	EventStopped   EventType = "stopped"
	EventCrashed   EventType = "crashed"
	// EventNetworkUp: the guest's driver brought a NIC up (QEMU's
	// NIC_RX_FILTER_CHANGED, sent when the guest first sets the NIC's
	// receive filter); NIC names it ("networks[0]").
	EventNetworkUp EventType = "network-up"
)

// Event is a lifecycle event of one domain.
type Event struct {
	Seq    uint64    `json:"seq"`
	Type   EventType `json:"type"`
	Domain string    `json:"domain"`
	UUID   string    `json:"uuid,omitempty"`
	State  State     `json:"state"`
	Reason Reason    `json:"reason"`
	Time   time.Time `json:"time"`
	// Cause is the id of the QMP event or request that caused it.
	Cause string `json:"cause,omitempty"`
	// NIC is the spec field of the NIC a network-up event is about.
	NIC string `json:"nic,omitempty"`
}

// DefaultEventBuffer is a subscriber's buffer when none is given.
const DefaultEventBuffer = 256

// Broker fans lifecycle events out to subscribers. Publish never blocks:
// a subscriber whose buffer is full loses the event, and the loss is counted.
//
// It also carries each domain's QMP events, as QEMU sent them, to
// subscribers of SubscribeQMP (for embedders that drive go-qemu on a
// supervised domain), with the same rules.
type Broker struct {
	mu      sync.Mutex
	subs    map[*Subscription]struct{}
	qmpSubs map[*QMPSubscription]struct{}
	seq     uint64
}

// NewBroker returns an empty broker.
func NewBroker() *Broker {
	return &Broker{subs: make(map[*Subscription]struct{}), qmpSubs: make(map[*QMPSubscription]struct{})}
}

// Feed receives the events of type T of one domain, or of all domains:
// lifecycle events (Subscription) or QMP events (QMPSubscription).
type Feed[T any] struct {
	broker  *Broker
	set     map[*Feed[T]]struct{} // the broker's set of feeds of T
	domain  string
	ch      chan T
	dropped atomic.Uint64
	once    sync.Once
}

// Subscription receives the lifecycle events of one domain, or of all.
type Subscription = Feed[Event]

// QMPSubscription receives the QMP events of one domain, or of all.
type QMPSubscription = Feed[QMPEvent]

// subscribe adds a feed for domain ("" for every domain) to set, with a
// buffer of the given size (DefaultEventBuffer when <= 0).
func subscribe[T any](b *Broker, set map[*Feed[T]]struct{}, domain string, buffer int) *Feed[T] {
	if buffer <= 0 {
		buffer = DefaultEventBuffer
	}
	f := &Feed[T]{broker: b, set: set, domain: domain, ch: make(chan T, buffer)}
	b.mu.Lock()
	set[f] = struct{}{}
	b.mu.Unlock()
	return f
}

// deliver hands ev, an event of domain, to every matching feed of set
// without blocking; the caller holds the broker's lock.
func deliver[T any](set map[*Feed[T]]struct{}, domain string, ev T) {
	for f := range set {
		if f.domain != "" && f.domain != domain {
			continue
		}
		select {
		case f.ch <- ev:
		default:
			f.dropped.Add(1)
		}
	}
}

// Subscribe registers a subscriber for domain ("" for every domain) with a
// buffer of the given size (DefaultEventBuffer when <= 0).
func (b *Broker) Subscribe(domain string, buffer int) *Subscription {
	return subscribe(b, b.subs, domain, buffer)
}

// Publish delivers ev to every matching subscriber without blocking.
func (b *Broker) Publish(ev Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	ev.Seq = b.seq
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	deliver(b.subs, ev.Domain, ev)
}

// Events is the channel of events; it is closed by Close.
func (f *Feed[T]) Events() <-chan T { return f.ch }

// Dropped counts the events lost because the buffer was full.
func (f *Feed[T]) Dropped() uint64 { return f.dropped.Load() }

// Close unsubscribes and closes the channel. It is safe to call twice.
func (f *Feed[T]) Close() {
	f.once.Do(func() {
		f.broker.mu.Lock()
		delete(f.set, f)
		close(f.ch)
		f.broker.mu.Unlock()
	})
}

// QMPEvent is a QMP event of one domain, as QEMU sent it.
type QMPEvent struct {
	// Domain is the domain whose QEMU sent it.
	Domain string `json:"domain"`
	// ID identifies the event in the trace; the lifecycle events it causes
	// name it as their Cause.
	ID string `json:"id"`
	// Name is QEMU's event name, such as "STOP".
	Name string `json:"event"`
	// Data is the event's data member. It is shared by every subscriber:
	// read it, never modify it.
	Data map[string]any `json:"data,omitempty"`
	// Time is QEMU's timestamp of the event.
	Time time.Time `json:"timestamp"`
}

// SubscribeQMP registers a subscriber to the QMP events of domain ("" for
// every domain) with a buffer of the given size (DefaultEventBuffer when
// <= 0).
func (b *Broker) SubscribeQMP(domain string, buffer int) *QMPSubscription {
	return subscribe(b, b.qmpSubs, domain, buffer)
}

// PublishQMP delivers a QMP event to every matching subscriber without
// blocking.
func (b *Broker) PublishQMP(ev QMPEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	deliver(b.qmpSubs, ev.Domain, ev)
}
