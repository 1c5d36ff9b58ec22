package server

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmsup/vmsup/cmd/internal/peer"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/process"
	"github.com/vmsup/vmsup/driver"
	"github.com/vmsup/vmsup/monitor"
)

// BenchmarkPeerCheck measures what the peer-credential check costs a
// list over the daemon socket, each request on a new connection (the
// credentials are read once per connection): "checked" reads them from the
// kernel (SO_PEERCRED, SO_PEERGROUPS) as the daemon does; "given" hands the
// same credentials over without asking the kernel. Both then run the same
// access decision, a few comparisons. The two alternate, request by
// request; the metrics are their medians. tests/bench runs it for
// docs/BENCHMARKS.md (the security rows).
func BenchmarkPeerCheck(b *testing.B) {
	dir, err := os.MkdirTemp("", "vspc")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	var pids atomic.Int64
	pids.Store(1 << 23)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	drv, err := driver.Open(ctx, driver.Config{
		StateDir: dir,
		Launcher: func(process.Launch) (*process.Process, error) {
			p, _ := process.NewSimulatedProcess(int(pids.Add(1)))
			return p, nil
		},
		DialMonitor: func(string) monitor.Conn { return monitor.NewSimulated(0) },
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { drv.Close(context.Background()) })
	for i := range 10 {
		if _, err := drv.Define(ctx, &domain.Spec{Name: "vm" + strconv.Itoa(i), Machine: "none"}); err != nil {
			b.Fatal(err)
		}
	}
	s := New(drv, Options{StateDir: dir})
	b.Cleanup(s.Close)
	self := peer.Cred{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}
	get := func(name string, conn func(context.Context, net.Conn) context.Context) func() time.Duration {
		sock := filepath.Join(dir, name+".sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: s, ConnContext: conn}
		go func() { _ = srv.Serve(ln) }()
		b.Cleanup(func() { srv.Close() })
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			}}}
		return func() time.Duration {
			t0 := time.Now()
			resp, err := client.Get("http://vmsup/v1/domains")
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("list: %s", resp.Status)
			}
			return time.Since(t0)
		}
	}
	checked := get("checked", ConnContext)
	given := get("given", func(ctx context.Context, _ net.Conn) context.Context { return peer.WithCred(ctx, self) })
	var cs, gs []time.Duration
	b.ResetTimer()
	for i := range b.N {
		// Alternating, so that both see the same load.
		if i%2 == 0 {
			cs, gs = append(cs, checked()), append(gs, given())
		} else {
			gs, cs = append(gs, given()), append(cs, checked())
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(median(cs).Nanoseconds()), "checked-p50-ns")
	b.ReportMetric(float64(median(gs).Nanoseconds()), "given-p50-ns")
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
