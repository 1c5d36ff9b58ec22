package actors

import (
	"testing"
	"time"
)

func TestInflightAddAfterWaitReturned(t *testing.T) {
	var f Inflight
	if !f.Wait(time.Millisecond) {
		t.Fatal("an empty count did not wait at once")
	}
	f.Add(1)
	if f.Wait(20 * time.Millisecond) {
		t.Fatal("Wait returned true with one goroutine in flight")
	}
	done := make(chan bool)
	go func() { done <- f.Wait(5 * time.Second) }()
	time.Sleep(10 * time.Millisecond)
	f.Add(1) // while someone waits: a WaitGroup forbids this
	f.Done()
	f.Done()
	if !<-done {
		t.Fatal("Wait did not see the count reach zero")
	}
	f.Add(1) // after a wait returned
	f.Done()
	if !f.Wait(time.Millisecond) {
		t.Fatal("count not zero")
	}
}
