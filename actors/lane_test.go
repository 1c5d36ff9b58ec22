package actors

import (
	"slices"
	"testing"
)

func TestLaneFIFOAndOneActive(t *testing.T) {
	var l Lane[int]
	for i := 1; i <= 3; i++ {
		l.Enqueue(i)
	}
	j, ok := l.Next(nil)
	if !ok || j != 1 {
		t.Fatalf("Next = %d, %v; want 1", j, ok)
	}
	if _, ok := l.Next(nil); ok {
		t.Fatal("a second job became active while one was active")
	}
	if got, _ := l.End(); got != 1 {
		t.Fatalf("End = %d", got)
	}
	if j, _ := l.Next(nil); j != 2 {
		t.Fatalf("Next = %d, want 2", j)
	}
	l.End()
	l.EnqueueFront(9)
	if got := l.Waiting(); !slices.Equal(got, []int{9, 3}) {
		t.Fatalf("Waiting = %v", got)
	}
}

func TestLaneMaskKeepsOrder(t *testing.T) {
	var l Lane[int]
	l.Enqueue(2) // refused by the mask
	l.Enqueue(4)
	even := func(j int) bool { return j != 2 }
	if _, ok := l.Next(even); ok {
		t.Fatal("a job behind a refused head started: the lane must stay FIFO")
	}
	if l.Len() != 2 || l.Busy() {
		t.Fatalf("len %d busy %v", l.Len(), l.Busy())
	}
}

func TestLaneRemove(t *testing.T) {
	var l Lane[int]
	l.Enqueue(1)
	l.Enqueue(2)
	l.Enqueue(3)
	if j, ok := l.Remove(func(j int) bool { return j == 2 }); !ok || j != 2 {
		t.Fatalf("Remove = %d, %v", j, ok)
	}
	if _, ok := l.Remove(func(j int) bool { return j == 7 }); ok {
		t.Fatal("removed a job that was not queued")
	}
	if got := l.Drain(); !slices.Equal(got, []int{1, 3}) {
		t.Fatalf("Drain = %v", got)
	}
	if l.Len() != 0 {
		t.Fatal("not empty after Drain")
	}
}
