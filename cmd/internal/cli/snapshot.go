package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/cmd/internal/client"
	"github.com/vmsup/vmsup/cmd/internal/cmdline"
)

func (a *app) snapshotCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Create, list, revert to and delete a VM's snapshots",
		Long: `Internal snapshots of a running VM: its vCPU and device state goes to its first
disk, and every writable disk (all must be qcow2; an image disk's overlay is)
gets a snapshot under the same name. A snapshot runs as an async job: info,
jobs, qmp query-* and pause still answer meanwhile, and other jobs wait.
vmsup job abort NAME stops it cleanly.

With --disk-only, create makes a disk-only (external) snapshot instead: every
writable disk's image becomes the read-only backing file of a new qcow2 overlay
in the state dir, which the disk uses from then on, also after a restart. When
the guest agent answers, the guest's filesystems are frozen around it (and
always thawed). Such a snapshot is reverted (later writes discarded) on a stopped
VM, and deleted (its overlays committed into the images under them, with
block-commit on a running VM) on any.`,
	}
	op := func(name, short string, do func(*client.Client, context.Context, string, string) (*api.Info, error)) *cobra.Command {
		return &cobra.Command{
			Use:               name + " NAME SNAP",
			Short:             short,
			Args:              cmdline.ExactArgs(2, "a VM NAME and a snapshot name"),
			ValidArgsFunction: a.completeDomains,
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := a.client()
				if err != nil {
					return err
				}
				in, err := do(c, cmd.Context(), args[0], args[1])
				if err != nil {
					return err
				}
				return a.printInfoIfJSON(in)
			},
		}
	}
	list := &cobra.Command{
		Use:               "list NAME",
		Short:             "List a VM's snapshots",
		Args:              cmdline.ExactArgs(1, "one VM NAME"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			snaps, err := c.Snapshots(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				if snaps == nil {
					snaps = []api.Snapshot{}
				}
				return a.printJSON(snaps)
			}
			for _, s := range snaps {
				created := "-"
				if !s.Created.IsZero() {
					created = s.Created.Local().Format("2006-01-02 15:04:05")
				}
				frozen := "-"
				if s.Kind == "disk" {
					frozen = "unfrozen"
					if s.Frozen {
						frozen = fmt.Sprintf("frozen(%d)", s.FrozenFS)
					}
				}
				fmt.Fprintf(a.stdout, "%-24s %-8s %-9s %-11s %s  %v\n", s.Name, s.Kind, s.State, frozen, created, s.Disks)
			}
			return nil
		},
	}
	create := op("create", "Snapshot a running VM (or, --disk-only, any VM's disks)", (*client.Client).CreateSnapshot)
	diskOnly := create.Flags().Bool("disk-only", false, "make a disk-only snapshot: new qcow2 overlays on the disks, the filesystems frozen by the guest agent")
	internal := create.RunE
	create.RunE = func(cmd *cobra.Command, args []string) error {
		if !*diskOnly {
			return internal(cmd, args)
		}
		c, err := a.client()
		if err != nil {
			return err
		}
		in, err := c.CreateDiskSnapshot(cmd.Context(), args[0], args[1])
		if err != nil {
			return err
		}
		return a.printInfoIfJSON(in)
	}
	cmd.AddCommand(
		create,
		list,
		op("revert", "Revert a running VM to a snapshot (VM state and disks)", (*client.Client).RevertSnapshot),
		op("delete", "Delete a snapshot from every disk", (*client.Client).DeleteSnapshot),
	)
	return cmd
}

func (a *app) jobCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "job",
		Short: "Act on a VM's async job",
	}
	cmd.AddCommand(a.simpleCommand("abort", "Ask a VM's async job (a snapshot, a shutdown's wait) to stop cleanly", (*client.Client).AbortJob))
	return cmd
}
