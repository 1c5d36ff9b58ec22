package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmsup/vmsup/tests/testkit"
)

// vmsupBin is the vmsup binary built once by TestMain, with vmsupd next
// to it.
var vmsupBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "vsbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// vmsup and, next to it, the daemon's binary that `vmsup daemon` runs.
	vmsupBin = filepath.Join(dir, "vmsup")
	args := []string{"build", "-o", dir + "/"}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".", "../vmsupd")...)
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build vmsup vmsupd: %v\n%s", err, out)
		return 1
	}
	// QEMU processes whose daemon exits (SIGTERM test) are re-parented to
	// this process, so the tests can reap them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "warning: PR_SET_CHILD_SUBREAPER: %v\n", err)
	}
	return m.Run()
}

// daemon is a `vmsup daemon` process on its own state dir and socket.
type daemon struct {
	dir, state, socket string
	args               []string // extra daemon flags
	cmd                *exec.Cmd
	stderr             *testkit.SyncBuffer
	exited             chan struct{}
	waitErr            error
}

// newDaemon prepares a daemon in a fresh short dir; the socket sits in a
// directory that the daemon creates.
func newDaemon(t *testing.T) *daemon {
	t.Helper()
	testkit.RequireQEMU(t)
	dir := testkit.ShortDir(t)
	return &daemon{dir: dir, state: filepath.Join(dir, "state"), socket: filepath.Join(dir, "sock", "vmsup.sock")}
}

// startDaemon starts a daemon and waits until it answers. Cleanup destroys
// its running VMs, stops it, and kills any QEMU left under its dir.
func startDaemon(t *testing.T) *daemon {
	t.Helper()
	d := newDaemon(t)
	d.start(t)
	return d
}

func (d *daemon) start(t *testing.T) {
	t.Helper()
	d.stderr = &testkit.SyncBuffer{}
	d.exited = make(chan struct{})
	args := []string{"daemon", "--state-dir", d.state, "--socket", d.socket, "--log-format", "json", "--log-level", "debug", "--image-root", d.dir}
	if os.Geteuid() == 0 {
		// A root daemon runs QEMU as the unprivileged user, which must
		// reach its files under the test's dir.
		args = append(args, "--qemu-user", testkit.QEMUUserName())
		if err := os.Chmod(d.dir, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if root, err := testkit.RepoRoot(); err == nil {
		args = append(args, "--image-root", filepath.Join(root, ".cache"))
	}
	d.cmd = exec.Command(vmsupBin, append(args, d.args...)...)
	d.cmd.Env = cliEnv()
	d.cmd.Stderr = d.stderr
	d.cmd.Stdout = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.waitErr = d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() { d.cleanup(t) })
	deadline := time.Now().Add(15 * time.Second)
	for {
		if d.ping() == nil {
			return
		}
		select {
		case <-d.exited:
			t.Fatalf("daemon exited at start (%v):\n%s", d.waitErr, d.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not answer within 15s:\n%s", d.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) httpClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", d.socket)
	}}}
}

func (d *daemon) ping() error {
	c := d.httpClient()
	c.Timeout = time.Second
	resp, err := c.Get("http://vmsup/v1/ping")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("ping: %s", resp.Status)
	}
	return nil
}

// stop sends SIGTERM and waits for the daemon to exit.
func (d *daemon) stop(t *testing.T) error {
	t.Helper()
	select {
	case <-d.exited:
		return d.waitErr
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return d.waitErr
	case <-time.After(15 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
		return fmt.Errorf("daemon did not stop within 15s of SIGTERM; killed")
	}
}

func (d *daemon) running() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

func (d *daemon) cleanup(t *testing.T) {
	if d.running() {
		// Destroy what still runs, through the API.
		c := d.httpClient()
		var infos []struct {
			Name string
			PID  int
		}
		if resp, err := c.Get("http://vmsup/v1/domains"); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&infos)
			resp.Body.Close()
		}
		for _, in := range infos {
			if in.PID != 0 {
				_ = syscall.Kill(in.PID, syscall.SIGCONT)
				resp, err := c.Post("http://vmsup/v1/domains/"+in.Name+"/destroy", "", nil)
				if err == nil {
					resp.Body.Close()
				}
			}
		}
		if err := d.stop(t); err != nil {
			t.Errorf("stop daemon: %v\n%s", err, d.stderr.String())
		}
	}
	if strings.Contains(d.stderr.String(), "DATA RACE") {
		t.Errorf("the daemon reported a data race:\n%s", d.stderr.String())
	}
	killStrays(t, d.dir)
}

// killStrays kills and reaps every process whose command line names dir
// (the QEMUs of a daemon whose state dir is under dir).
func killStrays(t *testing.T, dir string) {
	for _, pid := range processesMentioning(dir) {
		t.Logf("killing leftover process %d (%s)", pid, cmdline(pid))
		killAndReap(t, pid)
	}
}

func processesMentioning(s string) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if strings.Contains(cmdline(pid), s+"/") && processAlive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

func cmdline(pid int) string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.ReplaceAll(string(data), "\x00", " ")
}

// killAndReap SIGKILLs pid and waits until it is gone: reaped by us when it
// is our child (we are a subreaper), or by its parent.
func killAndReap(t *testing.T, pid int) {
	_ = syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var ws unix.WaitStatus
		wpid, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if wpid == pid || errors.Is(err, unix.ECHILD) && !processExists(pid) {
			return
		}
		if errors.Is(err, unix.ECHILD) && !processAlive(pid) {
			return // a zombie of another parent
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("process %d still there 10s after SIGKILL", pid)
}

func processExists(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(data, ')')
	return i >= 0 && i+2 < len(data) && data[i+2] != 'Z'
}

// result is what one vmsup command did.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
}

// vmsup runs the CLI against the daemon's socket (through VMSUP_SOCKET).
func (d *daemon) vmsup(t *testing.T, args ...string) result {
	t.Helper()
	return runVmsup(t, []string{"VMSUP_SOCKET=" + d.socket}, nil, args...)
}

func runVmsup(t *testing.T, env []string, stdin io.Reader, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, vmsupBin, args...)
	cmd.Env = append(cliEnv(), env...)
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("vmsup %v: %v", args, err)
	}
	if strings.Contains(r.stderr, "DATA RACE") {
		t.Errorf("vmsup %v reported a data race:\n%s", args, r.stderr)
	}
	return r
}

// cliEnv is the environment of the daemon and CLI commands: a race-enabled
// binary sleeps 1s at exit by default, which would make every command slow.
func cliEnv() []string {
	return append(os.Environ(), "GORACE=atexit_sleep_ms=10")
}

// ok runs a command that must succeed and returns its stdout.
func (d *daemon) ok(t *testing.T, args ...string) string {
	t.Helper()
	r := d.vmsup(t, args...)
	if r.code != 0 {
		t.Fatalf("vmsup %s: %s", strings.Join(args, " "), r)
	}
	return r.stdout
}

// okJSON runs a command with --json and decodes its output.
func (d *daemon) okJSON(t *testing.T, out any, args ...string) {
	t.Helper()
	stdout := d.ok(t, append([]string{"--json"}, args...)...)
	if err := json.Unmarshal([]byte(stdout), out); err != nil {
		t.Fatalf("vmsup --json %s: bad JSON %q: %v", strings.Join(args, " "), stdout, err)
	}
}

// fails runs a command that must fail with code, with a one-line error on
// stderr that contains every one of want.
func (d *daemon) fails(t *testing.T, code int, want []string, args ...string) result {
	t.Helper()
	r := d.vmsup(t, args...)
	checkFailure(t, r, code, want, args)
	return r
}

func checkFailure(t *testing.T, r result, code int, want []string, args []string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("vmsup %s: %s\nwant exit %d", strings.Join(args, " "), r, code)
	}
	line := strings.TrimRight(r.stderr, "\n")
	if code == 1 && strings.Contains(line, "\n") {
		t.Errorf("vmsup %s: error is not one line: %q", strings.Join(args, " "), r.stderr)
	}
	if !strings.HasPrefix(line, "vmsup: ") && !strings.Contains(line, "\nvmsup: ") {
		t.Errorf("vmsup %s: stderr %q does not start with \"vmsup: \"", strings.Join(args, " "), r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("vmsup %s: stderr %q does not contain %q", strings.Join(args, " "), r.stderr, w)
		}
	}
}

// info is the info object as the CLI prints it.
type info struct {
	Name     string   `json:"name"`
	UUID     string   `json:"uuid"`
	State    string   `json:"state"`
	Reason   string   `json:"reason"`
	PID      int      `json:"pid"`
	Job      *jobInfo `json:"job"`
	Queued   int      `json:"queued"`
	Restarts int      `json:"restarts"`
	Control  *struct {
		State  string     `json:"state"`
		Since  *time.Time `json:"since"`
		Millis int64      `json:"ms"`
		Reason string     `json:"reason"`
	} `json:"control"`
	Tainted []string `json:"tainted"`
}

type jobInfo struct {
	ID      uint64    `json:"id"`
	Kind    string    `json:"kind"`
	Owner   string    `json:"owner"`
	Started time.Time `json:"started"`
	QMP     *struct {
		Command string    `json:"command"`
		Since   time.Time `json:"since"`
	} `json:"qmp"`
	Trace string `json:"trace"`
}

func (d *daemon) info(t *testing.T, name string) info {
	t.Helper()
	var in info
	d.okJSON(t, &in, "info", name)
	return in
}

func expectInfo(t *testing.T, in info, state, reason string) {
	t.Helper()
	if in.State != state || in.Reason != reason {
		t.Fatalf("%s: %s/%s, want %s/%s", in.Name, in.State, in.Reason, state, reason)
	}
	if (in.PID != 0) != (state == "running" || state == "paused") {
		t.Fatalf("%s: %s/%s with pid %d", in.Name, in.State, in.Reason, in.PID)
	}
}

// writeSpec writes a "-machine none" spec (a QEMU with a monitor and no
// guest: fast, and deaf to ACPI) and returns its path.
func writeSpec(t *testing.T, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name+".yaml")
	spec := fmt.Sprintf("name: %s\nmachine: none\naccel: tcg\nmemory: 64M\n", name)
	if err := os.WriteFile(path, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
