package netcfg

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestDeriveMAC(t *testing.T) {
	id := uuid.MustParse("6f1c2a3e-9b4d-4e8f-a1b2-c3d4e5f60718")
	// The derived MAC is part of a domain's identity: a change of the
	// algorithm would give every existing guest a new NIC address.
	if got, want := DeriveMAC(id, 0).String(), "66:b8:aa:f3:24:66"; got != want {
		t.Errorf("DeriveMAC(%s, 0) = %s, want %s", id, got, want)
	}
	if DeriveMAC(id, 0) != DeriveMAC(id, 0) {
		t.Error("DeriveMAC is not stable")
	}
	seen := map[MAC]string{}
	for i := 0; i < 2000; i++ {
		id := uuid.New()
		for nic := 0; nic < 4; nic++ {
			m := DeriveMAC(id, nic)
			if m.IsMulticast() || !m.IsLocal() || m.IsZero() {
				t.Fatalf("DeriveMAC(%s, %d) = %s: not a locally administered unicast address", id, nic, m)
			}
			if _, err := ParseMAC("mac", m.String()); err != nil {
				t.Fatalf("derived MAC %s does not parse: %v", m, err)
			}
			key := id.String() + "/" + string(rune('0'+nic))
			if prev, dup := seen[m]; dup {
				t.Fatalf("DeriveMAC gave %s to both %s and %s", m, prev, key)
			}
			seen[m] = key
		}
	}
}

func TestHostTapMAC(t *testing.T) {
	g := MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	h := HostTapMAC(g)
	if h.String() != "fe:54:00:12:34:56" {
		t.Errorf("HostTapMAC(%s) = %s", g, h)
	}
	if h.IsMulticast() || !h.IsLocal() {
		t.Errorf("HostTapMAC(%s) = %s is not locally administered unicast", g, h)
	}
	if g.String() != "52:54:00:12:34:56" {
		t.Errorf("HostTapMAC changed its argument to %s", g)
	}
}

func TestParseMAC(t *testing.T) {
	good := map[string]string{
		"52:54:00:12:34:56": "52:54:00:12:34:56",
		"52:54:00:AB:cd:EF": "52:54:00:ab:cd:ef",
		"02-00-00-00-00-01": "02:00:00:00:00:01",
		"00:16:3e:00:00:01": "00:16:3e:00:00:01", // a vendor (globally administered) address is allowed
	}
	for in, want := range good {
		m, err := ParseMAC("networks[0].mac", in)
		if err != nil {
			t.Errorf("ParseMAC(%q): %v", in, err)
			continue
		}
		if m.String() != want {
			t.Errorf("ParseMAC(%q) = %s, want %s", in, m, want)
		}
	}
	bad := map[string]string{
		"":                     "six hex pairs",
		"52:54:00:12:34":       "six hex pairs",
		"52:54:00:12:34:56:78": "six hex pairs",
		"52:54:00-12:34:56":    "six hex pairs",
		"52.54.00.12.34.56":    "six hex pairs",
		"5254.0012.3456":       "six hex pairs",
		"52:54:00:12:34:5g":    "six hex pairs",
		" 52:54:00:12:34:5":    "six hex pairs",
		"52:54:00:12:34:56\n":  "six hex pairs",
		"+2:54:00:12:34:56":    "six hex pairs",
		"00:00:00:00:00:00":    "zero address",
		"01:00:5e:00:00:01":    "multicast",
		"ff:ff:ff:ff:ff:ff":    "multicast",
		"53:54:00:12:34:56":    "52:54:00:12:34:56", // the hint
	}
	for in, want := range bad {
		_, err := ParseMAC("networks[2].mac", in)
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("ParseMAC(%q) = %v, want a *FieldError", in, err)
			continue
		}
		if fe.Field != "networks[2].mac" || !strings.Contains(fe.Problem, want) {
			t.Errorf("ParseMAC(%q) = %v, want field networks[2].mac and %q", in, err, want)
		}
	}
}

func TestCheckDuplicateMACs(t *testing.T) {
	a := MAC{0x52, 0x54, 0, 0, 0, 1}
	b := MAC{0x52, 0x54, 0, 0, 0, 2}
	if err := CheckDuplicateMACs("networks", []MAC{a, b}); err != nil {
		t.Errorf("distinct MACs: %v", err)
	}
	if err := CheckDuplicateMACs("networks", nil); err != nil {
		t.Errorf("no MACs: %v", err)
	}
	err := CheckDuplicateMACs("networks", []MAC{a, b, a, b, a})
	fields := fieldProblems(t, err)
	want := []string{
		"networks[2].mac: MAC 52:54:00:00:00:01 is already used by networks[0]",
		"networks[3].mac: MAC 52:54:00:00:00:02 is already used by networks[1]",
		"networks[4].mac: MAC 52:54:00:00:00:01 is already used by networks[0]",
	}
	if strings.Join(fields, "\n") != strings.Join(want, "\n") {
		t.Errorf("CheckDuplicateMACs errors:\n%s\nwant:\n%s", strings.Join(fields, "\n"), strings.Join(want, "\n"))
	}
}
