package domain

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/uuid"

	"github.com/vmsup/vmsup/domain/cloudinit"
	"github.com/vmsup/vmsup/domain/netcfg"
)

// MaxNetworks is the most NICs a spec may have (a tap name encodes the
// NIC index in two hex digits).
const MaxNetworks = 32

// MaxForwards is the most forwards one user network may have.
const MaxForwards = 64

// NetworkField returns the spec field of network i, "networks[i]".
func NetworkField(i int) string { return fmt.Sprintf("networks[%d]", i) }

// NICOfDevice maps the QEMU device id of a NIC ("nic0", as BuildArgs
// names them) in a QMP event to its spec field ("networks[0]"). name is
// the event's raw value; ok is false for anything else.
func NICOfDevice(name any, nics int) (string, bool) {
	s, _ := name.(string)
	rest, found := strings.CutPrefix(s, "nic")
	if !found || rest == "" || len(rest) > 3 || strings.Trim(rest, "0123456789") != "" || (len(rest) > 1 && rest[0] == '0') {
		return "", false
	}
	i, err := strconv.Atoi(rest)
	if err != nil || i >= nics {
		return "", false
	}
	return NetworkField(i), true
}

// MAC returns the address of NIC i: its mac field, or the address derived
// from the UUID and i (netcfg.DeriveMAC). The spec must be valid.
func (s *Spec) MAC(i int) (netcfg.MAC, error) {
	n := s.Networks[i]
	if n.MAC != "" {
		return netcfg.ParseMAC(NetworkField(i)+".mac", n.MAC)
	}
	id, err := uuid.Parse(s.UUID)
	if err != nil {
		return netcfg.MAC{}, &FieldError{Field: "uuid", Problem: "must be a UUID"}
	}
	return netcfg.DeriveMAC(id, i), nil
}

// Forwards parses the forwards of NIC i, each naming its field.
func (s *Spec) Forwards(i int) ([]netcfg.Forward, error) {
	var out []netcfg.Forward
	var errs []error
	for j, f := range s.Networks[i].Forwards {
		fw, err := netcfg.ParseForward(fmt.Sprintf("%s.forwards[%d]", NetworkField(i), j), f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, fw)
	}
	return out, errors.Join(errs...)
}

// validateNetworks checks every networks entry, the MACs (given or
// derived) for duplicates, and the forwards of all user networks for
// overlapping host sockets.
func (s *Spec) validateNetworks() []error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, adoptFieldErrors(err)...)
		}
	}
	macs := make([]netcfg.MAC, 0, len(s.Networks))
	macsOK := uuidProblem(s.UUID) == ""
	var all []netcfg.Forward
	for i, n := range s.Networks {
		f := NetworkField(i)
		if err := netcfg.ValidateType(f+".type", n.Type); err != nil {
			add(err)
			continue
		}
		if n.MAC != "" {
			m, err := netcfg.ParseMAC(f+".mac", n.MAC)
			add(err)
			if err != nil {
				macsOK = false
			}
			macs = append(macs, m)
		} else if macsOK {
			m, _ := s.MAC(i)
			macs = append(macs, m)
		}
		switch n.Type {
		case netcfg.TypeUser:
			if n.Bridge != "" {
				add(&FieldError{Field: f + ".bridge", Problem: `is only for type "tap"`})
			}
			if len(n.Forwards) > MaxForwards {
				add(&FieldError{Field: f + ".forwards", Problem: fmt.Sprintf("%d forwards; the limit is %d", len(n.Forwards), MaxForwards)})
				continue
			}
			fws, err := s.Forwards(i)
			add(err)
			all = append(all, fws...)
		case netcfg.TypeTap:
			add(netcfg.ValidateBridge(f+".bridge", n.Bridge))
			if len(n.Forwards) > 0 {
				add(&FieldError{Field: f + ".forwards", Problem: `are only for type "user"; a tap NIC is reached at its own address`})
			}
		}
	}
	if macsOK && len(macs) == len(s.Networks) {
		add(netcfg.CheckDuplicateMACs("networks", macs))
	}
	add(netcfg.CheckForwards(all))
	return errs
}

// validateCloudInit checks the cloud_init section without reading any
// file: user_data_file must be a clean absolute path, read when the seed
// is built at define.
func validateCloudInit(c *cloudinit.Config) []error {
	var errs []error
	check := *c
	check.UserDataFile = ""
	if err := check.Validate(); err != nil {
		errs = append(errs, adoptFieldErrors(err)...)
	}
	if c.UserDataFile != "" {
		if c.UserData != "" {
			errs = append(errs, &FieldError{Field: cloudinit.Field + ".user_data_file", Problem: "set together with user_data; give one of the two"})
		} else if p := PathProblem(c.UserDataFile); p != "" {
			errs = append(errs, &FieldError{Field: cloudinit.Field + ".user_data_file", Problem: p})
		}
	}
	return errs
}

// adoptFieldErrors turns the field errors of netcfg and cloudinit in err
// into *FieldErrors of this package, so that FieldErrors finds them all.
func adoptFieldErrors(err error) []error {
	var out []error
	var walk func(error)
	walk = func(e error) {
		switch x := e.(type) {
		case nil:
		case *FieldError:
			out = append(out, x)
		case *netcfg.FieldError:
			out = append(out, &FieldError{Field: x.Field, Problem: x.Problem})
		case *cloudinit.FieldError:
			out = append(out, &FieldError{Field: x.Field, Problem: x.Problem})
		case interface{ Unwrap() []error }:
			for _, y := range x.Unwrap() {
				walk(y)
			}
		default:
			out = append(out, e)
		}
	}
	walk(err)
	return out
}
