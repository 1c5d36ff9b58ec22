package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/cmd/internal/client"
	"github.com/vmsup/vmsup/cmd/internal/cmdline"
)

// maxExecStdin is the most stdin `vmsup exec --stdin` sends: the API's
// body limit holds it in base64.
const maxExecStdin = 512 << 10

func (a *app) agentCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "agent NAME JSON",
		Short: "Send one raw guest agent command and print its return value",
		Long: `Send one raw command to the VM's guest agent (qemu-ga, on the virtio-serial
port org.qemu.guest_agent.0), {"execute": ..., "arguments": {...}}, and print
its "return" value as JSON. An agent error exits with status 1 and prints its
class and description; a missing or hung agent fails at the command's
deadline.

guest-sync and guest-sync-delimited are refused: the daemon synchronises the
channel itself. Agent commands need admin access but not --allow-raw-qemu:
they run in the guest, with the guest's authority, never on the host.`,
		Example:           `  vmsup agent web1 '{"execute":"guest-get-osinfo"}'`,
		Args:              cmdline.ExactArgs(2, "a VM NAME and a JSON command"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !json.Valid([]byte(args[1])) {
				return cmdline.Usagef(`agent: %q is not JSON; give a command such as '{"execute":"guest-info"}'`, args[1])
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ret, err := c.Agent(cmd.Context(), args[0], []byte(args[1]))
			if err != nil {
				var ce *client.Error
				if errors.As(err, &ce) && ce.Class != "" {
					return fmt.Errorf("agent %s: %s: %s", args[0], ce.Class, ce.Desc)
				}
				return err
			}
			var v any
			if err := json.Unmarshal(ret, &v); err != nil {
				_, err = a.stdout.Write(append(ret, '\n'))
				return err
			}
			return a.printJSON(v)
		},
	}
}

func (a *app) execCommand() *cobra.Command {
	var stdin bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "exec NAME -- CMD [ARG...]",
		Short: "Run a command in the guest through its agent, print its output and exit with its status",
		Long: `Run CMD in the guest through the guest agent (guest-exec), then print its
standard output and standard error and exit with its exit status (128+N when
signal N ended it). qemu-ga hands the output over only once the command has
exited, so nothing is printed before: this is not an interactive shell, and
a command that never ends is stopped waiting at --timeout (it keeps running
in the guest). CMD is a program path in the guest; use /bin/sh -c for a
shell line. --stdin sends this command's standard input (at most 512 KiB)
to the guest command.`,
		Example:           `  vmsup exec web1 -- /bin/sh -c 'ip -4 addr; exit 3'`,
		ValidArgsFunction: a.completeDomains,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return cmdline.Usagef("exec takes a VM NAME and a command after --, such as: vmsup exec web1 -- /bin/uname -a")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return cmdline.Usagef("--timeout must be positive, such as 5m")
			}
			req := api.ExecRequest{Path: args[1], Args: args[2:]}
			if stdin {
				data, err := io.ReadAll(io.LimitReader(a.stdin, maxExecStdin+1))
				if err != nil {
					return fmt.Errorf("exec: read stdin: %w", err)
				}
				if len(data) > maxExecStdin {
					return cmdline.Usagef("exec: stdin is larger than %d KiB", maxExecStdin>>10)
				}
				req.Stdin = data
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			if c.Timeout == 0 {
				c.Timeout = timeout
			}
			res, err := c.Exec(cmd.Context(), args[0], req)
			if err != nil {
				return fmt.Errorf("exec %s %s: %w", args[0], strings.Join(args[1:], " "), err)
			}
			if a.json {
				return a.printJSON(res)
			}
			a.stdout.Write(res.Stdout)
			a.stderr.Write(res.Stderr)
			if res.Truncated {
				fmt.Fprintln(a.stderr, "vmsup: the guest agent truncated the output at its limit")
			}
			switch {
			case res.Signal != 0:
				return cmdline.ExitCode(128 + res.Signal)
			case res.ExitCode != 0:
				if code := res.ExitCode & 0xff; code != 0 {
					return cmdline.ExitCode(code)
				}
				return cmdline.ExitCode(1)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&stdin, "stdin", false, "send standard input to the guest command")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for the guest command to exit")
	return cmd
}
