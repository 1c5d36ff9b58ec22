package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmsup/vmsup/actors/trace/record"
	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/cmd/internal/client"
	"github.com/vmsup/vmsup/cmd/internal/cmdline"
)

// traceFlags are the flags of `vmsup trace`.
type traceFlags struct {
	follow  bool
	domain  string
	request string
	format  string
	chrome  string
	output  string
	limit   int
}

func (a *app) traceCommand() *cobra.Command {
	var f traceFlags
	cmd := &cobra.Command{
		Use:   "trace",
		Short: "Show the daemon's actor trace: recent records, a live stream, a request's picture, a Chrome export",
		Long: `Show the trace that the daemon records of every message its actors handle,
every job and every QMP command (see "vmsup daemon --trace").

  vmsup trace                          the newest records, one line each (--limit)
  vmsup trace --follow [--domain NAME] records while they happen, until interrupted
  vmsup trace --request ID             a Mermaid sequence diagram of one request
  vmsup trace --request ID --format svg -o req.svg
  vmsup trace --chrome out.json        Chrome trace-event JSON for Perfetto (ui.perfetto.dev)

A line shows the time handling began, the actor, what it handled (message
type and sender, job, QMP command and outcome, API call), the trace and span
ids (span<parent), the wait in the mailbox or job queue, and how long it took.
--json prints records as JSON (NDJSON with --follow).

Request ids: "vmsup -v COMMAND" prints the request id of each call it makes,
"vmsup jobs" the trace id of each job.`,
		Example: `  vmsup -v qmp web1 '{"execute":"query-status"}'   # prints: vmsup: request 1a2b3c-42: ...
  vmsup trace --request 1a2b3c-42 --format mermaid
  vmsup trace --follow --domain web1`,
		Args: cmdline.ExactArgs(0, "no arguments (use --request ID or --domain NAME)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(a.json); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			switch {
			case f.follow:
				return a.traceFollow(cmd, c, f.domain)
			case f.chrome != "":
				return writeOutput(f.chrome, a.stdout, func(w io.Writer) error {
					return c.TraceChrome(cmd.Context(), f.domain, f.request, w)
				})
			case f.request != "":
				return a.traceRequest(cmd, c, f)
			}
			records, err := c.TraceRecords(cmd.Context(), f.domain, "", f.limit)
			if err != nil {
				return err
			}
			return a.printRecords(records)
		},
	}
	fl := cmd.Flags()
	fl.BoolVarP(&f.follow, "follow", "f", false, "stream records while they are recorded, until interrupted")
	fl.StringVar(&f.domain, "domain", "", "only the records of VM `NAME` (its domain and monitor actors, and the API calls that reached them)")
	fl.StringVar(&f.request, "request", "", "only the records of request `ID` (as printed by -v, or a job's trace id)")
	fl.StringVar(&f.format, "format", "", "write --request in `FMT`: mermaid (default), svg, json or text")
	fl.StringVar(&f.chrome, "chrome", "", "write Chrome trace-event JSON to `FILE` (\"-\": stdout), for Perfetto and chrome://tracing")
	fl.StringVarP(&f.output, "output", "o", "", "with --request: write to `FILE` instead of stdout")
	fl.IntVar(&f.limit, "limit", 100, "without --follow, --request or --chrome: print the newest N records (0: all)")
	_ = cmd.RegisterFlagCompletionFunc("domain", a.completeDomains)
	_ = cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions([]string{"mermaid", "svg", "json", "text"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// check rejects combinations of flags that mean nothing.
func (f *traceFlags) check(jsonOut bool) error {
	if f.limit < 0 {
		return cmdline.Usagef("--limit %d: want a count (0: all)", f.limit)
	}
	if f.follow && (f.request != "" || f.chrome != "" || f.output != "" || f.format != "") {
		return cmdline.Usagef("--follow streams records; it takes only --domain and --json")
	}
	if f.chrome != "" && (f.format != "" || f.output != "") {
		return cmdline.Usagef("--chrome FILE writes Chrome JSON; --format and --output go with --request")
	}
	if f.request == "" && (f.format != "" || f.output != "") {
		return cmdline.Usagef("--format and --output go with --request ID")
	}
	if f.request == "" || f.chrome != "" {
		return nil
	}
	switch f.format {
	case "":
		f.format = api.FormatMermaid
		if jsonOut {
			f.format = api.FormatJSON
		}
	case api.FormatMermaid, api.FormatSVG, api.FormatJSON, "text":
	default:
		return cmdline.Usagef("--format %q: want mermaid, svg, json or text", f.format)
	}
	if f.domain != "" && (f.format == api.FormatMermaid || f.format == api.FormatSVG) {
		return cmdline.Usagef("--domain does not go with a --request picture; it shows the whole request")
	}
	return nil
}

// traceRequest prints (or writes to --output) one request's picture or
// records.
func (a *app) traceRequest(cmd *cobra.Command, c *client.Client, f traceFlags) error {
	ctx := cmd.Context()
	if f.format == api.FormatMermaid || f.format == api.FormatSVG {
		return writeOutput(f.output, a.stdout, func(w io.Writer) error {
			return c.TraceRequest(ctx, f.request, f.format, w)
		})
	}
	var records []record.Record
	if f.domain == "" {
		var buf bytes.Buffer
		if err := c.TraceRequest(ctx, f.request, api.FormatJSON, &buf); err != nil {
			return err
		}
		if err := json.Unmarshal(buf.Bytes(), &records); err != nil {
			return fmt.Errorf("trace: bad answer from the daemon: %w", err)
		}
	} else {
		var err error
		if records, err = c.TraceRecords(ctx, f.domain, f.request, 0); err != nil {
			return err
		}
	}
	return writeOutput(f.output, a.stdout, func(w io.Writer) error {
		if f.format == api.FormatJSON {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			return enc.Encode(records)
		}
		return writeRecordLines(w, records)
	})
}

// printRecords prints records as lines, or as a JSON array with --json.
func (a *app) printRecords(records []record.Record) error {
	if a.json {
		if records == nil {
			records = []record.Record{}
		}
		return a.printJSON(records)
	}
	return writeRecordLines(a.stdout, records)
}

func writeRecordLines(w io.Writer, records []record.Record) error {
	for i := range records {
		if _, err := fmt.Fprintln(w, recordLine(&records[i])); err != nil {
			return err
		}
	}
	return nil
}

// traceFollow streams records until interrupted.
func (a *app) traceFollow(cmd *cobra.Command, c *client.Client, domain string) error {
	enc := json.NewEncoder(a.stdout)
	var ended *api.TraceNotice
	err := c.FollowTrace(cmd.Context(), domain, nil, func(r record.Record) error {
		if a.json {
			return enc.Encode(r)
		}
		_, err := fmt.Fprintln(a.stdout, recordLine(&r))
		return err
	}, func(n api.TraceNotice) error {
		switch n.Kind {
		case api.NoticeDropped:
			fmt.Fprintf(a.stderr, "vmsup: trace: %d records lost: this reader fell behind (%d lost in all)\n", n.Dropped, n.TotalDropped)
		case api.NoticeEnd:
			ended = &n
		}
		return nil
	})
	switch {
	case cmd.Context().Err() != nil:
		return nil // interrupted
	case ended != nil:
		return fmt.Errorf("the daemon ended the trace stream: %s (%d records lost in all)", ended.Reason, ended.TotalDropped)
	case errors.Is(err, io.EOF):
		return errors.New("the daemon closed the trace stream")
	}
	return err
}

// writeOutput runs write into path: stdout when path is "" or "-", else a
// file written in full before it replaces path (a failed write leaves no
// half file).
func writeOutput(path string, stdout io.Writer, write func(io.Writer) error) error {
	if path == "" || path == "-" {
		return write(stdout)
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if err := write(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// recordLine is the text form of a record:
//
//	15:04:05.000123 domain/web1 domain.QMPRequest from driver trace=1a2b3c-7 span=5<4 wait=21µs took=35µs
//	15:04:05.000200 domain/web1 job 3 qmp → ok trace=1a2b3c-7 span=job-3<5 wait=10µs took=1.3ms
//	15:04:05.000300 monitor/web1 qmp query-status → ok trace=1a2b3c-7 span=9<8 took=1.1ms
//	15:04:05.000100 api api qmp → ok trace=1a2b3c-7 span=1a2b3c-7 took=1.6ms
func recordLine(r *record.Record) string {
	var b strings.Builder
	at := r.Started
	if at.IsZero() {
		at = r.Enqueued
	}
	if at.IsZero() {
		at = r.Ended
	}
	if at.IsZero() {
		b.WriteString("--:--:--.------")
	} else {
		b.WriteString(at.Local().Format("15:04:05.000000"))
	}
	b.WriteString(" " + orDash(r.Actor) + " ")
	switch r.Kind {
	case record.KindMessage:
		b.WriteString(orDash(r.MessageType))
		if r.Sender != "" {
			b.WriteString(" from " + r.Sender)
		}
	case record.KindJob:
		fmt.Fprintf(&b, "job %d %s", r.JobID, orDash(r.MessageType))
	case record.KindQMP:
		if r.QMP != nil {
			b.WriteString("qmp " + r.QMP.Command + " → " + r.QMP.Outcome)
		} else {
			b.WriteString("qmp")
		}
	case record.KindAPI:
		b.WriteString(orDash(r.MessageType))
	default:
		b.WriteString(string(r.Kind) + " " + r.MessageType)
	}
	if r.Note != "" && r.Kind != record.KindQMP {
		b.WriteString(" → " + cmdline.OneLine(r.Note))
	}
	if r.JobID != 0 && r.Kind != record.KindJob {
		fmt.Fprintf(&b, " job=%d", r.JobID)
	}
	b.WriteString(" trace=" + orDash(r.TraceID) + " span=" + orDash(r.SpanID))
	if r.ParentSpanID != "" {
		b.WriteString("<" + r.ParentSpanID)
	}
	if w := r.Wait(); w > 0 {
		b.WriteString(" wait=" + shortDuration(w))
	}
	took := r.Duration()
	if r.QMP != nil && r.QMP.Duration > 0 {
		took = r.QMP.Duration
	}
	if took > 0 || !r.Ended.IsZero() {
		b.WriteString(" took=" + shortDuration(took))
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// shortDuration rounds d to three significant digits or so: 21µs, 1.3ms,
// 2.41s.
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Microsecond:
		return d.String()
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(10 * time.Microsecond).String()
	case d < time.Minute:
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
