package driver_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/driver"
)

// BenchmarkJobRoundTrip measures one raw QMP job through the whole API
// (registry, domain actor and its lane, monitor actor, simulated QMP with
// no latency) with tracing left out, with a disabled recorder, and with
// tracing on. The goal is under 5% extra when on.
//
//	go test -run xxx -bench JobRoundTrip -count 6 ./driver/ | benchstat -
func BenchmarkJobRoundTrip(b *testing.B) {
	for _, mode := range []string{"off", "disabled", "on"} {
		b.Run(mode, func(b *testing.B) {
			cfg := simulatedConfig(b, 0)
			switch mode {
			case "disabled":
				cfg.Trace = trace.New(trace.Options{Disabled: true})
			case "on":
				cfg.Trace = trace.New(trace.Options{})
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			d, err := driver.Open(ctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close(ctx)
			if _, err := d.Define(ctx, &domain.Spec{Name: "bench", Machine: "none"}); err != nil {
				b.Fatal(err)
			}
			vm := d.Domain("bench")
			if err := vm.Start(ctx, driver.StartOptions{}); err != nil {
				b.Fatal(err)
			}
			cmd := json.RawMessage(`{"execute":"query-status"}`)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := vm.QMP(ctx, cmd); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
