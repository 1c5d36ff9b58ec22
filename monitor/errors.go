package monitor

import (
	"errors"
	"fmt"
)

// Sentinel errors of the QMP transport. They are always wrapped with %w into
// an error that says which command or which connection step failed, so test
// them with errors.Is.
var (
	// ErrClosed means the transport was shut down by Disconnect. Commands
	// still waiting for a reply when Disconnect runs fail with an error
	// wrapping ErrClosed, and so does every later call.
	ErrClosed = errors.New("QMP transport closed")

	// ErrNotSent is wrapped by the error of a command that was not sent:
	// no byte of it reached QEMU, so sending it again is safe.
	ErrNotSent = errors.New("not sent")

	// ErrNotConnected means a command was issued before Connect succeeded.
	ErrNotConnected = errors.New("QMP transport not connected")

	// ErrLineTooLong means QEMU sent a line longer than
	// TransportOptions.MaxLineBytes (MaxBigLineBytes while a command that
	// answers big is in flight). The connection is failed, because the
	// rest of the stream can no longer be trusted.
	ErrLineTooLong = errors.New("QMP line too long")

	// ErrEventFlood means QEMU sent events faster than
	// TransportOptions.EventRate allows. The connection is failed; the
	// monitor actor reconnects with backoff.
	ErrEventFlood = errors.New("QMP event flood")

	// ErrProtocol means QEMU broke the QMP protocol in a way the transport
	// cannot recover from, for example a first line that is not a greeting.
	ErrProtocol = errors.New("QMP protocol error")

	// ErrBadCommand means the command given to Run is not a JSON object with
	// an "execute" member, or already carries an "id" (the transport owns ids).
	ErrBadCommand = errors.New("invalid QMP command")
)

// QMPError is the error returned for a QMP error reply, that is a reply of
// the form {"error": {"class": ..., "desc": ...}}.
type QMPError struct {
	// Command is the name of the command that failed, e.g. "cont".
	Command string
	// Class is the QMP error class, e.g. "GenericError" or "CommandNotFound".
	Class string
	// Desc is QEMU's human readable description of the error.
	Desc string
}

// Error returns a message such as
// `QMP command "cont" failed: GenericError: ...`.
func (e *QMPError) Error() string {
	return fmt.Sprintf("QMP command %q failed: %s: %s", e.Command, e.Class, e.Desc)
}
