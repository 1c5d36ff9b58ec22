// Package agent is the guest agent actor of a domain: one more user of the
// job lane (actors.Lane), beside the domain's monitor, over the
// virtio-serial channel org.qemu.guest_agent.0. A hung or missing agent
// fails its commands at their deadlines (Deadline) and is marked
// unavailable in the published Status; it never blocks the monitor's jobs
// nor Info, which reads the status without asking the actor.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/rs/zerolog"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/actors/trace"
	"github.com/vmsup/vmsup/domain"
)

// State says whether the agent answers (domain.AgentState).
type State = domain.AgentState

// Agent states.
const (
	StateUnknown     = domain.AgentUnknown
	StateAvailable   = domain.AgentAvailable
	StateUnavailable = domain.AgentUnavailable
)

// Status is what the domain shows of its agent (Info.Agent).
type Status = domain.AgentStatus

// Config configures an agent actor.
type Config struct {
	// Domain names the domain in errors and the lane (`domain "web1"`).
	Domain string
	// Socket is the unix socket on which QEMU relays the agent's channel.
	Socket string
	// Status receives the agent's status after each command; nil keeps
	// it in the actor only.
	Status *atomic.Pointer[Status]
	// Dispatcher runs the job goroutines (nil: a goroutine each).
	Dispatcher actor.Dispatcher
	// Inflight counts the job goroutines (see actors.LaneConfig).
	Inflight *actors.Inflight
	// Trace records each agent command as a span of actor "agent/NAME"
	// (as the monitor's QMP commands are), and the actor's messages; nil
	// leaves tracing out.
	Trace  *trace.Recorder
	Logger zerolog.Logger
}

// CommandRequest asks the agent actor to run one agent command. It is
// plain data (the arguments are JSON), so that it can cross a host
// boundary.
type CommandRequest struct {
	actors.Request
	// Command is the agent command, such as "guest-ping".
	Command string `json:"command"`
	// Arguments are its JSON arguments; empty for none.
	Arguments json.RawMessage `json:"arguments,omitempty"`
}

// CommandReply is the agent's return value for a CommandRequest.
type CommandReply struct {
	Return json.RawMessage `json:"return,omitempty"`
}

// StatusChanged tells the agent actor's parent (the domain) that the
// published Status changed, so that it publishes a fresh Info.
type StatusChanged struct{}

// StatusRequest asks for the agent's status and its lane (jobs).
type StatusRequest struct{}

// StatusReply answers StatusRequest.
type StatusReply struct {
	Status Status              `json:"status"`
	Jobs   actors.LaneSnapshot `json:"jobs"`
}

// Props returns the props of an agent actor.
func Props(cfg Config) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor { return newAgent(cfg) },
		append(trace.PropsOptions(cfg.Trace), actors.PropsOption(cfg.Dispatcher)...)...)
}

// agentActor is the actor; ag is its receiver.
type agentActor struct {
	cfg    Config
	lane   *actors.Lane[*command]
	status *atomic.Pointer[Status]
	// conn is touched only by job steps, which run one at a time.
	conn *Conn
	// parent hears StatusChanged; set at Started, before any job.
	parent *actor.PID
	root   *actor.RootContext
}

// command is the data of one agent job.
type command struct {
	ag     *agentActor
	name   string
	args   json.RawMessage
	parent string // the span of the caller, for the trace
}

var commandPlan = newCommandPlan()

func newCommandPlan() *actors.Plan[*command] {
	p := actors.NewPlan[*command]("agent", actors.JobQuery, actors.Step[*command]{Name: "run", Do: runCommand})
	p.Via = "agent"
	return p
}

func newAgent(cfg Config) *agentActor {
	st := cfg.Status
	if st == nil {
		st = &atomic.Pointer[Status]{}
	}
	if st.Load() == nil {
		st.Store(&Status{State: StateUnknown, Since: time.Now()})
	}
	ag := &agentActor{cfg: cfg, status: st}
	ag.lane = actors.NewLane(actors.LaneConfig[*command]{
		Name:       fmt.Sprintf("domain %q: agent", cfg.Domain),
		Dispatcher: cfg.Dispatcher,
		Inflight:   cfg.Inflight,
	})
	return ag
}

// Receive handles the actor's messages.
func (ag *agentActor) Receive(c actor.Context) {
	if ag.lane.Handle(c, c.Message()) {
		return
	}
	switch m := c.Message().(type) {
	case *actor.Started:
		ag.parent, ag.root = c.Parent(), c.ActorSystem().Root
	case *CommandRequest:
		if err := checkCommand(m.Command); err != nil {
			c.Respond(fmt.Errorf("domain %q: %w", ag.cfg.Domain, err))
			return
		}
		ag.lane.Enqueue(c, commandPlan, m.Request, &command{ag: ag, name: m.Command, args: m.Arguments, parent: m.ParentID}, actors.ReplyTo(c.Sender()))
	case *StatusRequest:
		c.Respond(&StatusReply{Status: *ag.status.Load(), Jobs: ag.lane.Snapshot()})
	case *actor.Stopping:
		ag.lane.Close(c, fmt.Errorf("domain %q: the guest agent actor stopped", ag.cfg.Domain))
	case *actor.Stopped:
		if !ag.lane.Wait(DefaultDeadline + 5*time.Second) {
			ag.cfg.Logger.Error().Str("domain", ag.cfg.Domain).Msg("guest agent job still running after stop")
		}
		if ag.conn != nil {
			ag.conn.Close()
		}
	}
}

// checkCommand refuses names that are no agent command.
func checkCommand(name string) error {
	if name == "" || len(name) > 64 {
		return errors.New("guest agent command: empty or longer than 64 bytes")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("guest agent command %q: not a command name", printable(name, 64))
		}
	}
	switch name {
	case "guest-sync", "guest-sync-delimited":
		return fmt.Errorf("guest agent command %q: vmsup synchronises the channel itself", name)
	}
	return nil
}

// runCommand is the job's one step: (re)connect and resynchronise when
// needed, then run the command, all before its deadline.
func runCommand(ctx context.Context, r actors.Run[*command]) error {
	d := r.Data()
	ag := d.ag
	ctx, cancel := context.WithTimeout(ctx, Deadline(d.name))
	defer cancel()
	if err := ag.ensureConn(ctx); err != nil {
		ag.setUnavailable(d.name, err)
		return fmt.Errorf("domain %q: guest agent command %q: agent unavailable: %w", ag.cfg.Domain, d.name, err)
	}
	r.Calling(d.name)
	var args any
	if len(d.args) > 0 {
		args = d.args
	}
	began := time.Now()
	if noReply[d.name] {
		err := ag.conn.Send(ctx, Deadline(d.name), d.name, args)
		ag.record(r, d, time.Since(began), err)
		if err != nil {
			ag.setUnavailable(d.name, err)
			return fmt.Errorf("domain %q: %w", ag.cfg.Domain, err)
		}
		r.SetValue(&CommandReply{})
		return nil
	}
	raw, err := ag.conn.RunRaw(ctx, Deadline(d.name), d.name, args)
	ag.record(r, d, time.Since(began), err)
	var ae *Error
	switch {
	case err != nil && r.Context().Err() != nil:
		// The job was cancelled, not the agent silent: start afresh.
		ag.conn.Close()
		ag.conn = nil
	case err == nil:
		ag.setAvailable("")
	case errors.As(err, &ae) && ae.Err == nil:
		// An error reply: the agent answers.
		ag.setAvailable("")
	default:
		ag.setUnavailable(d.name, err)
		ag.conn.Close()
		ag.conn = nil
	}
	if err != nil {
		return fmt.Errorf("domain %q: %w", ag.cfg.Domain, err)
	}
	if d.name == "guest-info" {
		var gi GuestInfo
		if json.Unmarshal(raw, &gi) == nil {
			ag.setAvailable(printable(gi.Version, 64))
		}
	}
	r.SetValue(&CommandReply{Return: raw})
	return nil
}

// record puts one agent command in the trace, as the monitor's QMP
// commands are: a span of kind qmp whose actor is "agent/NAME".
func (ag *agentActor) record(r actors.Run[*command], d *command, took time.Duration, err error) {
	if !ag.cfg.Trace.Enabled() {
		return
	}
	h := r.Header()
	parent := h.ParentID
	if parent == "" {
		parent = d.parent
	}
	end := trace.Now()
	ag.cfg.Trace.Record(trace.Record{
		TraceID: h.RequestID, SpanID: trace.NewSpanID(), ParentSpanID: parent, Kind: trace.KindQMP,
		Actor: "agent/" + ag.cfg.Domain, MessageType: d.name, Started: end.Add(-took), Ended: end,
		JobID: r.ID(), QMP: &trace.QMPRecord{Command: d.name, Duration: took, Outcome: trace.Outcome(err)},
		Note: "guest agent",
	})
}

func (ag *agentActor) ensureConn(ctx context.Context) error {
	if ag.conn != nil && ag.conn.Synced() {
		return nil
	}
	if ag.conn == nil {
		c, err := Dial(ctx, ag.cfg.Socket)
		if err != nil {
			return err
		}
		ag.conn = c
	}
	if err := ag.conn.Sync(ctx, Deadline("guest-sync-delimited")); err != nil {
		// A fresh connection next time: the old one may hold a reply
		// that is still on its way.
		ag.conn.Close()
		ag.conn = nil
		return err
	}
	return nil
}

func (ag *agentActor) setAvailable(version string) {
	old := ag.status.Load()
	if version == "" {
		version = old.Version
	}
	if old.State == StateAvailable && old.Version == version {
		return
	}
	since := old.Since
	if old.State != StateAvailable {
		since = time.Now()
	}
	ag.status.Store(&Status{State: StateAvailable, Version: version, Since: since})
	ag.changed()
}

// changed tells the parent that the status changed.
func (ag *agentActor) changed() {
	if ag.parent != nil {
		ag.root.Send(ag.parent, &StatusChanged{})
	}
}

func (ag *agentActor) setUnavailable(cmd string, err error) {
	old := ag.status.Load()
	since := old.Since
	if old.State != StateUnavailable {
		since = time.Now()
		ag.cfg.Logger.Warn().Str("domain", ag.cfg.Domain).Str("command", cmd).Err(err).Msg("guest agent unavailable")
	}
	ag.status.Store(&Status{State: StateUnavailable, Reason: err.Error(), Version: old.Version, Since: since})
	ag.changed()
}
