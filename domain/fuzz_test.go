package domain_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/domain/qemuargs"
)

func readSpecFile(tb testing.TB, name string) []byte {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

func FuzzParseSpec(f *testing.F) {
	for _, name := range []string{"full.yaml", "full.json", "minimal.yaml", "machine-none.yaml", "bad-many.yaml", "unknown-field.yaml"} {
		f.Add(readSpecFile(f, name))
	}
	f.Add([]byte("name: g\nnetworks:\n  - forwards: ['tcp:127.0.0.1:2222-:22', 'udp::0-:53']\n  - {type: tap, bridge: br0, mac: '52:54:00:00:00:01'}\n" +
		"disks:\n  - {image: /b.qcow2, format: qcow2, size: 8G}\n  - {path: /d.raw}\ncloud_init: {hostname: g, user_data: \"#cloud-config\\n{}\\n\"}\n"))
	f.Add([]byte("name: g\nnetworks: [{forwards: ['tcp::8080-:80']}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := domain.ParseSpec(data)
		if err != nil {
			if s != nil {
				t.Fatal("spec returned with an error")
			}
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("parsed spec does not validate: %v", err)
		}
		// A parsed spec survives a JSON round trip unchanged ...
		js, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		back, err := domain.ParseSpec(js)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", js, err)
		}
		if !reflect.DeepEqual(back, s) {
			t.Fatalf("round trip changed the spec:\n%+v\n%+v", s, back)
		}
		// ... and builds a command line.
		paths, err := qemuargs.NewRunPaths("/run/vmsup", s.Name)
		if err != nil {
			t.Fatal(err)
		}
		args, err := qemuargs.BuildArgs(s, paths, domain.AccelTCG, nil)
		if err != nil {
			// Image disks, taps and seeds need the host resources, and
			// forwards with host port 0 a resolved port.
			if s.CloudInit == nil && len(s.Networks) == 0 && !slices.ContainsFunc(s.Disks, func(d domain.Disk) bool { return d.Image != "" }) {
				t.Fatalf("BuildArgs: %v", err)
			}
			return
		}
		if len(args) == 0 || args[0] != "-name" {
			t.Fatalf("args %q", args)
		}
	})
}
