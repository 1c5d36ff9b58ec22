package trace_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/actors/trace/internal/fixture"
)

func TestRingBoundedUnderFlood(t *testing.T) {
	const capacity, flood = 1000, 1_000_000
	rec := trace.New(trace.Options{Capacity: capacity})
	for i := range flood {
		rec.Record(trace.Record{Kind: trace.KindMessage, JobID: uint64(i)})
	}
	got := rec.Snapshot()
	if len(got) != capacity || rec.Len() != capacity {
		t.Fatalf("kept %d records (Len %d), want exactly %d", len(got), rec.Len(), capacity)
	}
	for i, r := range got {
		if want := uint64(flood - capacity + i); r.JobID != want {
			t.Fatalf("record %d is #%d, want #%d: the ring must keep the newest, oldest first", i, r.JobID, want)
		}
	}
	if ev := rec.Evicted(); ev != flood-capacity {
		t.Fatalf("Evicted = %d, want %d", ev, flood-capacity)
	}
}

func TestRecordConcurrent(t *testing.T) {
	const writers, each, capacity = 64, 5000, 4096
	rec := trace.New(trace.Options{Capacity: capacity})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	// Readers run while the writers write, for the race detector.
	var readers sync.WaitGroup
	for range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
					_ = rec.Snapshot()
					_ = rec.ByTrace("w3")
				}
			}
		}()
	}
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("w%d", w)
			for i := range each {
				rec.Record(trace.Record{TraceID: id, Kind: trace.KindMessage, JobID: uint64(i)})
			}
		}()
	}
	wg.Wait()
	close(stop)
	readers.Wait()

	got := rec.Snapshot()
	if len(got) != capacity {
		t.Fatalf("kept %d records, want %d", len(got), capacity)
	}
	// Each writer's records are kept in the order it wrote them, and only
	// its newest ones: a writer's kept records are a suffix of its writes.
	last := map[string]int64{}
	count := map[string]int{}
	for _, r := range got {
		prev, ok := last[r.TraceID]
		if ok && int64(r.JobID) <= prev {
			t.Fatalf("writer %s: record %d after %d", r.TraceID, r.JobID, prev)
		}
		last[r.TraceID] = int64(r.JobID)
		count[r.TraceID]++
	}
	for id := range count {
		// A writer with any record kept has its newest one kept too.
		if last[id] != each-1 {
			t.Errorf("writer %s: newest kept record is %d, want %d", id, last[id], each-1)
		}
	}
	if rec.Evicted() != writers*each-capacity {
		t.Fatalf("Evicted = %d, want %d", rec.Evicted(), writers*each-capacity)
	}
}

func TestDisabledAndNil(t *testing.T) {
	rec := trace.New(trace.Options{Disabled: true})
	if rec.Enabled() {
		t.Fatal("Disabled recorder reports Enabled")
	}
	rec.Record(trace.Record{Kind: trace.KindMessage})
	if n := len(rec.Snapshot()); n != 0 {
		t.Fatalf("disabled recorder kept %d records", n)
	}
	rec.SetEnabled(true)
	rec.Record(trace.Record{Kind: trace.KindMessage})
	if n := len(rec.Snapshot()); n != 1 {
		t.Fatalf("enabled recorder kept %d records, want 1", n)
	}
	if rec.Capacity() != trace.DefaultCapacity {
		t.Fatalf("Capacity = %d, want %d", rec.Capacity(), trace.DefaultCapacity)
	}

	var none *trace.Recorder
	none.Record(trace.Record{})
	none.SetEnabled(true)
	if none.Enabled() || none.Snapshot() != nil || none.Len() != 0 || none.Dropped() != 0 || none.Evicted() != 0 {
		t.Fatal("a nil recorder must record nothing")
	}
	sub := none.Subscribe(1, nil)
	if _, ok := <-sub.C; ok {
		t.Fatal("a nil recorder's subscription must be closed")
	}
	sub.Close()
}

func TestByTraceOrder(t *testing.T) {
	rec := trace.New(trace.Options{})
	want := fixture.StartRequest()
	shuffled := slices.Clone(want)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	for _, r := range shuffled {
		rec.Record(r)
	}
	rec.Record(trace.Record{TraceID: "other", Kind: trace.KindMessage, Started: fixture.T0})
	got := rec.ByTrace(fixture.TraceID)
	if len(got) != len(want) {
		t.Fatalf("ByTrace returned %d records, want %d", len(got), len(want))
	}
	for i := 1; i < len(got); i++ {
		a, b := got[i-1], got[i]
		if b.Started.Before(a.Started) || b.Started.Equal(a.Started) && b.Enqueued.Before(a.Enqueued) {
			t.Fatalf("record %d (%s) before record %d (%s) is out of order", i-1, a.SpanID, i, b.SpanID)
		}
	}
	if got[0].Kind != trace.KindAPI {
		t.Fatalf("first record is %s, want the API call", got[0].Kind)
	}
}

func TestSubscribe(t *testing.T) {
	rec := trace.New(trace.Options{})
	jobs := rec.Subscribe(8, func(r trace.Record) bool { return r.Kind == trace.KindJob })
	all := rec.Subscribe(0, nil)
	for _, r := range fixture.StartRequest() {
		rec.Record(r)
	}
	got := <-jobs.C
	if got.SpanID != "job-1" {
		t.Fatalf("filtered subscription got %q, want the job", got.SpanID)
	}
	select {
	case r := <-jobs.C:
		t.Fatalf("filtered subscription got a second record %+v", r)
	default:
	}
	if n := len(all.C); n != len(fixture.StartRequest()) {
		t.Fatalf("unfiltered subscription has %d records, want %d", n, len(fixture.StartRequest()))
	}
	jobs.Close()
	jobs.Close() // twice is fine
	if _, ok := <-jobs.C; ok {
		t.Fatal("C is not closed after Close")
	}
	rec.Record(trace.Record{Kind: trace.KindJob}) // after Close: no panic
	all.Close()
	if jobs.Dropped() != 0 || all.Dropped() != 0 || rec.Dropped() != 0 {
		t.Fatal("nothing should have been dropped")
	}
}

// rounds is how often recordNsPerOp measures.
const rounds = 3

// recordNsPerOp measures Record: the best of several rounds, in ns per call.
func recordNsPerOp(rec *trace.Recorder, n int) float64 {
	r := trace.Record{TraceID: "t", SpanID: "s", Kind: trace.KindMessage, Actor: "domain/web1", MessageType: "domain.StartRequest", Started: fixture.T0, Ended: fixture.T0}
	best := time.Duration(1<<63 - 1)
	for range rounds {
		start := time.Now()
		for range n {
			rec.Record(r)
		}
		best = min(best, time.Since(start))
	}
	return float64(best.Nanoseconds()) / float64(n)
}

func TestStalledSubscriberDoesNotSlowRecord(t *testing.T) {
	const n = 200_000
	rec := trace.New(trace.Options{})
	free := recordNsPerOp(rec, n)

	const buffer = 16
	stalled := rec.Subscribe(buffer, nil) // never read
	defer stalled.Close()
	withStalled := recordNsPerOp(rec, n)

	t.Logf("Record: %.0f ns/op without a subscriber, %.0f ns/op with a stalled one (%.2fx)", free, withStalled, withStalled/free)
	if withStalled > 3*free {
		t.Errorf("a stalled subscriber slows Record from %.0f to %.0f ns/op (more than 3x)", free, withStalled)
	}
	if want := uint64(rounds*n - buffer); stalled.Dropped() != want || rec.Dropped() != want {
		t.Errorf("Dropped = %d (recorder %d), want %d", stalled.Dropped(), rec.Dropped(), want)
	}
	if len(stalled.C) != buffer {
		t.Errorf("stalled channel holds %d records, want its buffer of %d", len(stalled.C), buffer)
	}
}
