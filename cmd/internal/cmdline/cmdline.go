// Package cmdline holds what the vmsup CLI and the vmsupd daemon share on
// the command line: exit codes, usage errors, argument checks, the version
// and the default socket and state dir.
package cmdline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// ExitCode is an error that makes Execute exit with that code and print
// nothing: a command that passes on another program's exit status
// (vmsup exec).
type ExitCode int

// Error says which code.
func (e ExitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

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

// Usagef returns a usage error (exit 2) with a formatted message.
func Usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// IsUsage reports whether err is a usage error: one of Usagef, or cobra's
// own for an unknown command or a bad flag.
func IsUsage(err error) bool {
	var ue *usageError
	if errors.As(err, &ue) {
		return true
	}
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "flag needs an argument", "invalid argument", "accepts ", "requires at least", "requires at most"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// ExactArgs is cobra.ExactArgs with a usage error (exit 2).
func ExactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return Usagef("%s takes %s (got %d arguments); see %s --help", cmd.Name(), names, len(args), cmd.CommandPath())
		}
		return nil
	}
}

// MaxArgs is cobra.MaximumNArgs with a usage error (exit 2).
func MaxArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) > n {
			return Usagef("%s takes at most %s (got %d arguments); see %s --help", cmd.Name(), names, len(args), cmd.CommandPath())
		}
		return nil
	}
}

// Prepare sets what every vmsup command line does alike on root: errors
// and usage are printed by Execute, not by cobra; a bad flag is a usage
// error; --version prints Version.
func Prepare(root *cobra.Command, stdout, stderr io.Writer) {
	root.SilenceUsage = true
	root.SilenceErrors = true
	root.Version = Version()
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err: err} })
}

// Execute runs root with args until it returns or SIGINT or SIGTERM
// cancels its context, and returns the exit code. An error is printed to
// stderr on one line: the program's name (the first word of root's display
// name), then describe's text (the error's own message when describe is
// nil).
func Execute(root *cobra.Command, args []string, stderr io.Writer, describe func(error) string) int {
	root.SetArgs(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var code ExitCode
	if errors.As(err, &code) {
		return int(code)
	}
	msg := err.Error()
	if describe != nil {
		msg = describe(err)
	}
	prog := root.Name()
	if f := strings.Fields(root.DisplayName()); len(f) > 0 {
		prog = f[0]
	}
	fmt.Fprintln(stderr, prog+": "+OneLine(msg))
	if IsUsage(err) {
		return ExitUsage
	}
	return ExitError
}

// OneLine joins the lines of s with "; " and squeezes its spaces.
func OneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", "; ")), " ")
}

// IsTerminal reports whether v is an *os.File on a terminal.
func IsTerminal(v any) bool {
	f, ok := v.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// Version is the version of the running binary: its module version (or
// "(devel)"), and the commit it was built from when the build recorded it.
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		v += " " + rev + dirty
	}
	return v + " " + bi.GoVersion
}
