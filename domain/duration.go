package domain

import (
	"encoding/json"
	"fmt"
	"time"
)

// Duration is a time.Duration written as a Go duration string ("1s",
// "1m30s") in specs.
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string such as "1s".
func (d *Duration) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf(`must be a duration such as "1s" or "2m"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf(`invalid duration %q: must be like "1s" or "2m"`, s)
	}
	*d = Duration(v)
	return nil
}

// RestartPolicy tunes on_crash: restart. Zero fields take the defaults of
// package supervision (1s, 30s, 2; 5 restarts in 60s).
type RestartPolicy struct {
	// Initial is the wait before the first restart.
	Initial Duration `json:"initial,omitempty"`
	// Max caps the wait between restarts.
	Max Duration `json:"max,omitempty"`
	// Factor multiplies the wait after each restart.
	Factor float64 `json:"factor,omitempty"`
	// Limit restarts within Window make a crash loop: the VM then stays
	// crashed/crash-loop.
	Limit  int      `json:"limit,omitempty"`
	Window Duration `json:"window,omitempty"`
}
