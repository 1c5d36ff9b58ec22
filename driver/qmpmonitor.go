package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/vmsup/vmsup/domain"
)

// ErrMonitorNotConnected is returned by a Domain.Monitor's Run and Events
// before Connect and after Disconnect.
var ErrMonitorNotConnected = errors.New("monitor not connected")

// monitorConnectWait bounds Connect's check that the domain exists.
const monitorConnectWait = 5 * time.Second

// Monitor returns a go-qemu qmp.Monitor on this domain, for embedders who
// use go-qemu's typed commands (raw.NewMonitor) or its qemu.Domain
// (qemu.NewDomain). It shares the domain's QMP connection with vmsup
// rather than opening one of its own (QEMU serves one QMP client at a
// time):
//
//   - Connect checks that the domain exists; Run and Events work between
//     Connect and Disconnect.
//   - Each Run is a QMP job on the domain, as Domain.QMP runs it (same
//     checks, queue, deadline of 30 s, errors naming the domain); its
//     result is QMP's reply, {"return": ...}. A QMP error reply is an
//     error, as with go-qemu's SocketMonitor.
//   - Events streams the domain's QMP events, after the domain has seen
//     them, until its context ends, Disconnect is called or the driver is
//     closed. A reader that falls behind loses events (the domain never
//     waits for it); the stream is closed at its end.
//   - Disconnect ends the streams and waits for their goroutines; runs in
//     flight are cancelled. QEMU and its QMP connection are untouched.
//
// A Monitor is safe for concurrent use.
func (h *Domain) Monitor() qmp.Monitor { return &domainMonitor{h: h} }

// domainMonitor is the qmp.Monitor of Domain.Monitor.
type domainMonitor struct {
	h  *Domain
	mu sync.Mutex
	s  *monitorSession // nil when not connected
}

// monitorSession is one Connect … Disconnect: its context ends the runs
// and event streams started in it, whose goroutines wg counts.
type monitorSession struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Connect checks that the domain exists and starts a session. Calling it
// while connected does nothing.
func (m *domainMonitor) Connect() error {
	ctx, cancel := context.WithTimeout(context.Background(), monitorConnectWait)
	defer cancel()
	if _, err := m.h.Info(ctx); err != nil {
		return fmt.Errorf("domain %q: monitor connect: %w", m.h.name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.s == nil {
		s := &monitorSession{}
		s.ctx, s.cancel = context.WithCancel(context.Background())
		m.s = s
	}
	return nil
}

// Disconnect ends the session: runs in flight are cancelled and event
// streams end; it returns once their goroutines have. Calling it while
// disconnected does nothing.
func (m *domainMonitor) Disconnect() error {
	m.mu.Lock()
	s := m.s
	m.s = nil
	m.mu.Unlock()
	if s != nil {
		s.cancel()
		s.wg.Wait()
	}
	return nil
}

// session returns the current session, or an error naming the domain.
func (m *domainMonitor) session() (*monitorSession, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.s == nil {
		return nil, fmt.Errorf("domain %q: %w; call Connect first", m.h.name, ErrMonitorNotConnected)
	}
	return m.s, nil
}

// Run runs command, a QMP command such as {"execute":"query-status"}, as a
// QMP job on the domain and returns QMP's reply, {"return": ...}.
func (m *domainMonitor) Run(command []byte) ([]byte, error) {
	s, err := m.session()
	if err != nil {
		return nil, err
	}
	ret, err := m.h.QMP(s.ctx, command)
	if err != nil {
		return nil, err
	}
	if len(ret) == 0 {
		ret = json.RawMessage("{}")
	}
	return json.Marshal(struct {
		Return json.RawMessage `json:"return"`
	}{ret})
}

// Events streams the domain's QMP events until ctx ends, Disconnect is
// called or the driver is closed; then the channel is closed.
func (m *domainMonitor) Events(ctx context.Context) (<-chan qmp.Event, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.s
	if s == nil {
		return nil, fmt.Errorf("domain %q: %w; call Connect first", m.h.name, ErrMonitorNotConnected)
	}
	if err := m.h.d.checkOpen(); err != nil {
		return nil, err
	}
	sub := m.h.d.broker.SubscribeQMP(m.h.name, 0)
	out := make(chan qmp.Event)
	done := m.h.d.done
	s.wg.Add(1) // under m.mu, before Disconnect can take the session
	go func() {
		defer s.wg.Done()
		defer close(out)
		defer sub.Close()
		for {
			var ev domain.QMPEvent
			select {
			case <-ctx.Done():
				return
			case <-s.ctx.Done():
				return
			case <-done:
				return
			case e, ok := <-sub.Events():
				if !ok {
					return
				}
				ev = e
			}
			select {
			case out <- toQMPEvent(ev):
			case <-ctx.Done():
				return
			case <-s.ctx.Done():
				return
			case <-done:
				return
			}
		}
	}()
	return out, nil
}

func toQMPEvent(ev domain.QMPEvent) qmp.Event {
	out := qmp.Event{Event: ev.Name, Data: ev.Data}
	if !ev.Time.IsZero() {
		out.Timestamp.Seconds = ev.Time.Unix()
		out.Timestamp.Microseconds = int64(ev.Time.Nanosecond() / 1000)
	}
	return out
}
