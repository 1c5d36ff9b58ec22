package daemon

import (
	"io"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/cmd/internal/cmdline"
	"github.com/vmsup/vmsup/cmd/internal/server"
	"github.com/vmsup/vmsup/domain/confine"
)

// maxTraceCapacity bounds --trace-capacity: a record takes a few hundred
// bytes of the ring, which is allocated at once.
const maxTraceCapacity = 1 << 22

// Command is the daemon's command line, vmsupd, shown to the user as name
// ("vmsupd", or "vmsup daemon" when the CLI runs it): its flags make a
// Config for Run. Logs go to stderr.
func Command(name string, stdout, stderr io.Writer) *cobra.Command {
	var socketFlag, stateDir, logFormat, logLevel, traceLog, adminGroup, readerGroup, qemuUser string
	var traceOn, allowRaw bool
	var emulators, imageRoots []string
	var traceCapacity, maxConns int
	var bodyTimeout time.Duration
	cmd := &cobra.Command{
		Use:         "vmsupd",
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: name},
		Short:       "Serve the vmsup API on the unix socket",
		Long: `Serve the vmsup API (HTTP/JSON, NDJSON streams) on the unix socket given by
--socket. The state dir holds the VM definitions, their runtime files and a
lock file; a second daemon on the same state dir refuses to start.

The daemon records a trace of every message, job and QMP command in a ring
buffer of --trace-capacity records ("vmsup trace" reads it); --trace-log
also appends every record to a file as JSON lines. --trace=false switches
recording off.

Who may use the socket is decided from each connection's peer credentials:
uid 0, the daemon's own uid and members of --admin-group get the whole API;
members of --reader-group get the read-only routes (list, info, jobs,
events, trace); anyone else is refused with 403.

What a spec may use is the daemon's decision: the emulator must be one of
--emulator (default: qemu-system-x86_64 from PATH); kernel, initrd and disk
paths must lie under an --image-root (default: the state dir and the image
cache, /var/cache/vmsup for root); serial files and sockets live in the VM's
run dir. extra_args and raw QMP beyond query-* and a safe list need
--allow-raw-qemu, and mark the VM tainted.

A daemon run as root runs each QEMU as --qemu-user (default vmsup-qemu;
create it with useradd --system), in a cgroup v2 of its own when cgroup v2
is writable, with the spec's memory limit when the memory controller is
there. The state and run dirs are made traversable (0711) for that user,
and the files QEMU writes are given to it; disks, kernel and initrd the
spec names must be readable (and writable for read-write disks) by it.
A daemon that is not root runs QEMU as itself.

SIGTERM or SIGINT stops the daemon and leaves the VMs running.

Exit codes: 0 stopped, 1 error, 2 usage.`,
		Args: cmdline.ExactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if traceCapacity <= 0 || traceCapacity > maxTraceCapacity {
				return cmdline.Usagef("--trace-capacity %d: want a number of records from 1 to %d", traceCapacity, maxTraceCapacity)
			}
			if !traceOn && traceLog != "" {
				return cmdline.Usagef("--trace-log needs tracing on; drop --trace=false")
			}
			if stateDir == "" {
				if stateDir, err = cmdline.DefaultStateDir(); err != nil {
					return err
				}
			}
			sock, err := cmdline.Socket(socketFlag)
			if err != nil {
				return err
			}
			if maxConns <= 0 {
				return cmdline.Usagef("--max-connections %d: want a positive number", maxConns)
			}
			if bodyTimeout <= 0 {
				return cmdline.Usagef("--body-timeout %s: want a positive duration", bodyTimeout)
			}
			level, err := zerolog.ParseLevel(logLevel)
			if err != nil || logLevel == "" {
				return cmdline.Usagef("--log-level %q: want debug, info, warn or error", logLevel)
			}
			var logger zerolog.Logger
			switch logFormat {
			case "json":
				logger = zerolog.New(stderr)
			case "console":
				logger = zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: "15:04:05.000", NoColor: !cmdline.IsTerminal(stderr)})
			case "auto":
				if cmdline.IsTerminal(stderr) {
					logger = zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: "15:04:05.000"})
				} else {
					logger = zerolog.New(stderr)
				}
			default:
				return cmdline.Usagef("--log-format %q: want json or console", logFormat)
			}
			zerolog.TimeFieldFormat = time.RFC3339Nano
			logger = logger.Level(level).With().Timestamp().Logger()
			return Run(cmd.Context(), Config{
				StateDir:  stateDir,
				Socket:    sock,
				Logger:    logger,
				StopGrace: 5 * time.Second,

				TraceOff:      !traceOn,
				TraceCapacity: traceCapacity,
				TraceLog:      traceLog,

				AdminGroup:         adminGroup,
				AdminGroupOptional: !cmd.Flags().Changed("admin-group"),
				ReaderGroup:        readerGroup,
				MaxConnections:     maxConns,
				AllowRawQEMU:       allowRaw,
				Emulators:          emulators,
				ImageRoots:         imageRoots,
				BodyTimeout:        bodyTimeout,
				QEMUUser:           qemuUser,
			})
		},
	}
	cmdline.Prepare(cmd, stdout, stderr)
	f := cmd.Flags()
	f.StringVar(&socketFlag, "socket", "", "the unix socket to serve on (env "+cmdline.SocketEnv+"; default /run/vmsup/vmsup.sock for root, $XDG_RUNTIME_DIR/vmsup.sock otherwise)")
	f.StringVar(&stateDir, "state-dir", "", "state dir (default /var/lib/vmsup for root, $XDG_STATE_HOME/vmsup otherwise)")
	f.StringVar(&logFormat, "log-format", "auto", "log format: json or console (auto: console on a terminal, else json)")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.BoolVar(&traceOn, "trace", true, "record the actor trace (--trace=false: off; the actors then pay one atomic load per message)")
	f.IntVar(&traceCapacity, "trace-capacity", trace.DefaultCapacity, "how many of the newest trace records the daemon keeps")
	f.StringVar(&traceLog, "trace-log", "", "append every trace record to `FILE` as JSON lines (zerolog)")
	f.StringVar(&adminGroup, "admin-group", DefaultAdminGroup, "members of this group (`NAME` or gid) get the whole API, as uid 0 does; \"\" grants no group")
	f.StringVar(&readerGroup, "reader-group", "", "members of this group (`NAME` or gid) get the read-only routes: list, info, jobs, events, trace")
	f.BoolVar(&allowRaw, "allow-raw-qemu", false, "allow extra_args in specs and any raw QMP command; a VM that uses them is marked tainted")
	f.StringArrayVar(&emulators, "emulator", nil, "a QEMU binary specs may name (`PATH`, repeatable; default qemu-system-x86_64 from PATH)")
	f.StringArrayVar(&imageRoots, "image-root", nil, "a `DIR` that kernel, initrd and disk paths must lie under (repeatable; default the state dir and the image cache)")
	f.StringVar(&qemuUser, "qemu-user", confine.DefaultUser, "the unprivileged `USER` a root daemon runs QEMU as (ignored when the daemon is not root)")
	f.IntVar(&maxConns, "max-connections", DefaultMaxConnections, "connections held at once; past it a client gets 503")
	f.DurationVar(&bodyTimeout, "body-timeout", server.DefaultBodyTimeout, "how long a request body may take to arrive (408 past it)")
	return cmd
}

// DefaultAdminGroup is --admin-group's default; the daemon starts without
// it when the group does not exist.
const DefaultAdminGroup = "vmsup"
