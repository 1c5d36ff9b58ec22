package domain

import (
	"fmt"
	"time"
)

// AgentState says whether a domain's guest agent answers.
type AgentState string

// Guest agent states.
const (
	AgentUnknown     AgentState = "unknown"     // no command has run yet
	AgentAvailable   AgentState = "available"   // the last command got an answer
	AgentUnavailable AgentState = "unavailable" // the last command got none
)

// AgentStatus is what Info shows of a running domain's guest agent
// (qemu-ga on the virtio-serial port org.qemu.guest_agent.0). It is
// published by the agent actor after each command and read without
// asking it, so that a hung agent never blocks Info.
type AgentStatus struct {
	State AgentState `json:"state"`
	// Reason is why it is unavailable: the failed command and its error.
	Reason string `json:"reason,omitempty"`
	// Version is the agent's version, once guest-info answered.
	Version string `json:"version,omitempty"`
	// Since is when State last changed.
	Since time.Time `json:"since"`
}

// ExecResult is how a command that the guest agent ran in the guest
// (guest-exec) ended.
type ExecResult struct {
	// PID is the command's pid in the guest.
	PID int `json:"pid"`
	// ExitCode is its exit status; -1 when a signal ended it.
	ExitCode int `json:"exit_code"`
	// Signal is the signal that ended it, 0 if none.
	Signal int `json:"signal,omitempty"`
	// Stdout and Stderr are its captured output; the agent returns them
	// once the command has exited.
	Stdout []byte `json:"stdout,omitempty"`
	Stderr []byte `json:"stderr,omitempty"`
	// Truncated reports that the agent cut the output at its limit.
	Truncated bool `json:"truncated,omitempty"`
}

// ShutdownMode says how a shutdown asks the guest to power off.
type ShutdownMode string

// Shutdown modes.
const (
	// ShutdownACPI presses the ACPI power button (QMP system_powerdown),
	// again every few seconds until the deadline: a press before the
	// guest's OS is up is lost. The zero mode is ShutdownACPI.
	ShutdownACPI ShutdownMode = "acpi"
	// ShutdownAgent asks the guest agent (guest-shutdown); it fails when
	// the agent does not take the request.
	ShutdownAgent ShutdownMode = "agent"
	// ShutdownAuto uses the agent when it answers guest-ping, else ACPI.
	ShutdownAuto ShutdownMode = "auto"
)

// ParseShutdownMode checks a shutdown mode; "" is ShutdownACPI.
func ParseShutdownMode(s string) (ShutdownMode, error) {
	switch m := ShutdownMode(s); m {
	case "":
		return ShutdownACPI, nil
	case ShutdownACPI, ShutdownAgent, ShutdownAuto:
		return m, nil
	}
	if len(s) > 32 {
		s = s[:32] + "..."
	}
	return "", fmt.Errorf("shutdown mode %q: want acpi, agent or auto", s)
}
