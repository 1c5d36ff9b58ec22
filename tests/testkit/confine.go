package testkit

import (
	"os/user"

	"github.com/vmsup/vmsup/domain/confine"
)

// QEMUUserName is the user tests run a root QEMU as: confine.DefaultUser
// when the host has it (.ci/run creates it), else nobody, so that tests
// never change the host's users.
func QEMUUserName() string {
	if _, err := user.Lookup(confine.DefaultUser); err == nil {
		return confine.DefaultUser
	}
	return "nobody"
}
