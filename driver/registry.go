package driver

import (
	"sync"
	"time"

	"github.com/vmsup/vmsup/domain"
)

// registry is the driver's published name → domain index. The driver
// actor is its only writer (at define, undefine and restart; Close empties
// it once the actors have stopped); API calls read it without a message,
// the way libvirt's API calls find a domain under the domain list's read
// lock. It lets Info be answered from the domain's last published snapshot
// with no actor hop, and keeps the driver's mailbox off the hot path of
// queries. It holds the driver actor's own entries; readers use only
// their pid, snap and agent, which never change once an entry is made.
type registry struct {
	m sync.Map // name → *entry
}

func (r *registry) put(e *entry) { r.m.Store(e.name, e) }

func (r *registry) remove(name string) { r.m.Delete(name) }

func (r *registry) clear() { r.m.Clear() }

func (r *registry) get(name string) (*entry, bool) {
	v, ok := r.m.Load(name)
	if !ok {
		return nil, false
	}
	return v.(*entry), true
}

// info returns a copy of the domain's last published Info with its
// control age recomputed now and the guest agent's live status
// (entry.info), or false when the domain is not in the registry or has
// published nothing yet.
func (r *registry) info(name string) (*domain.Info, bool) {
	e, ok := r.get(name)
	if !ok {
		return nil, false
	}
	in := e.info(time.Now())
	return in, in != nil
}
