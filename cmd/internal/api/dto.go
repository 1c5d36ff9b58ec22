// Package api describes the HTTP/JSON API that the vmsup daemon serves on
// its unix socket: its routes, headers and the objects (DTOs) it exchanges
// with the CLI. Package server serves it and package client calls it; this
// package imports nothing of the daemon, so that the CLI does not link it.
//
// Routes (version 1; every body is JSON unless noted, every error is
// {"error": "..."} with a 4xx or 5xx status):
//
//	GET    /v1/ping                       → Ping
//	GET    /v1/domains                    → [Info]
//	POST   /v1/domains                    body: spec (YAML or JSON) → DefineResult (201 created, 200 updated)
//	GET    /v1/domains/{name}             → Info
//	DELETE /v1/domains/{name}             → Undefined
//	POST   /v1/domains/{name}/start       ?paused=1 → Info
//	POST   /v1/domains/{name}/shutdown    ?timeout=60s&mode=acpi|agent|auto&force=1 → Info
//	POST   /v1/domains/{name}/destroy     → Info
//	POST   /v1/domains/{name}/pause       → Info
//	POST   /v1/domains/{name}/resume      → Info
//	POST   /v1/domains/{name}/reset       → Info
//	POST   /v1/domains/{name}/qmp         body: {"execute": ..., "arguments": {...}} → QMPReply
//	POST   /v1/domains/{name}/agent       body: {"execute": ..., "arguments": {...}} (a guest agent command) → AgentReply
//	POST   /v1/domains/{name}/exec        body: ExecRequest → ExecReply (once the guest command has exited)
//	GET    /v1/domains/{name}/jobs        → Jobs
//	POST   /v1/domains/{name}/jobs/abort  → Info (the async job was asked to stop)
//	GET    /v1/domains/{name}/snapshots   → [Snapshot]
//	POST   /v1/domains/{name}/snapshots/{snap}         → Info (created)
//	POST   /v1/domains/{name}/snapshots/{snap}/disk-only → Info (created)
//	POST   /v1/domains/{name}/snapshots/{snap}/revert  → Info
//	DELETE /v1/domains/{name}/snapshots/{snap}         → Info
//	GET    /v1/domains/{name}/console     Upgrade: vmsup-console → 101, then raw bytes both ways
//	GET    /v1/jobs                       → [Jobs]
//	GET    /v1/events                     ?domain=NAME → NDJSON stream of Event
//	GET    /v1/trace                      ?domain=NAME&request=ID&limit=N → [record.Record]
//	GET    /v1/trace/follow               ?domain=NAME → NDJSON stream of record.Record and TraceNotice
//	GET    /v1/trace/chrome               ?domain=NAME&request=ID → Chrome trace-event JSON (Perfetto)
//	GET    /v1/trace/request/{id}         ?format=json|mermaid|svg → one request's records or its picture
//
// The trace routes read the daemon's trace recorder (package actors/trace;
// its records are defined in package actors/trace/record); they answer 409
// when the daemon runs with --trace=false. A record belongs to
// ?domain=NAME when its actor or sender is domain/NAME, monitor/NAME or
// agent/NAME, or
// when it is the API record of a call that reached them.
//
// Access: the daemon checks each connection's peer credentials. The GET
// routes above, except console, are reads, open to the reader group;
// every other route needs admin access (uid 0, the daemon's uid or the
// admin group). A refused call gets 403 naming the caller's uid and what
// grants access.
//
// Every response carries an X-Request-Id header. A client may bound any call
// with an X-Vmsup-Timeout header (a Go duration such as "45s"); without it,
// jobs wait up to 30 s for the VM's job lane, shutdown waits its own
// timeout plus 30 s, and a snapshot job 10 minutes.
package api

import "time"

// Protocol constants shared by the server and its clients.
const (
	// Prefix is the path prefix of every route of this API version.
	Prefix = "/v1"
	// HeaderRequestID names the response header that carries the id the
	// daemon gave to the request (also in the daemon's log lines).
	HeaderRequestID = "X-Request-Id"
	// HeaderTimeout names the request header that bounds a call, as a Go
	// duration ("45s").
	HeaderTimeout = "X-Vmsup-Timeout"
	// ConsoleProtocol is the Upgrade token of the console route.
	ConsoleProtocol = "vmsup-console"
	// MaxBodyBytes is the largest request body the API reads (1 MiB).
	MaxBodyBytes = 1 << 20
	// ContentTypeNDJSON is the content type of event streams.
	ContentTypeNDJSON = "application/x-ndjson"
)

// Info is the info object of one VM:
// {"name","uuid","state","reason","pid","job","queued","restarts","control"}.
type Info struct {
	Name     string   `json:"name"`
	UUID     string   `json:"uuid"`
	State    string   `json:"state"`
	Reason   string   `json:"reason"`
	PID      int      `json:"pid"`
	Job      *JobInfo `json:"job"`
	Queued   int      `json:"queued"`
	Restarts int      `json:"restarts"`
	Control  *Control `json:"control"`
	// NICs are the running VM's NICs; absent while it is not running.
	NICs []NIC `json:"nics,omitempty"`
	// Live is the running VM's disks and NICs, hot-plugged ones
	// included; absent while it is not running.
	Live *Live `json:"live,omitempty"`
	// Agent is the guest agent's status while the VM runs with an agent
	// channel; absent otherwise.
	Agent *AgentStatus `json:"agent,omitempty"`
	// Tainted lists the uses of raw QEMU (extra_args, "qmp COMMAND")
	// that the daemon's --allow-raw-qemu let through; absent when none.
	Tainted []string `json:"tainted,omitempty"`
	// Confinement is what confines the running QEMU beyond its seccomp
	// sandbox (a daemon run as root); absent when nothing does.
	Confinement *Confinement `json:"confinement,omitempty"`
	// Problem says why a broken definition (state "broken") cannot be
	// used; absent otherwise.
	Problem string `json:"problem,omitempty"`
}

// Confinement is what applies to a VM's QEMU:
// {"user","uid","cgroup","memory_max","note"}.
type Confinement struct {
	User      string `json:"user,omitempty"`
	UID       uint32 `json:"uid,omitempty"`
	Cgroup    string `json:"cgroup,omitempty"`
	MemoryMax uint64 `json:"memory_max,omitempty"`
	Note      string `json:"note,omitempty"`
}

// NIC is one NIC of a running VM:
// {"index","type","mac","tap","bridge","forwards","guest_ip"}.
type NIC struct {
	Index    int           `json:"index"`
	Type     string        `json:"type"`
	MAC      string        `json:"mac"`
	Tap      string        `json:"tap,omitempty"`
	Bridge   string        `json:"bridge,omitempty"`
	Forwards []PortForward `json:"forwards,omitempty"`
	GuestIP  string        `json:"guest_ip,omitempty"`
}

// AgentStatus is the guest agent's status: {"state","reason","version","since"};
// state is "unknown", "available" or "unavailable".
type AgentStatus struct {
	State   string    `json:"state"`
	Reason  string    `json:"reason,omitempty"`
	Version string    `json:"version,omitempty"`
	Since   time.Time `json:"since"`
}

// AgentReply answers POST /v1/domains/{name}/agent with the agent's
// "return" value.
type AgentReply struct {
	Return any `json:"return"`
}

// ExecRequest is the body of POST /v1/domains/{name}/exec: the program in
// the guest, its arguments and its standard input (base64 in JSON).
type ExecRequest struct {
	Path  string   `json:"path"`
	Args  []string `json:"args,omitempty"`
	Stdin []byte   `json:"stdin,omitempty"`
}

// ExecReply is how the guest command ended:
// {"pid","exit_code","signal","stdout","stderr","truncated"}, the output
// in base64. exit_code is -1 when a signal ended it.
type ExecReply struct {
	PID       int    `json:"pid"`
	ExitCode  int    `json:"exit_code"`
	Signal    int    `json:"signal,omitempty"`
	Stdout    []byte `json:"stdout,omitempty"`
	Stderr    []byte `json:"stderr,omitempty"`
	Truncated bool   `json:"truncated,omitempty"`
}

// PortForward is one forward of a user NIC with the host port QEMU really
// listens on: {"field","proto","host_addr","host_port","guest_addr","guest_port"}.
// An empty host_addr is every host address; an empty guest_addr the
// guest's DHCP address.
type PortForward struct {
	Field     string `json:"field"`
	Proto     string `json:"proto"`
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestAddr string `json:"guest_addr,omitempty"`
	GuestPort int    `json:"guest_port"`
}

// Control says whether vmsup can talk to the VM right now, as libvirt's
// domcontrol does: {"state","since","ms","reason"}. State is "ok", "job"
// (a job holds the VM since Since), "occupied" (a QMP command waits for
// QEMU since Since) or "error" (the QMP monitor is broken since Since,
// because of Reason). Since is null when the state is "ok"; Millis is how
// long the state has lasted when the daemon answered.
type Control struct {
	State  string     `json:"state"`
	Since  *time.Time `json:"since"`
	Millis int64      `json:"ms"`
	Reason string     `json:"reason"`
}

// JobInfo is the active job of a VM: {"id","kind","owner","started","qmp"}
// and "trace", the trace id of the API call that owns it (the X-Request-Id
// of that call; `vmsup trace --request ID` shows its path).
type JobInfo struct {
	ID      uint64       `json:"id"`
	Kind    string       `json:"kind"`
	Owner   string       `json:"owner"`
	Started time.Time    `json:"started"`
	QMP     *QMPInFlight `json:"qmp"`
	Trace   string       `json:"trace"`
	// Progress shows the job's steps, the current one in brackets:
	// `start: prepare → spawn → attach → [query-status] → cont`.
	Progress string `json:"progress,omitempty"`
	// Mask lists what may start beside an async job
	// ("query|destroy|suspend|abort").
	Mask string `json:"mask,omitempty"`
	// Report is what an async job last reported of its progress.
	Report *JobProgress `json:"report,omitempty"`
}

// JobProgress is an async job's progress: its phase and, where QEMU
// measures it, the work done of the work to do, with the percent.
type JobProgress struct {
	Phase   string    `json:"phase,omitempty"`
	Current uint64    `json:"current,omitempty"`
	Total   uint64    `json:"total,omitempty"`
	Percent *float64  `json:"percent,omitempty"`
	Text    string    `json:"text"`
	At      time.Time `json:"at"`
}

// Snapshot is one snapshot of a VM (GET /v1/domains/NAME/snapshots):
// State is "creating" while its job runs, then "complete"; Job is 0 for
// a tag made outside vmsup. Kind is "internal" or "disk" (disk-only:
// Overlays over Backing, by disk; Frozen and FrozenFS say whether the
// guest agent froze the filesystems, FreezeNote why not).
type Snapshot struct {
	Name       string            `json:"name"`
	State      string            `json:"state"`
	Kind       string            `json:"kind"`
	Created    time.Time         `json:"created,omitzero"`
	VMState    string            `json:"vmstate,omitempty"`
	Disks      []string          `json:"disks"`
	Job        uint64            `json:"job,omitempty"`
	Overlays   map[string]string `json:"overlays,omitempty"`
	Backing    map[string]string `json:"backing,omitempty"`
	Frozen     bool              `json:"frozen"`
	FrozenFS   int               `json:"frozen_fs"`
	FreezeNote string            `json:"freeze_note,omitempty"`
}

// QMPInFlight is the QMP command a job waits on: {"command","since"}.
type QMPInFlight struct {
	Command string    `json:"command"`
	Since   time.Time `json:"since"`
}

// QueuedJob is a job waiting in a VM's job lane; Trace is the trace id of
// the call that queued it.
type QueuedJob struct {
	ID       uint64    `json:"id"`
	Kind     string    `json:"kind"`
	Owner    string    `json:"owner"`
	Enqueued time.Time `json:"enqueued"`
	Trace    string    `json:"trace"`
}

// Jobs is the job lane of one VM: the active job, a long (async) job in
// its waiting phase, and the queued jobs in the order they will start.
type Jobs struct {
	Domain string      `json:"domain"`
	Active *JobInfo    `json:"active"`
	Async  *JobInfo    `json:"async"`
	Queued []QueuedJob `json:"queued"`
}

// Event is one lifecycle event, one line of the /v1/events stream.
type Event struct {
	Seq    uint64    `json:"seq"`
	Type   string    `json:"type"`
	Domain string    `json:"domain"`
	UUID   string    `json:"uuid,omitempty"`
	State  string    `json:"state"`
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
	Cause  string    `json:"cause,omitempty"`
	// NIC is the NIC of a network-up event ("networks[0]").
	NIC string `json:"nic,omitempty"`
}

// DefineResult answers POST /v1/domains.
type DefineResult struct {
	Name    string `json:"name"`
	UUID    string `json:"uuid"`
	Created bool   `json:"created"`
}

// Undefined answers DELETE /v1/domains/{name}.
type Undefined struct {
	Name string `json:"name"`
}

// QMPReply answers POST /v1/domains/{name}/qmp with the reply's "return"
// value.
type QMPReply struct {
	Return any `json:"return"`
}

// Ping answers GET /v1/ping: who is serving.
type Ping struct {
	PID      int    `json:"pid"`
	StateDir string `json:"state_dir"`
}

// Error is the body of every error response. Class and Desc are set for
// QMP errors (status 502); Fields lists the bad fields of a spec.
type Error struct {
	Error  string       `json:"error"`
	Class  string       `json:"class,omitempty"`
	Desc   string       `json:"desc,omitempty"`
	Fields []FieldError `json:"fields,omitempty"`
}

// TraceNotice is a line of the /v1/trace/follow stream that is not a
// record; its Kind tells it from a record (whose kind is message, job,
// qmp or api):
//
//   - "dropped": the stream lost records because its reader fell behind
//     (Dropped since the last notice, TotalDropped since the start);
//   - "end": the daemon ends the stream (it is stopping), with the total.
type TraceNotice struct {
	Kind         string    `json:"kind"`
	Dropped      uint64    `json:"dropped"`
	TotalDropped uint64    `json:"total_dropped"`
	Time         time.Time `json:"time"`
	Reason       string    `json:"reason,omitempty"`
}

// Formats of GET /v1/trace/request/{id}.
const (
	FormatJSON    = "json"
	FormatMermaid = "mermaid"
	FormatSVG     = "svg"
)

// Kinds of TraceNotice.
const (
	NoticeDropped = "dropped"
	NoticeEnd     = "end"
)

// FieldError is one problem with one spec field.
type FieldError struct {
	Field   string `json:"field"`
	Problem string `json:"problem"`
}
