package driver

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/domain"
)

// registry is the driver's published name → domain index. The driver
// actor is its only writer (at define, undefine and restart; Close empties
// it once the actors have stopped); API calls
// read it without a message, the way libvirt's API calls find a domain
// under the domain list's read lock. It lets Info be answered from the
// domain's last published snapshot with no actor hop, and keeps the
// driver's mailbox off the hot path of queries.
type registry struct {
	m sync.Map // name → *published
}

// published is what the registry holds for one domain.
type published struct {
	pid  *actor.PID
	snap *atomic.Pointer[domain.Info]
}

func (r *registry) put(name string, p *published) { r.m.Store(name, p) }

func (r *registry) remove(name string) { r.m.Delete(name) }

func (r *registry) clear() { r.m.Clear() }

func (r *registry) get(name string) (*published, bool) {
	v, ok := r.m.Load(name)
	if !ok {
		return nil, false
	}
	return v.(*published), true
}

// info returns a copy of the domain's last published Info with its
// control age recomputed now, or false when the domain is not in the
// registry or has published nothing yet.
func (r *registry) info(name string) (*domain.Info, bool) {
	p, ok := r.get(name)
	if !ok {
		return nil, false
	}
	in := p.snap.Load()
	if in == nil {
		return nil, false
	}
	return in.Fresh(time.Now()), true
}
