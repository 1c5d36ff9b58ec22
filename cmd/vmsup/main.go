// Command vmsup manages QEMU virtual machines through the vmsup daemon:
// `vmsup daemon` runs the daemon (the vmsupd binary, found next to vmsup
// or on PATH), and the other commands talk to it over its unix socket.
//
//	vmsup daemon &
//	vmsup up examples/tiny.yaml
//
// vmsup links only the client side (the API's objects and an HTTP
// client), not the actors, so that every command starts fast. Run
// `vmsup --help` for every command. Exit codes: 0 ok, 1 error, 2 usage.
package main

import (
	"os"

	"github.com/vmsup/vmsup/cmd/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
