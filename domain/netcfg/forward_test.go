package netcfg

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseForward(t *testing.T) {
	ip := netip.MustParseAddr
	good := []struct {
		in   string
		want Forward
		str  string // canonical form; "" means in
	}{
		{"tcp:127.0.0.1:2222-:22", Forward{Proto: "tcp", HostAddr: ip("127.0.0.1"), HostPort: 2222, GuestPort: 22}, ""},
		{"tcp::0-:22", Forward{Proto: "tcp", GuestPort: 22}, ""},
		{"udp::5353-10.0.2.15:53", Forward{Proto: "udp", HostPort: 5353, GuestAddr: ip("10.0.2.15"), GuestPort: 53}, ""},
		{"tcp:0.0.0.0:8080-10.0.2.100:80", Forward{Proto: "tcp", HostAddr: ip("0.0.0.0"), HostPort: 8080, GuestAddr: ip("10.0.2.100"), GuestPort: 80}, ""},
		{"tcp:127.0.0.1:65535-:65535", Forward{Proto: "tcp", HostAddr: ip("127.0.0.1"), HostPort: 65535, GuestPort: 65535}, ""},
		{"tcp:192.0.2.7:1-10.0.2.254:1", Forward{Proto: "tcp", HostAddr: ip("192.0.2.7"), HostPort: 1, GuestAddr: ip("10.0.2.254"), GuestPort: 1}, ""},
	}
	for _, c := range good {
		got, err := ParseForward("networks[0].forwards[3]", c.in)
		if err != nil {
			t.Errorf("ParseForward(%q): %v", c.in, err)
			continue
		}
		c.want.Field = "networks[0].forwards[3]"
		if got != c.want {
			t.Errorf("ParseForward(%q) = %+v, want %+v", c.in, got, c.want)
		}
		str := c.str
		if str == "" {
			str = c.in
		}
		if got.String() != str {
			t.Errorf("ParseForward(%q).String() = %q, want %q", c.in, got.String(), str)
		}
	}

	bad := map[string]string{
		"":                                          "empty",
		"tcp":                                       "no protocol",
		"TCP:127.0.0.1:2222-:22":                    `protocol "TCP" must be "tcp" or "udp"`,
		"sctp::1-:2":                                `protocol "sctp"`,
		":127.0.0.1:2222-:22":                       `protocol ""`,
		"tcp:127.0.0.1:2222":                        `exactly one "-"`,
		"tcp:127.0.0.1:2222-:22-:23":                `exactly one "-"`,
		"tcp:127.0.0.1-:22":                         "host side",
		"tcp:127.0.0.1:22:22-:22":                   "host side",
		"tcp:127.0.0.1:2222-22":                     "guest side",
		"tcp:127.0.0.1:2222-:22:1":                  "guest side",
		"tcp:localhost:2222-:22":                    `host address: "localhost" is not an IPv4 address`,
		"tcp:[::1]:2222-:22":                        "IPv6",
		"tcp:::1:2222-:22":                          "host side",
		"tcp:224.0.0.1:2222-:22":                    "not a unicast",
		"tcp:255.255.255.255:2222-:22":              "not a unicast",
		"tcp:127.0.0.1:-:22":                        "host port: missing",
		"tcp:127.0.0.1:65536-:22":                   "from 0 to 65535",
		"tcp:127.0.0.1:99999999-:22":                "from 0 to 65535",
		"tcp:127.0.0.1:022-:22":                     "leading zeros",
		"tcp:127.0.0.1:+22-:22":                     "whole number",
		"tcp:127.0.0.1: 22-:22":                     "whole number",
		"tcp:127.0.0.1:0x16-:22":                    "whole number",
		"tcp:127.0.0.1:2222-:0":                     "guest port must be from 1",
		"tcp:127.0.0.1:2222-:":                      "guest port: missing",
		"tcp:127.0.0.1:2222-10.0.3.5:22":            "outside the user-mode network 10.0.2.0/24",
		"tcp:127.0.0.1:2222-10.0.2.2:22":            "gateway or DNS",
		"tcp:127.0.0.1:2222-10.0.2.3:22":            "gateway or DNS",
		"tcp:127.0.0.1:2222-10.0.2.0:22":            "network or broadcast",
		"tcp:127.0.0.1:2222-10.0.2.255:22":          "network or broadcast",
		"tcp:127.0.0.1:2222-guest:22":               "not an IPv4 address",
		"tcp:127.0.0.1:2222-:22,hostfwd=tcp::1-:1":  `exactly one "-"`,
		"tcp:127.0.0.1:2222-:22\n":                  "guest port",
		"tcp:1.2.3.4:5-" + strings.Repeat("1", 200): "longer than 128 bytes",
	}
	for in, want := range bad {
		_, err := ParseForward("networks[1].forwards[0]", in)
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("ParseForward(%q) = %v, want a *FieldError", in, err)
			continue
		}
		if fe.Field != "networks[1].forwards[0]" || !strings.Contains(fe.Problem, want) {
			t.Errorf("ParseForward(%q):\n got %v\nwant field networks[1].forwards[0] and %q", in, err, want)
		}
	}
}

func TestForwardHostFwd(t *testing.T) {
	f, err := ParseForward("networks[0].forwards[0]", "tcp:127.0.0.1:2222-:22")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := f.HostFwd(); err != nil || got != "hostfwd=tcp:127.0.0.1:2222-:22" {
		t.Errorf("HostFwd() = %q, %v", got, err)
	}
	f, err = ParseForward("networks[0].forwards[1]", "udp::0-10.0.2.15:53")
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.HostFwd()
	if got := fieldProblems(t, err); len(got) != 1 || !strings.HasPrefix(got[0], "networks[0].forwards[1]: ") || !strings.Contains(got[0], "host port 0") {
		t.Errorf("HostFwd of an unresolved forward: %v", err)
	}
	f.HostPort = 5353
	if got, err := f.HostFwd(); err != nil || got != "hostfwd=udp::5353-10.0.2.15:53" {
		t.Errorf("HostFwd() = %q, %v", got, err)
	}
	if _, err := (Forward{Field: "x", Proto: "icmp", HostPort: 1, GuestPort: 1}).HostFwd(); err == nil {
		t.Error("HostFwd of a hand-made forward with protocol icmp: no error")
	}
}

func TestCheckForwards(t *testing.T) {
	parse := func(specs ...string) []Forward {
		var out []Forward
		for i, s := range specs {
			f, err := ParseForward("networks[0].forwards["+string(rune('0'+i))+"]", s)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, f)
		}
		return out
	}
	ok := [][]string{
		{"tcp:127.0.0.1:2222-:22", "udp:127.0.0.1:2222-:22"}, // tcp and udp ports are distinct
		{"tcp:127.0.0.1:2222-:22", "tcp:127.0.0.2:2222-:22"}, // distinct addresses
		{"tcp::0-:22", "tcp::0-:22", "tcp:127.0.0.1:0-:80"},  // port 0 never conflicts
		{"tcp:127.0.0.1:2222-:22", "tcp:127.0.0.1:2223-:22"}, // two host ports to one guest port
	}
	for _, specs := range ok {
		if err := CheckForwards(parse(specs...)); err != nil {
			t.Errorf("CheckForwards(%q): %v", specs, err)
		}
	}
	bad := []struct {
		specs []string
		want  []string
	}{
		{[]string{"tcp:127.0.0.1:2222-:22", "tcp:127.0.0.1:2222-:23"},
			[]string{"networks[0].forwards[1]: host tcp port 2222 on 127.0.0.1 is already forwarded by networks[0].forwards[0]"}},
		{[]string{"udp::53-:53", "tcp::53-:53", "udp:127.0.0.1:53-:53"},
			[]string{"networks[0].forwards[2]: host udp port 53 on 127.0.0.1 is already forwarded by networks[0].forwards[0]"}},
		{[]string{"tcp:127.0.0.1:80-:80", "tcp:0.0.0.0:80-:81", "tcp::80-:82"},
			[]string{
				"networks[0].forwards[1]: host tcp port 80 on every address is already forwarded by networks[0].forwards[0]",
				"networks[0].forwards[2]: host tcp port 80 on every address is already forwarded by networks[0].forwards[0]",
			}},
	}
	for _, c := range bad {
		got := fieldProblems(t, CheckForwards(parse(c.specs...)))
		if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
			t.Errorf("CheckForwards(%q):\n got %q\nwant %q", c.specs, got, c.want)
		}
	}
}

// FuzzParseForward checks that ParseForward never panics, that what it
// accepts prints back to itself (canonically) and parses to the same
// forward, and that the QEMU option it renders cannot smuggle in another
// option.
func FuzzParseForward(f *testing.F) {
	for _, s := range []string{
		"tcp:127.0.0.1:2222-:22", "tcp::0-:22", "udp::5353-10.0.2.15:53",
		"tcp:0.0.0.0:8080-10.0.2.100:80", "tcp:[::1]:22-:22", "tcp:127.0.0.1:022-:22",
		"tcp:1.2.3.4:5-:6,hostfwd=tcp::7-:8", "tcp:01.2.3.4:5-:6", "udp:127.0.0.1:65535-10.0.2.254:65535",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fw, err := ParseForward("networks[0].forwards[0]", s)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != "networks[0].forwards[0]" {
				t.Fatalf("ParseForward(%q) error %v does not name the field", s, err)
			}
			return
		}
		again, err := ParseForward("networks[0].forwards[0]", fw.String())
		if err != nil {
			t.Fatalf("ParseForward(%q).String() = %q does not parse: %v", s, fw.String(), err)
		}
		if again != fw {
			t.Fatalf("round trip of %q: %+v, then %+v", s, fw, again)
		}
		if fw.String() != s {
			// netip rejects every other spelling of an IPv4 address, so
			// what parses is already canonical.
			t.Fatalf("ParseForward(%q) accepted a non-canonical form; canonical %q", s, fw.String())
		}
		if fw.HostPort == 0 {
			fw.HostPort = 1
		}
		opt, err := fw.HostFwd()
		if err != nil {
			t.Fatalf("HostFwd of %q: %v", s, err)
		}
		if strings.ContainsAny(opt, ", \t\n\x00") || strings.Count(opt, "=") != 1 {
			t.Fatalf("HostFwd of %q = %q could inject QEMU options", s, opt)
		}
	})
}
