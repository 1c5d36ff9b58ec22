package cloudinit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"

	yaml "go.yaml.in/yaml/v2"
)

// Names of the files in a seed.
const (
	MetaDataName      = "meta-data"
	UserDataName      = "user-data"
	NetworkConfigName = "network-config"
)

// DefaultUserData is the user data of a seed whose Config has none.
const DefaultUserData = "#cloud-config\n{}\n"

// Seed is the content of a seed image.
type Seed struct {
	MetaData []byte
	UserData []byte
	// NetworkConfig is nil when the seed has no network-config file.
	NetworkConfig []byte
}

type metaData struct {
	InstanceID    string   `yaml:"instance-id"`
	LocalHostname string   `yaml:"local-hostname,omitempty"`
	PublicKeys    []string `yaml:"public-keys,omitempty"`
}

// Render validates c and builds the seed of the domain whose instance id
// (its UUID) is instanceID: meta-data with instance-id, local-hostname and
// public-keys, the user data (read from UserDataFile when set) and the
// network config. Errors are *FieldErrors as from Validate.
func Render(c *Config, instanceID string) (*Seed, error) {
	return RenderWith(c, instanceID, nil)
}

// RenderWith is Render reading UserDataFile through open (nil: os.Open),
// so that a host can keep the read under its image roots however the file
// changed since it was checked.
func RenderWith(c *Config, instanceID string, open func(path string) (*os.File, error)) (*Seed, error) {
	if open == nil {
		open = os.Open
	}
	if err := validateInstanceID(instanceID); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	md, err := yaml.Marshal(metaData{InstanceID: instanceID, LocalHostname: c.Hostname, PublicKeys: c.SSHAuthorizedKeys})
	if err != nil {
		return nil, fmt.Errorf("rendering meta-data: %w", err)
	}
	s := &Seed{MetaData: md}
	switch {
	case c.UserData != "":
		s.UserData = []byte(c.UserData)
	case c.UserDataFile != "":
		// Read again: the file may have changed since Validate.
		if s.UserData, err = readUserDataWith(c.UserDataFile, open); err != nil {
			return nil, fieldErr("user_data_file", "%v", err)
		}
	default:
		s.UserData = []byte(DefaultUserData)
	}
	if c.NetworkConfig != "" {
		s.NetworkConfig = []byte(c.NetworkConfig)
	}
	return s, nil
}

func validateInstanceID(id string) error {
	if id == "" || len(id) > MaxInstanceIDLen {
		return fmt.Errorf("cloud-init instance id %s: must be 1 to %d bytes", quote(id), MaxInstanceIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_') {
			return fmt.Errorf("cloud-init instance id %s: may only hold ASCII letters, digits, \"-\", \".\" and \"_\"", quote(id))
		}
	}
	return nil
}

// seedFile is one file of a seed.
type seedFile struct {
	name string
	data []byte
}

// files returns the seed's files in name order, without an absent
// network-config.
func (s *Seed) files() []seedFile {
	out := []seedFile{{MetaDataName, s.MetaData}}
	if s.NetworkConfig != nil {
		out = append(out, seedFile{NetworkConfigName, s.NetworkConfig})
	}
	return append(out, seedFile{UserDataName, s.UserData})
}

// Hash returns a hex SHA-256 of the seed's file names and contents; two
// seeds with the same hash give the guest the same files.
func (s *Seed) Hash() string {
	h := sha256.New()
	for _, f := range s.files() {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(f.name)))
		h.Write(n[:])
		h.Write([]byte(f.name))
		binary.BigEndian.PutUint64(n[:], uint64(len(f.data)))
		h.Write(n[:])
		h.Write(f.data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Equal reports whether s and t hold the same files.
func (s *Seed) Equal(t *Seed) bool {
	return bytes.Equal(s.MetaData, t.MetaData) && bytes.Equal(s.UserData, t.UserData) &&
		(s.NetworkConfig == nil) == (t.NetworkConfig == nil) && bytes.Equal(s.NetworkConfig, t.NetworkConfig)
}
