package confine

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"time"
)

// CheckSandbox reports whether emulator has the seccomp sandbox that
// qemuargs.BuildArgs always asks for (QEMU
// built with libseccomp lists -sandbox in its -help). It runs emulator
// with a deadline.
func CheckSandbox(ctx context.Context, emulator string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, emulator, "-help").Output()
	if err != nil {
		return fmt.Errorf("%s -help: %w", emulator, err)
	}
	if !bytes.Contains(out, []byte("\n-sandbox ")) {
		return fmt.Errorf("%s has no -sandbox option (QEMU built without seccomp): vmsup will not run it as root unconfined", emulator)
	}
	return nil
}
