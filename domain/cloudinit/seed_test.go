package cloudinit

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
	yaml "go.yaml.in/yaml/v2"
)

const testUUID = "6f1c2a3e-9b4d-4e8f-a1b2-c3d4e5f60718"

func TestRender(t *testing.T) {
	key := testKey(t, `user@host "quoted" # not a comment`)
	restricted := `command="echo 'hi'",no-pty ` + testKey(t, "r")
	s, err := Render(&Config{Hostname: "demo", SSHAuthorizedKeys: []string{key, restricted}}, testUUID)
	if err != nil {
		t.Fatal(err)
	}
	var md map[string]any
	if err := yaml.UnmarshalStrict(s.MetaData, &md); err != nil {
		t.Fatalf("meta-data %q is not YAML: %v", s.MetaData, err)
	}
	want := map[string]any{"instance-id": testUUID, "local-hostname": "demo", "public-keys": []any{key, restricted}}
	if !reflect.DeepEqual(md, want) {
		t.Errorf("meta-data = %#v, want %#v\n%s", md, want, s.MetaData)
	}
	if string(s.UserData) != DefaultUserData || s.NetworkConfig != nil {
		t.Errorf("user-data %q, network-config %q", s.UserData, s.NetworkConfig)
	}

	// Without hostname and keys, meta-data holds the instance id alone.
	s, err = Render(&Config{UserData: "#!/bin/sh\necho hi\n", NetworkConfig: "version: 2\n"}, testUUID)
	if err != nil {
		t.Fatal(err)
	}
	if string(s.MetaData) != "instance-id: "+testUUID+"\n" || string(s.UserData) != "#!/bin/sh\necho hi\n" || string(s.NetworkConfig) != "version: 2\n" {
		t.Errorf("seed = %q / %q / %q", s.MetaData, s.UserData, s.NetworkConfig)
	}

	// A user data file is read when the seed is rendered.
	f := filepath.Join(t.TempDir(), "ud")
	if err := os.WriteFile(f, []byte("#cloud-config\nruncmd: [date]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = Render(&Config{UserDataFile: f}, testUUID)
	if err != nil || string(s.UserData) != "#cloud-config\nruncmd: [date]\n" {
		t.Errorf("Render with a user data file: %q, %v", s.UserData, err)
	}
	os.Remove(f)
	if _, err := Render(&Config{UserDataFile: f}, testUUID); len(problems(t, err)) != 1 || !strings.Contains(err.Error(), "cloud_init.user_data_file") {
		t.Errorf("Render with a missing user data file: %v", err)
	}

	if _, err := Render(&Config{Hostname: "-x"}, testUUID); len(problems(t, err)) != 1 {
		t.Errorf("Render of an invalid config: %v", err)
	}
	for _, id := range []string{"", "a b", "id\ninstance-id: other", strings.Repeat("a", 129), "ü"} {
		if _, err := Render(&Config{}, id); err == nil {
			t.Errorf("Render with instance id %q: no error", id)
		}
	}
}

func TestSeedHash(t *testing.T) {
	a := &Seed{MetaData: []byte("instance-id: x\n"), UserData: []byte(DefaultUserData)}
	b := &Seed{MetaData: []byte("instance-id: x\n"), UserData: []byte(DefaultUserData)}
	if a.Hash() != b.Hash() || !a.Equal(b) || len(a.Hash()) != 64 {
		t.Errorf("equal seeds: %s, %s, equal %v", a.Hash(), b.Hash(), a.Equal(b))
	}
	variants := []*Seed{
		{MetaData: []byte("instance-id: y\n"), UserData: []byte(DefaultUserData)},
		{MetaData: []byte("instance-id: x\n"), UserData: []byte(DefaultUserData + " ")},
		{MetaData: []byte("instance-id: x\n"), UserData: []byte(DefaultUserData), NetworkConfig: []byte{}},
		{MetaData: []byte("instance-id: x\n"), UserData: []byte(DefaultUserData), NetworkConfig: []byte("version: 2\n")},
		// The same bytes split differently between the files.
		{MetaData: []byte("instance-id: x\n#"), UserData: []byte(DefaultUserData[1:])},
	}
	seen := map[string]int{a.Hash(): -1}
	for i, v := range variants {
		if v.Equal(a) {
			t.Errorf("variant %d is Equal to the original", i)
		}
		if j, dup := seen[v.Hash()]; dup {
			t.Errorf("variants %d and %d have the same hash", i, j)
		}
		seen[v.Hash()] = i
	}
}

// isoinfo runs isoinfo from genisoimage, or skips the test.
func isoinfo(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := exec.LookPath("isoinfo")
	if err != nil {
		t.Skipf("isoinfo (genisoimage) not installed: %v", err)
	}
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("isoinfo %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// listing returns the file names (not . and ..) and modes of an isoinfo -l
// listing of the root directory.
func listing(t *testing.T, out string) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || len(f[0]) != 10 || (f[0][0] != '-' && f[0][0] != 'd') {
			continue
		}
		name := f[len(f)-1]
		if name == "." || name == ".." {
			continue
		}
		files[name] = f[0]
	}
	return files
}

func writeSeed(t *testing.T, path string, s *Seed) bool {
	t.Helper()
	changed, err := WriteISO(path, s)
	if err != nil {
		t.Fatal(err)
	}
	return changed
}

func TestWriteISO(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "seed.iso")
	key := testKey(t, "u@h")
	s, err := Render(&Config{Hostname: "demo", SSHAuthorizedKeys: []string{key}, NetworkConfig: "version: 2\nethernets:\n  eth0: {dhcp4: true}\n"}, testUUID)
	if err != nil {
		t.Fatal(err)
	}
	if !writeSeed(t, path, s) {
		t.Error("first WriteISO reported no change")
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("seed mode %s, want 0600", st.Mode())
	}
	if got := dirEntries(t, dir); !slices.Equal(got, []string{"seed.iso"}) {
		t.Errorf("dir holds %q after WriteISO", got)
	}

	// go-diskfs reads back what was written.
	back, err := ReadISO(path)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Equal(s) || back.Hash() != s.Hash() {
		t.Errorf("ReadISO = %q/%q/%q, want %q/%q/%q", back.MetaData, back.UserData, back.NetworkConfig, s.MetaData, s.UserData, s.NetworkConfig)
	}

	// So does genisoimage's isoinfo: the volume label, the Rock Ridge and
	// Joliet names, and each file's bytes.
	desc := isoinfo(t, "-d", "-i", path)
	if !strings.Contains(desc, "Volume id: cidata\n") || !strings.Contains(desc, "Rock Ridge signatures") || !strings.Contains(desc, "Joliet") {
		t.Errorf("isoinfo -d:\n%s", desc)
	}
	wantNames := []string{"meta-data", "network-config", "user-data"}
	for _, ext := range []string{"-R", "-J"} {
		files := listing(t, isoinfo(t, ext, "-l", "-i", path))
		names := slices.Sorted(func(yield func(string) bool) {
			for n := range files {
				if !yield(n) {
					return
				}
			}
		})
		if !slices.Equal(names, wantNames) {
			t.Errorf("isoinfo %s -l lists %q, want %q", ext, names, wantNames)
		}
		if ext == "-R" {
			for n, mode := range files {
				if mode != "-rw-r--r--" {
					t.Errorf("Rock Ridge mode of %s is %s", n, mode)
				}
			}
		}
	}
	for name, want := range map[string][]byte{"meta-data": s.MetaData, "user-data": s.UserData, "network-config": s.NetworkConfig} {
		if got := isoinfo(t, "-R", "-x", "/"+name, "-i", path); got != string(want) {
			t.Errorf("isoinfo -R -x /%s = %q, want %q", name, got, want)
		}
	}

	// util-linux's blkid, which is how cloud-init finds the seed.
	if blkid, err := exec.LookPath("blkid"); err == nil {
		out, err := exec.Command(blkid, "-p", "-o", "export", path).CombinedOutput()
		if err != nil {
			t.Fatalf("blkid: %v: %s", err, out)
		}
		if !strings.Contains(string(out), "\nLABEL=cidata\n") || !strings.Contains(string(out), "\nTYPE=iso9660\n") {
			t.Errorf("blkid -p -o export:\n%s", out)
		}
	} else {
		t.Logf("blkid not installed: %v", err)
	}

	// The same seed again: nothing is written.
	ino := st.Sys().(*syscall.Stat_t).Ino
	if writeSeed(t, path, s) {
		t.Error("WriteISO of the same seed reported a change")
	}
	st2, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st2.Sys().(*syscall.Stat_t).Ino != ino || !st2.ModTime().Equal(st.ModTime()) {
		t.Error("WriteISO of the same seed rewrote the file")
	}

	// A changed seed, now without network-config, replaces it.
	s2, err := Render(&Config{Hostname: "demo2", SSHAuthorizedKeys: []string{key}}, testUUID)
	if err != nil {
		t.Fatal(err)
	}
	if !writeSeed(t, path, s2) {
		t.Error("WriteISO of a changed seed reported no change")
	}
	if back, err := ReadISO(path); err != nil || !back.Equal(s2) || back.NetworkConfig != nil {
		t.Errorf("after the change ReadISO = %+v, %v", back, err)
	}
	files := listing(t, isoinfo(t, "-R", "-l", "-i", path))
	if _, ok := files["network-config"]; ok || len(files) != 2 {
		t.Errorf("after dropping network-config isoinfo lists %v", files)
	}
	if got := isoinfo(t, "-R", "-x", "/meta-data", "-i", path); !strings.Contains(got, "local-hostname: demo2\n") {
		t.Errorf("meta-data after the change: %q", got)
	}
	if got := dirEntries(t, dir); !slices.Equal(got, []string{"seed.iso"}) {
		t.Errorf("dir holds %q after the rewrite", got)
	}
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestWriteISOReplacesOther(t *testing.T) {
	dir := t.TempDir()
	s, err := Render(&Config{}, testUUID)
	if err != nil {
		t.Fatal(err)
	}
	// Garbage, an empty file, and an ISO with another label are all
	// replaced by the seed.
	garbage := filepath.Join(dir, "garbage.iso")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte("x"), 100000), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.iso")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "other.iso")
	writeISOLabel(t, other, "OTHER", s)
	if _, err := ReadISO(other); err == nil || !strings.Contains(err.Error(), `labelled "OTHER"`) {
		t.Errorf("ReadISO of an ISO labelled OTHER: %v", err)
	}
	for _, p := range []string{garbage, empty, other} {
		if !writeSeed(t, p, s) {
			t.Errorf("WriteISO over %s reported no change", p)
		}
		if back, err := ReadISO(p); err != nil || !back.Equal(s) {
			t.Errorf("ReadISO(%s) after WriteISO: %v", p, err)
		}
	}
	for _, p := range []string{"seed.iso", dir + "/../x.iso", ""} {
		if _, err := WriteISO(p, s); err == nil {
			t.Errorf("WriteISO(%q): no error", p)
		}
	}
	if _, err := WriteISO(filepath.Join(dir, "missing", "seed.iso"), s); err == nil {
		t.Error("WriteISO into a missing directory: no error")
	}
	if _, err := ReadISO(dir); err == nil {
		t.Error("ReadISO of a directory: no error")
	}
	big := filepath.Join(dir, "big.iso")
	if err := os.WriteFile(big, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(big, maxISO+1); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadISO(big); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Errorf("ReadISO of a 8 MiB+1 file: %v", err)
	}
}

// writeISOLabel writes s as an ISO labelled label, with go-diskfs directly.
func writeISOLabel(t *testing.T, path, label string, s *Seed) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	iso, err := iso9660.Create(file.New(f, false), 0, 0, isoBlockSize, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, sf := range s.files() {
		w, err := iso.OpenFile(sf.name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(sf.data)
		w.Close()
	}
	if err := iso.Finalize(iso9660.FinalizeOptions{RockRidge: true, VolumeIdentifier: label}); err != nil {
		t.Fatal(err)
	}
}
