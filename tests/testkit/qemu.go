package testkit

import (
	"os"
	"os/exec"
	"testing"
)

// QEMUBinary is the QEMU the real-QEMU tests start.
const QEMUBinary = "qemu-system-x86_64"

// RequireQEMU returns the path of qemu-system-x86_64. A missing binary fails
// the test, so that CI cannot pass without running the real-QEMU tests,
// unless VMSUP_SKIP_QEMU=1 asks to skip them.
func RequireQEMU(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath(QEMUBinary)
	if err != nil {
		if os.Getenv("VMSUP_SKIP_QEMU") == "1" {
			t.Skipf("%s not found; skipped because VMSUP_SKIP_QEMU=1", QEMUBinary)
		}
		t.Fatalf("%s not found (%v): install qemu-system-x86, or set VMSUP_SKIP_QEMU=1 to skip the real-QEMU tests", QEMUBinary, err)
	}
	return path
}
