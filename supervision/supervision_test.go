package supervision

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	b := Backoff{}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for n, w := range want {
		if got := b.Delay(n); got != w {
			t.Errorf("Delay(%d) = %s, want %s", n, got, w)
		}
	}
	custom := Backoff{Initial: 100 * time.Millisecond, Max: 250 * time.Millisecond, Factor: 3}
	if got := custom.Delay(1); got != 250*time.Millisecond {
		t.Errorf("capped delay = %s", got)
	}
}

func TestCrashLoop(t *testing.T) {
	c := NewCrashLoop(3, time.Minute)
	now := time.Unix(1000, 0)
	for i := 0; i < 3; i++ {
		if !c.Allow(now.Add(time.Duration(i) * time.Second)) {
			t.Fatalf("restart %d refused", i)
		}
	}
	if c.Allow(now.Add(3 * time.Second)) {
		t.Fatal("fourth restart within the window allowed")
	}
	if !c.Allow(now.Add(61 * time.Second)) {
		t.Fatal("restart after the window refused")
	}
	if n := c.Recent(now.Add(61 * time.Second)); n != 2 {
		t.Fatalf("Recent = %d, want 2 (the restart at +2s and the new one)", n)
	}
}
