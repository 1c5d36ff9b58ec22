package driver

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmsup/vmsup/domain"
)

// TestEntryInfoReadsTheLiveAgentStatus: Info shows the agent's own status
// as soon as the agent stores it, before the domain republishes, and only
// while the published Info says an agent runs.
func TestEntryInfoReadsTheLiveAgentStatus(t *testing.T) {
	published := &domain.AgentStatus{State: domain.AgentAvailable}
	e := &entry{name: "web", snap: &atomic.Pointer[domain.Info]{}, agent: &atomic.Pointer[atomic.Pointer[domain.AgentStatus]]{}}
	if in := e.info(time.Now()); in != nil {
		t.Fatalf("info before any publish = %+v, want nil", in)
	}
	e.snap.Store(&domain.Info{Name: "web", State: domain.StateRunning, Agent: published})

	if in := e.info(time.Now()); in.Agent != published {
		t.Errorf("no live agent: Agent = %+v, want the published %+v", in.Agent, published)
	}

	live := &atomic.Pointer[domain.AgentStatus]{}
	e.agent.Store(live)
	if in := e.info(time.Now()); in.Agent != published {
		t.Errorf("live agent with no status yet: Agent = %+v, want the published one", in.Agent)
	}
	failed := &domain.AgentStatus{State: domain.AgentUnavailable, Reason: `"guest-ping": deadline exceeded`}
	live.Store(failed)
	in := e.info(time.Now())
	if in.Agent != failed {
		t.Errorf("after the agent stored its failure: Agent = %+v, want %+v", in.Agent, failed)
	}
	if e.snap.Load().Agent != published {
		t.Error("info changed the published snapshot")
	}

	// QEMU exited: the domain published no agent; a live status left
	// behind must not bring one back.
	e.snap.Store(&domain.Info{Name: "web", State: domain.StateShutoff})
	if in := e.info(time.Now()); in.Agent != nil {
		t.Errorf("no agent published: Agent = %+v, want nil", in.Agent)
	}
}
