package domain

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/vmsup/vmsup/domain/netcfg"
)

const netTestKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq3cIIPWEVR6xCdtlPzzyc+b9Kdp3WVIMC5o3UOOmPU user@host"

func TestParseSpecNetworksDisksCloudInit(t *testing.T) {
	s, err := ParseSpec([]byte(`
name: demo
uuid: 6f1c2a3e-9b4d-4e8f-a1b2-c3d4e5f60718
kernel: /k
networks:
  - forwards: ["tcp:127.0.0.1:2222-:22", "udp::0-:53"]
  - type: tap
    bridge: br0
    mac: "52:54:00:aa:bb:cc"
disks:
  - image: /images/base.qcow2
    format: qcow2
    size: 8G
  - path: /data.raw
cloud_init:
  hostname: demo
  ssh_authorized_keys: ["` + netTestKey + `"]
  user_data: "#cloud-config\npackages: [curl]\n"
  network_config: "version: 2\nethernets: {}\n"
`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Networks[0].Type != netcfg.TypeUser {
		t.Errorf("networks[0].type defaults to %q, want user", s.Networks[0].Type)
	}
	m0, err := s.MAC(0)
	if err != nil {
		t.Fatal(err)
	}
	if want := netcfg.DeriveMAC(uuid.MustParse(s.UUID), 0); m0 != want {
		t.Errorf("derived MAC %s, want %s", m0, want)
	}
	if m1, _ := s.MAC(1); m1.String() != "52:54:00:aa:bb:cc" {
		t.Errorf("given MAC read as %s", m1)
	}
	fw, err := s.Forwards(0)
	if err != nil || len(fw) != 2 || fw[0].HostPort != 2222 || fw[1].Proto != "udp" || fw[1].Field != "networks[0].forwards[1]" {
		t.Errorf("forwards %+v, %v", fw, err)
	}
	if s.Disks[0].Size != 8*GiB || s.Disks[0].Image != "/images/base.qcow2" {
		t.Errorf("disk %+v", s.Disks[0])
	}
	if s.CloudInit == nil || s.CloudInit.Hostname != "demo" || len(s.CloudInit.SSHAuthorizedKeys) != 1 {
		t.Errorf("cloud_init %+v", s.CloudInit)
	}
	c := s.Clone()
	c.Networks[0].Forwards[0] = "x"
	c.CloudInit.SSHAuthorizedKeys[0] = "x"
	if s.Networks[0].Forwards[0] == "x" || s.CloudInit.SSHAuthorizedKeys[0] == "x" {
		t.Error("Clone shares the networks or cloud_init of the original")
	}
}

func TestParseSpecNetworkFieldErrors(t *testing.T) {
	for _, tc := range []struct {
		yaml  string
		field string
		frag  string
	}{
		{"networks: [{type: vde}]", "networks[0].type", "must be"},
		{"networks: [{mac: '01:00:5e:00:00:01'}]", "networks[0].mac", "multicast"},
		{"networks: [{mac: 'zz'}]", "networks[0].mac", "invalid MAC"},
		{"networks: [{mac: '52:54:00:00:00:01'}, {mac: '52:54:00:00:00:01'}]", "networks[1].mac", "already used by networks[0]"},
		{"networks: [{forwards: ['tcp:1.2.3.4:22']}]", "networks[0].forwards[0]", "invalid forward"},
		{"networks: [{forwards: ['sctp::1-:2']}]", "networks[0].forwards[0]", "protocol"},
		{"networks: [{forwards: ['tcp::2222-:22', 'tcp:127.0.0.1:2222-:80']}]", "networks[0].forwards[1]", "already forwarded"},
		{"networks: [{forwards: ['tcp::2222-:22']}, {forwards: ['tcp::2222-:23']}]", "networks[1].forwards[0]", "already forwarded by networks[0].forwards[0]"},
		{"networks: [{bridge: br0}]", "networks[0].bridge", "only for type \"tap\""},
		{"networks: [{type: tap}]", "networks[0].bridge", "required"},
		{"networks: [{type: tap, bridge: 'a/b'}]", "networks[0].bridge", "may only hold"},
		{"networks: [{type: tap, bridge: br0, forwards: ['tcp::1-:2']}]", "networks[0].forwards", "only for type \"user\""},
		{"networks: [{type: user, color: red}]", "networks[0].color", "unknown field"},
		{"networks: {type: user}", "networks", "must be a list"},
		{"disks: [{path: /a, image: /b}]", "disks[0].image", "set together with path"},
		{"disks: [{image: rel.qcow2}]", "disks[0].image", "absolute"},
		{"disks: [{image: /b, size: 1000}]", "disks[0].size", "multiple of 512"},
		{"disks: [{image: /b, readonly: true}]", "disks[0].readonly", "not supported"},
		{"disks: [{path: /a, size: 1G}]", "disks[0].size", "only for image disks"},
		{"disks: [{format: raw}]", "disks[0].path", "required (or image)"},
		{"disks: [{image: /b, size: lots}]", "disks[0].size", ""},
		{"cloud_init: {hostname: -bad}", "cloud_init.hostname", "must not start or end"},
		{"cloud_init: {ssh_authorized_keys: [nope]}", "cloud_init.ssh_authorized_keys[0]", "not an SSH public key"},
		{"cloud_init: {user_data: hello}", "cloud_init.user_data", "cloud-init ignores it"},
		{"cloud_init: {user_data_file: rel.yaml}", "cloud_init.user_data_file", "absolute"},
		{"cloud_init: {user_data: '#!/bin/sh', user_data_file: /u}", "cloud_init.user_data_file", "together"},
		{"cloud_init: {network_config: 'version: 3'}", "cloud_init.network_config", "version 3"},
		{"cloud_init: {password: x}", "cloud_init.password", "unknown field"},
		{"machine: none\nnetworks: [{}]", "networks", "machine \"none\""},
		{"machine: none\ncloud_init: {}", "cloud_init", "machine \"none\""},
	} {
		_, err := ParseSpec([]byte("name: a\nkernel: /k\n" + tc.yaml + "\n"))
		if err == nil {
			t.Errorf("%s: accepted", tc.yaml)
			continue
		}
		fields := specTestFields(err)
		if !slices.Contains(fields, tc.field) {
			t.Errorf("%s: error %q names fields %v, want %s", tc.yaml, err, fields, tc.field)
			continue
		}
		if !strings.Contains(err.Error(), tc.frag) {
			t.Errorf("%s: error %q lacks %q", tc.yaml, err, tc.frag)
		}
	}
}

func TestNICOfDevice(t *testing.T) {
	for name, want := range map[any]string{"nic0": "networks[0]", "nic3": "networks[3]", "nic4": "", "nic": "", "nic01": "", "nic-1": "", "net0": "", 7: "", nil: "", "nic1000": ""} {
		got, ok := NICOfDevice(name, 4)
		if got != want || ok != (want != "") {
			t.Errorf("NICOfDevice(%v) = %q, %v; want %q", name, got, ok, want)
		}
	}
}

// TestSpecNetworksDefault: a spec without networks has no NIC, and a
// network without a type is a user network, for root and others alike.
func TestSpecNetworksDefault(t *testing.T) {
	s, err := ParseSpec([]byte("name: a\nnetworks: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Networks != nil {
		t.Errorf("networks: [] became %v, want nil", s.Networks)
	}
	s, err = ParseSpec([]byte("name: a\nnetworks: [{}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Networks[0].Type != netcfg.TypeUser {
		t.Errorf("type %q", s.Networks[0].Type)
	}
}
