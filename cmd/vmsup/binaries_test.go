package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/tests/testkit"
)

// TestCLIDoesNotLinkDaemon: the CLI's binary links neither the actors,
// the driver, the domain nor the monitor, nor what they bring (protoactor,
// OpenTelemetry, Prometheus, protobuf), so that a client command does not
// run their package init.
func TestCLIDoesNotLinkDaemon(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	// Packages and the trees under them; the actors' own packages are
	// forbidden exactly, since the trace records (actors/trace/record) are
	// the API's.
	forbidden := []string{
		"github.com/asynkron/protoactor-go", "go.opentelemetry.io", "github.com/prometheus", "google.golang.org/protobuf",
		"github.com/digitalocean/go-qemu", "github.com/vmsup/vmsup/actors/trace/render", "github.com/vmsup/vmsup/actors/trace/otelexport",
		"github.com/vmsup/vmsup/domain", "github.com/vmsup/vmsup/driver", "github.com/vmsup/vmsup/monitor",
		"github.com/vmsup/vmsup/supervision",
		"github.com/vmsup/vmsup/cmd/internal/server", "github.com/vmsup/vmsup/cmd/internal/daemon",
	}
	exact := []string{"github.com/vmsup/vmsup/actors", "github.com/vmsup/vmsup/actors/trace"}
	for _, pkg := range strings.Fields(string(out)) {
		bad := slices.Contains(exact, pkg)
		for _, f := range forbidden {
			bad = bad || pkg == f || strings.HasPrefix(pkg, f+"/")
		}
		if bad {
			t.Errorf("cmd/vmsup links %s", pkg)
		}
	}
}

// TestCLIRunsDaemonBinary: `vmsup daemon` becomes vmsupd (the same
// process, shown as "vmsup daemon"), with the flags given before
// "daemon" too; its help and bad flags come from vmsupd; without vmsupd
// next to vmsup or on PATH it fails with a message naming the binary.
func TestCLIRunsDaemonBinary(t *testing.T) {
	t.Parallel()
	testkit.RequireQEMU(t)
	dir := testkit.ShortDir(t)
	socket := filepath.Join(dir, "d.sock")
	args := []string{"--socket", socket, "daemon", "--state-dir", filepath.Join(dir, "state"), "--log-format", "json"}
	if os.Geteuid() == 0 {
		args = append(args, "--qemu-user", testkit.QEMUUserName())
		if err := os.Chmod(dir, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(vmsupBin, args...)
	cmd.Env = cliEnv()
	var stderr testkit.SyncBuffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	d := &daemon{socket: socket}
	deadline := time.Now().Add(15 * time.Second)
	for d.ping() != nil {
		select {
		case <-exited:
			t.Fatalf("vmsup daemon exited at start (%v):\n%s", waitErr, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("vmsup daemon did not answer on %s within 15s:\n%s", socket, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := d.httpClient().Get("http://vmsup/v1/ping")
	if err != nil {
		t.Fatal(err)
	}
	var ping struct {
		PID int `json:"pid"`
	}
	err = json.NewDecoder(resp.Body).Decode(&ping)
	resp.Body.Close()
	if err != nil || ping.PID != cmd.Process.Pid {
		t.Errorf("ping answers pid %d (%v), want the pid of vmsup daemon, %d", ping.PID, err, cmd.Process.Pid)
	}
	exe, _ := os.Readlink("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/exe")
	if filepath.Base(exe) != "vmsupd" || !strings.HasPrefix(cmdline(cmd.Process.Pid), "vmsup daemon --socket "+socket) {
		t.Errorf("the daemon runs %s as %q, want vmsupd as \"vmsup daemon --socket ...\"", exe, cmdline(cmd.Process.Pid))
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("vmsup daemon after SIGTERM: %v\n%s", waitErr, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("vmsup daemon did not stop within 15s of SIGTERM:\n%s", stderr.String())
	}

	r := runVmsup(t, nil, nil, "daemon", "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "vmsup daemon [flags]") || !strings.Contains(r.stdout, "--state-dir") {
		t.Errorf("vmsup daemon --help: %s", r)
	}
	r = runVmsup(t, nil, nil, "daemon", "--bogus")
	checkFailure(t, r, 2, []string{"unknown flag: --bogus"}, []string{"daemon", "--bogus"})
	for _, bin := range []string{vmsupBin, filepath.Join(filepath.Dir(vmsupBin), "vmsupd")} {
		out, err := exec.Command(bin, "--version").Output()
		if err != nil || !strings.Contains(string(out), " version ") {
			t.Errorf("%s --version: %q %v", bin, out, err)
		}
	}

	// vmsup alone, and no vmsupd on PATH.
	alone := filepath.Join(testkit.ShortDir(t), "vmsup")
	data, err := os.ReadFile(vmsupBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(alone, data, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lone := exec.CommandContext(ctx, alone, "daemon", "--state-dir", filepath.Join(dir, "never"))
	lone.Env = append(cliEnv(), "PATH="+filepath.Dir(alone))
	var out, errb bytes.Buffer
	lone.Stdout, lone.Stderr = &out, &errb
	err = lone.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("vmsup daemon without vmsupd: %v\nstderr: %s", err, errb.String())
	}
	for _, want := range []string{"vmsup: ", "vmsupd", filepath.Dir(alone), "make vmsup"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("vmsup daemon without vmsupd: stderr %q lacks %q", errb.String(), want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "never")); err == nil {
		t.Error("vmsup daemon without vmsupd created the state dir")
	}
}
