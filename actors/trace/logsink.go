package trace

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// logObject is a Record as zerolog writes it.
type logObject Record

// MarshalZerologObject writes the record's fields with the names of its
// JSON encoding, times as RFC 3339 with nanoseconds, so that a log line
// decodes back into a Record (DecodeJSONLines).
func (r logObject) MarshalZerologObject(e *zerolog.Event) {
	if r.TraceID != "" {
		e.Str("trace_id", r.TraceID)
	}
	e.Str("span_id", r.SpanID)
	if r.ParentSpanID != "" {
		e.Str("parent_span_id", r.ParentSpanID)
	}
	e.Str("kind", string(r.Kind)).Str("actor", r.Actor)
	if r.MessageType != "" {
		e.Str("message_type", r.MessageType)
	}
	if r.Sender != "" {
		e.Str("sender", r.Sender)
	}
	for _, t := range [...]struct {
		key string
		t   time.Time
	}{{"enqueued", r.Enqueued}, {"started", r.Started}, {"ended", r.Ended}} {
		if !t.t.IsZero() {
			e.Str(t.key, t.t.Format(time.RFC3339Nano))
		}
	}
	if r.JobID != 0 {
		e.Uint64("job_id", r.JobID)
	}
	if r.QMP != nil {
		e.Dict("qmp", zerolog.Dict().
			Str("command", r.QMP.Command).
			Int64("duration_ns", int64(r.QMP.Duration)).
			Str("outcome", r.QMP.Outcome))
	}
	if r.Note != "" {
		e.Str("note", r.Note)
	}
}

// LogSink writes every record of a Recorder as a zerolog JSON line, in its
// own goroutine, from a subscription: a slow writer loses records (Dropped)
// and never slows the actors.
type LogSink struct {
	sub    *Subscription
	logger zerolog.Logger
	done   chan struct{}
	once   sync.Once
}

// DefaultLogSinkBuffer is the subscription buffer of a LogSink.
const DefaultLogSinkBuffer = 8192

// NewLogSink starts writing the records of rec to logger, one event per
// record with the fields of the record's JSON encoding and no level.
// Close stops it.
func NewLogSink(rec *Recorder, logger zerolog.Logger) *LogSink {
	s := &LogSink{
		sub:    rec.Subscribe(DefaultLogSinkBuffer, nil),
		logger: logger,
		done:   make(chan struct{}),
	}
	go s.run()
	return s
}

// LogTo starts a LogSink that writes JSON lines to w.
func (r *Recorder) LogTo(w io.Writer) *LogSink {
	return NewLogSink(r, zerolog.New(w))
}

func (s *LogSink) run() {
	defer close(s.done)
	for rec := range s.sub.C {
		s.logger.Log().EmbedObject(logObject(rec)).Send()
	}
}

// Dropped is the number of records the sink lost because it fell behind.
func (s *LogSink) Dropped() uint64 {
	return s.sub.Dropped()
}

// Close stops the sink after it has written the records it already
// received, and waits for its goroutine to end.
func (s *LogSink) Close() {
	s.once.Do(s.sub.Close)
	<-s.done
}

// WriteTo writes the records in the buffer, oldest first, as JSON lines in
// the format of the LogSink. It implements io.WriterTo.
func (r *Recorder) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	logger := zerolog.New(cw)
	for _, rec := range r.Snapshot() {
		logger.Log().EmbedObject(logObject(rec)).Send()
		if cw.err != nil {
			return cw.n, cw.err
		}
	}
	return cw.n, nil
}

type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.err = err
	return n, err
}

// DecodeJSONLines reads records written by a LogSink or WriteTo (or any
// JSON encoding of Record, one per line). Blank lines are skipped; other
// fields of a line (a logger's time or level) are ignored.
func DecodeJSONLines(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for line := 1; sc.Scan(); line++ {
		b := sc.Bytes()
		if len(b) == 0 {
			continue
		}
		var rec Record
		if err := json.Unmarshal(b, &rec); err != nil {
			return out, fmt.Errorf("trace: line %d: %w", line, err)
		}
		out = append(out, rec)
	}
	return out, sc.Err()
}
