// Package cli is vmsup's command line: the daemon and the commands that
// manage VMs through it.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vmsup/vmsup/cmd/vmsup/internal/client"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// usageError marks a command line the user got wrong (exit 2).
type usageError struct{ err error }

// Error returns the message.
func (e *usageError) Error() string { return e.err.Error() }

// Unwrap returns the wrapped error.
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// app holds the global flags and the standard streams.
type app struct {
	socketFlag     string
	json           bool
	verbose        bool
	requestTimeout time.Duration

	stdin          io.Reader
	stdout, stderr io.Writer
}

// Main runs vmsup with args (without the program name) and returns the
// exit code: 0 ok, 1 error, 2 usage.
func Main(args []string) int {
	a := &app{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintln(a.stderr, "vmsup: "+oneLine(a.describe(err)))
	if isUsage(err) {
		return ExitUsage
	}
	return ExitError
}

func isUsage(err error) bool {
	var ue *usageError
	if errors.As(err, &ue) {
		return true
	}
	// cobra's own errors for an unknown command or a bad flag.
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument", "invalid argument", "accepts ", "requires at least", "requires at most"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// describe adds what a daemon error carries beyond its message.
func (a *app) describe(err error) string {
	var ce *client.Error
	if !errors.As(err, &ce) {
		return err.Error()
	}
	msg := err.Error()
	if ce.Class != "" && !strings.Contains(msg, ce.Class) {
		msg += " (QMP " + ce.Class + ": " + ce.Desc + ")"
	}
	if a.verbose && ce.RequestID != "" {
		msg += " [request " + ce.RequestID + "]"
	}
	return msg
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "vmsup",
		Short: "Supervise QEMU virtual machines",
		Long: `vmsup supervises QEMU virtual machines. Run "vmsup daemon", then manage
VMs with the other commands, which talk to the daemon over its unix socket.

Exit codes: 0 ok, 1 error, 2 usage.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(a.stderr)
			_ = cmd.Help()
			return usagef("no command given")
		},
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err: err} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.socketFlag, "socket", "", "the daemon's unix socket (env "+socketEnv+"; default /run/vmsup/vmsup.sock for root, $XDG_RUNTIME_DIR/vmsup.sock otherwise)")
	pf.BoolVar(&a.json, "json", false, "machine-readable (JSON) output")
	pf.BoolVarP(&a.verbose, "verbose", "v", false, "print the daemon's request id of each call to stderr (vmsup trace --request ID shows its path)")
	pf.DurationVar(&a.requestTimeout, "request-timeout", 0, "bound each call to the daemon, waits for a VM's job lane included (0: the daemon's defaults, 30s for a job)")

	root.AddCommand(
		a.daemonCommand(),
		a.defineCommand(),
		a.undefineCommand(),
		a.startCommand(),
		a.shutdownCommand(),
		a.simpleCommand("destroy", "Hard-stop a VM (kills QEMU; preempts any job)", (*client.Client).Destroy),
		a.simpleCommand("pause", "Pause a VM's vCPUs", (*client.Client).Pause),
		a.simpleCommand("resume", "Resume a paused VM", (*client.Client).Resume),
		a.simpleCommand("reset", "Reset a VM, like its reset button", (*client.Client).Reset),
		a.listCommand(),
		a.infoCommand(),
		a.jobsCommand(),
		a.qmpCommand(),
		a.eventsCommand(),
		a.consoleCommand(),
		a.upCommand(),
		a.traceCommand(),
	)
	return root
}

// socket resolves the socket path: --socket, then VMSUP_SOCKET, then the
// default for the user.
func (a *app) socket() (string, error) {
	if a.socketFlag != "" {
		return a.socketFlag, nil
	}
	if s := os.Getenv(socketEnv); s != "" {
		return s, nil
	}
	return defaultSocket()
}

// client returns a client of the daemon's socket.
func (a *app) client() (*client.Client, error) {
	sock, err := a.socket()
	if err != nil {
		return nil, err
	}
	if a.requestTimeout < 0 {
		return nil, usagef("--request-timeout %s: want a positive duration such as 45s", a.requestTimeout)
	}
	c := client.New(sock)
	c.Timeout = a.requestTimeout
	if a.verbose {
		c.Trace = func(method, path string, status int, id string, took time.Duration) {
			fmt.Fprintf(a.stderr, "vmsup: request %s: %s %s → %d (%s)\n", id, method, path, status, took.Round(time.Millisecond))
		}
	}
	return c, nil
}

// exactArgs is cobra.ExactArgs with a usage error (exit 2).
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %s (got %d arguments); see vmsup %s --help", cmd.Name(), names, len(args), cmd.Name())
		}
		return nil
	}
}

// maxArgs is cobra.MaximumNArgs with a usage error.
func maxArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > n {
			return usagef("%s takes at most %s (got %d arguments); see vmsup %s --help", cmd.Name(), names, len(args), cmd.Name())
		}
		return nil
	}
}

// printJSON writes v as indented JSON.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// isTerminal reports whether w is a terminal.
func isTerminal(v any) bool {
	f, ok := v.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// completeDomains completes a VM name from the daemon's list.
func (a *app) completeDomains(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	c, err := a.client()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	infos, err := c.List(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	for _, in := range infos {
		names = append(names, in.Name+"\t"+in.State)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}
