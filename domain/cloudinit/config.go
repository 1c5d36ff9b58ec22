// Package cloudinit builds the NoCloud seed image from which cloud-init in
// a guest reads its first-boot configuration: an ISO 9660 volume labelled
// "cidata" (with Rock Ridge and Joliet names) holding meta-data, user-data
// and, when given, network-config.
package cloudinit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v2"
	"golang.org/x/crypto/ssh"
)

// Field is the spec field that holds a Config; errors name its subfields.
const Field = "cloud_init"

// Limits on a Config.
const (
	MaxKeys          = 64       // ssh_authorized_keys entries
	MaxKeyLen        = 16 << 10 // bytes of one key line
	MaxUserData      = 1 << 20  // bytes of user data, inline or from a file
	MaxNetworkConfig = 64 << 10 // bytes of network_config
	MaxInstanceIDLen = 128
)

// Config is a domain's cloud_init section.
type Config struct {
	// Hostname is the guest's host name (meta-data local-hostname), an
	// RFC 1123 name; empty leaves it to cloud-init.
	Hostname string `json:"hostname,omitempty"`
	// SSHAuthorizedKeys are public keys in authorized_keys syntax; they
	// go to meta-data public-keys, which cloud-init installs for the
	// default user whatever the user data says.
	SSHAuthorizedKeys []string `json:"ssh_authorized_keys,omitempty"`
	// UserData is the user data itself; UserDataFile is an absolute path
	// to read it from when the seed is built. At most one is set; with
	// neither, the seed carries an empty #cloud-config.
	UserData     string `json:"user_data,omitempty"`
	UserDataFile string `json:"user_data_file,omitempty"`
	// NetworkConfig is a network configuration (version 1 or 2) in YAML,
	// either bare or under a top-level "network" key.
	NetworkConfig string `json:"network_config,omitempty"`
}

// FieldError is one problem with one spec field, such as
// "cloud_init.hostname".
type FieldError struct {
	Field   string
	Problem string
}

// Error returns, for example,
// `spec field "cloud_init.hostname": label "-x" must not start or end with "-"`.
func (e *FieldError) Error() string {
	return fmt.Sprintf("spec field %q: %s", e.Field, e.Problem)
}

func fieldErr(sub, format string, args ...any) *FieldError {
	return &FieldError{Field: Field + "." + sub, Problem: fmt.Sprintf(format, args...)}
}

// Validate checks every field of c and returns all problems joined, each a
// *FieldError. It reads nothing but the user data file, which must be a
// readable regular file of at most MaxUserData bytes.
func (c *Config) Validate() error {
	var errs []error
	if c.Hostname != "" {
		if err := ValidateHostname(c.Hostname); err != nil {
			errs = append(errs, fieldErr("hostname", "%v", err))
		}
	}
	if len(c.SSHAuthorizedKeys) > MaxKeys {
		errs = append(errs, fieldErr("ssh_authorized_keys", "%d keys; the limit is %d", len(c.SSHAuthorizedKeys), MaxKeys))
	} else {
		for i, k := range c.SSHAuthorizedKeys {
			if err := ValidateAuthorizedKey(k); err != nil {
				errs = append(errs, fieldErr(fmt.Sprintf("ssh_authorized_keys[%d]", i), "%v", err))
			}
		}
	}
	switch {
	case c.UserData != "" && c.UserDataFile != "":
		errs = append(errs, fieldErr("user_data_file", "set together with user_data; give one of the two"))
	case c.UserData != "":
		if err := validateUserData([]byte(c.UserData)); err != nil {
			errs = append(errs, fieldErr("user_data", "%v", err))
		}
	case c.UserDataFile != "":
		if _, err := readUserDataFile(c.UserDataFile); err != nil {
			errs = append(errs, fieldErr("user_data_file", "%v", err))
		}
	}
	if c.NetworkConfig != "" {
		if err := validateNetworkConfig(c.NetworkConfig); err != nil {
			errs = append(errs, fieldErr("network_config", "%v", err))
		}
	}
	return errors.Join(errs...)
}

// ValidateHostname checks that name is an RFC 1123 host name: at most 253
// bytes of dot-separated labels of 1 to 63 ASCII letters, digits and
// hyphens, no label starting or ending with a hyphen, and not an IP
// address.
func ValidateHostname(name string) error {
	if name == "" {
		return errors.New("empty")
	}
	if len(name) > 253 {
		return fmt.Errorf("%d bytes; a host name has at most 253", len(name))
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return fmt.Errorf("%s is an IP address, not a host name", quote(name))
	}
	for _, label := range strings.Split(name, ".") {
		switch {
		case label == "":
			return fmt.Errorf("%s has an empty label (leading, trailing or doubled \".\")", quote(name))
		case len(label) > 63:
			return fmt.Errorf("label %s is longer than 63 bytes", quote(label))
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Errorf("label %s must not start or end with \"-\"", quote(label))
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%s may only hold ASCII letters, digits, \"-\" and \".\"", quote(name))
			}
		}
	}
	return nil
}

// ValidateAuthorizedKey checks that key is one line of authorized_keys
// syntax ("[options] type base64 [comment]") holding a public key that
// parses.
func ValidateAuthorizedKey(key string) error {
	if strings.TrimSpace(key) == "" {
		return errors.New("empty")
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%d bytes; the limit is %d", len(key), MaxKeyLen)
	}
	if strings.ContainsAny(key, "\r\n\x00") {
		return errors.New("must be a single line")
	}
	if strings.Contains(key, "PRIVATE KEY") {
		return errors.New("this is a private key; give the public key (the .pub file)")
	}
	_, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(key))
	if err != nil {
		return fmt.Errorf("%s is not an SSH public key (such as \"ssh-ed25519 AAAA... user@host\"): %v", quote(key), err)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return errors.New("holds more than one key")
	}
	return nil
}

// userDataStarts are the first bytes by which cloud-init recognises a
// kind of user data.
var userDataStarts = []string{
	"#cloud-config", "#!", "#include", "#cloud-boothook", "#part-handler",
	"#upstart-job", "## template: jinja", "Content-Type:", "MIME-Version:",
	"\x1f\x8b", // gzip
}

// validateUserData checks that data is something cloud-init acts on, and
// that a #cloud-config is a YAML mapping.
func validateUserData(data []byte) error {
	if len(data) > MaxUserData {
		return fmt.Errorf("%d bytes; the limit is %d", len(data), MaxUserData)
	}
	known := false
	for _, s := range userDataStarts {
		if bytes.HasPrefix(data, []byte(s)) {
			known = true
			break
		}
	}
	if !known {
		return errors.New(`cloud-init ignores it: it must start with "#cloud-config", "#!" (a script) or another cloud-init header`)
	}
	first, _, _ := bytes.Cut(data, []byte("\n"))
	if string(bytes.TrimRight(first, " \t\r")) != "#cloud-config" {
		return nil
	}
	var v any
	if err := yaml.UnmarshalStrict(data, &v); err != nil {
		return fmt.Errorf("#cloud-config is not valid YAML: %s", firstLine(err.Error()))
	}
	switch v.(type) {
	case nil, map[any]any:
		return nil
	}
	return errors.New("#cloud-config must be a YAML mapping (key: value)")
}

// readUserDataFile reads the user data file path and validates it.
func readUserDataFile(path string) ([]byte, error) {
	return readUserDataWith(path, os.Open)
}

// readUserDataWith is readUserDataFile opening path with open.
func readUserDataWith(path string, open func(string) (*os.File, error)) ([]byte, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%s must be an absolute path", quote(path))
	}
	f, err := open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxUserData+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if err := validateUserData(data); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return data, nil
}

// validateNetworkConfig checks that s is a YAML mapping of network
// configuration version 1 or 2, bare or under "network".
func validateNetworkConfig(s string) error {
	if len(s) > MaxNetworkConfig {
		return fmt.Errorf("%d bytes; the limit is %d", len(s), MaxNetworkConfig)
	}
	var v any
	if err := yaml.UnmarshalStrict([]byte(s), &v); err != nil {
		return fmt.Errorf("not valid YAML: %s", firstLine(err.Error()))
	}
	m, ok := v.(map[any]any)
	if !ok {
		return errors.New("must be a YAML mapping with a \"version\" key")
	}
	if inner, ok := m["network"]; ok && len(m) == 1 {
		if m, ok = inner.(map[any]any); !ok {
			return errors.New(`"network" must be a mapping`)
		}
	}
	switch ver := m["version"]; ver {
	case 1, 2:
		return nil
	case nil:
		return errors.New(`has no "version" key (1 or 2)`)
	default:
		return fmt.Errorf("version %v is not 1 or 2", ver)
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

func quote(v string) string {
	if len(v) > 64 {
		return strconv.Quote(v[:64]) + "..."
	}
	return strconv.Quote(v)
}
