package netcfg

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
)

// ResolveForwards is called when the domain starts. It checks every
// forward's host socket against the host, and returns a copy of fwds in
// which each host port 0 is replaced by a port that was free a moment ago.
// While it runs, every socket stays bound, so the ports it picks differ
// from each other and from the explicit ones. Between its return and
// QEMU's bind another process may still take a port; QEMU then fails to
// start and says so.
//
// Errors are *FieldErrors naming the forward's field: a host port that is
// already in use, a port the process may not bind, or a host address that
// is not one of this host's.
func ResolveForwards(fwds []Forward) ([]Forward, error) {
	if err := CheckForwards(fwds); err != nil {
		return nil, err
	}
	out := make([]Forward, len(fwds))
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	var errs []error
	for i, f := range fwds {
		out[i] = f
		port, c, err := bindHost(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		held = append(held, c)
		out[i].HostPort = port
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// bindHost binds the host socket of f (port 0 lets the kernel pick) and
// returns the bound port and the socket.
func bindHost(f Forward) (uint16, io.Closer, error) {
	addr := f.HostAddr
	if !addr.IsValid() {
		addr = netip.IPv4Unspecified()
	}
	ap := netip.AddrPortFrom(addr, f.HostPort)
	var (
		c     io.Closer
		local net.Addr
		err   error
	)
	switch f.Proto {
	case ProtoTCP:
		var l *net.TCPListener
		l, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(ap))
		if err == nil {
			c, local = l, l.Addr()
		}
	case ProtoUDP:
		var u *net.UDPConn
		u, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap))
		if err == nil {
			c, local = u, u.LocalAddr()
		}
	default:
		return 0, nil, fieldErr(f.Field, "protocol %s must be %q or %q", quote(f.Proto), ProtoTCP, ProtoUDP)
	}
	if err != nil {
		return 0, nil, bindError(f, err)
	}
	var port int
	switch a := local.(type) {
	case *net.TCPAddr:
		port = a.Port
	case *net.UDPAddr:
		port = a.Port
	}
	if port <= 0 || port > 65535 {
		c.Close()
		return 0, nil, fieldErr(f.Field, "the kernel bound %s to port %d", f.hostDesc(), port)
	}
	return uint16(port), c, nil
}

// bindError turns a failed bind into a *FieldError that says why.
func bindError(f Forward, err error) error {
	what := f.hostDesc()
	if f.HostPort == 0 {
		what = fmt.Sprintf("a free %s port on %s", f.Proto, hostAddrDesc(f))
	}
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fieldErr(f.Field, "host %s is already in use", what)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fieldErr(f.Field, "host %s: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)", what)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fieldErr(f.Field, "host address %s is not an address of this host", f.HostAddr)
	}
	return fieldErr(f.Field, "cannot bind host %s: %v", what, err)
}

func hostAddrDesc(f Forward) string {
	if f.hostAny() {
		return "every address"
	}
	return f.HostAddr.String()
}
