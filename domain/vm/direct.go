package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/vmsup/vmsup/actors"
	"github.com/vmsup/vmsup/domain"
	"github.com/vmsup/vmsup/monitor"
)

// directQMP is a job that is exactly one QMP command (qmp, pause, resume,
// reset). The domain actor sends the command to the monitor actor itself
// and ends the job when the reply comes back as a message, as DESIGN.md
// describes EnterMonitor: no job goroutine, no step messages. Jobs of
// several steps (start, shutdown, destroy) keep their goroutine.
type directQMP struct {
	execute string
	args    json.RawMessage
	// value turns the reply into the job's value; nil gives none.
	value func(*monitor.Result) any
}

// directRun is the state of a direct job once launched.
type directRun struct {
	replyTo  *actor.PID  // the job's own reply address at the monitor
	backstop *time.Timer // ends the job should the monitor never answer
	released bool
	// cause is why the job was cancelled (destroy, QEMU's exit); a
	// monitor error that arrives after it is reported under it.
	cause error
	// held is a monitor error kept for up to exitSettle while QEMU's exit
	// may be on its way (see settle in jobs.go).
	held error
	// send puts a reply (or an end of the job's own) into the actor's
	// mailbox, tagged with the job; any goroutine may call it.
	send func(reply any)
}

// directSettled ends a direct job with the error it held, when QEMU's
// exit did not come within exitSettle.
type directSettled struct{ err error }

// directDone carries the monitor's reply (or the job's cancellation) to the
// actor instance that launched the job.
type directDone struct {
	jobTrace
	from  *domainActor
	id    uint64
	reply any
}

// TraceStamp lets the trace middleware stamp the message itself.
func (d *directDone) TraceStamp() *string { return d.req.TraceStamp() }

// directEnded ends a direct job from this side: its cancellation
// (destroy) or its backstop.
type directEnded struct{ err error }

// directBackstop is added to the command's own deadline: the monitor
// always answers by then (a reply, its deadline, or its stop), so the
// backstop fires only on a bug, and then ends the job instead of holding
// the lane forever.
const directBackstop = 10 * time.Second

// launchDirect starts a direct job: the command goes to the monitor from
// this handler, with the job's reply address as its sender.
func (dom *domainActor) launchDirect(ctx actor.Context, j *job) {
	d := j.direct
	j.info.Started = time.Now()
	if h := dom.cfg.Hooks.Started; h != nil {
		h(dom.name(), j.info)
	}
	root, self, id := ctx.ActorSystem().Root, ctx.Self(), j.info.ID
	tag := directDone{jobTrace: jobTrace{req: actors.Request{RequestID: j.req.RequestID, ParentID: j.span, Owner: j.req.Owner}}, from: dom, id: id}
	j.run = nil
	// The monitor's reply, and every other end of the job, comes into the
	// mailbox tagged with the job, so that one for a job that already
	// ended is recognised and dropped.
	send := func(reply any) {
		d := tag
		d.reply = reply
		root.Send(self, &d)
	}
	j.directRun = &directRun{send: send} // from here on, finish releases the job
	replyTo, err := actors.ReplyAddress(ctx.ActorSystem(), "qmp", send)
	if err != nil {
		dom.endDirect(ctx, j, nil, fmt.Errorf("domain %q: job %d %q: %w", dom.name(), id, j.info.Name, err))
		return
	}
	j.directRun.replyTo = replyTo
	jctx, cancel := context.WithCancelCause(context.Background())
	j.cancel = func(cause error) { // called by the actor's handlers only
		j.directRun.cause = cause
		cancel(cause)
		var why error = context.Canceled
		if held := j.directRun.held; held != nil {
			why = held
		}
		send(directEnded{fmt.Errorf("%w (job %d %q: %w)", cause, id, j.info.Name, why)})
	}
	j.directRun.backstop = time.AfterFunc(monitor.CommandTimeout(d.execute)+directBackstop, func() {
		send(directEnded{fmt.Errorf("domain %q: job %d %q: no reply from the monitor for QMP %q", dom.name(), id, j.info.Name, d.execute)})
	})
	j.info.Step = "qmp " + d.execute
	j.info.QMP = &domain.QMPInFlight{Command: d.execute, Since: j.info.Started}
	dom.cfg.Logger.Debug().Str("domain", dom.name()).Uint64("job", id).Str("name", j.info.Name).
		Str("request", j.req.RequestID).Dur("waited", j.info.Started.Sub(j.info.Enqueued)).Msg("job started")
	ctx.RequestWithCustomSender(dom.mon, &monitor.Command{
		Request:   j.req.Child(jctx, j.span),
		JobID:     id,
		Execute:   d.execute,
		Arguments: d.args,
	}, replyTo)
}

// onDirectDone ends the active direct job with the monitor's reply. A
// reply for a job that is no longer active (destroyed, abandoned) is
// dropped.
func (dom *domainActor) onDirectDone(ctx actor.Context, msg directDone) {
	j, ok := dom.lane.Active()
	if !ok || j.info.ID != msg.id || j.directRun == nil {
		return
	}
	var value any
	var err error
	switch r := msg.reply.(type) {
	case *monitor.Result:
		if j.direct.value != nil {
			value = j.direct.value(r)
		}
	case *actor.DeadLetterResponse:
		err = fmt.Errorf("job %d %q: monitor: %w", j.info.ID, j.info.Name, actors.ErrNoActor)
	case directEnded:
		err = r.err
	case directSettled:
		if j.directRun.held == nil || j.directRun.cause != nil {
			return // already ended or cancelled meanwhile
		}
		err = r.err
	case error:
		var qerr *monitor.QMPError
		switch cause := j.directRun.cause; {
		case cause != nil:
			err = fmt.Errorf("%w (job %d %q: %v)", cause, j.info.ID, j.info.Name, r)
		case !errors.As(r, &qerr) && dom.proc != nil && !dom.proc.Gone() && j.directRun.held == nil:
			// The connection failed while QEMU seems alive: give its
			// exit a moment to arrive and cancel the job with a cause.
			j.directRun.held = r
			held := directSettled{fmt.Errorf("job %d %q: %w", j.info.ID, j.info.Name, r)}
			send := j.directRun.send
			time.AfterFunc(exitSettle, func() { send(held) })
			return
		default:
			err = fmt.Errorf("job %d %q: %w", j.info.ID, j.info.Name, r)
		}
	default:
		err = fmt.Errorf("job %d %q: unexpected reply %T from the monitor", j.info.ID, j.info.Name, r)
	}
	if err != nil && dom.proc != nil && dom.proc.Gone() {
		// The connection broke because QEMU died; its exit message is
		// on its way. Say so rather than only "connection reset".
		err = fmt.Errorf("%w; QEMU (pid %d) has exited", err, dom.proc.PID())
	}
	dom.endDirect(ctx, j, value, err)
}

// endDirect ends the active direct job as onJobDone ends a goroutine job.
func (dom *domainActor) endDirect(ctx actor.Context, j *job, value any, err error) {
	dom.onJobDone(ctx, jobDone{from: dom, id: j.info.ID, value: value, err: err})
}

// releaseDirect frees what a launched direct job holds; finish calls it
// for every ending job.
func (dom *domainActor) releaseDirect(ctx actor.Context, j *job) {
	r := j.directRun
	if r == nil || r.released {
		return
	}
	r.released = true
	if r.backstop != nil {
		r.backstop.Stop()
	}
	if r.replyTo != nil {
		ctx.ActorSystem().ProcessRegistry.Remove(r.replyTo)
	}
	if h := dom.cfg.Hooks.Released; h != nil {
		h(dom.name(), j.info)
	}
}
