package vm

import (
	"encoding/json"
	"testing"

	"github.com/vmsup/vmsup/domain/agent"
)

// The guest's addresses from guest-network-get-interfaces, which is
// hostile input: loopback, link-local and unparsable addresses and MACs
// are left out; IPv4 wins over IPv6; an interface with a MAC and no
// address leaves the answer incomplete.
func TestGuestAddrsOf(t *testing.T) {
	var ifs []agent.Interface
	if err := json.Unmarshal([]byte(`[
	 {"name":"lo","hardware-address":"00:00:00:00:00:00","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"127.0.0.1","prefix":8}]},
	 {"name":"eth0","hardware-address":"52:54:00:AB:CD:EF","ip-addresses":[
	   {"ip-address-type":"ipv6","ip-address":"fe80::1","prefix":64},
	   {"ip-address-type":"ipv6","ip-address":"2001:db8::5","prefix":64},
	   {"ip-address-type":"ipv4","ip-address":"10.0.2.15","prefix":24}]},
	 {"name":"eth1","hardware-address":"52:54:00:00:00:02","ip-addresses":[{"ip-address-type":"ipv6","ip-address":"2001:db8::7","prefix":64}]},
	 {"name":"bad","hardware-address":"<script>alert(1)</x>","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"10.9.9.9","prefix":24}]},
	 {"name":"junk","hardware-address":"52:54:00:00:00:03","ip-addresses":[{"ip-address-type":"ipv4","ip-address":"999.1.1.1","prefix":24},{"ip-address-type":"ipv4","ip-address":"10.1.1.1","prefix":99}]}
	]`), &ifs); err != nil {
		t.Fatal(err)
	}
	got, complete := guestAddrsOf(ifs)
	want := map[string]string{"52:54:00:ab:cd:ef": "10.0.2.15", "52:54:00:00:00:02": "2001:db8::7"}
	if len(got) != len(want) {
		t.Fatalf("addresses %v, want %v", got, want)
	}
	for mac, ip := range want {
		if got[mac] != ip {
			t.Errorf("address of %s = %q, want %q (all: %v)", mac, got[mac], ip, got)
		}
	}
	if complete {
		t.Error("complete with an interface (junk) that has no usable address")
	}
	if _, complete := guestAddrsOf(ifs[:3]); !complete {
		t.Error("not complete although every interface with a MAC has an address")
	}
}
