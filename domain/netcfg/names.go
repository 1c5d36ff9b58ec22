package netcfg

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/google/uuid"
)

// Network types.
const (
	TypeUser = "user" // QEMU user-mode networking (slirp)
	TypeTap  = "tap"  // a tap device on a host bridge; needs root
)

// ValidateType checks the network type t of the spec field field.
func ValidateType(field, t string) error {
	switch t {
	case TypeUser, TypeTap:
		return nil
	case "":
		return fieldErr(field, "required: %q or %q", TypeUser, TypeTap)
	}
	return fieldErr(field, "network type %s must be %q or %q", quote(t), TypeUser, TypeTap)
}

// MaxIfNameLen is the longest Linux interface name: IFNAMSIZ (16) less the
// terminating NUL.
const MaxIfNameLen = 15

// ValidateBridge checks the bridge name of the spec field field: 1 to 15
// bytes of ASCII letters, digits, "_", "." and "-", starting with a letter
// or digit.
func ValidateBridge(field, name string) error {
	if name == "" {
		return fieldErr(field, "required for a tap network: the name of an existing host bridge")
	}
	if len(name) > MaxIfNameLen {
		return fieldErr(field, "bridge name %s is longer than %d bytes, the limit of Linux interface names", quote(name), MaxIfNameLen)
	}
	if !isAlnum(name[0]) {
		return fieldErr(field, "bridge name %s must start with a letter or digit", quote(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return fieldErr(field, "bridge name %s may only hold ASCII letters, digits, \"_\", \".\" and \"-\"", quote(name))
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// MaxTapIndex is the highest NIC index TapName encodes.
const MaxTapIndex = 0xff

// TapPrefix returns the name prefix of every tap of the domain with the
// given UUID: "vmsup" and 8 hex digits of a SHA-256 of the UUID, 13 bytes.
func TapPrefix(id uuid.UUID) string {
	sum := sha256.Sum256(append([]byte("vmsup tap\x00"), id[:]...))
	return "vmsup" + hex.EncodeToString(sum[:4])
}

// TapName returns the name of the tap of NIC index of the domain with the
// given UUID: TapPrefix and the index as two hex digits, 15 bytes, the
// longest name Linux allows. The index must be from 0 to MaxTapIndex.
func TapName(id uuid.UUID, index int) (string, error) {
	if index < 0 || index > MaxTapIndex {
		return "", fmt.Errorf("NIC index %d: a tap name encodes indexes 0 to %d", index, MaxTapIndex)
	}
	return fmt.Sprintf("%s%02x", TapPrefix(id), index), nil
}

// TapTag returns the tag that marks a tap as belonging to the domain with
// the given UUID. The tap package stores it in the link's alias and deletes
// only taps that carry it, so a tap whose name happens to share the prefix
// is never taken for the domain's.
func TapTag(id uuid.UUID) string {
	return "vmsup domain " + id.String()
}
