package agent

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/tests/testkit"
)

// bootAgentGuest boots the tiny guest under plain QEMU with a
// virtio-serial port org.qemu.guest_agent.0 on a unix socket, and waits
// for want on its console. It returns the agent channel's socket path.
func bootAgentGuest(t *testing.T, appendArgs, want string) string {
	t.Helper()
	qemu := testkit.RequireQEMU(t)
	g := testkit.RequireGuest(t)
	dir := testkit.ShortDir(t)
	sock := filepath.Join(dir, "qga.sock")
	serial := &testkit.SyncBuffer{}
	cmd := exec.Command(qemu, "-machine", "q35", "-accel", "tcg", "-m", "256M",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-kernel", g.Kernel, "-initrd", g.Initrd,
		"-append", "console=ttyS0 panic=-1 vmsup.net=0 vmsup.shell=0 "+appendArgs,
		"-serial", "stdio",
		"-chardev", "socket,id=qga0,path="+sock+",server=on,wait=off",
		"-device", "virtio-serial-pci",
		"-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0")
	cmd.Stdout, cmd.Stderr = serial, serial
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("guest console:\n%s", serial.String())
		}
	})
	serial.WaitContains(t, want, 3*time.Minute)
	return sock
}

func TestRealAgentPingInfoExecInterfaces(t *testing.T) {
	sock := bootAgentGuest(t, "", "vmsup-guest: agent on")
	st := &atomic.Pointer[Status]{}
	sys, pid := spawn(t, Config{Domain: "guest1", Socket: sock, Status: st})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// The agent may still be opening its port: retry the first ping.
	var err error
	for i := 0; i < 20; i++ {
		if err = Ping(ctx, sys.Root, pid); err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("guest-ping: %v", err)
	}
	gi, err := GetInfo(ctx, sys.Root, pid)
	if err != nil || gi.Version == "" || len(gi.Supported) < 10 {
		t.Fatalf("guest-info = %+v, %v", gi, err)
	}
	if s := st.Load(); s.State != StateAvailable || s.Version != gi.Version {
		t.Fatalf("status = %+v, want available with version %s", s, gi.Version)
	}

	res, err := Exec(ctx, sys.Root, pid, "/bin/sh", []string{"-c", "uname -s; echo oops >&2; exit 3"}, nil)
	if err != nil {
		t.Fatalf("guest-exec: %v", err)
	}
	if res.ExitCode != 3 || string(res.Stdout) != "Linux\n" || string(res.Stderr) != "oops\n" {
		t.Fatalf("exec = code %d stdout %q stderr %q, want 3, Linux, oops", res.ExitCode, res.Stdout, res.Stderr)
	}
	res, err = Exec(ctx, sys.Root, pid, "/bin/cat", nil, []byte("to stdin\n"))
	if err != nil || res.ExitCode != 0 || string(res.Stdout) != "to stdin\n" {
		t.Fatalf("exec cat = %+v, %v", res, err)
	}

	ifs, err := Interfaces(ctx, sys.Root, pid)
	if err != nil {
		t.Fatalf("guest-network-get-interfaces: %v", err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	if !strings.Contains(strings.Join(names, " "), "lo") {
		t.Fatalf("interfaces %v, want lo among them", names)
	}
}

// A stopped agent (SIGSTOP, sent through the agent itself) fails the next
// commands at their deadline, naming them, and the status answers at once.
func TestRealAgentStoppedFailsAtDeadline(t *testing.T) {
	saved := deadlines["guest-exec-status"]
	deadlines["guest-exec-status"] = 2 * time.Second
	t.Cleanup(func() { deadlines["guest-exec-status"] = saved })
	sock := bootAgentGuest(t, "", "vmsup-guest: agent on")
	st := &atomic.Pointer[Status]{}
	sys, pid := spawn(t, Config{Domain: "guest2", Socket: sock, Status: st})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var err error
	for i := 0; i < 20; i++ {
		if err = Ping(ctx, sys.Root, pid); err == nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("guest-ping: %v", err)
	}
	// The child stops its parent, the agent, after the agent answered.
	_, err = Run(ctx, sys.Root, pid, "guest-exec", ExecRequest{Path: "/bin/sh",
		Args: []string{"-c", "sleep 1; kill -STOP $(cat /var/run/qemu-ga.pid)"}})
	if err != nil {
		t.Fatalf("guest-exec: %v", err)
	}
	time.Sleep(2 * time.Second)
	began := time.Now()
	_, err = Run(ctx, sys.Root, pid, "guest-exec-status", map[string]int{"pid": 1})
	took := time.Since(began)
	if err == nil || !strings.Contains(err.Error(), `"guest-exec-status"`) || !strings.Contains(err.Error(), "deadline") {
		t.Fatalf("guest-exec-status to a stopped agent = %v, want a deadline error naming it", err)
	}
	if took > 15*time.Second {
		t.Fatalf("failed after %v, want about its 2s deadline", took)
	}
	sctx, scancel := context.WithTimeout(ctx, time.Second)
	defer scancel()
	rep, err := GetStatus(sctx, sys.Root, pid)
	if err != nil || rep.Status.State != StateUnavailable {
		t.Fatalf("status = %+v, %v, want unavailable at once", rep, err)
	}
}

// A guest without an agent: the first command fails at its deadline.
func TestRealAgentMissing(t *testing.T) {
	sock := bootAgentGuest(t, "vmsup.agent=0", "guest ready")
	st := &atomic.Pointer[Status]{}
	sys, pid := spawn(t, Config{Domain: "guest3", Socket: sock, Status: st})
	began := time.Now()
	err := Ping(context.Background(), sys.Root, pid)
	took := time.Since(began)
	if err == nil || !strings.Contains(err.Error(), "unavailable") || !strings.Contains(err.Error(), `"guest-ping"`) {
		t.Fatalf("ping without an agent = %v, want unavailable", err)
	}
	if d := Deadline("guest-ping"); took > d+5*time.Second {
		t.Fatalf("ping failed after %v, want within its deadline %v", took, d)
	}
	if s := st.Load(); s.State != StateUnavailable {
		t.Fatalf("status = %+v", s)
	}
	t.Logf("missing agent: %v", err)
}
