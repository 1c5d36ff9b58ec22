package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

// TraceCost measures what tracing adds to a job round trip (Domain.QMP
// with query-status): a driver with tracing on (a recorder, no sink)
// against one without a recorder, side by side, on real QEMUs and on
// simulated QMP with no latency, where the actors are all there is.
func TraceCost(ctx context.Context, o Options) (*Section, error) {
	const key = "trace"
	sec := &Section{Key: key}
	dir, err := shortDir("vbt")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	type side struct {
		name string
		vm   *driver.Domain
		s    Samples
	}
	open := func(name string, rec *trace.Recorder, real bool) (*side, func(), error) {
		cfg := driver.Config{
			StateDir:     filepath.Join(dir, name, "state"),
			RunDir:       filepath.Join(dir, name, "run"),
			DestroyGrace: 5 * time.Second,
			Trace:        rec,
		}
		if !real {
			cfg.Launcher = launchSimulated
			cfg.DialMonitor = func(string) monitor.Conn { return monitor.NewSimulated(0) }
		}
		d, err := driver.Open(ctx, cfg)
		if err != nil {
			return nil, nil, err
		}
		closeAll := func() {
			c, cancel := withTimeout(30 * time.Second)
			defer cancel()
			_ = d.Domain(name).Destroy(c)
			_ = d.Close(c)
		}
		if _, err := d.Define(ctx, RealSpec(name)); err != nil {
			closeAll()
			return nil, nil, err
		}
		vm := d.Domain(name)
		if err := vm.Start(ctx, driver.StartOptions{}); err != nil {
			closeAll()
			return nil, nil, err
		}
		if in, err := vm.Info(ctx); err == nil && real {
			NotePID(in.PID)
		}
		return &side{name: name, vm: vm}, closeAll, nil
	}
	cmd := json.RawMessage(`{"execute":"query-status"}`)
	measure := func(label string, real bool, rounds, batch int) (off, on *side, err error) {
		off, closeOff, err := open(label+"-off", nil, real)
		if err != nil {
			return nil, nil, err
		}
		defer closeOff()
		on, closeOn, err := open(label+"-on", trace.New(trace.Options{}), real)
		if err != nil {
			return nil, nil, err
		}
		defer closeOn()
		sides := []*side{off, on}
		for _, s := range sides { // warm up
			for k := 0; k < 300; k++ {
				if _, err := s.vm.QMP(ctx, cmd); err != nil {
					return nil, nil, fmt.Errorf("%s: %w", s.name, err)
				}
			}
		}
		o.logf("trace: %s, %d rounds of %d query-status per side, sides alternating", label, rounds, batch)
		for r := 0; r < rounds; r++ {
			for k := range sides {
				s := sides[(k+r)%2]
				for n := 0; n < batch; n++ {
					t := time.Now()
					if _, err := s.vm.QMP(ctx, cmd); err != nil {
						return nil, nil, fmt.Errorf("%s: %w", s.name, err)
					}
					s.s.Add(time.Since(t))
				}
			}
		}
		return off, on, nil
	}
	realOff, realOn, err := measure("real", true, 16, 400)
	if err != nil {
		return nil, err
	}
	simOff, simOn, err := measure("sim", false, 16, 2000)
	if err != nil {
		return nil, err
	}
	goal := RatioAtMost(1.05)
	sec.Rows = []Row{
		{Measure: "job round trip, real QEMU, tracing on, p50", V: Secs(realOn.s.P50()), C: Secs(realOff.s.P50()), Fmt: DurFmt, Against: "tracing off", Goal: goal},
		// The goal is on real QEMU; against a monitor that answers at
		// once the same absolute cost is most of a job, so this row shows
		// that cost and has no goal of its own.
		{Measure: "job round trip, simulated QMP (actors only), tracing on, p50", V: Secs(simOn.s.P50()), C: Secs(simOff.s.P50()), Fmt: DurFmt, Against: "tracing off"},
	}
	sec.Notes = append(sec.Notes,
		fmt.Sprintf("Method: two drivers, one with a trace.Recorder (64k ring, no sink) and one without, each running one domain; "+
			"`Domain.QMP` with `query-status`, the sides taking turns in batches. Real QEMU (`-machine none`, %s): off p50 %s p99 %s, on p50 %s p99 %s. "+
			"Simulated QMP answering at once: off p50 %s p99 %s, on p50 %s p99 %s. `go test -run xxx -bench JobRoundTrip ./driver/` measures the simulated case too, "+
			"with a third variant, a recorder switched off.",
			realAccel(), Dur(realOff.s.P50()), Dur(realOff.s.P99()), Dur(realOn.s.P50()), Dur(realOn.s.P99()),
			Dur(simOff.s.P50()), Dur(simOff.s.P99()), Dur(simOn.s.P50()), Dur(simOn.s.P99())),
		"Where the cost is: a job round trip sends five traced messages and makes about eight records (API, route, domain request, job, monitor command and reply, QMP, the job's end). "+
			"Each send is stamped with its send time, span, parent, trace and sender: in the message itself for the request and completion messages "+
			"(a string), in a protoactor header map for the others; each record is copied into the 64k ring, whose pointers the GC scans. "+
			"Tracing allocates about 0.5 KB more per round trip than no tracing (`go test -run xxx -bench JobRoundTrip -benchmem ./driver/`; "+
			"2.2 KB before the stamps moved into the messages). Against simulated QMP that answers at once the actors' own work is all there is, "+
			"so the same cost is a larger share.",
	)
	return sec, nil
}
