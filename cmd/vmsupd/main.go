// Command vmsupd is the vmsup daemon: it serves the vmsup API on a unix
// socket and supervises the VMs. `vmsup daemon` runs it, in place of the
// CLI, which does not link the daemon so that its commands start fast.
//
//	vmsupd --state-dir /var/lib/vmsup --socket /run/vmsup/vmsup.sock
//
// It names itself in usage and errors after its argv[0] ("vmsup daemon"
// when the CLI runs it). Run `vmsupd --help` for its flags. Exit codes: 0
// stopped, 1 error, 2 usage.
package main

import (
	"os"
	"path/filepath"

	"github.com/vmsup/vmsup/cmd/internal/cmdline"
	"github.com/vmsup/vmsup/cmd/internal/daemon"
)

func main() {
	name := "vmsupd"
	if len(os.Args) > 0 && os.Args[0] != "" {
		name = filepath.Base(os.Args[0])
	}
	cmd := daemon.Command(name, os.Stdout, os.Stderr)
	os.Exit(cmdline.Execute(cmd, os.Args[1:], os.Stderr, nil))
}
