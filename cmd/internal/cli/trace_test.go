package cli

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors/trace/record"
	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/cmd/internal/cmdline"
)

// TestRecordLine pins the text form of each kind of record.
func TestRecordLine(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 123456000, time.Local)
	cases := []struct {
		rec  record.Record
		want string
	}{
		{record.Record{TraceID: "r-1", SpanID: "s2", ParentSpanID: "r-1", Kind: record.KindMessage, Actor: "domain/web1",
			MessageType: "domain.QMPRequest", Sender: "driver", Enqueued: at.Add(-21 * time.Microsecond), Started: at, Ended: at.Add(35 * time.Microsecond)},
			`03:04:05.123456 domain/web1 domain.QMPRequest from driver trace=r-1 span=s2<r-1 wait=21µs took=35µs`},
		{record.Record{TraceID: "r-1", SpanID: "job-3", ParentSpanID: "s2", Kind: record.KindJob, Actor: "domain/web1",
			MessageType: "qmp", JobID: 3, Note: "ok", Enqueued: at, Started: at.Add(10 * time.Microsecond), Ended: at.Add(1310 * time.Microsecond)},
			`03:04:05.123466 domain/web1 job 3 qmp → ok trace=r-1 span=job-3<s2 wait=10µs took=1.3ms`},
		{record.Record{TraceID: "r-1", SpanID: "s9", ParentSpanID: "s8", Kind: record.KindQMP, Actor: "monitor/web1", JobID: 3,
			Started: at, Ended: at.Add(2 * time.Millisecond), QMP: &record.QMPRecord{Command: "query-status", Duration: 1100 * time.Microsecond, Outcome: "ok"}},
			`03:04:05.123456 monitor/web1 qmp query-status → ok job=3 trace=r-1 span=s9<s8 took=1.1ms`},
		{record.Record{TraceID: "r-1", SpanID: "r-1", Kind: record.KindAPI, Actor: "api", MessageType: "api qmp",
			Note: "error: domain \"web1\": boom\nagain", Started: at, Ended: at.Add(2500 * time.Millisecond)},
			`03:04:05.123456 api api qmp → error: domain "web1": boom; again trace=r-1 span=r-1 took=2.5s`},
		{record.Record{SpanID: "s1", Kind: record.KindMessage, Actor: "domain/web1", MessageType: "domain.jobStep"},
			`--:--:--.------ domain/web1 domain.jobStep trace=- span=s1`},
	}
	for _, c := range cases {
		if got := recordLine(&c.rec); got != c.want {
			t.Errorf("recordLine:\n got %s\nwant %s", got, c.want)
		}
	}
}

// TestTraceFlags: the combinations of `vmsup trace` flags, and the
// default format of --request.
func TestTraceFlags(t *testing.T) {
	cases := []struct {
		f      traceFlags
		json   bool
		usage  bool
		format string
	}{
		{f: traceFlags{limit: 100}},
		{f: traceFlags{follow: true, domain: "x"}},
		{f: traceFlags{follow: true, request: "r"}, usage: true},
		{f: traceFlags{follow: true, chrome: "o.json"}, usage: true},
		{f: traceFlags{chrome: "o.json", request: "r", domain: "x"}},
		{f: traceFlags{chrome: "o.json", request: "r", format: "svg"}, usage: true},
		{f: traceFlags{format: "svg"}, usage: true},
		{f: traceFlags{output: "o"}, usage: true},
		{f: traceFlags{request: "r"}, format: api.FormatMermaid},
		{f: traceFlags{request: "r"}, json: true, format: api.FormatJSON},
		{f: traceFlags{request: "r", format: "svg", output: "o.svg"}, format: api.FormatSVG},
		{f: traceFlags{request: "r", format: "png"}, usage: true},
		{f: traceFlags{request: "r", format: "mermaid", domain: "x"}, usage: true},
		{f: traceFlags{request: "r", format: "text", domain: "x"}, format: "text"},
		{f: traceFlags{limit: -1}, usage: true},
	}
	for _, c := range cases {
		f := c.f
		err := f.check(c.json)
		if got := err != nil && cmdline.IsUsage(err); got != c.usage || err != nil && !c.usage {
			t.Errorf("%+v: %v, want usage error %v", c.f, err, c.usage)
		}
		if !c.usage && f.format != c.format {
			t.Errorf("%+v: format %q, want %q", c.f, f.format, c.format)
		}
	}
}

// TestWriteOutput: a file is replaced only by a complete write, and no
// temporary file is left behind.
func TestWriteOutput(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.json")
	if err := writeOutput(path, nil, func(w io.Writer) error { _, err := io.WriteString(w, "one"); return err }); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := writeOutput(path, nil, func(w io.Writer) error { io.WriteString(w, "half"); return boom }); !errors.Is(err, boom) {
		t.Fatalf("failed write: %v", err)
	}
	if data, err := os.ReadFile(path); err != nil || string(data) != "one" {
		t.Fatalf("after a failed write: %q %v", data, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v %v", fi.Mode(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("files left: %v", entries)
	}
	var out strings.Builder
	if err := writeOutput("-", &out, func(w io.Writer) error { _, err := io.WriteString(w, "x"); return err }); err != nil || out.String() != "x" {
		t.Errorf("stdout: %q %v", out.String(), err)
	}
}
