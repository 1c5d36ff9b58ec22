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

// statusWriter persists one domain's runtime status in a goroutine it owns.
// Put never blocks: a status not yet written is replaced by a newer one, so
// the file always ends up with the latest.
type statusWriter struct {
	mu      sync.Mutex // guards closed against a Put racing Close
	closed  bool
	path    string
	pending chan domain.Status
	done    chan struct{}
	logger  zerolog.Logger
}

func (s *store) statusPath(name string) string {
	return filepath.Join(filepath.Dir(s.dir), "status", name+".json")
}

// loadStatus reads a domain's saved status; nil when there is none or it
// cannot be read (which is logged by the caller through the error).
func (s *store) loadStatus(name string) (*domain.Status, error) {
	data, err := os.ReadFile(s.statusPath(name))
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
	w := &statusWriter{path: path, pending: make(chan domain.Status, 1), done: make(chan struct{}), logger: logger}
	go w.run()
	return w, nil
}

func (w *statusWriter) run() {
	defer close(w.done)
	for st := range w.pending {
		data, err := json.MarshalIndent(st, "", "  ")
		if err == nil {
			err = writeFileAtomic(w.path, append(data, '\n'))
		}
		if err != nil {
			w.logger.Error().Err(err).Str("domain", st.Name).Msg("cannot save status")
		}
	}
}

// Put queues st, replacing a status that is not written yet. Only the
// domain actor calls it, so there is one producer.
func (w *statusWriter) Put(st domain.Status) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	select {
	case w.pending <- st:
		return
	default:
	}
	select {
	case <-w.pending:
	default:
	}
	w.pending <- st
}

// Close writes what is pending and stops the goroutine.
func (w *statusWriter) Close() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.pending)
	}
	w.mu.Unlock()
	<-w.done
}
