package actors

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync/atomic"
	"time"
)

// Request is the envelope header that every request message embeds. It
// carries the caller's context (so a queued job can leave the queue when its
// caller gives up) and the trace context that tracing builds on.
type Request struct {
	// Ctx is the caller's context. A nil Ctx means context.Background().
	Ctx context.Context `json:"-"`
	// RequestID identifies the API call this message is part of.
	RequestID string `json:"request_id"`
	// ParentID is the id of the message or job that caused this one; empty
	// for a message sent straight from the API.
	ParentID string `json:"parent_id,omitempty"`
	// Owner names the API call that sent it, for example "api shutdown".
	Owner string `json:"owner,omitempty"`
	// Expires is when the caller stops waiting; zero for no time beyond
	// Ctx. Unlike Ctx it crosses the wire. A lane drops a queued job whose
	// Expires has passed, as it drops one whose Ctx has ended, so a
	// caller bounds its wait without a timeout context of its own.
	Expires time.Time `json:"expires,omitempty"`

	// stamp is the trace middleware's stamp of the send that delivers this
	// message (see actors/trace): carried in the message itself, so that a
	// traced send of a request allocates no header map.
	stamp string
}

// TraceStamp is where the trace middleware keeps the stamp of the send that
// delivers a message embedding r. Only the sender's middleware writes it,
// before the message is posted, so a request message must be sent to one
// actor at a time.
func (r *Request) TraceStamp() *string { return &r.stamp }

// Context returns the caller's context, never nil.
func (r Request) Context() context.Context {
	if r.Ctx == nil {
		return context.Background()
	}
	return r.Ctx
}

// Expiry is the instant a caller with ctx stops waiting: ctx's deadline,
// or DefaultTimeout from now when it has none (as Ask bounds its wait).
func Expiry(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(time.Duration(defaultTimeout.Load()))
}

// Envelope gives access to the Request header of a message.
type Envelope interface {
	Header() Request
}

// Header returns the request itself, so that every message embedding Request
// implements Envelope.
func (r Request) Header() Request { return r }

type requestIDKey struct{}

// WithRequestID returns a context that makes the next API call use id as
// its request (trace) id, so that a daemon can hand out the id it returns
// to its client (X-Request-Id) and a user can find the call's trace.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// NewRequest starts a trace for one API call made on behalf of owner. Its
// id comes from WithRequestID when ctx has one, else from NewID.
func NewRequest(ctx context.Context, owner string) Request {
	id, _ := ctx.Value(requestIDKey{}).(string)
	if id == "" {
		id = NewID()
	}
	return Request{Ctx: ctx, RequestID: id, Owner: owner}
}

// Child derives the header of a message sent on behalf of r: same request id,
// parent set to parentID, same owner. The context is replaced by ctx.
func (r Request) Child(ctx context.Context, parentID string) Request {
	return Request{Ctx: ctx, RequestID: r.RequestID, ParentID: parentID, Owner: r.Owner}
}

var idPrefix = func() string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "000000"
	}
	return hex.EncodeToString(b[:])
}()

var idCounter atomic.Uint64

// NewID returns a process-unique id such as "a1b2c3-42": a random prefix per
// process, then a counter, so ids stay short, sortable and unique across
// daemon restarts.
func NewID() string {
	n := idCounter.Add(1)
	return idPrefix + "-" + uitoa(n)
}

func uitoa(n uint64) string {
	var buf [20]byte
	i := len(buf)
	for {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return string(buf[i:])
}
