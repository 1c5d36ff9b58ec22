package driver

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/domain"
)

// statusWriter persists one domain's runtime status. Put never blocks: a
// status not yet written is replaced by a newer one, so the file always
// ends up with the latest. Its goroutine runs only while there is
// something to write, so an idle domain costs no goroutine.
type statusWriter struct {
	mu      sync.Mutex
	closed  bool
	running bool           // a writer goroutine is on its way
	pending *domain.Status // the status still to write, if any
	idle    *sync.Cond     // signalled when running turns false
	path    string
	logger  zerolog.Logger
}

func (s *store) statusPath(name string) string {
	return filepath.Join(filepath.Dir(s.dir), "status", name+".json")
}

// loadStatus reads a domain's saved status; nil when there is none or it
// cannot be read (which is logged by the caller through the error).
func (s *store) loadStatus(name string) (*domain.Status, error) {
	data, err := readFileNoFollow(s.statusPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st domain.Status
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("status of %q: %w", name, err)
	}
	if st.Name != name {
		return nil, fmt.Errorf("status file of %q names %q", name, st.Name)
	}
	return &st, nil
}

func (s *store) newStatusWriter(name string, logger zerolog.Logger) (*statusWriter, error) {
	path := s.statusPath(name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("status dir: %w", err)
	}
	w := &statusWriter{path: path, logger: logger}
	w.idle = sync.NewCond(&w.mu)
	return w, nil
}

// run writes pending statuses until none is left, then ends.
func (w *statusWriter) run() {
	w.mu.Lock()
	for w.pending != nil {
		st := *w.pending
		w.pending = nil
		w.mu.Unlock()
		data, err := json.MarshalIndent(st, "", "  ")
		if err == nil {
			err = writeFileAtomic(w.path, append(data, '\n'))
		}
		if err != nil {
			w.logger.Error().Err(err).Str("domain", st.Name).Msg("cannot save status")
		}
		w.mu.Lock()
	}
	w.running = false
	w.idle.Broadcast()
	w.mu.Unlock()
}

// Put queues st, replacing a status that is not written yet, and starts
// the writer goroutine when none runs.
func (w *statusWriter) Put(st domain.Status) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.pending = &st
	if !w.running {
		w.running = true
		go w.run()
	}
}

// Close waits until what is pending is written; later Puts are dropped.
func (w *statusWriter) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for w.running {
		w.idle.Wait()
	}
}
