package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/cmd/internal/cmdline"
)

const deviceFlagsHelp = `

--live changes the running VM (the default when it runs), --config the
persistent definition, used from the next start (the default when it is shut
off); give both to change both.`

func deviceFlags(cmd *cobra.Command, f *api.DeviceFlags) {
	cmd.Flags().BoolVar(&f.Live, "live", false, "change the running VM")
	cmd.Flags().BoolVar(&f.Config, "config", false, "change the persistent definition (next start)")
}

// printDevice prints what a hot-plug change did.
func (a *app) printDevice(verb string, res *api.DeviceResult) error {
	if a.json {
		return a.printJSON(res)
	}
	var where []string
	if res.Live {
		where = append(where, "running VM")
	}
	if res.Config {
		where = append(where, "definition")
	}
	what := ""
	switch {
	case res.Disk != nil:
		what = fmt.Sprintf(" disk %s (%s, %s)", res.Disk.Node, res.Disk.Path, res.Disk.Format)
	case res.NIC != nil:
		what = fmt.Sprintf(" NIC %s (mac %s)", res.NIC.Device, res.NIC.MAC)
		if len(res.NIC.Forwards) > 0 {
			what += " forwards " + strings.Join(res.NIC.Forwards, ", ")
		}
	}
	_, err := fmt.Fprintf(a.stdout, "%s%s: %s\n", verb, what, strings.Join(where, " and "))
	return err
}

// printLive adds the running definition's devices to the info text.
func printLive(w io.Writer, l *api.Live) {
	if l == nil {
		return
	}
	for _, d := range l.Disks {
		s := d.Path + " (" + d.Format
		if d.ReadOnly {
			s += ", read-only"
		}
		if d.Hotplugged {
			s += ", hot-plugged on " + busText(d.Bus)
		}
		fmt.Fprintf(w, "Disk %s:\t%s)\n", d.Node, s)
	}
	for _, n := range l.NICs {
		s := n.Type + " " + n.MAC
		if n.Hotplugged {
			s += ", hot-plugged on " + busText(n.Bus)
		}
		fmt.Fprintf(w, "Device %s:\t%s\n", n.Device, s)
	}
}

func busText(bus string) string {
	if bus == "" {
		return "the root bus"
	}
	return bus
}

func (a *app) attachDiskCommand() *cobra.Command {
	var req api.AttachDiskRequest
	cmd := &cobra.Command{
		Use:   "attach-disk NAME FILE",
		Short: "Attach a disk image file to a VM (hot-plug)",
		Long: `Attach the disk image FILE to a VM as a virtio-blk disk. The file must lie under
the daemon's image roots, as a defined disk's path must.` + deviceFlagsHelp,
		Example:           `  vmsup attach-disk web1 /var/lib/vmsup/images/data.qcow2 --format qcow2`,
		Args:              cmdline.ExactArgs(2, "a VM NAME and a disk FILE"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch req.Format {
			case "raw", "qcow2":
			default:
				return cmdline.Usagef("--format %q: want raw or qcow2", req.Format)
			}
			path, err := filepath.Abs(args[1])
			if err != nil {
				return cmdline.Usagef("FILE %q: %v", args[1], err)
			}
			req.Path = path
			c, err := a.client()
			if err != nil {
				return err
			}
			res, err := c.AttachDisk(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return a.printDevice("attached", res)
		},
	}
	cmd.Flags().StringVar(&req.Format, "format", "raw", "the file's format: raw or qcow2")
	cmd.Flags().BoolVar(&req.ReadOnly, "readonly", false, "attach the disk read-only")
	deviceFlags(cmd, &req.DeviceFlags)
	return cmd
}

func (a *app) detachCommand(disk bool) *cobra.Command {
	var req api.DetachRequest
	var timeout time.Duration
	use, short, long, example := "detach-disk NAME TARGET", "Detach a disk from a VM (hot-unplug)",
		`Detach the disk TARGET: in the running VM its node ("disk0", "hot1", as
"vmsup info" shows), device id or path; in the definition "diskN" (disks[N])
or its path. A live detach waits --timeout for the guest to release the disk;
past it the disk stays attached and the command fails.`, `  vmsup detach-disk web1 hot0`
	if !disk {
		use, short, long, example = "detach-nic NAME MAC|INDEX", "Detach a NIC from a VM (hot-unplug)",
			`Detach the NIC with address MAC, or at INDEX (among the running VM's NICs,
or the definition's networks with --config), or with a device id ("nic0",
"hnic2"). A live detach waits --timeout for the guest to release it.`, `  vmsup detach-nic web1 52:54:00:12:34:56`
	}
	cmd := &cobra.Command{
		Use:               use,
		Short:             short,
		Long:              long + deviceFlagsHelp,
		Example:           example,
		Args:              cmdline.ExactArgs(2, "a VM NAME and a TARGET"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			if timeout <= 0 {
				return cmdline.Usagef("--timeout must be positive, such as 30s")
			}
			req.Target, req.Timeout = args[1], timeout.String()
			c, err := a.client()
			if err != nil {
				return err
			}
			var res *api.DeviceResult
			if disk {
				res, err = c.DetachDisk(cmd.Context(), args[0], req)
			} else {
				res, err = c.DetachNIC(cmd.Context(), args[0], req)
			}
			if err != nil {
				return err
			}
			return a.printDevice("detached", res)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the guest to release the device")
	deviceFlags(cmd, &req.DeviceFlags)
	return cmd
}

func (a *app) attachNICCommand() *cobra.Command {
	var req api.AttachNICRequest
	cmd := &cobra.Command{
		Use:   "attach-nic NAME",
		Short: "Attach a NIC to a VM (hot-plug)",
		Long: `Attach a virtio-net NIC. --type user (the default) is QEMU user networking, with
--forward host-to-guest port forwards as in a spec ("tcp::0-:22": host port 0
picks a free port, shown in the output). A tap NIC can only be added with
--config. Without --mac the NIC gets an address derived from the VM's UUID.` + deviceFlagsHelp,
		Example:           `  vmsup attach-nic web1 --forward tcp:127.0.0.1:0-:80`,
		Args:              cmdline.ExactArgs(1, "one VM NAME"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			res, err := c.AttachNIC(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			return a.printDevice("attached", res)
		},
	}
	cmd.Flags().StringVar(&req.Type, "type", "user", "the network type: user (tap with --config only)")
	cmd.Flags().StringVar(&req.MAC, "mac", "", "the NIC's MAC address (default: derived from the UUID)")
	cmd.Flags().StringArrayVar(&req.Forwards, "forward", nil, "a port forward of a user NIC, such as tcp::0-:22 (repeatable)")
	deviceFlags(cmd, &req.DeviceFlags)
	return cmd
}

func (a *app) definitionCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "definition NAME",
		Short:             "Print a VM's persistent definition (JSON)",
		Long:              `Print the persistent definition, as the next start will use it; "vmsup info" shows the running VM's devices.`,
		Args:              cmdline.ExactArgs(1, "one VM NAME"),
		ValidArgsFunction: a.completeDomains,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			def, err := c.Definition(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var v any
			if err := json.Unmarshal(def, &v); err != nil {
				return err
			}
			return a.printJSON(v)
		},
	}
}
