// Package peer reads the credentials of a unix-socket peer (SO_PEERCRED and
// SO_PEERGROUPS) and decides what that peer may do with the vmsup API.
//
// The credentials are those of the process that connected, taken by the
// kernel at connect time: a client cannot forge them. Group membership is
// the peer process's own (its primary and supplementary groups), as for a
// file's permissions, not what /etc/group says now.
package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/user"
	"slices"
	"strconv"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Cred is what the kernel says about a connected peer.
type Cred struct {
	// PID, UID and GID of the process that connected.
	PID int32
	UID uint32
	GID uint32
	// Groups are its supplementary groups (SO_PEERGROUPS).
	Groups []uint32
}

// InGroup reports whether gid is the peer's primary or one of its
// supplementary groups.
func (c Cred) InGroup(gid uint32) bool {
	return c.GID == gid || slices.Contains(c.Groups, gid)
}

// maxGroups bounds the groups read from SO_PEERGROUPS (Linux's NGROUPS_MAX
// is 65536).
const maxGroups = 65536

// FromConn returns the credentials of a unix-socket connection's peer.
func FromConn(c net.Conn) (Cred, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return Cred{}, fmt.Errorf("peer credentials: %T is not a socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	var cred Cred
	var opErr error
	err = raw.Control(func(fd uintptr) {
		u, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			opErr = fmt.Errorf("SO_PEERCRED: %w", err)
			return
		}
		cred = Cred{PID: u.Pid, UID: u.Uid, GID: u.Gid}
		cred.Groups, opErr = peerGroups(int(fd))
	})
	if err == nil {
		err = opErr
	}
	if err != nil {
		return Cred{}, fmt.Errorf("peer credentials: %w", err)
	}
	return cred, nil
}

// peerGroups reads SO_PEERGROUPS, growing the buffer when the kernel says
// it is too small.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		n := uint32(len(buf) * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case e == 0:
			return buf[:n/4], nil
		case e == unix.ERANGE && int(n/4) > len(buf) && n/4 <= maxGroups:
			buf = make([]uint32, n/4)
		default:
			return nil, fmt.Errorf("SO_PEERGROUPS: %w", e)
		}
	}
}

type ctxKey struct{}

type ctxValue struct {
	cred Cred
	err  error
}

// ConnContext is an http.Server ConnContext: it reads the peer's
// credentials once per connection and keeps them (or why they could not be
// read) in the connection's context.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	cred, err := FromConn(c)
	return context.WithValue(ctx, ctxKey{}, ctxValue{cred: cred, err: err})
}

// WithCred returns ctx carrying cred, as ConnContext would for a peer with
// those credentials.
func WithCred(ctx context.Context, cred Cred) context.Context {
	return context.WithValue(ctx, ctxKey{}, ctxValue{cred: cred})
}

// ErrNoCred is returned by FromContext when the context carries no
// credentials: the connection did not pass through ConnContext.
var ErrNoCred = errors.New("peer credentials unavailable (not a unix-socket connection)")

// FromContext returns the credentials ConnContext stored.
func FromContext(ctx context.Context) (Cred, error) {
	v, ok := ctx.Value(ctxKey{}).(ctxValue)
	if !ok {
		return Cred{}, ErrNoCred
	}
	return v.cred, v.err
}

// Access is what a peer may do.
type Access int

// Levels of access, each including the one before.
const (
	// None: nothing.
	None Access = iota
	// Read: the read-only routes (list, info, jobs, events, trace).
	Read
	// Admin: the whole API.
	Admin
)

// String names the level.
func (a Access) String() string {
	switch a {
	case None:
		return "none"
	case Read:
		return "read"
	case Admin:
		return "admin"
	}
	return "access(" + strconv.Itoa(int(a)) + ")"
}

// Group is a group the policy grants access to.
type Group struct {
	// Name is how the operator gave it (for messages).
	Name string
	// GID is its id.
	GID uint32
}

// Policy decides what a peer may do.
type Policy struct {
	// AdminUIDs get the full API: uid 0 and the daemon's own uid.
	AdminUIDs []uint32
	// AdminGroup, when set, gets the full API.
	AdminGroup *Group
	// ReaderGroup, when set, gets the read-only routes.
	ReaderGroup *Group
}

// DefaultPolicy is the policy of a daemon run as uid self: uid 0 and self
// are admins, and nobody else.
func DefaultPolicy(self uint32) Policy {
	p := Policy{AdminUIDs: []uint32{0}}
	if self != 0 {
		p.AdminUIDs = append(p.AdminUIDs, self)
	}
	return p
}

// Decide returns what c may do under p.
func (p Policy) Decide(c Cred) Access {
	switch {
	case slices.Contains(p.AdminUIDs, c.UID):
		return Admin
	case p.AdminGroup != nil && c.InGroup(p.AdminGroup.GID):
		return Admin
	case p.ReaderGroup != nil && c.InGroup(p.ReaderGroup.GID):
		return Read
	}
	return None
}

// DeniedError says who was refused what, and what would allow it.
type DeniedError struct {
	Cred Cred
	// Have and Need are the peer's access and what the request needs.
	Have, Need Access
	// What the request was (e.g. "POST /v1/domains").
	What string
	// Hint names what grants Need.
	Hint string
}

// Error reads like: permission denied: uid 65534 (pid 4242) may not POST
// /v1/domains: it needs admin access (uid 0, or group "vmsup" (gid 990)).
func (e *DeniedError) Error() string {
	msg := fmt.Sprintf("permission denied: uid %d (pid %d) may not %s: it needs %s access (%s)", e.Cred.UID, e.Cred.PID, e.What, e.Need, e.Hint)
	if e.Have == Read {
		msg += "; it has read-only access"
	}
	return msg
}

// Check returns nil when c may do what (a request needing need), else a
// *DeniedError.
func (p Policy) Check(c Cred, need Access, what string) error {
	have := p.Decide(c)
	if have >= need {
		return nil
	}
	return &DeniedError{Cred: c, Have: have, Need: need, What: what, Hint: p.hint(need)}
}

// hint names who has access level need.
func (p Policy) hint(need Access) string {
	var who []string
	for _, u := range p.AdminUIDs {
		who = append(who, "uid "+strconv.FormatUint(uint64(u), 10))
	}
	if p.AdminGroup != nil {
		who = append(who, p.AdminGroup.describe("--admin-group"))
	}
	if need == Read && p.ReaderGroup != nil {
		who = append(who, p.ReaderGroup.describe("--reader-group"))
	}
	s := ""
	for i, w := range who {
		switch {
		case i == 0:
		case i == len(who)-1:
			s += ", or "
		default:
			s += ", "
		}
		s += w
	}
	if p.AdminGroup == nil && p.ReaderGroup == nil {
		s += "; the daemon grants no group access (--admin-group, --reader-group)"
	}
	return s
}

func (g *Group) describe(flag string) string {
	if g.Name == strconv.FormatUint(uint64(g.GID), 10) {
		return fmt.Sprintf("a member of gid %d (%s)", g.GID, flag)
	}
	return fmt.Sprintf("a member of group %q (gid %d, %s)", g.Name, g.GID, flag)
}

// ErrNoSuchGroup is returned by LookupGroup for a group that does not exist.
var ErrNoSuchGroup = errors.New("no such group")

// LookupGroup resolves a group given by name or by numeric id. A number is
// taken as a gid even when no group of that id is listed.
func LookupGroup(nameOrGID string) (*Group, error) {
	if nameOrGID == "" {
		return nil, errors.New("empty group name")
	}
	if id, err := strconv.ParseUint(nameOrGID, 10, 32); err == nil {
		return &Group{Name: nameOrGID, GID: uint32(id)}, nil
	}
	g, err := user.LookupGroup(nameOrGID)
	if err != nil {
		var unknown user.UnknownGroupError
		if errors.As(err, &unknown) {
			return nil, fmt.Errorf("group %q: %w", nameOrGID, ErrNoSuchGroup)
		}
		return nil, fmt.Errorf("group %q: %w", nameOrGID, err)
	}
	id, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("group %q: gid %q is not a number", nameOrGID, g.Gid)
	}
	return &Group{Name: nameOrGID, GID: uint32(id)}, nil
}
