package main_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmsup/vmsup/tests/testkit"
)

// TestCLILifecycle drives one VM through every command of the CLI binary,
// checking the --json output at each step.
func TestCLILifecycle(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	spec := writeSpec(t, d.dir, "vm1")

	if out := d.ok(t, "define", spec); out != "vm1\n" {
		t.Fatalf("define printed %q, want the name", out)
	}
	var def struct {
		Name, UUID string
		Created    bool
	}
	d.okJSON(t, &def, "define", spec)
	if def.Name != "vm1" || def.UUID == "" || def.Created {
		t.Fatalf("define --json again: %+v", def)
	}
	in := d.info(t, "vm1")
	expectInfo(t, in, "shutoff", "unknown")
	if in.UUID != def.UUID || in.Job != nil || in.Queued != 0 || in.Restarts != 0 {
		t.Fatalf("info: %+v", in)
	}

	var started info
	d.okJSON(t, &started, "start", "vm1")
	expectInfo(t, started, "running", "booted")
	if !processAlive(started.PID) {
		t.Fatalf("pid %d of the started VM is not alive", started.PID)
	}
	if !strings.Contains(cmdline(started.PID), def.UUID) {
		t.Fatalf("pid %d is not vm1's QEMU: %s", started.PID, cmdline(started.PID))
	}

	// list: the table and the JSON array.
	table := d.ok(t, "list")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 2 || !regexp.MustCompile(`^NAME\s+STATE\s+REASON\s+PID\s+JOB$`).MatchString(lines[0]) ||
		!regexp.MustCompile(`^vm1\s+running\s+booted\s+`+strconv.Itoa(started.PID)+`\s+-$`).MatchString(lines[1]) {
		t.Fatalf("list table:\n%s", table)
	}
	var list []info
	d.okJSON(t, &list, "list")
	if len(list) != 1 || list[0].Name != "vm1" || list[0].PID != started.PID || list[0].State != "running" {
		t.Fatalf("list --json: %+v", list)
	}

	// The info object has exactly the documented fields.
	raw := d.ok(t, "--json", "info", "vm1")
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &fields); err != nil {
		t.Fatal(err)
	}
	var names []string
	for k := range fields {
		names = append(names, k)
	}
	slices.Sort(names)
	want := "control,job,name,pid,queued,reason,restarts,state,uuid"
	if os.Geteuid() == 0 {
		// A root daemon runs QEMU confined, and says how.
		want = "confinement," + want
	}
	if strings.Join(names, ",") != want || string(fields["job"]) != "null" {
		t.Fatalf("info object %s: want %s, job null", raw, want)
	}
	var control map[string]any
	if err := json.Unmarshal(fields["control"], &control); err != nil || len(control) != 4 ||
		control["state"] != "ok" || control["since"] != nil || control["ms"] != 0.0 || control["reason"] != "" {
		t.Fatalf("control of an idle VM: %s, want {state: ok, since: null, ms: 0, reason: \"\"}", fields["control"])
	}
	if text := d.ok(t, "info", "vm1"); !strings.Contains(text, "State:") || !strings.Contains(text, "running") {
		t.Fatalf("info text:\n%s", text)
	}

	var paused info
	d.okJSON(t, &paused, "pause", "vm1")
	expectInfo(t, paused, "paused", "user")
	var status struct{ Status string }
	d.okJSON(t, &status, "qmp", "vm1", `{"execute":"query-status"}`)
	if status.Status != "paused" {
		t.Fatalf("query-status while paused: %+v", status)
	}
	var resumed info
	d.okJSON(t, &resumed, "resume", "vm1")
	expectInfo(t, resumed, "running", "unpaused")
	if out := d.ok(t, "qmp", "vm1", `{"execute":"query-status"}`); !strings.Contains(out, `"status": "running"`) {
		t.Fatalf("qmp output %q", out)
	}
	d.okJSON(t, &in, "reset", "vm1")
	expectInfo(t, in, "running", "unpaused")

	var jobs struct {
		Domain string
		Active *jobInfo
		Queued []json.RawMessage
	}
	d.okJSON(t, &jobs, "jobs", "vm1")
	if jobs.Domain != "vm1" || jobs.Active != nil || len(jobs.Queued) != 0 {
		t.Fatalf("jobs --json vm1: %+v", jobs)
	}
	var allJobs []json.RawMessage
	d.okJSON(t, &allJobs, "jobs")
	if len(allJobs) != 1 {
		t.Fatalf("jobs --json: %d entries", len(allJobs))
	}
	if out := d.ok(t, "jobs"); out != "vm1: idle\n" {
		t.Fatalf("jobs text %q", out)
	}

	// Undefine of a running VM is refused; the daemon stays up.
	d.fails(t, 1, []string{"vm1", "destroy"}, "undefine", "vm1")

	var destroyed info
	d.okJSON(t, &destroyed, "destroy", "vm1")
	expectInfo(t, destroyed, "shutoff", "destroyed")
	if processAlive(started.PID) {
		t.Fatalf("QEMU %d alive after destroy", started.PID)
	}
	var undef struct{ Name string }
	d.okJSON(t, &undef, "undefine", "vm1")
	if undef.Name != "vm1" {
		t.Fatalf("undefine --json: %+v", undef)
	}
	d.fails(t, 1, []string{`"vm1" not found`}, "info", "vm1")
	d.okJSON(t, &list, "list")
	if len(list) != 0 {
		t.Fatalf("list after undefine: %+v", list)
	}
}

// TestCLIExitCodes: 0 ok, 1 error (one line on stderr), 2 usage.
func TestCLIExitCodes(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	spec := writeSpec(t, d.dir, "codes")
	d.ok(t, "define", spec)
	d.ok(t, "start", "codes")

	d.fails(t, 1, []string{`domain "nosuch" not found`}, "info", "nosuch")
	d.fails(t, 1, []string{"not found"}, "start", "nosuch")
	d.fails(t, 1, []string{"CommandNotFound", "no-such-command"}, "qmp", "codes", `{"execute":"query-no-such-command"}`)
	d.fails(t, 1, []string{"GenericError", "bogus"}, "qmp", "codes", `{"execute":"query-status","arguments":{"bogus":1}}`)
	d.fails(t, 1, []string{"invalid domain name"}, "info", "../x")
	d.fails(t, 1, []string{"already"}, "start", "codes")

	d.fails(t, 2, []string{"unknown flag"}, "list", "--bogus")
	d.fails(t, 2, []string{"unknown command"}, "bogus")
	d.fails(t, 2, []string{"takes one VM NAME"}, "start")
	d.fails(t, 2, []string{"takes one VM NAME"}, "info", "a", "b")
	d.fails(t, 2, []string{"timeout"}, "shutdown", "codes", "--timeout", "banana")
	d.fails(t, 2, []string{"not JSON"}, "qmp", "codes", "query-status")
	d.fails(t, 2, []string{"log-format"}, "daemon", "--log-format", "xml")
	if r := d.vmsup(t); r.code != 2 {
		t.Fatalf("vmsup without a command: %s", r)
	}
	if r := d.vmsup(t, "--help"); r.code != 0 || !strings.Contains(r.stdout, "daemon") {
		t.Fatalf("vmsup --help: %s", r)
	}
	if r := d.vmsup(t, "completion", "bash"); r.code != 0 || !strings.Contains(r.stdout, "bash completion") {
		t.Fatalf("vmsup completion bash: exit %d", r.code)
	}

	// No daemon on the socket.
	r := runVmsup(t, nil, nil, "--socket", filepath.Join(d.dir, "nothing.sock"), "list")
	checkFailure(t, r, 1, []string{"cannot reach the vmsup daemon", "nothing.sock"}, []string{"list"})

	// -v prints the daemon's request id of each call.
	r = d.vmsup(t, "-v", "info", "codes")
	if r.code != 0 || !regexp.MustCompile(`request [0-9a-f]{6}-\d+: GET /v1/domains/codes → 200`).MatchString(r.stderr) {
		t.Fatalf("-v info: %s", r)
	}
	r = d.vmsup(t, "-v", "info", "nosuch")
	if r.code != 1 || !regexp.MustCompile(`GET /v1/domains/nosuch → 404`).MatchString(r.stderr) {
		t.Fatalf("-v info nosuch: %s", r)
	}
}

// TestCLIShutdownTimeout: a guest that ignores ACPI (-machine none) makes
// `shutdown --timeout 2s` fail with a clear message and leaves it running;
// with --force it ends shutoff/destroyed.
func TestCLIShutdownTimeout(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	d.ok(t, "define", writeSpec(t, d.dir, "deaf"))
	d.ok(t, "start", "deaf")
	began := time.Now()
	d.fails(t, 1, []string{"did not power off within 2s", "--force"}, "shutdown", "deaf", "--timeout", "2s")
	if took := time.Since(began); took < 2*time.Second || took > 15*time.Second {
		t.Errorf("shutdown --timeout 2s took %s", took)
	}
	expectInfo(t, d.info(t, "deaf"), "running", "booted")

	var in info
	d.okJSON(t, &in, "shutdown", "deaf", "--timeout", "2s", "--force")
	expectInfo(t, in, "shutoff", "destroyed")
	expectInfo(t, d.info(t, "deaf"), "shutoff", "destroyed")
}

// TestCLIBadInput: bad specs, bad names, unknown VMs and undefine of a
// running VM get clear errors, and the daemon keeps answering.
func TestCLIBadInput(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	write := func(name, content string) string {
		p := filepath.Join(d.dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name, spec string
		want       []string
	}{
		{"malformed.yaml", "name: [unclosed\n", []string{"not valid YAML or JSON"}},
		{"garbage.yaml", "\x00\x01\x02", []string{"spec"}},
		{"unknown.yaml", "name: x\nmachine: none\nbogus: 1\n", []string{"bogus"}},
		{"traversal.yaml", "name: ../x\nmachine: none\n", []string{"name"}},
		{"fields.yaml", "name: ok\nmemory: lots\ncpus: 0\n", []string{"spec rejected", "memory", "cpus"}},
		{"oversize.yaml", "name: x\n# " + strings.Repeat("a", 1<<20) + "\n", []string{"larger than 1 MiB"}},
		{"empty.yaml", "", []string{"empty"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d.fails(t, 1, c.want, "define", write(c.name, c.spec))
			d.ok(t, "list")
		})
	}
	d.fails(t, 1, []string{"read spec"}, "define", filepath.Join(d.dir, "missing.yaml"))
	d.fails(t, 1, []string{"not found"}, "destroy", "ghost")
	d.fails(t, 1, []string{"not found"}, "undefine", "ghost")
	d.ok(t, "define", writeSpec(t, d.dir, "busy"))
	d.ok(t, "start", "busy")
	d.fails(t, 1, []string{"busy", "running"}, "undefine", "busy")
	d.fails(t, 1, []string{"not paused"}, "resume", "busy")
	expectInfo(t, d.info(t, "busy"), "running", "booted")
}

// TestDaemonBadRequests: raw requests to the daemon binary (garbage,
// oversize, unknown fields, traversal names) get 4xx JSON errors, and the
// daemon answers afterwards.
func TestDaemonBadRequests(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	c := d.httpClient()
	send := func(method, path string, body []byte) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://vmsup/", bytes.NewReader(body))
		req.URL.Opaque = "//vmsup" + path
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		var m map[string]any
		data, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("%s %s: %s: body %q is not JSON", method, path, resp.Status, data)
		}
		return resp.StatusCode, m
	}
	for _, c := range []struct {
		method, path string
		body         []byte
		status       int
	}{
		{"POST", "/v1/domains", []byte("{{{{ not json \x00"), 400},
		{"POST", "/v1/domains", bytes.Repeat([]byte("x"), 1<<20+10), 413},
		{"POST", "/v1/domains", []byte(`{"name":"x","machine":"none","bogus":true}`), 400},
		{"GET", "/v1/domains/%2e%2e", nil, 400},
		{"GET", "/v1/domains/..%2F..%2Fetc", nil, 400},
		{"POST", "/v1/domains/x/qmp", []byte("not json"), 400},
		{"GET", "/v1/domains/ghost", nil, 404},
	} {
		status, body := send(c.method, c.path, c.body)
		if status != c.status || body["error"] == "" || body["error"] == nil {
			t.Errorf("%s %s: %d %v, want %d with an error", c.method, c.path, status, body, c.status)
		}
		if err := d.ping(); err != nil {
			t.Fatalf("daemon stopped answering after %s %s: %v", c.method, c.path, err)
		}
	}
}

// TestCLIEvents: `events NAME --json` streams NDJSON lines for a start and
// a destroy; text mode prints one line per event.
func TestCLIEvents(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	d.ok(t, "define", writeSpec(t, d.dir, "ev"))

	stream := func(args ...string) (*testkit.SyncBuffer, *testkit.SyncBuffer, *exec.Cmd) {
		out, errb := &testkit.SyncBuffer{}, &testkit.SyncBuffer{}
		cmd := exec.Command(vmsupBin, append([]string{"-v"}, args...)...)
		cmd.Env = append(cliEnv(), "VMSUP_SOCKET="+d.socket)
		cmd.Stdout, cmd.Stderr = out, errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		// -v prints the request line once the daemon has subscribed.
		errb.WaitContains(t, "GET /v1/events", 10*time.Second)
		return out, errb, cmd
	}
	jsonOut, _, jsonCmd := stream("events", "ev", "--json")
	textOut, _, textCmd := stream("events")

	d.ok(t, "start", "ev")
	d.ok(t, "destroy", "ev")
	jsonOut.WaitContains(t, `"type":"stopped"`, 10*time.Second)
	textOut.WaitContains(t, " ev stopped shutoff/destroyed", 10*time.Second)

	var types []string
	sc := bufio.NewScanner(strings.NewReader(jsonOut.String()))
	for sc.Scan() {
		var ev struct {
			Seq                         uint64
			Type, Domain, State, Reason string
			Time                        time.Time
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("line %q is not JSON: %v", sc.Text(), err)
		}
		if ev.Domain != "ev" || ev.Seq == 0 || ev.Time.IsZero() {
			t.Errorf("event %+v", ev)
		}
		types = append(types, ev.Type)
		if ev.Type == "started" && (ev.State != "running" || ev.Reason != "booted") {
			t.Errorf("started event %+v", ev)
		}
	}
	if strings.Join(types, ",") != "started,stopped" {
		t.Errorf("event types %v, want started, stopped", types)
	}
	if !regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\.\d{3} ev started running/booted`).MatchString(textOut.String()) {
		t.Errorf("text events:\n%s", textOut.String())
	}

	// SIGINT ends the stream with exit 0.
	for _, cmd := range []*exec.Cmd{jsonCmd, textCmd} {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("events after SIGINT: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("events did not end on SIGINT")
		}
	}
}

// TestDaemonSecondRefuses: a second daemon on the same state dir refuses
// to start and names the first one's pid; so does one on the same socket.
func TestDaemonSecondRefuses(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	pid := strconv.Itoa(d.cmd.Process.Pid)
	r := runVmsup(t, nil, nil, "daemon", "--state-dir", d.state, "--socket", filepath.Join(d.dir, "other.sock"))
	checkFailure(t, r, 1, []string{"in use by another vmsup daemon", "pid " + pid, d.state}, []string{"daemon"})

	other := testkit.ShortDir(t)
	r = runVmsup(t, nil, nil, "daemon", "--state-dir", other, "--socket", d.socket)
	checkFailure(t, r, 1, []string{"another vmsup daemon", "pid " + pid, "serving on " + d.socket}, []string{"daemon"})
	if err := d.ping(); err != nil {
		t.Fatalf("the first daemon stopped answering: %v", err)
	}
	if data, err := os.ReadFile(filepath.Join(d.state, "vmsup.lock")); err != nil || strings.TrimSpace(string(data)) != pid {
		t.Fatalf("lock file holds %q (%v), want pid %s", data, err, pid)
	}
}

// TestDaemonSocket: without group access the socket has mode 0600 in a
// directory of mode 0700; a stale socket is replaced; a file that is not a
// socket is refused.
func TestDaemonSocket(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	d.args = []string{"--admin-group", ""}
	d.start(t)
	st, err := os.Stat(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %s, want socket 0600", st.Mode())
	}
	dst, err := os.Stat(filepath.Dir(d.socket))
	if err != nil {
		t.Fatal(err)
	}
	if dst.Mode().Perm() != 0o700 {
		t.Errorf("socket dir mode %s, want 0700", dst.Mode().Perm())
	}
	if err := d.stop(t); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(d.socket); !os.IsNotExist(err) {
		t.Errorf("socket left after stop: %v", err)
	}

	// A stale socket (nobody listening) is removed.
	ln, err := net.Listen("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	d.start(t)
	d.ok(t, "list")
	if err := d.stop(t); err != nil {
		t.Fatal(err)
	}

	// A regular file is never replaced.
	if err := os.WriteFile(d.socket, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runVmsup(t, nil, nil, "daemon", "--state-dir", d.state, "--socket", d.socket)
	checkFailure(t, r, 1, []string{"not a socket"}, []string{"daemon"})
	if data, _ := os.ReadFile(d.socket); string(data) != "precious" {
		t.Fatal("the daemon replaced a regular file")
	}
}

// TestDaemonSIGTERMLeavesVMsRunning: SIGTERM stops the daemon with exit 0
// and its QEMU keeps running.
func TestDaemonSIGTERMLeavesVMsRunning(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	d.ok(t, "define", writeSpec(t, d.dir, "survivor"))
	var in info
	d.okJSON(t, &in, "start", "survivor")
	t.Cleanup(func() {
		if processAlive(in.PID) {
			killAndReap(t, in.PID)
		}
	})
	// An open event stream must not hold the daemon up.
	events := exec.Command(vmsupBin, "events")
	events.Env = append(cliEnv(), "VMSUP_SOCKET="+d.socket)
	if err := events.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = events.Process.Kill(); _ = events.Wait() }()

	began := time.Now()
	if err := d.stop(t); err != nil {
		t.Fatalf("daemon exit after SIGTERM: %v\n%s", err, d.stderr.String())
	}
	if took := time.Since(began); took > 8*time.Second {
		t.Errorf("SIGTERM took %s", took)
	}
	if !processAlive(in.PID) {
		t.Fatalf("QEMU %d died with the daemon", in.PID)
	}
	if !strings.Contains(cmdline(in.PID), in.UUID) {
		t.Fatalf("pid %d is not the VM's QEMU", in.PID)
	}
	if !strings.Contains(d.stderr.String(), "VMs keep running") {
		t.Errorf("daemon log does not say it leaves VMs running:\n%s", d.stderr.String())
	}
	// QEMU did not inherit the state dir's lock or the socket: a new daemon
	// starts on the same state dir and socket, and never starts a second
	// QEMU for the VM.
	d.start(t)
	var after info
	d.okJSON(t, &after, "info", "survivor")
	if after.PID != 0 && after.PID != in.PID {
		t.Fatalf("the new daemon shows pid %d, want %d or none", after.PID, in.PID)
	}
	for _, pid := range processesMentioning(d.dir) {
		if pid != in.PID && pid != d.cmd.Process.Pid {
			t.Errorf("unexpected process %d: %s", pid, cmdline(pid))
		}
	}
}

// TestCurl: curl --unix-socket works against the API.
func TestCurl(t *testing.T) {
	t.Parallel()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	d := startDaemon(t)
	d.ok(t, "define", writeSpec(t, d.dir, "curly"))
	out, err := exec.Command(curl, "-sS", "-i", "--unix-socket", d.socket, "http://localhost/v1/domains").CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, out)
	}
	head, body, _ := strings.Cut(strings.ReplaceAll(string(out), "\r\n", "\n"), "\n\n")
	if !strings.HasPrefix(head, "HTTP/1.1 200") || !strings.Contains(head, "X-Request-Id: ") || !strings.Contains(head, "application/json") {
		t.Fatalf("curl head:\n%s", head)
	}
	var infos []info
	if err := json.Unmarshal([]byte(body), &infos); err != nil || len(infos) != 1 || infos[0].Name != "curly" {
		t.Fatalf("curl body %q: %v", body, err)
	}
	out, err = exec.Command(curl, "-sS", "--unix-socket", d.socket, "-X", "POST", "--data-binary", "garbage{", "http://localhost/v1/domains").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"error"`) {
		t.Fatalf("curl bad define: %v %s", err, out)
	}
}

// TestResolveRelativeSpecPaths: define resolves relative kernel and initrd
// paths against the spec file's directory.
func TestResolveRelativeSpecPaths(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	sub := filepath.Join(d.dir, "specs")
	if err := os.MkdirAll(filepath.Join(d.dir, "img"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join(sub, "rel.yaml")
	os.WriteFile(spec, []byte("# comment\nname: rel\nkernel: ../img/vmlinuz\ninitrd: ../img/initrd.img\nappend: console=ttyS0\n"), 0o644)
	d.ok(t, "define", spec)
	data, err := os.ReadFile(filepath.Join(d.state, "domains", "rel.json"))
	if err != nil {
		t.Fatal(err)
	}
	var stored struct{ Kernel, Initrd string }
	if err := json.Unmarshal(data, &stored); err != nil {
		t.Fatal(err)
	}
	if stored.Kernel != filepath.Join(d.dir, "img", "vmlinuz") || stored.Initrd != filepath.Join(d.dir, "img", "initrd.img") {
		t.Fatalf("stored paths %+v", stored)
	}
	// From another working directory, through a relative spec path.
	cmd := exec.Command(vmsupBin, "define", "specs/rel.yaml")
	cmd.Dir = d.dir
	cmd.Env = append(cliEnv(), "VMSUP_SOCKET="+d.socket)
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != "rel\n" {
		t.Fatalf("define from another dir: %v %s", err, out)
	}
}

// A corrupt definition shows in list as broken with its reason; define
// replaces it only with --force.
func TestCLIBrokenDefinition(t *testing.T) {
	t.Parallel()
	d := newDaemon(t)
	if err := os.MkdirAll(filepath.Join(d.state, "domains"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.state, "domains", "vm1.json"), []byte("{truncated"), 0o600); err != nil {
		t.Fatal(err)
	}
	d.start(t)
	out := d.ok(t, "list")
	if !regexp.MustCompile(`vm1\s+broken\s+corrupt`).MatchString(out) {
		t.Fatalf("list does not show vm1 broken:\n%s", out)
	}
	if !strings.Contains(out, "vm1.json") || !strings.Contains(out, "define --force") {
		t.Errorf("list does not say why vm1 is broken and how to replace it:\n%s", out)
	}
	var infos []map[string]any
	d.okJSON(t, &infos, "list")
	if len(infos) == 0 {
		t.Fatal("list --json is empty")
	}
	if problem, _ := infos[0]["problem"].(string); len(infos) != 1 || infos[0]["state"] != "broken" || !strings.Contains(problem, "vm1.json") {
		t.Errorf("list --json: %v, want vm1 broken with its problem", infos)
	}
	spec := writeSpec(t, d.dir, "vm1")
	d.fails(t, 1, []string{"broken", "--force"}, "define", spec)
	if got := strings.TrimSpace(d.ok(t, "define", "--force", spec)); got != "vm1" {
		t.Fatalf("define --force printed %q", got)
	}
	if out := d.ok(t, "list"); !regexp.MustCompile(`vm1\s+shutoff`).MatchString(out) {
		t.Fatalf("list after define --force:\n%s", out)
	}
}
