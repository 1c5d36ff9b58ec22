package domain

import (
	"time"

	"github.com/vmsup/vmsup/actors/jobinfo"
)

// State is a domain's lifecycle state, named as in libvirt.
type State string

// The states of a domain.
const (
	StateShutoff  State = "shutoff"
	StateRunning  State = "running"
	StatePaused   State = "paused"
	StateShutdown State = "shutdown" // the guest is powering off
	StateCrashed  State = "crashed"
	// StateBroken is a definition on disk that cannot be read or
	// parsed: Info.Problem says why. It runs nothing; define --force
	// replaces it, undefine removes it.
	StateBroken State = "broken"
)

// Reason says why a domain is in its state, named as in libvirt.
type Reason string

// Reasons, grouped by the state they go with.
const (
	ReasonUnknown Reason = "unknown"

	// shutoff
	ReasonShutdown  Reason = "shutdown"  // the guest powered off
	ReasonDestroyed Reason = "destroyed" // destroy killed QEMU
	ReasonCrashed   Reason = "crashed"   // QEMU exited unexpectedly
	ReasonFailed    Reason = "failed"    // start failed

	// running
	ReasonBooted   Reason = "booted"
	ReasonUnpaused Reason = "unpaused"

	// paused
	ReasonUser       Reason = "user"
	ReasonStartingUp Reason = "starting_up"

	// crashed
	ReasonPanicked Reason = "panicked"

	// broken
	ReasonCorrupt Reason = "corrupt"
)

// JobKind classifies a job, as libvirt's job types do.
type JobKind string

// The job kinds.
const (
	// JobQuery reads state through the monitor; it may run alongside an
	// async job.
	JobQuery JobKind = "query"
	// JobModify changes VM state.
	JobModify JobKind = "modify"
	// JobDestroy is the preempting hard stop.
	JobDestroy JobKind = "destroy"
	// JobSuspend pauses the guest (pause); a snapshot's mask allows it.
	JobSuspend JobKind = "suspend"
	// JobAbort asks the async job to stop; every async mask allows it.
	JobAbort JobKind = "abort"
	// JobAsync is a long job (shutdown) that lets query jobs run while it
	// waits.
	JobAsync JobKind = "async"
)

// Info is a snapshot of a domain, answered at once even while a job runs.
type Info struct {
	Name     string   `json:"name"`
	UUID     string   `json:"uuid"`
	State    State    `json:"state"`
	Reason   Reason   `json:"reason"`
	PID      int      `json:"pid"`
	Job      *JobInfo `json:"job"`
	Queued   int      `json:"queued"`
	Restarts int      `json:"restarts"`
	// Control says whether vmsup can talk to QEMU right now, as libvirt's
	// domcontrol does.
	Control *Control `json:"control"`
	// NICs are the NICs of the running QEMU, with the host ports its
	// forwards really use; nil while the domain is not running.
	NICs []NIC `json:"nics,omitempty"`
	// Live is the running definition's disks and NICs (hot-plugged ones
	// included); nil while the domain is not running. It is shared: do not
	// change it.
	Live *Live `json:"live,omitempty"`
	// Agent is the guest agent's status while QEMU runs with an agent
	// channel; nil otherwise.
	Agent *AgentStatus `json:"agent,omitempty"`
	// Confinement is what keeps the running QEMU away from the host
	// beyond its seccomp sandbox; nil when nothing does (a daemon that
	// is not root runs QEMU as itself) or the domain is not running.
	Confinement *Confinement `json:"confinement,omitempty"`
	// Problem says why a broken definition cannot be used (state
	// broken); empty otherwise.
	Problem string `json:"problem,omitempty"`
}

// Confinement is what applies to a QEMU that a root daemon started.
type Confinement struct {
	// User and UID are the unprivileged user QEMU runs as.
	User string `json:"user,omitempty"`
	UID  uint32 `json:"uid,omitempty"`
	// Cgroup is QEMU's own cgroup v2; empty when cgroup v2 is not
	// writable here (Note says why).
	Cgroup string `json:"cgroup,omitempty"`
	// MemoryMax is the cgroup's memory.max in bytes; 0 when no limit
	// applies (Note says why).
	MemoryMax uint64 `json:"memory_max,omitempty"`
	// Note says which part does not apply, and why.
	Note string `json:"note,omitempty"`
}

// NIC is one NIC of a running domain.
type NIC struct {
	// Index is the NIC's index in the spec's networks.
	Index int `json:"index"`
	// Type is "user" or "tap".
	Type string `json:"type"`
	// MAC is the guest's address.
	MAC string `json:"mac"`
	// Tap and Bridge are the host tap device of a tap NIC and its bridge.
	Tap    string `json:"tap,omitempty"`
	Bridge string `json:"bridge,omitempty"`
	// Forwards are a user NIC's forwards, with their real host ports.
	Forwards []PortForward `json:"forwards,omitempty"`
	// GuestIP is the guest's address on this NIC, where vmsup knows it.
	GuestIP string `json:"guest_ip,omitempty"`
}

// PortForward is one forward of a user NIC as QEMU listens on it.
type PortForward struct {
	// Field is the spec field it comes from, such as
	// "networks[0].forwards[0]".
	Field string `json:"field"`
	// Proto is "tcp" or "udp".
	Proto string `json:"proto"`
	// HostAddr is the host address QEMU listens on; "" is every address.
	HostAddr string `json:"host_addr"`
	// HostPort is the host port QEMU listens on (never 0).
	HostPort int `json:"host_port"`
	// GuestAddr is the guest address; "" is the guest's DHCP address.
	GuestAddr string `json:"guest_addr,omitempty"`
	// GuestPort is the guest port.
	GuestPort int `json:"guest_port"`
}

// JobInfo describes a job that is active, queued or recently ended.
type JobInfo struct {
	ID        uint64    `json:"id"`
	Name      string    `json:"name"` // start, shutdown, destroy, pause, resume, reset, qmp
	Kind      JobKind   `json:"kind"`
	Owner     string    `json:"owner"`
	RequestID string    `json:"request_id"`
	Enqueued  time.Time `json:"enqueued"`
	Started   time.Time `json:"started,omitzero"`
	Ended     time.Time `json:"ended,omitzero"`
	// Steps are the names of the job's steps, in order; Step is the
	// current (or last) one.
	Steps []string `json:"steps,omitempty"`
	Step  string   `json:"step,omitempty"`
	// Progress shows the steps with the current one in brackets:
	// `start: prepare → spawn → attach → [query-status] → cont`.
	Progress string       `json:"progress,omitempty"`
	QMP      *QMPInFlight `json:"qmp"`
	// Mask lists what may start beside an async job in its async phase
	// ("query|destroy|suspend|abort"); empty for other jobs.
	Mask string `json:"mask,omitempty"`
	// Report is what an async job last reported of its progress.
	Report *JobProgress `json:"report,omitempty"`
	Error  string       `json:"error,omitempty"`
}

// JobProgress is an async job's progress: its phase and, where QEMU
// measures it, the work done of the work to do.
type JobProgress struct {
	Phase   string `json:"phase,omitempty"`
	Current uint64 `json:"current,omitempty"`
	Total   uint64 `json:"total,omitempty"`
	// Percent is Current of Total; nil when Total is unknown.
	Percent *float64 `json:"percent,omitempty"`
	// Text renders it: `saving, 42% (12.0 MiB of 28.5 MiB)`.
	Text string    `json:"text"`
	At   time.Time `json:"at"`
}

// QMPInFlight is the QMP command a job waits on.
type QMPInFlight struct {
	Command string    `json:"command"`
	Since   time.Time `json:"since"`
}

// Jobs lists a domain's job lane: the active job, an async job in its
// waiting phase, the queue, and the jobs that ended recently.
type Jobs struct {
	Domain string    `json:"domain"`
	Active *JobInfo  `json:"active"`
	Async  *JobInfo  `json:"async"`
	Queued []JobInfo `json:"queued"`
	Recent []JobInfo `json:"recent"`
}

// Holder describes who holds the job, as wait-timeout errors do (the
// lane's jobinfo.JobInfo.Holder):
// `job 17 "shutdown" (api shutdown, trace 1a2b3c-17) for 31.2s, in QMP "system_powerdown" for 31.0s`.
func (j *JobInfo) Holder(now time.Time) string {
	lane := jobinfo.JobInfo{ID: j.ID, Name: j.Name, Owner: j.Owner, RequestID: j.RequestID, Started: j.Started}
	if j.QMP != nil {
		lane.Call = jobinfo.Call{Command: j.QMP.Command, Since: j.QMP.Since}
	}
	s := lane.Holder(now)
	if j.Report != nil {
		s += ", at " + j.Report.Text
	}
	return s
}

// Fresh returns a copy of a published snapshot that the caller may keep
// and change, with Control's age recomputed at now. The copy is one
// allocation, less than half the size when no job is active.
func (in *Info) Fresh(now time.Time) *Info {
	if in.Job == nil {
		box := &struct {
			info Info
			ctl  Control
		}{info: *in}
		box.info.Control = in.Control.fresh(&box.ctl, now)
		return &box.info
	}
	box := &struct {
		info Info
		job  JobInfo
		qmp  QMPInFlight
		ctl  Control
	}{info: *in, job: *in.Job}
	if in.Job.QMP != nil {
		box.qmp = *in.Job.QMP
		box.job.QMP = &box.qmp
	}
	box.info.Job = &box.job
	box.info.Control = in.Control.fresh(&box.ctl, now)
	return &box.info
}

// fresh copies c into into, refreshed at now, and returns into (nil for
// a nil c).
func (c *Control) fresh(into *Control, now time.Time) *Control {
	if c == nil {
		return nil
	}
	*into = *c
	into.Refresh(now)
	return into
}

// ReasonExitedUnsupervised is the shutoff reason of a domain whose QEMU was
// running when vmsup stopped and was gone when vmsup came back.
const ReasonExitedUnsupervised Reason = "exited_unsupervised"

// ReasonCrashLoop is the crashed reason of a domain that crashed too often
// under on_crash: restart; vmsup stopped restarting it.
const ReasonCrashLoop Reason = "crash-loop"

// Status is a domain's runtime status as saved under the state dir, so that
// a restarted vmsup knows what was running.
type Status struct {
	Name    string    `json:"name"`
	UUID    string    `json:"uuid"`
	State   State     `json:"state"`
	Reason  Reason    `json:"reason"`
	PID     int       `json:"pid,omitempty"`
	Updated time.Time `json:"updated"`
}

// Control is modelled on libvirt's domcontrol: can vmsup talk to the VM
// right now?
type Control struct {
	// State is "ok", "job" (a job holds the domain), "occupied" (a QMP
	// command is waiting for QEMU), "error" (the monitor is broken) or
	// "recovering" (the actor restarted after a panic).
	State string `json:"state"`
	// Since is when the job started, when the QMP command was sent or when
	// the monitor broke.
	Since time.Time `json:"since,omitzero"`
	// Millis is how long it has been so, at the time of the Info.
	Millis int64 `json:"ms"`
	// Reason says why the monitor is broken.
	Reason string `json:"reason,omitempty"`
}

// Control states.
const (
	ControlOK       = "ok"
	ControlJob      = "job"
	ControlOccupied = "occupied"
	ControlError    = "error"
	// ControlRecovering: the domain actor restarted after a panic and
	// rebuilds its state; jobs wait.
	ControlRecovering = "recovering"
)

// Refresh recomputes Millis at now; List uses it on snapshots.
func (c *Control) Refresh(now time.Time) {
	if c != nil && !c.Since.IsZero() {
		c.Millis = now.Sub(c.Since).Milliseconds()
	}
}
