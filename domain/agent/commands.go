package agent

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"time"

	"github.com/vmsup/vmsup/domain"
)

// Deadlines of agent commands. Every command has one; a guest without an
// agent, or with a hung one, fails the command when it passes.
var deadlines = map[string]time.Duration{
	"guest-sync-delimited":         3 * time.Second,
	"guest-ping":                   3 * time.Second,
	"guest-info":                   5 * time.Second,
	"guest-network-get-interfaces": 5 * time.Second,
	"guest-exec":                   10 * time.Second,
	"guest-exec-status":            5 * time.Second,
	"guest-fsfreeze-status":        5 * time.Second,
	"guest-fsfreeze-freeze":        60 * time.Second,
	"guest-fsfreeze-thaw":          60 * time.Second,
	"guest-shutdown":               5 * time.Second,
	"guest-get-osinfo":             5 * time.Second,
	"guest-get-host-name":          5 * time.Second,
}

// DefaultDeadline is the deadline of a command missing from the table.
const DefaultDeadline = 10 * time.Second

// Deadline returns the deadline of the agent command cmd.
func Deadline(cmd string) time.Duration {
	if d, ok := deadlines[cmd]; ok {
		return d
	}
	return DefaultDeadline
}

// noReply are the commands the agent does not answer when they succeed.
var noReply = map[string]bool{
	"guest-shutdown":       true,
	"guest-suspend-disk":   true,
	"guest-suspend-ram":    true,
	"guest-suspend-hybrid": true,
}

// GuestInfo is the reply of guest-info: the agent's version and the
// commands it supports.
type GuestInfo struct {
	Version   string `json:"version"`
	Supported []struct {
		Name    string `json:"name"`
		Enabled bool   `json:"enabled"`
	} `json:"supported_commands"`
}

// Interface is one guest network interface from
// guest-network-get-interfaces.
type Interface struct {
	Name  string `json:"name"`
	MAC   string `json:"hardware-address,omitempty"`
	Addrs []struct {
		Type   string `json:"ip-address-type"`
		IP     string `json:"ip-address"`
		Prefix int    `json:"prefix"`
	} `json:"ip-addresses,omitempty"`
}

// Addresses returns the interface's addresses that parse as IPs, as
// prefixes ("10.0.2.15/24"); the others are left out (the agent is
// hostile input).
func (i Interface) Addresses() []netip.Prefix {
	var out []netip.Prefix
	for _, a := range i.Addrs {
		ip, err := netip.ParseAddr(a.IP)
		if err != nil || a.Prefix < 0 || a.Prefix > ip.BitLen() {
			continue
		}
		out = append(out, netip.PrefixFrom(ip, a.Prefix))
	}
	return out
}

// ExecRequest are the arguments of guest-exec.
type ExecRequest struct {
	Path          string   `json:"path"`
	Args          []string `json:"arg,omitempty"`
	Env           []string `json:"env,omitempty"`
	Input         string   `json:"input-data,omitempty"` // base64
	CaptureOutput bool     `json:"capture-output"`
}

// execStarted is the reply of guest-exec.
type execStarted struct {
	PID int `json:"pid"`
}

// execStatus is the reply of guest-exec-status.
type execStatus struct {
	Exited   bool    `json:"exited"`
	ExitCode *int    `json:"exitcode"`
	Signal   *int    `json:"signal"`
	OutData  *string `json:"out-data"`
	ErrData  *string `json:"err-data"`
	OutTrunc bool    `json:"out-truncated"`
	ErrTrunc bool    `json:"err-truncated"`
}

// ExecResult is how a command run by guest-exec ended.
type ExecResult = domain.ExecResult

func (s *execStatus) result(pid int) (*ExecResult, error) {
	r := &ExecResult{PID: pid, ExitCode: -1, Truncated: s.OutTrunc || s.ErrTrunc}
	if s.ExitCode != nil {
		r.ExitCode = *s.ExitCode
	}
	if s.Signal != nil {
		r.Signal = *s.Signal
	}
	var err error
	if s.OutData != nil {
		if r.Stdout, err = base64.StdEncoding.DecodeString(*s.OutData); err != nil {
			return nil, fmt.Errorf("guest-exec-status: stdout of pid %d is not base64: %w", pid, err)
		}
	}
	if s.ErrData != nil {
		if r.Stderr, err = base64.StdEncoding.DecodeString(*s.ErrData); err != nil {
			return nil, fmt.Errorf("guest-exec-status: stderr of pid %d is not base64: %w", pid, err)
		}
	}
	return r, nil
}
