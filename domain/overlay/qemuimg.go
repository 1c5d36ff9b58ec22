// Package overlay inspects disk base images and creates and removes the
// qcow2 overlays that domains write to, by running qemu-img. The base of an
// overlay is only ever opened read-only: it is never written.
package overlay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// DefaultTimeout bounds one qemu-img run when QemuImg.Timeout is zero.
const DefaultTimeout = 2 * time.Minute

// maxOutput bounds what a qemu-img run may print on stdout.
const maxOutput = 1 << 20

// maxStderr is how much of qemu-img's stderr an error quotes (its end).
const maxStderr = 4 << 10

// QemuImg runs qemu-img.
type QemuImg struct {
	// Path is the qemu-img binary; "" means "qemu-img" from PATH.
	Path string
	// Timeout bounds each run, in addition to the caller's context;
	// zero means DefaultTimeout.
	Timeout time.Duration
	// OpenBase, when set, opens a base image for CheckBase and Create
	// (a daemon's image-root policy): qemu-img then reads the open file
	// (/dev/fd/3), and never opens the base by name, so a symlink
	// swapped in after the check cannot lead it elsewhere. Nil: qemu-img
	// opens the base by its name.
	OpenBase func(path string) (*os.File, error)
}

// RunError is a qemu-img run that failed: it exited non-zero, was killed
// at its deadline, or printed what could not be read.
type RunError struct {
	Args   []string // qemu-img's arguments
	Stderr string   // the end of what qemu-img wrote to stderr, trimmed
	Err    error
}

// Error returns, for example,
// `qemu-img info --output=json /x.qcow2: exit status 1: "qemu-img: Could not open '/x.qcow2': ..."`.
func (e *RunError) Error() string {
	s := "qemu-img " + strings.Join(e.Args, " ") + ": " + e.Err.Error()
	if e.Stderr != "" {
		s += ": " + fmt.Sprintf("%q", e.Stderr)
	}
	return s
}

// Unwrap returns the cause: an *exec.ExitError, context.DeadlineExceeded
// or context.Canceled, or a parse error.
func (e *RunError) Unwrap() error { return e.Err }

func (q QemuImg) path() string {
	if q.Path == "" {
		return "qemu-img"
	}
	return q.Path
}

func (q QemuImg) timeout() time.Duration {
	if q.Timeout <= 0 {
		return DefaultTimeout
	}
	return q.Timeout
}

// run runs qemu-img with args in its own process group, which is killed
// whole when ctx ends or the timeout expires; it returns once qemu-img has
// been reaped.
func (q QemuImg) run(ctx context.Context, args ...string) ([]byte, error) {
	return q.runWith(ctx, nil, args...)
}

// runWith is run with files open in qemu-img as fd 3 onwards.
func (q QemuImg) runWith(ctx context.Context, files []*os.File, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, q.timeout())
	defer cancel()
	cmd := exec.CommandContext(ctx, q.path(), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The whole group: qemu-img, or a wrapper script and its children.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	// Should a killed process's child keep a pipe open, Wait gives up on
	// the pipe after this long.
	cmd.WaitDelay = 5 * time.Second
	cmd.ExtraFiles = files
	stdout := &capped{max: maxOutput}
	stderr := &tail{max: maxStderr}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := cmd.Run()
	if err == nil && stdout.over {
		err = fmt.Errorf("printed more than %d bytes", maxOutput)
	}
	if err != nil {
		if ce := ctx.Err(); ce != nil {
			if errors.Is(ce, context.DeadlineExceeded) {
				err = fmt.Errorf("no result within its deadline (timeout %s): %w", q.timeout(), ce)
			} else {
				err = fmt.Errorf("cancelled: %w", ce)
			}
		}
		return nil, &RunError{Args: args, Stderr: strings.TrimSpace(stderr.String()), Err: err}
	}
	return stdout.buf.Bytes(), nil
}

// capped keeps the first max bytes written to it and notes any excess.
type capped struct {
	buf  bytes.Buffer
	max  int
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); room < len(p) {
		c.over = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return c.buf.Write(p)
}

// tail keeps the last max bytes written to it.
type tail struct {
	b   []byte
	max int
	cut bool
}

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
		t.cut = true
	}
	return len(p), nil
}

func (t *tail) String() string {
	if t.cut {
		return "..." + string(t.b)
	}
	return string(t.b)
}

// Info is what "qemu-img info" reports about one image (not its chain).
type Info struct {
	Filename    string
	Format      string
	VirtualSize uint64
	ActualSize  uint64
	// BackingFile is the backing file name as recorded in the image;
	// FullBackingFile is it resolved against the image's directory.
	BackingFile     string
	FullBackingFile string
	BackingFormat   string
	// DataFile is a qcow2 image's external data file.
	DataFile  string
	Encrypted bool
	Dirty     bool
	Corrupt   bool
}

// Info runs "qemu-img info --output=json" on path, which must be absolute
// (so that qemu-img never reads it as a protocol such as "nbd:"), and
// parses its output. It does not open the image's backing file.
func (q QemuImg) Info(ctx context.Context, path string) (*Info, error) {
	if err := checkPath("image", path); err != nil {
		return nil, err
	}
	args := []string{"info", "--output=json", path}
	out, err := q.run(ctx, args...)
	if err != nil {
		return nil, err
	}
	info, err := parseInfo(out)
	if err != nil {
		return nil, &RunError{Args: args, Err: err}
	}
	return info, nil
}

// infoOf is Info of the image f has open, which qemu-img reads as
// /dev/fd/3.
func (q QemuImg) infoOf(ctx context.Context, f *os.File) (*Info, error) {
	args := []string{"info", "--output=json", "/dev/fd/3"}
	out, err := q.runWith(ctx, []*os.File{f}, args...)
	if err != nil {
		return nil, err
	}
	info, err := parseInfo(out)
	if err != nil {
		return nil, &RunError{Args: args, Err: err}
	}
	return info, nil
}

// infoJSON is the part of qemu-img's JSON that Info reads.
type infoJSON struct {
	Filename        string  `json:"filename"`
	Format          *string `json:"format"`
	VirtualSize     *uint64 `json:"virtual-size"`
	ActualSize      uint64  `json:"actual-size"`
	BackingFilename string  `json:"backing-filename"`
	FullBacking     string  `json:"full-backing-filename"`
	BackingFormat   string  `json:"backing-filename-format"`
	Encrypted       bool    `json:"encrypted"`
	Dirty           bool    `json:"dirty-flag"`
	FormatSpecific  *struct {
		Type string `json:"type"`
		Data struct {
			DataFile string `json:"data-file"`
			Corrupt  bool   `json:"corrupt"`
		} `json:"data"`
	} `json:"format-specific"`
}

// parseInfo reads the JSON object qemu-img info prints, refusing anything
// else: another JSON value, trailing data, a missing format or size.
func parseInfo(out []byte) (*Info, error) {
	dec := json.NewDecoder(bytes.NewReader(out))
	var j infoJSON
	if err := dec.Decode(&j); err != nil {
		return nil, fmt.Errorf("reading its JSON output: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("reading its JSON output: more than one JSON value")
	}
	if j.Format == nil || *j.Format == "" {
		return nil, errors.New("its JSON output has no format")
	}
	if !printable(*j.Format) || len(*j.Format) > 32 {
		return nil, fmt.Errorf("its JSON output has an invalid format %q", *j.Format)
	}
	if j.VirtualSize == nil {
		return nil, errors.New("its JSON output has no virtual-size")
	}
	info := &Info{
		Filename:        j.Filename,
		Format:          *j.Format,
		VirtualSize:     *j.VirtualSize,
		ActualSize:      j.ActualSize,
		BackingFile:     j.BackingFilename,
		FullBackingFile: j.FullBacking,
		BackingFormat:   j.BackingFormat,
		Encrypted:       j.Encrypted,
		Dirty:           j.Dirty,
	}
	if fs := j.FormatSpecific; fs != nil {
		info.DataFile = fs.Data.DataFile
		info.Corrupt = fs.Data.Corrupt
	}
	return info, nil
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
