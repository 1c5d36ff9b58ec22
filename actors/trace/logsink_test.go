package trace_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/actors/trace/internal/fixture"
	"github.com/vmsup/vmsup/tests/testkit"
)

func TestLogSink(t *testing.T) {
	rec := trace.New(trace.Options{})
	var out testkit.SyncBuffer
	sink := trace.NewLogSink(rec, zerolog.New(&out).With().Timestamp().Logger())
	want := fixture.StartRequest()
	for _, r := range want {
		rec.Record(r)
	}
	sink.Close() // writes what it received, then stops
	sink.Close()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), out.String())
	}
	if !strings.Contains(lines[2], `"qmp":{"command":"query-status","duration_ns":1200000,"outcome":"ok"}`) {
		t.Errorf("QMP line: %s", lines[2])
	}
	got, err := trace.DecodeJSONLines(strings.NewReader(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	fixture.SameRecords(t, got, want)
	if sink.Dropped() != 0 {
		t.Errorf("Dropped = %d", sink.Dropped())
	}
	rec.Record(want[0]) // after Close: not written, no panic
}

func TestWriteTo(t *testing.T) {
	rec := trace.New(trace.Options{})
	for _, r := range fixture.StartRequest() {
		rec.Record(r)
	}
	var buf bytes.Buffer
	n, err := rec.WriteTo(&buf)
	if err != nil || n != int64(buf.Len()) {
		t.Fatalf("WriteTo = %d, %v; wrote %d bytes", n, err, buf.Len())
	}
	got, err := trace.DecodeJSONLines(&buf)
	if err != nil {
		t.Fatal(err)
	}
	fixture.SameRecords(t, got, rec.Snapshot())
}
