package cloudinit

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// testKey returns a fresh ed25519 public key in authorized_keys syntax.
func testKey(t *testing.T, comment string) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " " + comment
}

// problems returns "field: problem" for each *FieldError in err, failing
// the test on any other error.
func problems(t *testing.T, err error) []string {
	t.Helper()
	var out []string
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if u, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range u.Unwrap() {
				walk(x)
			}
			return
		}
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Errorf("error %v (%T) is not a *FieldError", e, e)
			return
		}
		out = append(out, fe.Field+": "+fe.Problem)
	}
	walk(err)
	return out
}

func TestValidateHostname(t *testing.T) {
	for _, ok := range []string{"demo", "web-1.example.com", "a", "1host", "123", "A-B", strings.Repeat("a", 63), strings.Repeat("a.", 126) + "a"} {
		if err := ValidateHostname(ok); err != nil {
			t.Errorf("ValidateHostname(%q): %v", ok, err)
		}
	}
	for in, want := range map[string]string{
		"":                         "empty",
		"-x":                       `must not start or end with "-"`,
		"x-":                       `must not start or end with "-"`,
		"a..b":                     "empty label",
		".a":                       "empty label",
		"a.":                       "empty label",
		"under_score":              "may only hold",
		"ünï":                      "may only hold",
		"a b":                      "may only hold",
		"a\n":                      "may only hold",
		strings.Repeat("a", 64):    "longer than 63",
		strings.Repeat("a.", 127):  "253",
		"1.2.3.4":                  "IP address",
		"::1":                      "IP address",
		"demo;rm -rf /":            "may only hold",
		"local-hostname: injected": "may only hold",
	} {
		err := ValidateHostname(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateHostname(%q) = %v, want %q", in, err, want)
		}
	}
}

func TestValidateAuthorizedKey(t *testing.T) {
	good := []string{
		testKey(t, "user@host"),
		strings.TrimSuffix(testKey(t, "x"), " x"), // no comment
		`command="echo hi",no-pty ` + testKey(t, "restricted key"),
	}
	// Keys from the real ssh-keygen, when it is installed.
	var private string
	if keygen, err := exec.LookPath("ssh-keygen"); err == nil {
		dir := t.TempDir()
		for _, typ := range []string{"ed25519", "rsa", "ecdsa"} {
			p := filepath.Join(dir, typ)
			if out, err := exec.Command(keygen, "-q", "-t", typ, "-N", "", "-C", "vmsup test", "-f", p).CombinedOutput(); err != nil {
				t.Fatalf("ssh-keygen -t %s: %v: %s", typ, err, out)
			}
			pub, err := os.ReadFile(p + ".pub")
			if err != nil {
				t.Fatal(err)
			}
			good = append(good, strings.TrimSpace(string(pub)))
		}
		b, err := os.ReadFile(filepath.Join(dir, "ed25519"))
		if err != nil {
			t.Fatal(err)
		}
		private = strings.TrimSpace(string(b))
	} else {
		t.Logf("ssh-keygen not installed (%v): checking Go-generated keys only", err)
	}
	for _, k := range good {
		if err := ValidateAuthorizedKey(k); err != nil {
			t.Errorf("ValidateAuthorizedKey(%q): %v", k, err)
		}
	}
	k := testKey(t, "a")
	bad := map[string]string{
		"":                                 "empty",
		"   ":                              "empty",
		"ssh-ed25519":                      "not an SSH public key",
		"ssh-ed25519 notbase64!! u@h":      "not an SSH public key",
		"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5": "not an SSH public key",
		"hello world":                      "not an SSH public key",
		k + "\n" + k:                       "single line",
		k + "\r":                           "single line",
		strings.Repeat("x", MaxKeyLen+1):   "the limit is",
		"-----BEGIN OPENSSH PRIVATE KEY----- abc": "private key",
	}
	if private != "" {
		bad[strings.ReplaceAll(private, "\n", " ")] = "private key"
	}
	for in, want := range bad {
		err := ValidateAuthorizedKey(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ValidateAuthorizedKey(%.40q) = %v, want %q", in, err, want)
		}
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	goodFile := filepath.Join(dir, "user-data")
	if err := os.WriteFile(goodFile, []byte("#cloud-config\npackages: [htop]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bigFile := filepath.Join(dir, "big")
	if err := os.WriteFile(bigFile, append([]byte("#!/bin/sh\n"), make([]byte, MaxUserData)...), 0o600); err != nil {
		t.Fatal(err)
	}
	badFile := filepath.Join(dir, "bad")
	if err := os.WriteFile(badFile, []byte("#cloud-config\n: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	key := testKey(t, "u@h")

	good := []Config{
		{},
		{Hostname: "demo", SSHAuthorizedKeys: []string{key, key}},
		{UserData: "#cloud-config\nusers:\n  - name: demo\n"},
		{UserData: "#cloud-config\r\n"},
		{UserData: "#cloud-config\n"},
		{UserData: "#!/bin/sh\necho hello\n"},
		{UserData: "## template: jinja\n#cloud-config\nhostname: {{ v1.instance_id }}\n"},
		{UserData: "Content-Type: multipart/mixed; boundary=x\n"},
		{UserDataFile: goodFile},
		{NetworkConfig: "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n"},
		{NetworkConfig: "network:\n  version: 1\n  config: []\n"},
	}
	for _, c := range good {
		if err := c.Validate(); err != nil {
			t.Errorf("Validate(%+v): %v", c, err)
		}
	}

	bad := []struct {
		c    Config
		want []string // "field: a substring of the problem"
	}{
		{Config{Hostname: "-bad"}, []string{"cloud_init.hostname: label"}},
		{Config{SSHAuthorizedKeys: []string{key, "nope", key, ""}}, []string{
			"cloud_init.ssh_authorized_keys[1]: \"nope\" is not an SSH public key",
			"cloud_init.ssh_authorized_keys[3]: empty",
		}},
		{Config{SSHAuthorizedKeys: make([]string, MaxKeys+1)}, []string{"cloud_init.ssh_authorized_keys: 65 keys; the limit is 64"}},
		{Config{UserData: "#cloud-config\n", UserDataFile: goodFile}, []string{"cloud_init.user_data_file: set together with user_data"}},
		{Config{UserData: "#cloud-config\nusers: [\n"}, []string{"cloud_init.user_data: #cloud-config is not valid YAML"}},
		{Config{UserData: "#cloud-config\na: 1\na: 2\n"}, []string{"cloud_init.user_data: #cloud-config is not valid YAML"}},
		{Config{UserData: "#cloud-config\n- a\n- b\n"}, []string{"cloud_init.user_data: #cloud-config must be a YAML mapping"}},
		{Config{UserData: "packages: [htop]\n"}, []string{"cloud_init.user_data: cloud-init ignores it"}},
		{Config{UserData: "#!/bin/sh\n" + strings.Repeat("x", MaxUserData)}, []string{"cloud_init.user_data: 1048586 bytes; the limit is 1048576"}},
		{Config{UserDataFile: "user-data"}, []string{"cloud_init.user_data_file: \"user-data\" must be an absolute path"}},
		{Config{UserDataFile: filepath.Join(dir, "missing")}, []string{"cloud_init.user_data_file: open " + filepath.Join(dir, "missing") + ": no such file"}},
		{Config{UserDataFile: dir}, []string{"cloud_init.user_data_file: " + dir + " is not a regular file"}},
		{Config{UserDataFile: bigFile}, []string{"cloud_init.user_data_file: " + bigFile + ": 1048577 bytes; the limit is"}},
		{Config{UserDataFile: badFile}, []string{"cloud_init.user_data_file: " + badFile + ": #cloud-config is not valid YAML"}},
		{Config{NetworkConfig: "version: [\n"}, []string{"cloud_init.network_config: not valid YAML"}},
		{Config{NetworkConfig: "- version: 2\n"}, []string{"cloud_init.network_config: must be a YAML mapping"}},
		{Config{NetworkConfig: "ethernets: {}\n"}, []string{`cloud_init.network_config: has no "version" key`}},
		{Config{NetworkConfig: "version: 3\n"}, []string{"cloud_init.network_config: version 3 is not 1 or 2"}},
		{Config{NetworkConfig: "version: \"2\"\n"}, []string{"cloud_init.network_config: version 2 is not 1 or 2"}},
		{Config{NetworkConfig: "network: 7\n"}, []string{`cloud_init.network_config: "network" must be a mapping`}},
		{Config{NetworkConfig: "version: 2\n" + strings.Repeat("#", MaxNetworkConfig)}, []string{"cloud_init.network_config: 65547 bytes; the limit is 65536"}},
		// Every problem at once.
		{Config{Hostname: "a_b", SSHAuthorizedKeys: []string{"x"}, UserData: "x", NetworkConfig: "x"}, []string{
			"cloud_init.hostname: ", "cloud_init.ssh_authorized_keys[0]: ", "cloud_init.user_data: ", "cloud_init.network_config: ",
		}},
	}
	for _, c := range bad {
		got := problems(t, c.c.Validate())
		ok := len(got) == len(c.want)
		for i := 0; ok && i < len(got); i++ {
			field, sub, _ := strings.Cut(c.want[i], ": ")
			ok = strings.HasPrefix(got[i], field+": ") && strings.Contains(got[i], sub)
		}
		if !ok {
			t.Errorf("Validate(%.80v):\n got %q\nwant %q", c.c, got, c.want)
		}
	}
	if !slices.Equal(problems(t, (&Config{}).Validate()), nil) {
		t.Error("empty Config is not valid")
	}
}
