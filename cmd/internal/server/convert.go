package server

import (
	"github.com/vmsup/vmsup/cmd/internal/api"
	"github.com/vmsup/vmsup/domain"
)

// fromInfo maps a domain snapshot to the API's info object.
func fromInfo(in *domain.Info) api.Info {
	return api.Info{
		Name:        in.Name,
		UUID:        in.UUID,
		State:       string(in.State),
		Reason:      string(in.Reason),
		PID:         in.PID,
		Job:         fromJob(in.Job),
		Queued:      in.Queued,
		Restarts:    in.Restarts,
		Control:     fromControl(in.Control),
		NICs:        fromNICs(in.NICs),
		Confinement: fromConfinement(in.Confinement),
		Problem:     in.Problem,
		Live:        fromLive(in.Live),
		Agent:       fromAgent(in.Agent),
	}
}

func fromConfinement(c *domain.Confinement) *api.Confinement {
	if c == nil {
		return nil
	}
	return &api.Confinement{User: c.User, UID: c.UID, Cgroup: c.Cgroup, MemoryMax: c.MemoryMax, Note: c.Note}
}

func fromAgent(a *domain.AgentStatus) *api.AgentStatus {
	if a == nil {
		return nil
	}
	return &api.AgentStatus{State: string(a.State), Reason: a.Reason, Version: a.Version, Since: a.Since}
}

func fromNICs(nics []domain.NIC) []api.NIC {
	if len(nics) == 0 {
		return nil
	}
	out := make([]api.NIC, len(nics))
	for i, n := range nics {
		out[i] = api.NIC{Index: n.Index, Type: n.Type, MAC: n.MAC, Tap: n.Tap, Bridge: n.Bridge, GuestIP: n.GuestIP}
		for _, f := range n.Forwards {
			out[i].Forwards = append(out[i].Forwards, api.PortForward{Field: f.Field, Proto: f.Proto, HostAddr: f.HostAddr, HostPort: f.HostPort, GuestAddr: f.GuestAddr, GuestPort: f.GuestPort})
		}
	}
	return out
}

// fromInfo adds the domain's taints to its info object.
func (s *Server) fromInfo(in *domain.Info) api.Info {
	out := fromInfo(in)
	for _, t := range s.drv.Taints(in.Name) {
		out.Tainted = append(out.Tainted, t.What)
	}
	return out
}

func fromControl(c *domain.Control) *api.Control {
	if c == nil {
		return nil
	}
	out := &api.Control{State: c.State, Millis: c.Millis, Reason: c.Reason}
	if !c.Since.IsZero() {
		since := c.Since
		out.Since = &since
	}
	return out
}

func fromJob(j *domain.JobInfo) *api.JobInfo {
	if j == nil {
		return nil
	}
	out := &api.JobInfo{ID: j.ID, Kind: string(j.Kind), Owner: j.Owner, Started: j.Started, Trace: j.RequestID, Progress: j.Progress,
		Mask: j.Mask}
	if j.QMP != nil {
		out.QMP = &api.QMPInFlight{Command: j.QMP.Command, Since: j.QMP.Since}
	}
	if p := j.Report; p != nil {
		out.Report = &api.JobProgress{Phase: p.Phase, Current: p.Current, Total: p.Total, Percent: p.Percent, Text: p.Text, At: p.At}
	}
	return out
}

// fromJobs maps a domain's job lane to the API's jobs object.
func fromJobs(j *domain.Jobs) api.Jobs {
	out := api.Jobs{Domain: j.Domain, Active: fromJob(j.Active), Async: fromJob(j.Async), Queued: []api.QueuedJob{}}
	for _, q := range j.Queued {
		out.Queued = append(out.Queued, api.QueuedJob{ID: q.ID, Kind: string(q.Kind), Owner: q.Owner, Enqueued: q.Enqueued, Trace: q.RequestID})
	}
	return out
}

// fromEvent maps a lifecycle event to the API's event object.
func fromEvent(ev domain.Event) api.Event {
	return api.Event{
		Seq:    ev.Seq,
		Type:   string(ev.Type),
		Domain: ev.Domain,
		UUID:   ev.UUID,
		State:  string(ev.State),
		Reason: string(ev.Reason),
		Time:   ev.Time,
		Cause:  ev.Cause,
		NIC:    ev.NIC,
	}
}
