package cli

import (
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/cmd/vmsup/internal/daemon"
)

// maxTraceCapacity bounds --trace-capacity: a record takes a few hundred
// bytes of the ring, which is allocated at once.
const maxTraceCapacity = 1 << 22

func (a *app) daemonCommand() *cobra.Command {
	var stateDir, logFormat, logLevel, traceLog string
	var traceOn bool
	var traceCapacity int
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Serve the vmsup API on the unix socket",
		Long: `Serve the vmsup API (HTTP/JSON, NDJSON streams) on the unix socket given by
--socket. The state dir holds the VM definitions, their runtime files and a
lock file; a second daemon on the same state dir refuses to start.

The daemon records a trace of every message, job and QMP command in a ring
buffer of --trace-capacity records ("vmsup trace" reads it); --trace-log
also appends every record to a file as JSON lines. --trace=false switches
recording off.

SIGTERM or SIGINT stops the daemon and leaves the VMs running.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if traceCapacity <= 0 || traceCapacity > maxTraceCapacity {
				return usagef("--trace-capacity %d: want a number of records from 1 to %d", traceCapacity, maxTraceCapacity)
			}
			if !traceOn && traceLog != "" {
				return usagef("--trace-log needs tracing on; drop --trace=false")
			}
			if stateDir == "" {
				if stateDir, err = defaultStateDir(); err != nil {
					return err
				}
			}
			sock, err := a.socket()
			if err != nil {
				return err
			}
			level, err := zerolog.ParseLevel(logLevel)
			if err != nil || logLevel == "" {
				return usagef("--log-level %q: want debug, info, warn or error", logLevel)
			}
			var logger zerolog.Logger
			switch logFormat {
			case "json":
				logger = zerolog.New(a.stderr)
			case "console":
				logger = zerolog.New(zerolog.ConsoleWriter{Out: a.stderr, TimeFormat: "15:04:05.000", NoColor: !isTerminal(a.stderr)})
			case "auto":
				if isTerminal(a.stderr) {
					logger = zerolog.New(zerolog.ConsoleWriter{Out: a.stderr, TimeFormat: "15:04:05.000"})
				} else {
					logger = zerolog.New(a.stderr)
				}
			default:
				return usagef("--log-format %q: want json or console", logFormat)
			}
			zerolog.TimeFieldFormat = time.RFC3339Nano
			logger = logger.Level(level).With().Timestamp().Logger()
			return daemon.Run(cmd.Context(), daemon.Config{
				StateDir:  stateDir,
				Socket:    sock,
				Logger:    logger,
				StopGrace: 5 * time.Second,

				TraceOff:      !traceOn,
				TraceCapacity: traceCapacity,
				TraceLog:      traceLog,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&stateDir, "state-dir", "", "state dir (default /var/lib/vmsup for root, $XDG_STATE_HOME/vmsup otherwise)")
	f.StringVar(&logFormat, "log-format", "auto", "log format: json or console (auto: console on a terminal, else json)")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.BoolVar(&traceOn, "trace", true, "record the actor trace (--trace=false: off; the actors then pay one atomic load per message)")
	f.IntVar(&traceCapacity, "trace-capacity", trace.DefaultCapacity, "how many of the newest trace records the daemon keeps")
	f.StringVar(&traceLog, "trace-log", "", "append every trace record to `FILE` as JSON lines (zerolog)")
	return cmd
}
