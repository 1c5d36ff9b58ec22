package cli

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	yaml2 "go.yaml.in/yaml/v2"
	"golang.org/x/crypto/ssh"

	"github.com/vmsup/vmsup/cmd/internal/api"
)

func TestWithAuthorizedKey(t *testing.T) {
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq3cIIPWEVR6xCdtlPzzyc+b9Kdp3WVIMC5o3UOOmPU me"
	keysOf := func(data []byte) []string {
		var v struct {
			CloudInit struct {
				Keys []string `yaml:"ssh_authorized_keys"`
			} `yaml:"cloud_init"`
		}
		if err := yaml2.Unmarshal(data, &v); err != nil {
			t.Fatal(err)
		}
		return v.CloudInit.Keys
	}
	out := withAuthorizedKey([]byte("name: d\ncloud_init:\n  hostname: d\n"), key)
	if got := keysOf(out); !slices.Equal(got, []string{key}) || !strings.Contains(string(out), "hostname: d") {
		t.Fatalf("added to a cloud_init without keys:\n%s", out)
	}
	out = withAuthorizedKey([]byte("name: d\ncloud_init: {ssh_authorized_keys: [ssh-rsa AAAA other]}\n"), key)
	if got := keysOf(out); len(got) != 2 || got[1] != key {
		t.Fatalf("appended:\n%s", out)
	}
	if twice := withAuthorizedKey(out, key); string(twice) != string(out) {
		t.Fatalf("added twice:\n%s", twice)
	}
	out = withAuthorizedKey([]byte("name: d\ncloud_init:\n"), key)
	if got := keysOf(out); !slices.Equal(got, []string{key}) {
		t.Fatalf("empty cloud_init:\n%s", out)
	}
	for _, same := range []string{"name: d\n", "name: [broken\n", "name: d\ncloud_init: 3\n"} {
		if got := string(withAuthorizedKey([]byte(same), key)); got != same {
			t.Errorf("%q rewritten to %q", same, got)
		}
	}
	if !hasCloudInit([]byte("cloud_init: {}\n")) || hasCloudInit([]byte("name: d\n")) {
		t.Error("hasCloudInit")
	}
}

func TestEnsureKeyGeneratesOnce(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("VMSUP_CACHE", filepath.Join(home, "cache"))
	if p, _ := findKey(); p != "" {
		t.Fatalf("found %s in an empty home", p)
	}
	priv, pub, generated, err := ensureKey()
	if err != nil || !generated || priv != filepath.Join(home, "cache", "ssh", "id_ed25519") {
		t.Fatalf("ensureKey %s %v %v", priv, generated, err)
	}
	if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(pub)); err != nil {
		t.Fatalf("public key %q: %v", pub, err)
	}
	b, err := os.ReadFile(priv)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatalf("private key: %v", err)
	}
	if !strings.HasPrefix(pub, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))) {
		t.Fatal("private and public key differ")
	}
	if st, _ := os.Stat(priv); st.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %v", st.Mode())
	}
	if p2, pub2, gen2, err := ensureKey(); err != nil || gen2 || p2 != priv || pub2 != pub {
		t.Fatalf("second ensureKey %s %v %v", p2, gen2, err)
	}
	// The user's own key wins.
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(home, ".ssh", "id_ed25519")
	_ = os.WriteFile(own, b, 0o600)
	_ = os.WriteFile(own+".pub", []byte(pub+"\n"), 0o644)
	if p, _ := findKey(); p != own {
		t.Fatalf("findKey %s, want the user's %s", p, own)
	}
}

func TestSSHArgs(t *testing.T) {
	nics := []api.NIC{{Forwards: []api.PortForward{{Proto: "tcp", HostPort: 8080, GuestPort: 80}, {Proto: "udp", HostPort: 5000, GuestPort: 22}}},
		{Forwards: []api.PortForward{{Proto: "tcp", HostPort: 40022, GuestPort: 22}}}}
	f, ok := sshForward(nics)
	if !ok || f.HostPort != 40022 {
		t.Fatalf("sshForward %+v %v", f, ok)
	}
	got := sshArgs(f, "debian", "/k", nil, []string{"uname", "-a"})
	want := []string{"-p", "40022", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
		"-i", "/k", "-o", "IdentitiesOnly=yes", "--", "debian@127.0.0.1", "uname", "-a"}
	if !slices.Equal(got, want) {
		t.Fatalf("sshArgs\n got %q\nwant %q", got, want)
	}
	if _, ok := sshForward(nics[:1]); ok {
		t.Fatal("a UDP or non-22 forward taken for SSH")
	}
	err := noSSHForward("tiny", &api.Info{PID: 7})
	if !strings.Contains(err.Error(), "no forward to guest TCP port 22") {
		t.Fatal(err)
	}
}
