// Package protocol holds the messages of the driver actor. They are plain
// data, so that they can cross a process boundary later; the driver package
// builds and answers them. Domain jobs are not among them: API calls send
// those to the domain actor itself (see domain/vm).
package protocol

import (
	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/supervision"
)

// InjectPanicIn is a fault-test hook: the driver forwards it to the named
// domain, which panics (see supervision.InjectPanic).
type InjectPanicIn struct {
	Domain string
	supervision.InjectPanic
}

// DefineRequest defines a domain or updates its definition (a driver job).
type DefineRequest struct {
	actors.Request
	Spec *domain.Spec
	// Force replaces a broken definition of the same name.
	Force bool
}

// UndefineRequest removes a shut-off domain (a driver job).
type UndefineRequest struct {
	actors.Request
	Name string
}

// Undefined is the reply to UndefineRequest.
type Undefined struct{ Name string }

// LookupRequest finds a domain's actor (a query, answered at once).
type LookupRequest struct {
	actors.Request
	Name string
}

// DomainRef is the reply to LookupRequest.
type DomainRef struct {
	Name string
	UUID string
	PID  *actor.PID
}

// ListRequest lists every domain (a query, answered at once) as []domain.Info.
type ListRequest struct{}

// JobsRequest asks for the driver's job lane (a query, answered at once)
// as an *actors.LaneSnapshot.
type JobsRequest struct{}

// ExplainRequest asks who holds the driver's lane that the jobs of the
// request RequestID wait for (a query, answered at once) as an
// *actors.Explanation. The API sends it when its wait for a driver job
// ended; the request's queued jobs whose caller gave up leave the queue
// first.
type ExplainRequest struct {
	RequestID string
}
