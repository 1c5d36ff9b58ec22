// Package cli is vmsup's command line: the commands that manage VMs
// through the daemon's API, and `vmsup daemon`, which runs the daemon's own
// binary (vmsupd). It links only the client side of the API.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmsup/vmsup/cmd/internal/client"
	"github.com/vmsup/vmsup/cmd/internal/cmdline"
)

// app holds the global flags and the standard streams.
type app struct {
	socketFlag     string
	json           bool
	verbose        bool
	requestTimeout time.Duration

	stdin          io.Reader
	stdout, stderr io.Writer
	// exec replaces the process with a program (`vmsup ssh`); nil means
	// syscall.Exec.
	exec func(bin string, argv []string) error
}

// Main runs vmsup with args (without the program name) and returns the
// exit code: 0 ok, 1 error, 2 usage.
func Main(args []string) int {
	a := &app{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}
	return cmdline.Execute(a.rootCommand(), args, a.stderr, a.describe)
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

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "vmsup",
		Short: "Supervise QEMU virtual machines",
		Long: `vmsup supervises QEMU virtual machines. Run "vmsup daemon", then manage
VMs with the other commands, which talk to the daemon over its unix socket.

Exit codes: 0 ok, 1 error, 2 usage.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(a.stderr)
			_ = cmd.Help()
			return cmdline.Usagef("no command given")
		},
	}
	cmdline.Prepare(root, a.stdout, a.stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&a.socketFlag, "socket", "", "the daemon's unix socket (env "+cmdline.SocketEnv+"; default /run/vmsup/vmsup.sock for root, $XDG_RUNTIME_DIR/vmsup.sock otherwise)")
	pf.BoolVar(&a.json, "json", false, "machine-readable (JSON) output")
	pf.BoolVarP(&a.verbose, "verbose", "v", false, "print the daemon's request id of each call to stderr (vmsup trace --request ID shows its path)")
	pf.DurationVar(&a.requestTimeout, "request-timeout", 0, "bound each call to the daemon, waits for a VM's job lane included (0: the daemon's defaults, 30s for a job)")

	root.AddCommand(
		daemonCommand(),
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
		a.portCommand(),
		a.sshCommand(),
		a.jobsCommand(),
		a.jobCommand(),
		a.snapshotCommand(),
		a.qmpCommand(),
		a.attachDiskCommand(),
		a.detachCommand(true),
		a.attachNICCommand(),
		a.detachCommand(false),
		a.definitionCommand(),
		a.agentCommand(),
		a.execCommand(),
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
	return cmdline.Socket(a.socketFlag)
}

// client returns a client of the daemon's socket.
func (a *app) client() (*client.Client, error) {
	sock, err := a.socket()
	if err != nil {
		return nil, err
	}
	if a.requestTimeout < 0 {
		return nil, cmdline.Usagef("--request-timeout %s: want a positive duration such as 45s", a.requestTimeout)
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

// printJSON writes v as indented JSON.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
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
