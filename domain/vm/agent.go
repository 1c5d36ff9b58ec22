package vm

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/agent"
	"github.com/vmsup/vmsup/domain/internal/protocol"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

// The guest agent of a running QEMU is a child actor of the domain
// (domain/agent), spawned with the monitor and stopped at QEMU's exit. The
// domain never waits for it: API calls are forwarded to it and it answers
// the caller itself, and its status is published in an atomic pointer that
// Info reads. A watcher goroutine, owned by the domain and ended at QEMU's
// exit, pings the agent until it first answers and then reads the guest's
// addresses (guest-network-get-interfaces), again whenever a NIC comes up.

// agentWatch is the watcher of one running QEMU's agent.
type agentWatch struct {
	pid    *actor.PID
	status *atomic.Pointer[domain.AgentStatus]
	cancel context.CancelFunc
	// kick asks the watcher to read the guest's addresses again.
	kick chan struct{}
}

// guestAddrs is the watcher's news: the guest's addresses by MAC.
type guestAddrs struct {
	from  *domainActor
	watch *agentWatch
	byMAC map[string]string
}

// Watcher pacing: pings until the agent first answers, then reads of the
// addresses after a NIC came up (DHCP takes a while after the link).
var (
	agentPingBackoff   = []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second}
	guestAddrsRetries  = 10
	guestAddrsInterval = 3 * time.Second
)

// spawnAgent spawns the agent actor of the QEMU with pid, when its spec
// has the agent channel, and its watcher.
func (dom *domainActor) spawnAgent(c actor.Context, spec *domain.Spec, paths qemuargs.RunPaths, pid int) {
	dom.stopAgent(c)
	if !qemuargs.AgentChannel(spec) {
		return
	}
	st := &atomic.Pointer[domain.AgentStatus]{}
	ap, err := c.SpawnNamed(agent.Props(agent.Config{
		Domain: dom.name(), Socket: paths.AgentSocket, Status: st,
		Dispatcher: dom.cfg.Dispatcher, Trace: dom.cfg.Trace, Logger: dom.cfg.Logger,
	}), fmt.Sprintf("agent-%d", pid))
	if err != nil {
		dom.cfg.Logger.Error().Err(err).Str("domain", dom.name()).Msg("cannot spawn the guest agent actor")
		return
	}
	// The watcher is counted in the lineage's inflight, so a restarted
	// domain waits for it; the agent's own job goroutines touch only the
	// agent's channel, and its actor waits for them when it stops.
	ctx, cancel := context.WithCancel(context.Background())
	w := &agentWatch{pid: ap, status: st, cancel: cancel, kick: make(chan struct{}, 1)}
	dom.agent, dom.guestAddrs = w, nil
	if dom.cfg.LiveAgent != nil {
		dom.cfg.LiveAgent.Store(st)
	}
	root, self := c.ActorSystem().Root, c.Self()
	dom.life.inflight.Add(1)
	go func() {
		defer dom.life.inflight.Done()
		w.run(ctx, func(byMAC map[string]string) { root.Send(self, guestAddrs{from: dom, watch: w, byMAC: byMAC}) }, root)
	}()
}

// stopAgent stops the agent actor and its watcher (QEMU exited).
func (dom *domainActor) stopAgent(c actor.Context) {
	if dom.agent == nil {
		return
	}
	if dom.cfg.LiveAgent != nil {
		dom.cfg.LiveAgent.CompareAndSwap(dom.agent.status, nil)
	}
	dom.agent.cancel()
	c.Stop(dom.agent.pid)
	dom.agent, dom.guestAddrs, dom.ipNICs = nil, nil, nil
}

// kickAgent asks the watcher to read the guest's addresses again (a NIC
// came up). It never blocks.
func (dom *domainActor) kickAgent() {
	if dom.agent == nil {
		return
	}
	select {
	case dom.agent.kick <- struct{}{}:
	default:
	}
}

// forwardAgent hands an API caller's agent command to the agent actor,
// which answers the caller: the domain never waits for the agent.
func (dom *domainActor) forwardAgent(c actor.Context, m *protocol.AgentRequest) {
	if dom.agent == nil {
		c.Respond(fmt.Errorf("domain %q: guest agent command %q: %w (state %s/%s, or no agent channel)", dom.name(), m.Command, domain.ErrNotRunning, dom.state, dom.reason))
		return
	}
	c.RequestWithCustomSender(dom.agent.pid, &agent.CommandRequest{Request: m.Request, Command: m.Command, Arguments: m.Arguments}, c.Sender())
}

// run is the watcher: ping until the agent answers, read guest-info and the
// addresses, then read the addresses again after each kick until every
// NIC has one (or the retries run out).
func (w *agentWatch) run(ctx context.Context, publish func(map[string]string), sender actor.SenderContext) {
	for i := 0; ; i++ {
		if err := agent.Ping(ctx, sender, w.pid); err == nil {
			break
		}
		if !sleep(ctx, agentPingBackoff[min(i, len(agentPingBackoff)-1)]) {
			return
		}
	}
	_, _ = agent.GetInfo(ctx, sender, w.pid) // the version, for Info.Agent
	w.readAddrs(ctx, publish, sender, 1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
			w.readAddrs(ctx, publish, sender, guestAddrsRetries)
		}
	}
}

// readAddrs reads the guest's addresses up to tries times, until every
// interface with a MAC other than loopback has an address.
func (w *agentWatch) readAddrs(ctx context.Context, publish func(map[string]string), sender actor.SenderContext, tries int) {
	for i := 0; i < tries; i++ {
		if i > 0 && !sleep(ctx, guestAddrsInterval) {
			return
		}
		ifs, err := agent.Interfaces(ctx, sender, w.pid)
		if err != nil {
			continue
		}
		byMAC, complete := guestAddrsOf(ifs)
		publish(byMAC)
		if complete {
			return
		}
	}
}

// guestAddrsOf picks each guest interface's address, keyed by its MAC in
// lower case: the first IPv4 address that is not loopback or link-local,
// else the first such IPv6 address. complete reports whether every
// interface with a MAC (but loopback) has one. The agent's answer is
// hostile input: unparsable addresses and MACs are left out.
func guestAddrsOf(ifs []agent.Interface) (byMAC map[string]string, complete bool) {
	byMAC = map[string]string{}
	complete = true
	for _, i := range ifs {
		hw, err := net.ParseMAC(i.MAC)
		mac := hw.String()
		if err != nil || len(hw) != 6 || mac == "00:00:00:00:00:00" {
			continue
		}
		var v4, v6 string
		for _, p := range i.Addresses() {
			a := p.Addr()
			if a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsUnspecified() || a.IsMulticast() {
				continue
			}
			if a.Is4() && v4 == "" {
				v4 = a.String()
			} else if !a.Is4() && v6 == "" {
				v6 = a.String()
			}
		}
		switch {
		case v4 != "":
			byMAC[mac] = v4
		case v6 != "":
			byMAC[mac] = v6
		default:
			complete = false
		}
	}
	return byMAC, complete
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// withGuestIPs returns nics (the host resources' slice, which it never
// changes) with each NIC's GuestIP from the addresses the agent gave. The
// copy is kept until the NICs or the addresses change, so that Info,
// published after nearly every message, stays cheap.
func (dom *domainActor) withGuestIPs(nics []domain.NIC) []domain.NIC {
	if len(dom.guestAddrs) == 0 || len(nics) == 0 {
		return nics
	}
	if dom.ipNICs != nil && dom.ipNICsSrc == &nics[0] && len(dom.ipNICs) == len(nics) {
		return dom.ipNICs
	}
	out := slices.Clone(nics)
	for i := range out {
		if ip, ok := dom.guestAddrs[strings.ToLower(out[i].MAC)]; ok {
			out[i].GuestIP = ip
		}
	}
	dom.ipNICs, dom.ipNICsSrc = out, &nics[0]
	return out
}

// setGuestAddrs records the watcher's news.
func (dom *domainActor) setGuestAddrs(m guestAddrs) {
	if m.from != dom || dom.agent == nil || m.watch != dom.agent {
		return // a watcher of an earlier QEMU or instance
	}
	dom.guestAddrs, dom.ipNICs = m.byMAC, nil
}
