package domain

import (
	"strings"
	"testing"
	"time"
)

func TestSpecRestartPolicy(t *testing.T) {
	s, err := ParseSpec([]byte("name: r\non_crash: restart\nrestart: {initial: 100ms, max: 2s, factor: 3, limit: 4, window: 30s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := s.Restart
	if r == nil || time.Duration(r.Initial) != 100*time.Millisecond || time.Duration(r.Max) != 2*time.Second ||
		r.Factor != 3 || r.Limit != 4 || time.Duration(r.Window) != 30*time.Second {
		t.Fatalf("restart policy = %+v", r)
	}
	clone := s.Clone()
	clone.Restart.Limit = 9
	if s.Restart.Limit != 4 {
		t.Fatal("Clone shares the restart policy")
	}

	for _, c := range []struct{ yaml, field string }{
		{"restart: {initial: soon}", `"restart.initial"`},
		{"restart: {initial: 5}", `"restart.initial"`},
		{"restart: {factor: fast}", `"restart.factor"`},
		{"restart: {factor: 0.5}", `"restart.factor"`},
		{"restart: {initial: 10s, max: 1s}", `"restart.max"`},
		{"restart: {limit: -1}", `"restart.limit"`},
		{"restart: {window: 48h}", `"restart.window"`},
		{"restart: {bogus: 1}", `"restart.bogus"`},
	} {
		_, err := ParseSpec([]byte("name: r\n" + c.yaml + "\n"))
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: error %v does not name %s", c.yaml, err, c.field)
		}
	}
}
