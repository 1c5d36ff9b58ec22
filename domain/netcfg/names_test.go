package netcfg

import (
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestValidateType(t *testing.T) {
	for _, ok := range []string{"user", "tap"} {
		if err := ValidateType("networks[0].type", ok); err != nil {
			t.Errorf("ValidateType(%q): %v", ok, err)
		}
	}
	for in, want := range map[string]string{
		"":       `networks[0].type: required: "user" or "tap"`,
		"User":   `networks[0].type: network type "User" must be "user" or "tap"`,
		"bridge": `networks[0].type: network type "bridge" must be "user" or "tap"`,
	} {
		got := fieldProblems(t, ValidateType("networks[0].type", in))
		if len(got) != 1 || got[0] != want {
			t.Errorf("ValidateType(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestValidateBridge(t *testing.T) {
	for _, ok := range []string{"br0", "virbr0", "br-lan", "vmbr0.100", "a", "B_1", "123456789012345"} {
		if err := ValidateBridge("networks[1].bridge", ok); err != nil {
			t.Errorf("ValidateBridge(%q): %v", ok, err)
		}
	}
	for in, want := range map[string]string{
		"":                 "required",
		"1234567890123456": "longer than 15 bytes",
		"-br0":             "must start with a letter or digit",
		".":                "must start with a letter or digit",
		"..":               "must start with a letter or digit",
		"br/0":             "may only hold",
		"br 0":             "may only hold",
		"br:0":             "may only hold",
		"br0\n":            "may only hold",
		"brü":              "may only hold",
		"br0,ifname=x":     "may only hold",
	} {
		got := fieldProblems(t, ValidateBridge("networks[1].bridge", in))
		if len(got) != 1 || !strings.HasPrefix(got[0], "networks[1].bridge: ") || !strings.Contains(got[0], want) {
			t.Errorf("ValidateBridge(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTapName(t *testing.T) {
	id := uuid.MustParse("6f1c2a3e-9b4d-4e8f-a1b2-c3d4e5f60718")
	// Tap names are found again after a daemon restart by their prefix:
	// a change of the algorithm would leak the taps of running domains.
	if got := TapPrefix(id); got != "vmsup06242693" {
		t.Errorf("TapPrefix(%s) = %q", id, got)
	}
	for index, want := range map[int]string{0: "vmsup0624269300", 1: "vmsup0624269301", 255: "vmsup06242693ff"} {
		got, err := TapName(id, index)
		if err != nil || got != want {
			t.Errorf("TapName(%s, %d) = %q, %v, want %q", id, index, got, err, want)
		}
		if len(got) > MaxIfNameLen {
			t.Errorf("TapName %q is longer than %d bytes", got, MaxIfNameLen)
		}
		if err := ValidateBridge("x", got); err != nil {
			t.Errorf("TapName %q is not a valid interface name: %v", got, err)
		}
	}
	for _, index := range []int{-1, 256, 1 << 20} {
		if got, err := TapName(id, index); err == nil {
			t.Errorf("TapName(%s, %d) = %q, want an error", id, index, got)
		}
	}
	if got := TapTag(id); got != "vmsup domain 6f1c2a3e-9b4d-4e8f-a1b2-c3d4e5f60718" {
		t.Errorf("TapTag = %q", got)
	}
}
