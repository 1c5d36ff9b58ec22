package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// daemonClient talks HTTP/JSON to vmsup's daemon over its unix socket.
type daemonClient struct {
	c *http.Client
}

func newDaemonClient(socket string) *daemonClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConnsPerHost: 4,
	}
	return &daemonClient{c: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

// do sends a request and decodes a 2xx JSON reply into out (when not nil).
func (d *daemonClient) do(method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://vmsup"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := d.c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

type daemonInfo struct {
	Name  string `json:"name"`
	State string `json:"state"`
	PID   int    `json:"pid"`
	Job   *struct {
		QMP *struct {
			Command string `json:"command"`
		} `json:"qmp"`
	} `json:"job"`
}

// buildVmsup builds cmd/vmsup and cmd/vmsupd (which `vmsup daemon` runs)
// into dir and returns the path of vmsup.
func buildVmsup(o Options, dir string) (string, error) {
	if o.VmsupBinary != "" {
		return o.VmsupBinary, nil
	}
	if _, err := os.Stat(filepath.Join(o.ModuleDir, "cmd", "vmsupd")); err != nil {
		return "", fmt.Errorf("cmd/vmsupd is not there yet")
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/vmsup", "./cmd/vmsupd")
	cmd.Dir = o.ModuleDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("cmd/vmsup and cmd/vmsupd do not build: %v: %s", err, oneLine(string(out)))
	}
	return filepath.Join(dir, "vmsup"), nil
}

// InfoDaemon measures Info over the daemon's unix socket (the real
// cmd/vmsup binary, running real QEMU), against GET /v1/ping on the same
// socket (the HTTP floor: same server, no actor). Then it SIGSTOPs one
// VM's QEMU, sends it a QMP command that hangs, and measures Info on that
// VM against Info on an idle one, in turn.
func InfoDaemon(ctx context.Context, o Options) (*Section, error) {
	const key = "daemon"
	sec := &Section{Key: key}
	dir, err := shortDir("vbd")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// vmsup daemon run as root hands QEMU to its unprivileged user, which
	// must be able to pass through the run's directory to its state.
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	bin, err := buildVmsup(o, dir)
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(dir, "vmsup.sock")
	logf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	daemon := exec.Command(bin, "--socket", socket, "daemon", "--state-dir", filepath.Join(dir, "state"), "--log-format", "json", "--log-level", "warn")
	daemon.Stdout, daemon.Stderr = logf, logf
	if err := daemon.Start(); err != nil {
		return nil, err
	}
	// exited is closed once the daemon is reaped; waitErr is Wait's error
	// then. A closed channel lets both the start-up loop and the cleanup
	// see the exit (a buffered value would reach only one of them).
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = daemon.Wait(); close(exited) }()
	cl := newDaemonClient(socket)
	var pids []int
	defer func() {
		for _, name := range []string{"a", "b"} {
			_ = cl.do("POST", "/v1/domains/"+name+"/destroy", nil, nil)
		}
		_ = daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = daemon.Process.Kill()
			<-exited
		}
		for _, pid := range pids {
			if isQEMU(pid) {
				_ = syscall.Kill(pid, syscall.SIGCONT)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}()
	for t0 := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if err := cl.do("GET", "/v1/ping", nil, nil); err == nil {
			break
		} else if time.Since(t0) > 15*time.Second {
			log, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("daemon did not answer: %v; log: %s", err, oneLine(string(log)))
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("daemon exited: %v; log: %s", waitErr, oneLine(string(log)))
		default:
		}
	}
	for _, name := range []string{"a", "b"} {
		spec := map[string]any{"name": name, "machine": "none", "memory": "64M"}
		if err := cl.do("POST", "/v1/domains", spec, nil); err != nil {
			return nil, err
		}
		var in daemonInfo
		if err := cl.do("POST", "/v1/domains/"+name+"/start", nil, &in); err != nil {
			return nil, err
		}
		if in.State != "running" || in.PID == 0 {
			return nil, fmt.Errorf("domain %s: state %s pid %d after start", name, in.State, in.PID)
		}
		pids = append(pids, in.PID)
		NotePID(in.PID)
	}
	type side struct {
		name string
		path string
		s    Samples
	}
	measure := func(sides []*side, window time.Duration, max int) error {
		end := time.Now().Add(window)
		for n := 0; n < max && time.Now().Before(end); n++ {
			for _, s := range sides {
				t := time.Now()
				if err := cl.do("GET", s.path, nil, nil); err != nil {
					return fmt.Errorf("%s: %w", s.name, err)
				}
				s.s.Add(time.Since(t))
			}
		}
		return nil
	}
	ping, info := &side{name: "ping", path: "/v1/ping"}, &side{name: "info", path: "/v1/domains/a"}
	if err := measure([]*side{ping, info}, 2*time.Second, 300); err != nil { // warm up
		return nil, err
	}
	ping.s, info.s = Samples{}, Samples{}
	o.logf("daemon: GET /v1/ping and GET /v1/domains/a in turn")
	if err := measure([]*side{ping, info}, 6*time.Second, 5000); err != nil {
		return nil, err
	}

	list, err := measureList(ctx, o, bin, socket)
	if err != nil {
		return nil, err
	}

	// Job stuck in QMP: QEMU of b stopped, a query-status job waits for its
	// 5 s deadline.
	if err := syscall.Kill(pids[1], syscall.SIGSTOP); err != nil {
		return nil, err
	}
	stuckDone := make(chan error, 1)
	go func() {
		stuckDone <- cl.do("POST", "/v1/domains/b/qmp", map[string]any{"execute": "query-status"}, nil)
	}()
	inQMP := func() (bool, error) {
		var in daemonInfo
		if err := cl.do("GET", "/v1/domains/b", nil, &in); err != nil {
			return false, err
		}
		return in.Job != nil && in.Job.QMP != nil, nil
	}
	for t0 := time.Now(); ; time.Sleep(time.Millisecond) {
		ok, err := inQMP()
		if err != nil {
			return nil, err
		}
		if ok {
			break
		}
		if time.Since(t0) > 2*time.Second {
			return nil, fmt.Errorf("the stuck job never reached QMP")
		}
	}
	idle, stuck := &side{name: "idle", path: "/v1/domains/a"}, &side{name: "stuck", path: "/v1/domains/b"}
	o.logf("daemon: Info on an idle VM and on a VM whose job is stuck in QMP, in turn, for 3.5 s")
	if err := measure([]*side{idle, stuck}, 3500*time.Millisecond, 1<<30); err != nil {
		return nil, err
	}
	still, err := inQMP()
	if err != nil {
		return nil, err
	}
	_ = syscall.Kill(pids[1], syscall.SIGCONT)
	stuckErr := <-stuckDone
	if !still {
		return nil, fmt.Errorf("the stuck job left QMP before the window ended")
	}
	noChange := RatioAtMost(1.20)
	noChange.Text = "no change (≤ 1.20×)"
	sec.Rows = []Row{
		{Measure: "Info over the daemon socket, p50", V: Secs(info.s.P50()), C: Secs(ping.s.P50()), Fmt: DurFmt, Against: "GET /v1/ping"},
		{Measure: "Info over the daemon socket, p99", V: Secs(info.s.P99()), C: Secs(ping.s.P99()), Fmt: DurFmt, Against: "GET /v1/ping"},
		{Measure: "Info over the socket, job stuck in QMP, p50", V: Secs(stuck.s.P50()), C: Secs(idle.s.P50()), Fmt: DurFmt, Against: "idle VM", Goal: noChange},
		{Measure: "Info over the socket, job stuck in QMP, p99", V: Secs(stuck.s.P99()), C: Secs(idle.s.P99()), Fmt: DurFmt, Against: "idle VM", Goal: noChange},
	}
	sec.Rows = append(sec.Rows, list.rows()...)
	sec.Notes = append(sec.Notes,
		fmt.Sprintf("Method: the real `cmd/vmsup` binary (`vmsup daemon`), built by the run, with two `-machine none` QEMUs; one HTTP client over the unix socket with keep-alive. "+
			"`GET /v1/ping` is the same server and socket without the driver: the HTTP floor. %d calls each, in turn. "+
			"The daemon runs as `vmsup daemon` starts it, with its actor-trace recorder on; the in-process rows use the library's default (no trace). "+
			"Then QEMU of `b` is SIGSTOPped and `POST /v1/domains/b/qmp {\"execute\":\"query-status\"}` hangs in QMP until its 5 s deadline; "+
			"Info on `a` (idle) and `b` (stuck) in turn for 3.5 s (%d calls each); the job was checked to be in QMP at the start and the end; "+
			"then QEMU got SIGCONT and the stuck call %s.",
			info.s.N(), stuck.s.N(), stuckOutcome(stuckErr)),
		"Over HTTP the p99s move with what else runs on the machine (see the line under this section's title): the daemon, its HTTP server and the client share the two cores "+
			"with everything else, so read the stuck-vs-idle p50 as the steady comparison and the p99 as passing or failing by a few hundred microseconds of scheduling noise.",
		fmt.Sprintf("Figures: ping p50 %s p99 %s; Info p50 %s p99 %s; idle p50 %s p99 %s; stuck p50 %s p99 %s.",
			Dur(ping.s.P50()), Dur(ping.s.P99()), Dur(info.s.P50()), Dur(info.s.P99()), Dur(idle.s.P50()), Dur(idle.s.P99()), Dur(stuck.s.P50()), Dur(stuck.s.P99())),
	)
	sec.Notes = append(sec.Notes, list.note())
	return sec, nil
}

func stuckOutcome(err error) string {
	if err == nil {
		return "completed"
	}
	return "returned: " + oneLine(err.Error())
}

// listRun is `vmsup list` against curl on the same socket, both run as
// processes.
type listRun struct {
	skipped     string // why the rows were not measured
	vmsup, curl Samples
	curlArgs    []string
}

// measureList runs `vmsup --socket S list` and `curl --unix-socket S
// http://vmsup/v1/domains` (the request vmsup list makes) as processes,
// in turn, and times each from its start to its exit. Both write to
// /dev/null; each run's output is checked once first.
func measureList(ctx context.Context, o Options, bin, socket string) (*listRun, error) {
	res := &listRun{}
	curl, err := exec.LookPath("curl")
	if err != nil {
		res.skipped = "curl is not installed (apt-get install curl)"
		o.logf("daemon: %s; the vmsup list rows are skipped", res.skipped)
		return res, nil
	}
	res.curlArgs = []string{"--silent", "--show-error", "--fail", "--unix-socket", socket, "-H", "Accept: application/json", "http://vmsup/v1/domains"}
	vmsupCmd := func() *exec.Cmd { return exec.CommandContext(ctx, bin, "--socket", socket, "list") }
	curlCmd := func() *exec.Cmd { return exec.CommandContext(ctx, curl, res.curlArgs...) }

	// Both must list the two domains.
	out, err := vmsupCmd().CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("vmsup list: %v: %s", err, oneLine(string(out)))
	}
	if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 3 || !strings.HasPrefix(lines[1], "a ") || !strings.HasPrefix(lines[2], "b ") {
		return nil, fmt.Errorf("vmsup list printed %q, want a header and the domains a and b", out)
	}
	out, err = curlCmd().Output()
	if err != nil {
		return nil, fmt.Errorf("curl %s: %v", strings.Join(res.curlArgs, " "), err)
	}
	var infos []daemonInfo
	if err := json.Unmarshal(out, &infos); err != nil || len(infos) != 2 || infos[0].Name != "a" || infos[1].Name != "b" {
		return nil, fmt.Errorf("curl got %q (%v), want the domains a and b", out, err)
	}

	const rounds, batch = 10, 20
	o.logf("daemon: vmsup list and curl on the socket, as processes, %d rounds of %d each, in turn", rounds, batch)
	sides := []struct {
		cmd func() *exec.Cmd
		s   *Samples
	}{{vmsupCmd, &res.vmsup}, {curlCmd, &res.curl}}
	for r := 0; r < rounds+1; r++ {
		for k := range sides {
			side := sides[(k+r)%2]
			for n := 0; n < batch; n++ {
				cmd := side.cmd() // stdout and stderr: /dev/null
				t := time.Now()
				if err := cmd.Run(); err != nil {
					return nil, fmt.Errorf("%s: %w", strings.Join(cmd.Args, " "), err)
				}
				if r > 0 { // the first round warms the page cache and the daemon
					side.s.Add(time.Since(t))
				}
			}
		}
	}
	return res, nil
}

func (l *listRun) rows() []Row {
	const measure = "`vmsup list` end to end (a process), "
	const against = "curl --unix-socket (a process)"
	if l.skipped != "" {
		return []Row{
			{Measure: measure + "p50", Skipped: l.skipped, Goal: RatioAtMost(1.50)},
		}
	}
	return []Row{
		{Measure: measure + "p50", V: Secs(l.vmsup.P50()), C: Secs(l.curl.P50()), Fmt: DurFmt, Against: against, Goal: RatioAtMost(1.50)},
		{Measure: measure + "p99", V: Secs(l.vmsup.P99()), C: Secs(l.curl.P99()), Fmt: DurFmt, Against: against},
	}
}

func (l *listRun) note() string {
	if l.skipped != "" {
		return "`vmsup list` against curl: not measured, " + l.skipped + "."
	}
	const curlShown = "--silent --show-error --fail --unix-socket S -H 'Accept: application/json' http://vmsup/v1/domains"
	return fmt.Sprintf("`vmsup list` against curl: the built `vmsup --socket S list` (the CLI binary, which links no daemon package) and `curl %s` "+
		"(`GET /v1/domains`, the request `vmsup list` makes), each started as a process with stdout on /dev/null and timed from fork to exit; "+
		"%d runs each, in batches taking turns, after a warm-up batch each; both outputs were checked to list the two domains first. "+
		"vmsup p50 %s p99 %s; curl p50 %s p99 %s.",
		curlShown, l.vmsup.N(), Dur(l.vmsup.P50()), Dur(l.vmsup.P99()), Dur(l.curl.P50()), Dur(l.curl.P99()))
}
