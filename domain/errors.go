package domain

import (
	"errors"

	"github.com/vmsup/vmsup/actors/jobinfo"
)

// ErrNotRunning is returned by jobs that need a running QEMU.
var ErrNotRunning = errors.New("domain is not running")

// ErrUndefining is returned for jobs sent to a domain that is being undefined.
var ErrUndefining = errors.New("domain is being undefined")

// ErrWrongState is wrapped by errors about a request that the domain's
// state refuses: start while running, pause while paused, resume while
// running, undefine while running.
var ErrWrongState = errors.New("wrong state")

// ErrShutdownTimeout is wrapped when the guest did not power off within
// the shutdown timeout.
var ErrShutdownTimeout = errors.New("shutdown timed out")

// ErrNoConsole is wrapped when the domain's serial port is not a socket.
var ErrNoConsole = errors.New("no console socket")

// JobWaitError is returned when a caller's context ended while its job was
// still waiting in the domain's lane. It names the holder, as libvirt
// does; its Lane is `domain "NAME"`. It is the lane's own error: the
// policy of explaining who holds a job is written once, in the lane.
type JobWaitError = jobinfo.JobWaitError

// ErrNoSnapshot is wrapped when a domain has no snapshot of the name given.
var ErrNoSnapshot = errors.New("no such snapshot")

// ErrNoDevice is returned by a detach whose target names no device of
// the definition it acts on.
var ErrNoDevice = errors.New("no such device")

// ErrDetachTimeout is returned by a detach whose device QEMU did not
// remove (no DEVICE_DELETED event) before the deadline: the guest did
// not release it. The device stays attached.
var ErrDetachTimeout = errors.New("device not removed by the guest before the deadline")
