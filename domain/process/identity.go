package process

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Identity is what tells a QEMU apart from any other process that might
// carry the same pid or the same command line: recorded when vmsup starts
// QEMU, checked before it adopts one.
type Identity struct {
	// PID is QEMU's pid.
	PID int `json:"pid"`
	// StartTime is field 22 of /proc/<pid>/stat: when the process
	// started, in clock ticks since boot. With PID and BootID it names one
	// process for the life of the machine (two processes may share a
	// tick, never a pid within it).
	StartTime uint64 `json:"start_time"`
	// BootID is /proc/sys/kernel/random/boot_id at launch.
	BootID string `json:"boot_id"`
	// Exe is the executable (/proc/<pid>/exe).
	Exe string `json:"exe"`
	// UID is the real uid QEMU runs as.
	UID uint32 `json:"uid"`
	// UUID is the domain's UUID, which QEMU carries as -uuid.
	UUID string `json:"uuid"`
}

// procRoot is /proc; tests do not replace it, but it names the one place
// identities come from.
const procRoot = "/proc"

// ReadIdentity reads what /proc says about pid now; UUID is left empty.
func ReadIdentity(pid int) (Identity, error) {
	id := Identity{PID: pid}
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return id, fmt.Errorf("pid %d: %w", pid, err)
	}
	if id.StartTime, err = parseStartTime(stat); err != nil {
		return id, fmt.Errorf("pid %d: %w", pid, err)
	}
	if id.BootID, err = bootID(); err != nil {
		return id, err
	}
	exe, err := os.Readlink(filepath.Join(dir, "exe"))
	if err != nil {
		return id, fmt.Errorf("pid %d: executable: %w", pid, err)
	}
	// An upgraded package leaves the running binary "(deleted)".
	id.Exe = strings.TrimSuffix(exe, " (deleted)")
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return id, fmt.Errorf("pid %d: owner: %w", pid, err)
	}
	id.UID = st.Uid
	return id, nil
}

// parseStartTime returns field 22 of a /proc/<pid>/stat line. The command
// name (field 2) is in parentheses and may hold spaces and parentheses, so
// fields are counted from the last ')'.
func parseStartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat: no command name")
	}
	fields := strings.Fields(string(stat[i+1:]))
	// fields[0] is field 3 (state); field 22 is fields[19].
	if len(fields) < 20 {
		return 0, fmt.Errorf("malformed /proc stat: %d fields after the command name", len(fields))
	}
	v, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("malformed /proc stat start time %q", fields[19])
	}
	return v, nil
}

func bootID() (string, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, "sys/kernel/random/boot_id"))
	if err != nil {
		return "", fmt.Errorf("boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Mismatch says how a process differs from a recorded identity; empty when
// it is the same process.
func (id Identity) Mismatch(now Identity) string {
	var diffs []string
	if now.PID != id.PID {
		diffs = append(diffs, fmt.Sprintf("pid %d, recorded %d", now.PID, id.PID))
	}
	if now.BootID != id.BootID {
		diffs = append(diffs, "the machine rebooted since (boot id)")
	}
	if now.StartTime != id.StartTime {
		diffs = append(diffs, fmt.Sprintf("started at tick %d, recorded %d", now.StartTime, id.StartTime))
	}
	if now.Exe != id.Exe {
		diffs = append(diffs, fmt.Sprintf("runs %s, recorded %s", now.Exe, id.Exe))
	}
	if now.UID != id.UID {
		diffs = append(diffs, fmt.Sprintf("runs as uid %d, recorded %d", now.UID, id.UID))
	}
	return strings.Join(diffs, ", ")
}

// writeIdentity records id in path atomically (temp file in the same dir,
// rename), never following a symlink.
func writeIdentity(path string, id Identity) error {
	data, err := json.Marshal(id)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("write QEMU identity: %w", err)
	}
	_, werr := f.Write(append(data, '\n'))
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr == nil {
		werr = os.Rename(tmp, path)
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("write QEMU identity: %w", werr)
	}
	return nil
}

// readIdentityFile reads a recorded identity without following a symlink.
func readIdentityFile(path string) (Identity, error) {
	var id Identity
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return id, err
	}
	defer f.Close()
	buf := make([]byte, 4096)
	n, err := f.Read(buf)
	if err != nil {
		return id, fmt.Errorf("QEMU identity %s: %w", path, err)
	}
	if err := json.Unmarshal(buf[:n], &id); err != nil {
		return id, fmt.Errorf("QEMU identity %s: %w", path, err)
	}
	return id, nil
}
