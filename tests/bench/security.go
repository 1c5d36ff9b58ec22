package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/vmsup/vmsup/domain/confine"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/domain/vm"
	"github.com/vmsup/vmsup/driver"
)

// noMeasurable is the goal of the security rows: the protection costs
// nothing that shows (within 5 %, the noise of a busy 2-core machine).
var noMeasurable = Goal{Text: "nothing measurable (≤ 1.05×)", Check: func(v, c float64) bool { return v <= 1.05*c }}

// Security measures what the protections cost: the peer-credential check
// on a list over the socket, and QEMU's seccomp sandbox on start and on
// list, each with and without.
func Security(ctx context.Context, o Options) (*Section, error) {
	const key = "security"
	sec := &Section{Key: key}
	peerRow, err := peerCheckRow(ctx, o)
	if err != nil {
		return nil, err
	}
	sec.Rows = append(sec.Rows, peerRow)

	dir, err := shortDir("vbs")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var confined *vm.Confine
	if os.Geteuid() == 0 {
		if err := os.Chmod(dir, 0o711); err != nil {
			return nil, err
		}
		if u, err := confine.LookupUser(qemuUser()); err == nil {
			confined = &vm.Confine{User: u}
			if g, err := confine.DetectCgroups("vmsup-bench"); err == nil {
				confined.Cgroups = g
				defer os.Remove(g.Dir)
			}
		}
	}
	open := func(name string, launch process.Launcher, conf *vm.Confine) (*driver.Driver, error) {
		return driver.Open(ctx, driver.Config{
			StateDir: filepath.Join(dir, name, "state"), RunDir: filepath.Join(dir, name, "run"),
			DestroyGrace: 5 * time.Second, Launcher: launch, Confine: conf,
		})
	}
	with, err := open("sb", nil, nil)
	if err != nil {
		return nil, err
	}
	defer with.Close(context.Background())
	without, err := open("nosb", withoutSandbox, nil)
	if err != nil {
		return nil, err
	}
	defer without.Close(context.Background())
	drivers := []*driver.Driver{with, without}
	if confined != nil {
		if err := os.Mkdir(filepath.Join(dir, "conf"), 0o711); err != nil {
			return nil, err
		}
		c, err := open("conf", nil, confined)
		if err != nil {
			return nil, err
		}
		defer c.Close(context.Background())
		drivers = append(drivers, c)
	}
	const iterations = 30
	starts := make([]Samples, len(drivers))
	o.logf("security: %d start/destroy cycles per side, alternating", iterations)
	for i := range iterations {
		for k := range drivers {
			j := (k + i) % len(drivers)
			d := drivers[j]
			if i == 0 {
				if _, err := d.Define(ctx, RealSpec("s")); err != nil {
					return nil, err
				}
			}
			t := time.Now()
			if err := d.Domain("s").Start(ctx, driver.StartOptions{}); err != nil {
				return nil, err
			}
			starts[j].Add(time.Since(t))
			in, err := d.Domain("s").Info(ctx)
			if err != nil {
				return nil, err
			}
			NotePID(in.PID)
			if err := d.Domain("s").Destroy(ctx); err != nil {
				return nil, err
			}
		}
	}
	// List with three running QEMUs on each side.
	for _, d := range drivers[:2] {
		for i := range 3 {
			name := "l" + strconv.Itoa(i)
			if _, err := d.Define(ctx, RealSpec(name)); err != nil {
				return nil, err
			}
			if err := d.Domain(name).Start(ctx, driver.StartOptions{}); err != nil {
				return nil, err
			}
			in, _ := d.Domain(name).Info(ctx)
			NotePID(in.PID)
		}
	}
	var lists [2]Samples
	for i := range listCalls {
		for k := range 2 {
			j := (k + i) % 2
			t := time.Now()
			if _, err := drivers[j].List(ctx); err != nil {
				return nil, err
			}
			lists[j].Add(time.Since(t))
		}
	}
	sec.Rows = append(sec.Rows,
		Row{Measure: "start → running with -sandbox, p50", V: Secs(starts[0].P50()), C: Secs(starts[1].P50()), Fmt: DurFmt, Against: "without -sandbox", Goal: noMeasurable},
		Row{Measure: "List, 3 QEMUs running with -sandbox, p50", V: Secs(lists[0].P50()), C: Secs(lists[1].P50()), Fmt: DurFmt, Against: "without -sandbox", Goal: noMeasurable},
	)
	if confined != nil {
		what := "as " + confined.User.Name
		if confined.Cgroups != nil {
			what += " in its own cgroup"
		}
		sec.Rows = append(sec.Rows, Row{Measure: "start → running " + what + ", p50", V: Secs(starts[2].P50()), C: Secs(starts[0].P50()), Fmt: DurFmt, Against: "as root (same sandbox)"})
	} else {
		sec.Rows = append(sec.Rows, Row{Measure: "start → running as the QEMU user in a cgroup, p50", Skipped: "needs root and the QEMU user"})
	}
	sec.Notes = append(sec.Notes, fmt.Sprintf("Method: the peer check is `go test -bench BenchmarkPeerCheck ./cmd/internal/server`: a list of 10 domains over the API's unix socket, "+
		"a new connection per request (the credentials are read once per connection), %d requests per side alternating; \"checked\" reads SO_PEERCRED and SO_PEERGROUPS as the daemon does, "+
		"the comparison hands the same credentials over without asking the kernel (both then make the same access decision). "+
		"The sandbox rows: %d start/destroy cycles per side, alternating, of one `-machine none` QEMU; the comparison's launcher drops `-sandbox %s` from the argv. "+
		"List: %d calls per side, alternating, each driver with three QEMUs running; List reads the domains' snapshots and never touches QEMU. "+
		"The confined row (root only) starts QEMU as the unprivileged user, its files chowned and checked, in a cgroup of its own.", peerRequests, iterations, "on,obsolete=deny,…", listCalls))
	return sec, nil
}

// listCalls is how many Lists each side of the sandbox list row makes.
const listCalls = 20000

// peerRequests is how many lists each side of the peer-check row makes.
const peerRequests = 3000

var peerMetric = regexp.MustCompile(`([0-9.]+) checked-p50-ns\s+([0-9.]+) given-p50-ns`)

// peerCheckRow runs BenchmarkPeerCheck of cmd/internal/server (the API's
// own code, which this package may not import) and reads its medians.
func peerCheckRow(ctx context.Context, o Options) (Row, error) {
	cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", "^BenchmarkPeerCheck$", "-benchtime", strconv.Itoa(peerRequests)+"x", "./cmd/internal/server")
	cmd.Dir = o.ModuleDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return Row{}, fmt.Errorf("BenchmarkPeerCheck: %v: %s", err, oneLine(string(out)))
	}
	m := peerMetric.FindSubmatch(out)
	if m == nil {
		return Row{}, fmt.Errorf("BenchmarkPeerCheck printed no medians: %s", oneLine(string(out)))
	}
	checked, _ := strconv.ParseFloat(string(m[1]), 64)
	given, _ := strconv.ParseFloat(string(m[2]), 64)
	return Row{Measure: "list over the socket, new connection each, peer-credential check, p50", V: checked / 1e9, C: given / 1e9, Fmt: DurFmt,
		Against: "credentials handed over (no SO_PEERCRED)", Goal: noMeasurable}, nil
}

// withoutSandbox launches QEMU without its -sandbox option: the
// comparison of the sandbox rows.
func withoutSandbox(l process.Launch) (*process.Process, error) {
	args := make([]string, 0, len(l.Args))
	for i := 0; i < len(l.Args); i++ {
		if l.Args[i] == "-sandbox" && i+1 < len(l.Args) {
			i++
			continue
		}
		args = append(args, l.Args[i])
	}
	l.Args = args
	return process.LaunchQEMU(l)
}

// qemuUser is the user the confined rows run QEMU as: the daemon's
// default when the host has it, else nobody.
func qemuUser() string {
	if _, err := confine.LookupUser(confine.DefaultUser); err == nil {
		return confine.DefaultUser
	}
	return "nobody"
}
