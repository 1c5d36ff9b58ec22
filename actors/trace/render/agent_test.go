package render_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/vmsup/vmsup/actors/trace/internal/fixture"
	"github.com/vmsup/vmsup/actors/trace/record"
	"github.com/vmsup/vmsup/actors/trace/render"
)

// agentRecords is an exec call: the API, then the agent's guest-exec
// command, as the agent actor records it.
func agentRecords() []record.Record {
	t0 := fixture.T0
	return []record.Record{
		{TraceID: "a1", SpanID: "a1", Kind: record.KindAPI, Actor: "api", MessageType: "api agent guest-exec",
			Started: t0, Ended: t0.Add(40 * time.Millisecond), Note: "ok"},
		{TraceID: "a1", SpanID: "s2", ParentSpanID: "a1", Kind: record.KindQMP, Actor: "agent/web1", MessageType: "guest-exec",
			Started: t0.Add(time.Millisecond), Ended: t0.Add(35 * time.Millisecond), JobID: 3,
			QMP: &record.QMPRecord{Command: "guest-exec", Duration: 34 * time.Millisecond, Outcome: record.OutcomeOK}, Note: "guest agent"},
	}
}

// An agent command is drawn as the monitor's QMP commands are, but goes to
// the guest agent, not to QEMU: in Mermaid and in the Perfetto export.
func TestAgentCommandRendered(t *testing.T) {
	var buf bytes.Buffer
	if err := render.WriteMermaid(&buf, agentRecords()); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"agent_web1->>", ": guest-exec", "guest_agent-->>agent_web1: ok (34ms)"} {
		if !strings.Contains(out, want) {
			t.Errorf("mermaid has no %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "QEMU") || !strings.Contains(out, "as "+render.GuestAgent) {
		t.Errorf("the agent command should go to %q, not QEMU:\n%s", render.GuestAgent, out)
	}

	buf.Reset()
	if err := render.WriteChrome(&buf, agentRecords()); err != nil {
		t.Fatal(err)
	}
	fixture.ValidChrome(t, buf.Bytes())
	var tr render.ChromeTrace
	if err := json.Unmarshal(buf.Bytes(), &tr); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ev := range tr.TraceEvents {
		if ev.Ph == "M" && ev.Name == "thread_name" && ev.Args["name"] == "agent/web1 commands" {
			found = true
		}
	}
	if !found {
		t.Errorf("no Perfetto track \"agent/web1 commands\":\n%s", buf.Bytes())
	}
}
