// Command vmsup supervises QEMU virtual machines: `vmsup daemon` serves the
// API on a unix socket, and the other commands manage VMs through it.
//
//	vmsup daemon &
//	vmsup up examples/tiny.yaml
//
// Run `vmsup --help` for every command. Exit codes: 0 ok, 1 error, 2 usage.
package main

import (
	"os"

	"github.com/vmsup/vmsup/cmd/vmsup/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
