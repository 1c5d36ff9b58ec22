package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/cmd/internal/client"
	"github.com/vmsup/vmsup/cmd/internal/cmdline"
)

func (a *app) defineCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "define FILE",
		Short: "Define or update a VM from a YAML or JSON spec, and print its name",
		Long: `Define a VM from a YAML or JSON spec file ("-" reads stdin), or update the
definition of an existing VM (the change takes effect at its next start).
Prints the VM's name.

Relative paths in the spec (kernel, initrd, disks[].path, serial.path) are
resolved against the spec file's directory before the spec is sent.

A definition on disk that cannot be read or parsed shows as "broken" in
list; --force replaces it.`,
		Example: `  vmsup define examples/tiny.yaml`,
		Args:    cmdline.ExactArgs(1, "one spec FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			spec, err := readSpec(args[0], a.stdin)
			if err != nil {
				return err
			}
			res, err := c.Define(cmd.Context(), spec, force)
			if err != nil {
				return a.specError(err)
			}
			if a.json {
				return a.printJSON(res)
			}
			fmt.Fprintln(a.stdout, res.Name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "replace a broken definition of the same name")
	return cmd
}

// specError names every bad field of a rejected spec.
func (a *app) specError(err error) error {
	var ce *client.Error
	if errors.As(err, &ce) && len(ce.Fields) > 0 {
		var parts []string
		for _, f := range ce.Fields {
			parts = append(parts, fmt.Sprintf("%s: %s", f.Field, f.Problem))
		}
		return fmt.Errorf("spec rejected: %s", strings.Join(parts, "; "))
	}
	return err
}

func (a *app) undefineCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "undefine NAME",
		Short:             "Remove a VM that is shut off",
		Args:              cmdline.ExactArgs(1, "one VM NAME"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			if err := c.Undefine(cmd.Context(), args[0]); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(api.Undefined{Name: args[0]})
			}
			return nil
		},
	}
}

func (a *app) startCommand() *cobra.Command {
	var paused bool
	cmd := &cobra.Command{
		Use:               "start NAME",
		Short:             "Start a VM",
		Args:              cmdline.ExactArgs(1, "one VM NAME"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			in, err := c.Start(cmd.Context(), args[0], paused)
			if err != nil {
				return err
			}
			return a.printInfoIfJSON(in)
		},
	}
	cmd.Flags().BoolVar(&paused, "paused", false, "leave the guest paused after QEMU starts")
	return cmd
}

func (a *app) printInfoIfJSON(in *api.Info) error {
	if a.json {
		return a.printJSON(in)
	}
	return nil
}

// simpleCommand is a command that runs one action on one VM.
func (a *app) simpleCommand(name, short string, do func(*client.Client, context.Context, string) (*api.Info, error)) *cobra.Command {
	return &cobra.Command{
		Use:               name + " NAME",
		Short:             short,
		Args:              cmdline.ExactArgs(1, "one VM NAME"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			in, err := do(c, cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return a.printInfoIfJSON(in)
		},
	}
}

func (a *app) shutdownCommand() *cobra.Command {
	var timeout time.Duration
	var force bool
	var mode string
	cmd := &cobra.Command{
		Use:   "shutdown NAME",
		Short: "Power a VM off through ACPI or its guest agent and wait for it",
		Long: `Ask the guest to power off and wait for it. --mode acpi (the default) presses
the VM's ACPI power button, and again every few seconds, since a press before
the guest's OS is up is lost; --mode agent asks the guest agent
(guest-shutdown); --mode auto uses the agent when it answers guest-ping, and
ACPI otherwise. On a terminal a spinner shows the elapsed time. --timeout is
one deadline for all of it: when it passes, the command fails, or destroys
the VM when --force is given (the VM then ends shutoff/destroyed, never
counted as a crash).`,
		Args:              cmdline.ExactArgs(1, "one VM NAME"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return cmdline.Usagef("--timeout must be positive, such as 60s")
			}
			switch mode {
			case "acpi", "agent", "auto":
			default:
				return cmdline.Usagef("--mode %q: want acpi, agent or auto", mode)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			name := args[0]
			stopSpinner := a.spinner(fmt.Sprintf("shutting down %s", name))
			in, err := c.ShutdownMode(cmd.Context(), name, timeout, mode)
			stopSpinner()
			if err != nil {
				if !force || !client.IsStatus(err, http.StatusGatewayTimeout) {
					if client.IsStatus(err, http.StatusGatewayTimeout) {
						return fmt.Errorf("%w (use --force to destroy it)", err)
					}
					return err
				}
				fmt.Fprintf(a.stderr, "vmsup: %s did not power off within %s; destroying it (--force)\n", name, timeout)
				if in, err = c.Destroy(cmd.Context(), name); err != nil {
					return err
				}
			}
			return a.printInfoIfJSON(in)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "how long to wait for the guest to power off")
	cmd.Flags().BoolVar(&force, "force", false, "destroy the VM when it has not powered off within --timeout")
	cmd.Flags().StringVar(&mode, "mode", "acpi", "how to ask the guest: acpi, agent or auto")
	return cmd
}

// spinner shows "| msg 1.2s" on a terminal stdout until the returned
// function is called; elsewhere it does nothing.
func (a *app) spinner(msg string) func() {
	if !cmdline.IsTerminal(a.stdout) {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	began := time.Now()
	go func() {
		defer close(finished)
		frames := `|/-\`
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			fmt.Fprintf(a.stdout, "\r%c %s %.1fs", frames[i%len(frames)], msg, time.Since(began).Seconds())
			select {
			case <-done:
				fmt.Fprint(a.stdout, "\r\033[K")
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-finished }
}

func (a *app) listCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs: NAME, STATE, REASON, PID, JOB",
		Args:    cmdline.ExactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			infos, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				if infos == nil {
					infos = []api.Info{}
				}
				return a.printJSON(infos)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tREASON\tPID\tJOB")
			now := time.Now()
			var broken []api.Info
			for _, in := range infos {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", in.Name, in.State, in.Reason, pidText(in.PID), shortJob(in.Job, now))
				if in.Problem != "" {
					broken = append(broken, in)
				}
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, in := range broken {
				fmt.Fprintf(a.stdout, "%s: %s (define --force replaces it; undefine removes it)\n", in.Name, in.Problem)
			}
			return nil
		},
	}
}

func pidText(pid int) string {
	if pid == 0 {
		return "-"
	}
	return strconv.Itoa(pid)
}

// shortJob is the JOB column: "17 async (api shutdown) 3.2s".
func shortJob(j *api.JobInfo, now time.Time) string {
	if j == nil {
		return "-"
	}
	s := fmt.Sprintf("%d %s (%s) %s", j.ID, j.Kind, j.Owner, age(j.Started, now))
	if j.QMP != nil {
		s += " qmp " + j.QMP.Command
	}
	return s
}

// longJob describes a job and who holds it:
// `job 17 async (api shutdown) for 3.2s, in QMP "system_powerdown" for 3.1s, trace 1a2b3c-17`.
func longJob(j *api.JobInfo, now time.Time) string {
	if j == nil {
		return "-"
	}
	s := fmt.Sprintf("job %d %s (%s) for %s", j.ID, j.Kind, j.Owner, age(j.Started, now))
	if j.QMP != nil {
		s += fmt.Sprintf(", in QMP %q for %s", j.QMP.Command, age(j.QMP.Since, now))
	}
	if j.Trace != "" {
		s += ", trace " + j.Trace
	}
	return s
}

// controlText describes the control object: "ok",
// "job (a job holds the VM) for 3.2s",
// "occupied (a QMP command waits for QEMU) for 1.0s",
// "error (the QMP monitor is broken) for 4.1s: REASON".
func controlText(c *api.Control) string {
	if c == nil {
		return "-"
	}
	s := c.State
	switch c.State {
	case "job":
		s = "job (a job holds the VM)"
	case "occupied":
		s = "occupied (a QMP command waits for QEMU)"
	case "error":
		s = "error (the QMP monitor is broken)"
	}
	if c.Since != nil {
		s += fmt.Sprintf(" for %.1fs", float64(c.Millis)/1000)
	}
	if c.Reason != "" {
		s += ": " + c.Reason
	}
	return s
}

func traceSuffix(id string) string {
	if id == "" {
		return ""
	}
	return ", trace " + id
}

func age(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return fmt.Sprintf("%.1fs", now.Sub(t).Seconds())
}

func (a *app) infoCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "info NAME",
		Short:             "Show a VM's state, reason, pid, control state and job (who holds it, for how long, its trace id)",
		Args:              cmdline.ExactArgs(1, "one VM NAME"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			in, err := c.Info(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(in)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 1, ' ', 0)
			fmt.Fprintf(tw, "Name:\t%s\n", in.Name)
			fmt.Fprintf(tw, "UUID:\t%s\n", in.UUID)
			fmt.Fprintf(tw, "State:\t%s\n", in.State)
			fmt.Fprintf(tw, "Reason:\t%s\n", in.Reason)
			fmt.Fprintf(tw, "PID:\t%s\n", pidText(in.PID))
			fmt.Fprintf(tw, "Control:\t%s\n", controlText(in.Control))
			fmt.Fprintf(tw, "Job:\t%s\n", longJob(in.Job, time.Now()))
			fmt.Fprintf(tw, "Queued:\t%d\n", in.Queued)
			fmt.Fprintf(tw, "Restarts:\t%d\n", in.Restarts)
			for _, n := range in.NICs {
				fmt.Fprintf(tw, "NIC %d:\t%s\n", n.Index, nicText(n))
			}
			printLive(tw, in.Live)
			if in.Agent != nil {
				fmt.Fprintf(tw, "Agent:\t%s\n", agentText(in.Agent, time.Now()))
			}
			return tw.Flush()
		},
	}
}

// agentText describes the guest agent's status on one line.
func agentText(s *api.AgentStatus, now time.Time) string {
	out := s.State
	if s.Version != "" {
		out += " (qemu-ga " + s.Version + ")"
	}
	if !s.Since.IsZero() {
		out += " for " + age(s.Since, now)
	}
	if s.Reason != "" {
		out += ": " + s.Reason
	}
	return out
}

// nicText describes a NIC on one line: type, MAC, tap and its forwards.
func nicText(n api.NIC) string {
	s := n.Type + " " + n.MAC
	if n.Tap != "" {
		s += " tap " + n.Tap + " on " + n.Bridge
	}
	if n.GuestIP != "" {
		s += " ip " + n.GuestIP
	}
	for _, f := range n.Forwards {
		host := f.HostAddr
		if host == "" {
			host = "0.0.0.0"
		}
		s += fmt.Sprintf(", %s %s:%d->%s:%d", f.Proto, host, f.HostPort, f.GuestAddr, f.GuestPort)
	}
	return s
}

func (a *app) jobsCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "jobs [NAME]",
		Short:             "Show who holds each VM: the active, async and queued jobs, their owners, QMP commands in flight and trace ids",
		Args:              cmdline.MaxArgs(1, "one VM NAME"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			var all []api.Jobs
			if len(args) == 1 {
				j, err := c.Jobs(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if a.json {
					return a.printJSON(j)
				}
				all = []api.Jobs{*j}
			} else {
				if all, err = c.AllJobs(cmd.Context()); err != nil {
					return err
				}
				if a.json {
					if all == nil {
						all = []api.Jobs{}
					}
					return a.printJSON(all)
				}
			}
			now := time.Now()
			for _, j := range all {
				if j.Active == nil && j.Async == nil && len(j.Queued) == 0 {
					fmt.Fprintf(a.stdout, "%s: idle\n", j.Domain)
					continue
				}
				fmt.Fprintf(a.stdout, "%s:\n", j.Domain)
				for _, h := range []struct {
					label string
					job   *api.JobInfo
				}{{"active:", j.Active}, {"async: ", j.Async}} {
					if h.job == nil {
						continue
					}
					fmt.Fprintf(a.stdout, "  %s %s\n", h.label, longJob(h.job, now))
					if h.job.Progress != "" {
						fmt.Fprintf(a.stdout, "          steps %s\n", h.job.Progress)
					}
					if h.job.Mask != "" {
						fmt.Fprintf(a.stdout, "          mask %s\n", h.job.Mask)
					}
					if h.job.Report != nil {
						fmt.Fprintf(a.stdout, "          progress %s\n", h.job.Report.Text)
					}
				}
				for _, q := range j.Queued {
					fmt.Fprintf(a.stdout, "  queued: job %d %s (%s), waiting %s%s\n", q.ID, q.Kind, q.Owner, age(q.Enqueued, now), traceSuffix(q.Trace))
				}
			}
			return nil
		},
	}
}

func (a *app) qmpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "qmp NAME JSON",
		Short: "Send one raw QMP command as a job and print its return value",
		Long: `Send one raw QMP command, {"execute": ..., "arguments": {...}}, to a running
VM as a job, and print the reply's "return" value as JSON. A QMP error exits
with status 1 and prints its class and description.`,
		Example:           `  vmsup qmp web1 '{"execute":"query-status"}'`,
		Args:              cmdline.ExactArgs(2, "a VM NAME and a JSON command"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			if !json.Valid([]byte(args[1])) {
				return cmdline.Usagef(`qmp: %q is not JSON; give a command such as '{"execute":"query-status"}'`, args[1])
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			ret, err := c.QMP(cmd.Context(), args[0], []byte(args[1]))
			if err != nil {
				var ce *client.Error
				if errors.As(err, &ce) && ce.Class != "" {
					return fmt.Errorf("qmp %s: %s: %s", args[0], ce.Class, ce.Desc)
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

func (a *app) eventsCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "events [NAME]",
		Short:             "Stream lifecycle events until interrupted",
		Long:              "Stream the lifecycle events of one VM, or of all VMs, until interrupted: one line each, or NDJSON with --json.",
		Args:              cmdline.MaxArgs(1, "one VM NAME"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			enc := json.NewEncoder(a.stdout)
			err = c.Events(cmd.Context(), name, nil, func(ev api.Event) error {
				if a.json {
					return enc.Encode(ev)
				}
				_, err := fmt.Fprintln(a.stdout, eventLine(ev))
				return err
			})
			switch {
			case cmd.Context().Err() != nil:
				return nil // interrupted
			case errors.Is(err, io.EOF):
				return errors.New("the daemon closed the event stream")
			}
			return err
		},
	}
}

// eventLine is the text form of an event:
// "15:04:05.000 web1 started running/booted".
func eventLine(ev api.Event) string {
	s := fmt.Sprintf("%s %s %s %s/%s", ev.Time.Local().Format("15:04:05.000"), ev.Domain, ev.Type, ev.State, ev.Reason)
	if ev.NIC != "" {
		s += " nic=" + ev.NIC
	}
	if ev.Cause != "" {
		s += " cause=" + ev.Cause
	}
	return s
}
