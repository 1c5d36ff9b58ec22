package netcfg

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Protocols a forward can carry.
const (
	ProtoTCP = "tcp"
	ProtoUDP = "udp"
)

// MaxForwardLen is the longest forward string ParseForward reads.
const MaxForwardLen = 128

// UserNetwork is the guest network of QEMU's user-mode (slirp) netdev with
// its defaults: the gateway is .2, the DNS server .3 and DHCP hands out
// addresses from .15 up.
var UserNetwork = netip.MustParsePrefix("10.0.2.0/24")

// forwardSyntax is the form a forward takes, for error messages.
const forwardSyntax = `use "proto:[hostaddr]:hostport-[guestaddr]:guestport", as in "tcp:127.0.0.1:2222-:22" or "tcp::0-:22"`

// Forward is one host-to-guest port forward of a user-mode NIC.
type Forward struct {
	// Field is the spec field the forward was parsed from, such as
	// "networks[0].forwards[1]"; errors about the forward name it.
	Field string
	// Proto is ProtoTCP or ProtoUDP.
	Proto string
	// HostAddr is the IPv4 address to listen on; the zero Addr (written
	// as nothing) and 0.0.0.0 mean every address of the host.
	HostAddr netip.Addr
	// HostPort is the host port; 0 means "pick a free port at start"
	// (see ResolveForwards).
	HostPort uint16
	// GuestAddr is the guest's IPv4 address in UserNetwork; the zero
	// Addr means the address the guest got from QEMU's DHCP server.
	GuestAddr netip.Addr
	// GuestPort is the guest port, 1 to 65535.
	GuestPort uint16
}

// ParseForward parses the forward s of the spec field field, written
// "proto:[hostaddr]:hostport-[guestaddr]:guestport": proto is tcp or udp,
// the addresses are IPv4 and may be left empty, hostport is 0 to 65535
// (0: pick a free port at start) and guestport 1 to 65535. Errors are
// *FieldErrors naming field.
func ParseForward(field, s string) (Forward, error) {
	f := Forward{Field: field}
	bad := func(format string, args ...any) (Forward, error) {
		return Forward{}, fieldErr(field, "invalid forward %s: %s", quote(s), fmt.Sprintf(format, args...))
	}
	if s == "" {
		return bad("empty; %s", forwardSyntax)
	}
	if len(s) > MaxForwardLen {
		return bad("longer than %d bytes", MaxForwardLen)
	}
	if strings.ContainsAny(s, "[]") {
		return bad("IPv6 addresses are not supported by QEMU's user-mode forwards; use an IPv4 address or leave it empty")
	}
	proto, rest, ok := strings.Cut(s, ":")
	if !ok {
		return bad("no protocol; %s", forwardSyntax)
	}
	switch proto {
	case ProtoTCP, ProtoUDP:
		f.Proto = proto
	default:
		return bad("protocol %s must be %q or %q", quote(proto), ProtoTCP, ProtoUDP)
	}
	host, guest, ok := strings.Cut(rest, "-")
	if !ok || strings.Contains(guest, "-") {
		return bad("must have exactly one \"-\" between the host and the guest side; %s", forwardSyntax)
	}
	hostAddr, hostPort, ok := strings.Cut(host, ":")
	if !ok || strings.Contains(hostPort, ":") {
		return bad("host side %s must be \"[hostaddr]:hostport\"", quote(host))
	}
	guestAddr, guestPort, ok := strings.Cut(guest, ":")
	if !ok || strings.Contains(guestPort, ":") {
		return bad("guest side %s must be \"[guestaddr]:guestport\"", quote(guest))
	}

	var err error
	if f.HostAddr, err = parseHostAddr(hostAddr); err != nil {
		return bad("host address: %v", err)
	}
	if f.HostPort, err = parsePort(hostPort); err != nil {
		return bad("host port: %v", err)
	}
	if f.GuestAddr, err = parseGuestAddr(guestAddr); err != nil {
		return bad("guest address: %v", err)
	}
	if f.GuestPort, err = parsePort(guestPort); err != nil {
		return bad("guest port: %v", err)
	}
	if f.GuestPort == 0 {
		return bad("guest port must be from 1 to 65535")
	}
	return f, nil
}

func parseHostAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%s is not an IPv4 address", quote(s))
	}
	if a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return netip.Addr{}, fmt.Errorf("%s is not a unicast address", a)
	}
	return a, nil
}

func parseGuestAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%s is not an IPv4 address", quote(s))
	}
	if !UserNetwork.Contains(a) {
		return netip.Addr{}, fmt.Errorf("%s is outside the user-mode network %s; leave it empty to reach the guest's DHCP address", a, UserNetwork)
	}
	switch a.As4()[3] {
	case 0, 255:
		return netip.Addr{}, fmt.Errorf("%s is the network or broadcast address of %s", a, UserNetwork)
	case 2, 3:
		return netip.Addr{}, fmt.Errorf("%s is QEMU's own gateway or DNS address, not the guest's", a)
	}
	return a, nil
}

// parsePort parses a decimal port without sign or leading zeros.
func parsePort(s string) (uint16, error) {
	if s == "" {
		return 0, errors.New("missing")
	}
	if len(s) > 5 || strings.Trim(s, "0123456789") != "" || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%s must be a whole number from 0 to 65535 without leading zeros", quote(s))
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("%s must be from 0 to 65535", quote(s))
	}
	return uint16(n), nil
}

// String returns the forward in the syntax ParseForward reads, with empty
// addresses left empty ("tcp::0-:22").
func (f Forward) String() string {
	var b strings.Builder
	b.WriteString(f.Proto)
	b.WriteByte(':')
	if f.HostAddr.IsValid() {
		b.WriteString(f.HostAddr.String())
	}
	b.WriteByte(':')
	b.WriteString(strconv.Itoa(int(f.HostPort)))
	b.WriteByte('-')
	if f.GuestAddr.IsValid() {
		b.WriteString(f.GuestAddr.String())
	}
	b.WriteByte(':')
	b.WriteString(strconv.Itoa(int(f.GuestPort)))
	return b.String()
}

// HostFwd returns the forward as an option of QEMU's "-netdev user",
// such as "hostfwd=tcp:127.0.0.1:2222-:22". The host port must have been
// resolved: a forward whose host port is 0 is an error, because QEMU would
// pick a port that vmsup could not report.
func (f Forward) HostFwd() (string, error) {
	if f.HostPort == 0 {
		return "", fieldErr(f.Field, "forward %s has host port 0; resolve it with ResolveForwards first", quote(f.String()))
	}
	if f.Proto != ProtoTCP && f.Proto != ProtoUDP || f.GuestPort == 0 {
		return "", fieldErr(f.Field, "forward %s is not valid", quote(f.String()))
	}
	return "hostfwd=" + f.String(), nil
}

// hostAny reports whether the forward listens on every host address.
func (f Forward) hostAny() bool {
	return !f.HostAddr.IsValid() || f.HostAddr.IsUnspecified()
}

// overlaps reports whether f and g would listen on the same host socket.
func (f Forward) overlaps(g Forward) bool {
	return f.Proto == g.Proto && f.HostPort == g.HostPort &&
		(f.hostAny() || g.hostAny() || f.HostAddr == g.HostAddr)
}

// hostDesc describes the host socket of f for error messages.
func (f Forward) hostDesc() string {
	addr := "every address"
	if !f.hostAny() {
		addr = f.HostAddr.String()
	}
	return fmt.Sprintf("%s port %d on %s", f.Proto, f.HostPort, addr)
}

// CheckForwards returns an error for each forward in fwds whose explicit
// host port would listen on the same socket as an earlier one (same
// protocol and port, and the same address or one of them every address).
// It does no I/O; ResolveForwards also checks the host at start.
func CheckForwards(fwds []Forward) error {
	var errs []error
	for i, f := range fwds {
		if f.HostPort == 0 {
			continue
		}
		for _, g := range fwds[:i] {
			if f.overlaps(g) {
				errs = append(errs, fieldErr(f.Field, "host %s is already forwarded by %s", f.hostDesc(), g.Field))
				break
			}
		}
	}
	return errors.Join(errs...)
}
