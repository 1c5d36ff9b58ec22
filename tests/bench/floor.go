package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

// Options tune a run of the rows.
type Options struct {
	// Progress receives one line per step (stderr in benchtable).
	Progress func(format string, args ...any)
	// Repro is the command prefix that reproduces a row; the row's key is
	// appended (" -only floor").
	Repro string
	// VmsupBinary is a built cmd/vmsup, with cmd/vmsupd next to it, for the
	// daemon rows; empty means build both.
	VmsupBinary string
	// ModuleDir is the module root (for building cmd/vmsup and cmd/vmsupd).
	ModuleDir string
	// HeapProfile, when set, receives a heap profile taken while vmsup
	// runs the 100 real QEMUs (real100).
	HeapProfile string
}

// writeHeapProfile writes the live heap to path.
func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("heap").WriteTo(f, 0)
}

func (o Options) logf(format string, args ...any) {
	if o.Progress != nil {
		o.Progress(format, args...)
	}
}

func (o Options) repro(key string) string { return o.Repro + " -only " + key }

// shortDir makes a temp dir with a short path (unix socket paths are
// limited to 107 bytes), under the run's directory while Run runs.
func shortDir(prefix string) (string, error) {
	parent := "/tmp"
	if root := runDir.Load(); root != nil {
		parent = *root
	}
	return os.MkdirTemp(parent, prefix)
}

// openRealDriver opens a vmsup driver that runs real QEMU.
func openRealDriver(ctx context.Context, dir string) (*driver.Driver, error) {
	return driver.Open(ctx, driver.Config{
		StateDir:     filepath.Join(dir, "state"),
		RunDir:       filepath.Join(dir, "run"),
		DestroyGrace: 5 * time.Second,
	})
}

// Floor compares one query-status round trip through vmsup's API
// (Domain.QMP) with the same command sent by go-qemu's SocketMonitor
// straight to a QEMU started with the same argv. A third QEMU measures
// vmsup's own QMP transport without the actors, to split the difference.
func Floor(ctx context.Context, o Options) (*Section, error) {
	const key = "floor"
	sec := &Section{Key: key}
	dir, err := shortDir("vbf")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	d, err := openRealDriver(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer d.Close(context.Background())
	if _, err := d.Define(ctx, RealSpec("floor")); err != nil {
		return nil, err
	}
	vm := d.Domain("floor")
	if err := vm.Start(ctx, driver.StartOptions{}); err != nil {
		return nil, err
	}
	defer func() {
		c, cancel := withTimeout(30 * time.Second)
		defer cancel()
		_ = vm.Destroy(c)
	}()
	if in, err := vm.Info(ctx); err == nil {
		NotePID(in.PID)
	}
	raw, sm, err := startConnected(filepath.Join(dir, "raw"), RealSpec("floor"))
	if err != nil {
		return nil, fmt.Errorf("raw QEMU: %w", err)
	}
	defer raw.Kill()
	defer sm.Disconnect()
	third, err := StartRawQEMU(filepath.Join(dir, "tr"), RealSpec("floor"))
	if err != nil {
		return nil, err
	}
	defer third.Kill()
	tr := monitor.NewTransport(third.Paths.QMPSocket, monitor.TransportOptions{})
	if err := tr.ConnectContext(ctx); err != nil {
		return nil, fmt.Errorf("transport: %w", err)
	}
	defer tr.Disconnect()

	cmd := []byte(`{"execute":"query-status"}`)
	// The bytes vmsup's transport puts on the wire for cmd: an "id"
	// member with a counter of its own.
	var idBuf []byte
	var idN uint64
	cmdID := func() []byte {
		idN++
		idBuf = append(idBuf[:0], `{"execute":"query-status","id":"vmsup-`...)
		idBuf = strconv.AppendUint(idBuf, idN, 10)
		return append(idBuf, `"}`...)
	}
	sides := []struct {
		name string
		op   func() error
		s    Samples
		wall time.Duration
	}{
		{name: "vmsup", op: func() error { _, err := vm.QMP(ctx, json.RawMessage(cmd)); return err }},
		{name: "raw", op: func() error { _, err := sm.Run(cmd); return err }},
		{name: "transport", op: func() error { _, err := tr.RunContext(ctx, cmd); return err }},
		{name: "info", op: func() error { _, err := vm.Info(ctx); return err }},
		// The raw client again, with an "id" in the command as vmsup's
		// transport sends it: QEMU itself takes longer to answer those.
		// The goals compare with this side.
		{name: "raw+id", op: func() error { _, err := sm.Run(cmdID()); return err }},
	}
	for i := range sides { // warm up
		for k := 0; k < 300; k++ {
			if err := sides[i].op(); err != nil {
				return nil, fmt.Errorf("%s: %w", sides[i].name, err)
			}
		}
	}
	const rounds, batch = 16, 500
	o.logf("floor: %d rounds of %d query-status per side, sides alternating", rounds, batch)
	for r := 0; r < rounds; r++ {
		for k := range sides {
			s := &sides[(k+r)%len(sides)]
			t0 := time.Now()
			for n := 0; n < batch; n++ {
				t := time.Now()
				if err := s.op(); err != nil {
					return nil, fmt.Errorf("%s: %w", s.name, err)
				}
				s.s.Add(time.Since(t))
			}
			s.wall += time.Since(t0)
		}
	}
	v, rw, t, info, rwID := &sides[0], &sides[1], &sides[2], &sides[3], &sides[4]
	ops := func(s *Samples, wall time.Duration) float64 { return float64(s.N()) / wall.Seconds() }
	const against = "raw go-qemu, same bytes (id included)"
	sec.Rows = []Row{
		{Measure: "query-status round trip, p50", V: Secs(v.s.P50()), C: Secs(rwID.s.P50()), Fmt: DurFmt, Against: against, Goal: RatioAtMost(1.25)},
		{Measure: "query-status round trip, p99", V: Secs(v.s.P99()), C: Secs(rwID.s.P99()), Fmt: DurFmt, Against: against, Goal: RatioAtMost(1.25)},
		{Measure: "query-status, ops/s (one caller)", V: ops(&v.s, v.wall), C: ops(&rwID.s, rwID.wall), Fmt: RateFmt, Against: against, Goal: RatioAtLeast(1 / 1.25)},
	}
	sec.Notes = append(sec.Notes,
		fmt.Sprintf("Method: one vmsup-supervised QEMU (`-machine none`, %s) and two raw QEMUs started with the argv vmsup builds for the same spec; "+
			"%d rounds of %d sequential `query-status` per side, the sides taking turns. vmsup: `Domain.QMP` with `{\"execute\":\"query-status\"}`; "+
			"the comparison: go-qemu `qmp.SocketMonitor.Run` with the bytes vmsup's transport sends for it, `{\"execute\":\"query-status\",\"id\":\"vmsup-N\"}` with a counter N "+
			"(the raw client on the same QEMU also ran without the id, for the split below). %d samples per side.", realAccel(), rounds, batch, rounds*batch),
		fmt.Sprintf("Split of vmsup's time (p50): vmsup's QMP transport alone, on the third QEMU, takes %s (raw go-qemu without the id %s). "+
			"Part of that is QEMU's: the transport puts an \"id\" in every command to match replies, and the raw client sending the same command with an id "+
			"waits %s, so QEMU spends about %s more on a command with an id; the transport's own code adds %s. "+
			"The actors add %s on top of the transport (an `Info` on the same domain, which reads the published snapshot with no message, takes %s). "+
			"That is the job path: the ask to the domain actor (found in the registry), the job's pooled goroutine, which sends the command on the monitor's link, "+
			"the reply handed from the transport's reader to that goroutine, then the lane's done message through the domain actor to the caller — "+
			"five goroutine hand-offs per call, each a wake-up of a parked goroutine (and often of an idle OS thread) when the process is otherwise idle. "+
			"Raw go-qemu has one: its reader to the caller.",
			Dur(t.s.P50()), Dur(rw.s.P50()), Dur(rwID.s.P50()), Dur(rwID.s.P50()-rw.s.P50()), extra(t.s.P50()-rwID.s.P50()), Dur(v.s.P50()-t.s.P50()), Dur(info.s.P50())),
		fmt.Sprintf("Figures: vmsup p50 %s p99 %s, %s; raw with id p50 %s p99 %s, %s; raw without id p50 %s p99 %s, %s; vmsup transport p50 %s p99 %s.",
			Dur(v.s.P50()), Dur(v.s.P99()), Rate(ops(&v.s, v.wall)), Dur(rwID.s.P50()), Dur(rwID.s.P99()), Rate(ops(&rwID.s, rwID.wall)),
			Dur(rw.s.P50()), Dur(rw.s.P99()), Rate(ops(&rw.s, rw.wall)), Dur(t.s.P50()), Dur(t.s.P99())),
	)
	return sec, nil
}

var _ qmp.Monitor = (*qmp.SocketMonitor)(nil)

// extra words a difference of two medians: "about 12 µs", or, when it is
// not positive, that none was measured.
func extra(d time.Duration) string {
	if d <= 0 {
		return fmt.Sprintf("nothing measurable (its median was %s lower)", Dur(-d))
	}
	return "about " + Dur(d)
}

// startConnected starts a raw QEMU and connects go-qemu to it, starting
// the QEMU again (twice at most) when its QMP never answers (see
// dialFirst).
func startConnected(runDir string, spec *domain.Spec) (*RawQEMU, *qmp.SocketMonitor, error) {
	for attempt := 0; ; attempt++ {
		q, err := StartRawQEMU(runDir, spec)
		if err != nil {
			return nil, nil, err
		}
		sm, err := q.Connect(5 * time.Second)
		if err == nil {
			return q, sm, nil
		}
		q.Kill()
		if attempt == 2 {
			return nil, nil, err
		}
	}
}
