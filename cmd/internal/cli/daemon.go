package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// DaemonBinary is the name of the daemon's binary, which `vmsup daemon`
// runs. The CLI does not link the daemon, so that its commands start fast.
const DaemonBinary = "vmsupd"

// daemonName is the name the daemon is run under (its argv[0]), which it
// shows in its usage and errors.
const daemonName = "vmsup daemon"

func daemonCommand() *cobra.Command {
	// Flag parsing is off: every argument but "daemon", flags before it
	// included, goes to the daemon as it is.
	return &cobra.Command{
		Use:   "daemon [flags]",
		Short: "Serve the vmsup API on the unix socket (runs vmsupd)",
		Long: `Serve the vmsup API on the unix socket. This runs the daemon's own binary,
` + DaemonBinary + `, found next to the vmsup binary or else on PATH, in place of
vmsup (same process), with every argument but "daemon" itself. The daemon
takes --socket like the other commands, but none of their other flags.
"vmsup daemon --help" lists its flags.`,
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			bin, err := findDaemon()
			if err != nil {
				return err
			}
			err = syscall.Exec(bin, append([]string{daemonName}, args...), os.Environ())
			return fmt.Errorf("run the daemon %s: %w", bin, err)
		},
	}
}

// findDaemon finds the daemon's binary: next to the running vmsup, else
// on PATH.
func findDaemon() (string, error) {
	var next string
	if self, err := os.Executable(); err == nil {
		next = filepath.Join(filepath.Dir(self), DaemonBinary)
		if fi, err := os.Stat(next); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return next, nil
		}
	}
	path, err := exec.LookPath(DaemonBinary)
	if err == nil {
		return path, nil
	}
	where := "on PATH"
	if next != "" {
		where = "at " + next + " (next to vmsup) nor on PATH"
	}
	if errors.Is(err, exec.ErrDot) {
		where += " (PATH names it relative to the current directory, which is not searched)"
	}
	return "", fmt.Errorf("cannot start the daemon: its binary %s is not %s; build both with `make vmsup`, or `go build -o DIR ./cmd/vmsup ./cmd/vmsupd`", DaemonBinary, where)
}
