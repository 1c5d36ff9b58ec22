package testkit

import (
	"os"
	"os/user"
	"testing"

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

// GiveToQEMUUser makes path the QEMU user's (QEMUUserName) when the test
// runs as root, so that a confined QEMU may open it as a disk. It does
// nothing for a test that is not root (QEMU then runs as the test's user).
func GiveToQEMUUser(t testing.TB, path string) {
	t.Helper()
	if os.Geteuid() != 0 {
		return
	}
	u, err := confine.LookupUser(QEMUUserName())
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Own(path); err != nil {
		t.Fatal(err)
	}
}
