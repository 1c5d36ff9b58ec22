package domain

import (
	"errors"
	"testing"
)

func TestLiveFindAndPorts(t *testing.T) {
	l := &Live{
		Disks: []LiveDisk{{Node: "disk0", Path: "/img/a"}, {Node: "hot1", Path: "/img/b", Bus: "hp0", Hotplugged: true}},
		NICs:  []LiveNIC{{Device: "nic0", Netdev: "net0", MAC: "52:54:00:00:00:01"}, {Device: "hnic2", Netdev: "hnet2", MAC: "52:54:00:00:00:02", Bus: "hp1"}},
		Ports: []string{"hp0", "hp1", "hp2"},
		Next:  3,
	}
	for target, want := range map[string]int{"disk0": 0, "hot1": 1, "virtio-hot1": 1, "/img/b": 1} {
		if i, err := l.FindDisk(target); err != nil || i != want {
			t.Errorf("FindDisk(%q) = %d, %v; want %d", target, i, err, want)
		}
	}
	for _, bad := range []string{"", "hot9", "virtio-", "/img", "disk0-file"} {
		if _, err := l.FindDisk(bad); err == nil {
			t.Errorf("FindDisk(%q) found a disk", bad)
		} else if bad != "" && !errors.Is(err, ErrNoDevice) {
			t.Errorf("FindDisk(%q) = %v, want ErrNoDevice", bad, err)
		}
	}
	for target, want := range map[string]int{"52:54:00:00:00:02": 1, "52:54:00:00:00:01": 0, "52:54:00:00:00:0": -1, "nic0": 0, "hnic2": 1, "1": 1, "0": 0, "01": -1, "2": -1, "-1": -1, "+1": -1} {
		i, err := l.FindNIC(target)
		if want < 0 {
			if err == nil {
				t.Errorf("FindNIC(%q) = %d, want no NIC", target, i)
			}
			continue
		}
		if err != nil || i != want {
			t.Errorf("FindNIC(%q) = %d, %v; want %d", target, i, err, want)
		}
	}
	if p, ok := l.FreePort(); !ok || p != "hp2" {
		t.Errorf("FreePort = %q, %v; want hp2", p, ok)
	}
	c := l.Clone()
	c.Disks = append(c.Disks, LiveDisk{Node: "hot3", Bus: "hp2"})
	c.Disks[0].Path = "/img/changed"
	if p, ok := c.FreePort(); ok {
		t.Errorf("FreePort with every port taken = %q", p)
	}
	if len(l.Disks) != 2 || l.Disks[0].Path != "/img/a" {
		t.Error("Clone shares the disks")
	}
	if p, ok := (&Live{}).FreePort(); !ok || p != "" {
		t.Errorf("FreePort without ports = %q, %v; want the root bus", p, ok)
	}
}
