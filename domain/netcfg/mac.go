package netcfg

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/uuid"
)

// MAC is an Ethernet address.
type MAC [6]byte

// String returns the address as six lower-case hex pairs separated by
// colons, the form QEMU's "mac=" property takes.
func (m MAC) String() string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// IsZero reports whether m is 00:00:00:00:00:00.
func (m MAC) IsZero() bool { return m == MAC{} }

// IsMulticast reports whether m is a group address (broadcast included).
func (m MAC) IsMulticast() bool { return m[0]&0x01 != 0 }

// IsLocal reports whether m is locally administered.
func (m MAC) IsLocal() bool { return m[0]&0x02 != 0 }

// DeriveMAC returns the MAC of NIC index of the domain with the given UUID:
// a locally administered unicast address whose other 46 bits come from a
// SHA-256 of the UUID and the index, so it is the same on every start and
// differs between NICs and domains.
func DeriveMAC(id uuid.UUID, index int) MAC {
	h := sha256.New()
	h.Write([]byte("vmsup nic mac\x00"))
	h.Write(id[:])
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], uint64(index))
	h.Write(idx[:])
	var m MAC
	copy(m[:], h.Sum(nil))
	m[0] = (m[0] | 0x02) &^ 0x01
	return m
}

// HostTapMAC returns the address to give the host side of the tap that
// carries guest: guest's address with its first octet set to 0xfe. A Linux
// bridge takes the lowest address of its ports as its own, so a port whose
// address starts with 0xfe never changes the bridge's address.
func HostTapMAC(guest MAC) MAC {
	guest[0] = 0xfe
	return guest
}

var errMACSyntax = errors.New(`must be six hex pairs separated by ":" or "-", as in "52:54:00:12:34:56"`)

// ParseMAC parses a user's MAC from the spec field field: six hex pairs
// separated by ":" or "-" (not mixed), in either case. It rejects the zero
// address and multicast (group) addresses, broadcast included, because a
// NIC cannot use them.
func ParseMAC(field, s string) (MAC, error) {
	var m MAC
	if len(s) != 17 {
		return m, fieldErr(field, "invalid MAC %s: %v", quote(s), errMACSyntax)
	}
	sep := s[2]
	if sep != ':' && sep != '-' {
		return m, fieldErr(field, "invalid MAC %s: %v", quote(s), errMACSyntax)
	}
	for i := 0; i < 6; i++ {
		if i > 0 && s[3*i-1] != sep {
			return m, fieldErr(field, "invalid MAC %s: %v", quote(s), errMACSyntax)
		}
		hi, ok1 := hexVal(s[3*i])
		lo, ok2 := hexVal(s[3*i+1])
		if !ok1 || !ok2 {
			return m, fieldErr(field, "invalid MAC %s: %v", quote(s), errMACSyntax)
		}
		m[i] = hi<<4 | lo
	}
	switch {
	case m.IsZero():
		return MAC{}, fieldErr(field, "MAC %s is the zero address", quote(s))
	case m.IsMulticast():
		return MAC{}, fieldErr(field, "MAC %s is a multicast address (the low bit of the first octet is set); a NIC needs a unicast address such as %s", quote(s), unicastHint(m))
	}
	return m, nil
}

// unicastHint returns m as a locally administered unicast address.
func unicastHint(m MAC) string {
	m[0] = (m[0] | 0x02) &^ 0x01
	return m.String()
}

func hexVal(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// CheckDuplicateMACs returns an error for each MAC in macs that an earlier
// entry already uses, naming the field prefix[i].mac of the later entry
// and the index of the earlier one. macs[i] is the MAC of NIC i, given or
// derived. It returns nil when all differ.
func CheckDuplicateMACs(prefix string, macs []MAC) error {
	first := make(map[MAC]int, len(macs))
	var errs []error
	for i, m := range macs {
		if j, ok := first[m]; ok {
			errs = append(errs, fieldErr(fmt.Sprintf("%s[%d].mac", prefix, i), "MAC %s is already used by %s[%d]", m, prefix, j))
			continue
		}
		first[m] = i
	}
	return errors.Join(errs...)
}
