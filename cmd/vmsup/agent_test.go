package main_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestCLIAgentTinyGuest: on the tiny guest's qemu-ga, `vmsup exec` prints
// the guest command's stdout and stderr and exits with its status, with
// --stdin fed to it; `vmsup agent` prints a raw command's return value and
// refuses guest-sync; `vmsup info` and `list --json` show the agent.
func TestCLIAgentTinyGuest(t *testing.T) {
	spec := requireGuest(t)
	d := startDaemon(t)
	d.ok(t, "define", spec)
	d.ok(t, "start", "tiny")

	// The daemon's watcher pings the agent until it answers.
	deadline := time.Now().Add(120 * time.Second)
	for {
		r := d.vmsup(t, "info", "tiny")
		if strings.Contains(r.stdout, "Agent:") && strings.Contains(r.stdout, "available (qemu-ga ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no available agent in info after 120s: %s", r)
		}
		time.Sleep(500 * time.Millisecond)
	}

	r := d.vmsup(t, "exec", "tiny", "--", "/bin/sh", "-c", "echo out; echo err >&2; exit 7")
	if r.code != 7 || r.stdout != "out\n" || r.stderr != "err\n" {
		t.Fatalf("exec: want exit 7, stdout out, stderr err; got %s", r)
	}
	r = runVmsup(t, []string{"VMSUP_SOCKET=" + d.socket}, strings.NewReader("piped\n"), "exec", "--stdin", "tiny", "--", "/bin/cat")
	if r.code != 0 || r.stdout != "piped\n" {
		t.Fatalf("exec --stdin cat: %s", r)
	}
	r = d.vmsup(t, "exec", "tiny")
	if r.code != 2 {
		t.Fatalf("exec without a command: want usage exit 2, got %s", r)
	}

	r = d.vmsup(t, "agent", "tiny", `{"execute":"guest-get-host-name"}`)
	var host struct {
		Name string `json:"host-name"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &host) != nil || host.Name == "" {
		t.Fatalf("agent guest-get-host-name: %s", r)
	}
	r = d.vmsup(t, "agent", "tiny", `{"execute":"guest-sync","arguments":{"id":1}}`)
	if r.code != 1 || !strings.Contains(r.stderr, "refused") {
		t.Fatalf("agent guest-sync: want refused, got %s", r)
	}
	r = d.vmsup(t, "agent", "tiny", `{"execute":"guest-no-such-command"}`)
	if r.code != 1 || !strings.Contains(r.stderr, "CommandNotFound") {
		t.Fatalf("agent unknown command: want the agent's CommandNotFound, got %s", r)
	}

	var list []struct {
		Name  string `json:"name"`
		Agent *struct {
			State   string `json:"state"`
			Version string `json:"version"`
		} `json:"agent"`
	}
	r = d.vmsup(t, "list", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 1 || list[0].Agent == nil || list[0].Agent.State != "available" {
		t.Fatalf("list --json agent: %v: %s", err, r)
	}
}
