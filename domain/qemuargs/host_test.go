package qemuargs_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/netcfg"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

func hostTestSpec(t *testing.T, yaml string) *domain.Spec {
	t.Helper()
	s, err := domain.ParseSpec([]byte("name: h\nuuid: 0f8fad5b-d9cb-469f-a165-70867728950e\nserial: {type: none}\n" + yaml))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// hostTestAfter returns the args after -pidfile, the agent channel and
// the pvpanic device.
func hostTestAfter(t *testing.T, s *domain.Spec, host *qemuargs.Host) []string {
	t.Helper()
	paths, _ := qemuargs.NewRunPaths("/run/vmsup", s.Name)
	args, err := qemuargs.BuildArgs(s, paths, domain.AccelTCG, host)
	if err != nil {
		t.Fatal(err)
	}
	rest := args[slices.Index(args, paths.PIDFile)+1:]
	if qemuargs.HasAgentChannel(args) {
		rest = rest[6:]
	}
	if len(rest) >= 2 && rest[1] == "pvpanic" {
		rest = rest[2:]
	}
	return rest
}

func TestBuildArgsNICsAndSeed(t *testing.T) {
	s := hostTestSpec(t, `
networks:
  - forwards: ["tcp:127.0.0.1:0-:22", "udp::5353-:53"]
  - {type: tap, bridge: br0, mac: "52:54:00:00:00:07"}
disks:
  - {image: /base.qcow2, format: qcow2, size: 1G}
cloud_init: {hostname: h}
`)
	fw, err := s.Forwards(0)
	if err != nil {
		t.Fatal(err)
	}
	fw[0].HostPort = 40022 // as ResolveForwards would
	mac0, _ := s.MAC(0)
	mac1, _ := s.MAC(1)
	host := &qemuargs.Host{
		Disks: []string{"/state/h/disk0.qcow2"},
		NICs:  []qemuargs.NIC{{MAC: mac0, Forwards: fw}, {MAC: mac1, Tap: "vmsupabcdef0101"}},
		Seed:  "/state/h/seed.iso",
	}
	want := []string{
		"-blockdev", `{"discard":"unmap","driver":"file","filename":"/state/h/disk0.qcow2","node-name":"disk0-file","read-only":false}`,
		"-blockdev", `{"discard":"unmap","driver":"qcow2","file":"disk0-file","node-name":"disk0","read-only":false}`,
		"-device", "virtio-blk-pci,drive=disk0,id=virtio-disk0",
		"-blockdev", `{"discard":"unmap","driver":"file","filename":"/state/h/seed.iso","node-name":"seed-file","read-only":true}`,
		"-blockdev", `{"discard":"unmap","driver":"raw","file":"seed-file","node-name":"seed","read-only":true}`,
		"-device", "virtio-blk-pci,drive=seed,id=virtio-seed",
		"-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=udp::5353-:53",
		"-device", "virtio-net-pci,netdev=net0,mac=" + mac0.String() + ",id=nic0",
		"-netdev", "tap,id=net1,ifname=vmsupabcdef0101,script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=net1,mac=52:54:00:00:00:07,id=nic1",
		"-device", "pcie-root-port,id=hp0,bus=pcie.0,chassis=1", "-device", "pcie-root-port,id=hp1,bus=pcie.0,chassis=2",
		"-device", "pcie-root-port,id=hp2,bus=pcie.0,chassis=3", "-device", "pcie-root-port,id=hp3,bus=pcie.0,chassis=4",
	}
	if got := hostTestAfter(t, s, host); !slices.Equal(got, want) {
		t.Fatalf("args:\n got %q\nwant %q", got, want)
	}
	if !mac0.IsLocal() || mac0.IsMulticast() {
		t.Errorf("derived MAC %s is not a local unicast address", mac0)
	}
}

func TestBuildArgsHostErrors(t *testing.T) {
	paths, _ := qemuargs.NewRunPaths("/run/vmsup", "h")
	for _, tc := range []struct {
		yaml string
		host *qemuargs.Host
		frag string
	}{
		{"networks: [{forwards: ['tcp::0-:22']}]", nil, "host port 0"},
		{"disks: [{image: /b.qcow2}]", nil, `"disks[0].image"`},
		{"networks: [{type: tap, bridge: br0}]", nil, `"networks[0]"`},
		{"cloud_init: {hostname: h}", nil, `"cloud_init"`},
		{"networks: [{type: tap, bridge: br0}]", &qemuargs.Host{NICs: []qemuargs.NIC{{MAC: netcfg.MAC{2}}}}, "no tap device"},
		{"networks: [{}]", &qemuargs.Host{}, "do not match"},
		{"disks: [{path: /a}]", &qemuargs.Host{Disks: []string{"/a"}, Seed: "/s"}, "do not match"},
	} {
		s := hostTestSpec(t, tc.yaml)
		_, err := qemuargs.BuildArgs(s, paths, domain.AccelTCG, tc.host)
		if err == nil || !strings.Contains(err.Error(), tc.frag) {
			t.Errorf("%s: err %v, want %q", tc.yaml, err, tc.frag)
		}
	}
	// A plain spec needs no host resources.
	s := hostTestSpec(t, "networks: [{forwards: ['tcp:127.0.0.1:2222-:22']}]\ndisks: [{path: /a}]")
	got := hostTestAfter(t, s, nil)
	if !slices.Contains(got, "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22") {
		t.Errorf("plain host args %q", got)
	}
}
