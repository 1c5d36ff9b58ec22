package domain

import "time"

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
