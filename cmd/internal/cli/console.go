package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/cmd/internal/client"
	"github.com/vmsup/vmsup/cmd/internal/cmdline"
)

// Control bytes read from a raw terminal.
const (
	detachByte    = 0x1d // Ctrl-]
	interruptByte = 0x03 // Ctrl-C
)

// attachment is a terminal attached to a VM's serial console.
type attachment struct {
	a    *app
	conn net.Conn
	raw  bool // stdin is a terminal in raw mode

	done      chan struct{} // the console's output ended (QEMU exited, or the daemon closed it)
	detach    chan struct{} // Ctrl-] on the terminal
	interrupt chan struct{} // Ctrl-C on the terminal (up only)

	restoreOnce sync.Once
	restore     func()
}

// attach connects to name's console. Output goes to stdout. When forward
// is set, stdin goes to the console; on a terminal, stdin is put in raw
// mode, Ctrl-] detaches and, when catchCtrlC is set, Ctrl-C is not sent
// but reported on interrupt.
func (a *app) attach(ctx context.Context, c *client.Client, name string, forward, catchCtrlC bool) (*attachment, error) {
	conn, err := c.Console(ctx, name)
	if err != nil {
		return nil, err
	}
	at := &attachment{
		a:         a,
		conn:      conn,
		done:      make(chan struct{}),
		detach:    make(chan struct{}, 1),
		interrupt: make(chan struct{}, 1),
		restore:   func() {},
	}
	if f, ok := a.stdin.(*os.File); ok && forward && term.IsTerminal(int(f.Fd())) {
		state, err := term.MakeRaw(int(f.Fd()))
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("console: raw terminal: %w", err)
		}
		at.raw = true
		at.restore = func() { _ = term.Restore(int(f.Fd()), state) }
	}
	go func() {
		defer close(at.done)
		_, _ = io.Copy(a.stdout, conn)
	}()
	if forward {
		go at.pumpInput(catchCtrlC)
	}
	return at, nil
}

// pumpInput copies stdin to the console. On stdin's end it stops
// forwarding; the output keeps flowing.
func (at *attachment) pumpInput(catchCtrlC bool) {
	buf := make([]byte, 4096)
	for {
		n, err := at.a.stdin.Read(buf)
		chunk := buf[:n]
		for at.raw && len(chunk) > 0 {
			i := bytes.IndexFunc(chunk, func(r rune) bool {
				return r == detachByte || (catchCtrlC && r == interruptByte)
			})
			if i < 0 {
				break
			}
			if i > 0 {
				if _, werr := at.conn.Write(chunk[:i]); werr != nil {
					return
				}
			}
			if chunk[i] == detachByte {
				notify(at.detach)
				return
			}
			notify(at.interrupt)
			chunk = chunk[i+1:]
		}
		if len(chunk) > 0 {
			if _, werr := at.conn.Write(chunk); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// close restores the terminal and closes the console connection.
func (at *attachment) close() {
	at.restoreOnce.Do(at.restore)
	at.conn.Close()
}

// notice prints "vmsup: msg" on stderr, with a CR when the terminal is raw.
func (a *app) notice(raw bool, format string, args ...any) {
	eol := "\n"
	if raw {
		eol = "\r\n"
	}
	prefix := "vmsup: "
	if raw {
		prefix = "\r\n" + prefix
	}
	fmt.Fprintf(a.stderr, prefix+format+eol, args...)
}

func (a *app) consoleCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "console NAME",
		Short: "Attach the terminal to a VM's serial console (detach with Ctrl-])",
		Long: `Attach the terminal to a running VM's serial console. On a terminal, input
is raw (Ctrl-C goes to the guest) and Ctrl-] detaches. Without a terminal,
stdin is sent to the console and its output is copied to stdout until the VM
stops or vmsup is interrupted.`,
		Args:              cmdline.ExactArgs(1, "one VM NAME"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			ctx, name := cmd.Context(), args[0]
			if cmdline.IsTerminal(a.stdin) {
				fmt.Fprintf(a.stderr, "vmsup: connected to %s's console; detach with Ctrl-]\n", name)
			}
			at, err := a.attach(ctx, c, name, true, false)
			if err != nil {
				return err
			}
			defer at.close()
			select {
			case <-at.detach:
				at.close()
				a.notice(false, "detached from %s", name)
				return nil
			case <-ctx.Done():
				return nil
			case <-at.done:
				at.close()
				in, err := a.waitStopped(context.WithoutCancel(ctx), c, name, 2*time.Second)
				if err != nil {
					return err
				}
				if in.PID != 0 {
					return fmt.Errorf("the console of %s was closed by the daemon; the VM is still %s", name, in.State)
				}
				a.notice(false, "%s stopped: %s (%s)", name, in.State, in.Reason)
				return nil
			}
		},
	}
}

// waitStopped polls name's info until its QEMU is gone or within passes,
// and returns the last info.
func (a *app) waitStopped(ctx context.Context, c *client.Client, name string, within time.Duration) (*api.Info, error) {
	deadline := time.Now().Add(within)
	for {
		in, err := c.Info(ctx, name)
		if err != nil || in.PID == 0 || time.Now().After(deadline) {
			return in, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (a *app) upCommand() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "up FILE",
		Short: "Define and start a VM and attach its console; Ctrl-C shuts it down",
		Long: `Define a VM from a spec file, start it (unless it runs already) and attach
the terminal to its serial console. on_crash defaults to restart unless the
spec sets it. Ctrl-C shuts the VM down gracefully (ACPI
powerdown, up to --timeout, then destroy); a second Ctrl-C destroys it at
once. Ctrl-] detaches and leaves the VM running. Without a terminal, the
console's output is copied to stdout until the VM stops or vmsup gets
SIGINT or SIGTERM, which shut it down in the same way.`,
		Example: `  vmsup up examples/tiny.yaml`,
		Args:    cmdline.ExactArgs(1, "one spec FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return cmdline.Usagef("--timeout must be positive, such as 60s")
			}
			// Catch signals ourselves: the first asks for a graceful
			// shutdown, the next for destroy. API calls use a context
			// that the signals do not cancel.
			sigs := make(chan os.Signal, 4)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sigs)
			ctx := context.WithoutCancel(cmd.Context())
			c, err := a.client()
			if err != nil {
				return err
			}
			spec, err := readSpec(args[0], a.stdin)
			if err != nil {
				return err
			}
			// A VM run with `up` is meant to stay up: on_crash defaults to
			// restart (the spec's own on_crash wins).
			spec = withDefault(spec, "on_crash", "restart")
			// A guest configured by cloud-init gets the user's SSH key
			// (one is generated under the cache when there is none).
			priv := ""
			if hasCloudInit(spec) {
				var pub string
				var generated bool
				if priv, pub, generated, err = ensureKey(); err != nil {
					return err
				}
				if generated {
					a.notice(false, "generated the SSH key %s", priv)
				}
				spec = withAuthorizedKey(spec, pub)
			}
			res, err := c.Define(ctx, spec, false)
			if err != nil {
				return a.specError(err)
			}
			name := res.Name
			in, err := c.Info(ctx, name)
			if err != nil {
				return err
			}
			if in.PID == 0 {
				if _, err := c.Start(ctx, name, false); err != nil {
					return err
				}
			}
			tty := cmdline.IsTerminal(a.stdin)
			at, err := a.attach(ctx, c, name, tty, true)
			if err != nil {
				return err
			}
			defer at.close()
			if tty {
				a.notice(at.raw, "%s is running; Ctrl-C shuts it down, Ctrl-] detaches", name)
			} else {
				a.notice(false, "%s is running; SIGINT shuts it down", name)
			}
			if in, err := c.Info(ctx, name); err == nil {
				if f, ok := sshForward(in.NICs); ok {
					if priv == "" {
						priv, _ = findKey()
					}
					sshCtx, stopSSH := context.WithCancel(ctx)
					waited := make(chan struct{})
					go func() {
						defer close(waited)
						a.waitSSH(sshCtx, name, f, priv, at.raw)
					}()
					defer func() { stopSSH(); <-waited }()
				}
			}
			return a.supervise(ctx, c, name, at, sigs, timeout)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "how long Ctrl-C waits for the guest to power off before destroying it")
	return cmd
}

// supervise runs `up` after the console is attached: it waits for the VM
// to stop, shutting it down on the first interrupt and destroying it on
// the next.
func (a *app) supervise(ctx context.Context, c *client.Client, name string, at *attachment, sigs <-chan os.Signal, timeout time.Duration) error {
	interrupts := 0
	var shutdownDone chan error
	destroy := func(why string) {
		a.notice(at.raw, "%s; destroying %s", why, name)
		go func() {
			if _, err := c.Destroy(ctx, name); err != nil && !client.IsStatus(err, http.StatusConflict) {
				a.notice(at.raw, "destroy %s: %s", name, a.describe(err))
			}
		}()
	}
	interrupted := func() {
		interrupts++
		if interrupts > 1 {
			destroy("interrupted again")
			return
		}
		a.notice(at.raw, "shutting down %s (ACPI powerdown, up to %s; Ctrl-C again destroys it)", name, timeout)
		shutdownDone = make(chan error, 1)
		go func() {
			_, err := c.Shutdown(ctx, name, timeout)
			shutdownDone <- err
		}()
	}
	for {
		select {
		case <-sigs:
			interrupted()
		case <-at.interrupt:
			interrupted()
		case <-at.detach:
			at.close()
			a.notice(false, "detached; %s keeps running", name)
			return nil
		case err := <-shutdownDone:
			shutdownDone = nil
			switch {
			case err == nil:
			case client.IsStatus(err, http.StatusGatewayTimeout):
				destroy(fmt.Sprintf("the guest did not power off within %s", timeout))
			case client.IsStatus(err, http.StatusConflict):
				// It stopped on its own meanwhile.
			default:
				a.notice(at.raw, "shutdown %s: %s", name, a.describe(err))
			}
		case <-at.done:
			raw := at.raw
			at.close()
			in, err := a.waitStopped(ctx, c, name, 5*time.Second)
			if err != nil {
				return err
			}
			if in.PID != 0 {
				return fmt.Errorf("the console of %s was closed by the daemon; the VM is still %s", name, in.State)
			}
			a.notice(raw, "%s stopped: %s (%s)", name, in.State, in.Reason)
			if interrupts == 0 && in.Reason != "shutdown" {
				return fmt.Errorf("%s stopped unexpectedly: %s (%s)", name, in.State, in.Reason)
			}
			return nil
		}
	}
}
