package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vmsup/vmsup/tests/testkit"
)

// A command with a File carries its descriptor as SCM_RIGHTS with the
// command's bytes; the peer gets a working fd of the same file.
func TestTransportSendsFileWithCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, []byte("passed"), 0o600); err != nil {
		t.Fatal(err)
	}
	file, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	got := make(chan string, 1)
	f := newFakeQMP(t)
	f.Serve(func(c *testkit.QMPConn) {
		c.Handshake()
		uc := c.Conn().(*net.UnixConn)
		_ = uc.SetReadDeadline(time.Now().Add(fakeWait))
		buf, oob := make([]byte, 4096), make([]byte, syscall.CmsgSpace(4))
		n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
		if err != nil {
			got <- "read: " + err.Error()
			return
		}
		var cmd struct {
			Execute string `json:"execute"`
			ID      string `json:"id"`
		}
		_ = json.Unmarshal(buf[:n], &cmd)
		msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			got <- fmt.Sprintf("control messages %v %v", msgs, err)
			return
		}
		fds, err := syscall.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			got <- fmt.Sprintf("rights %v %v", fds, err)
			return
		}
		pf := os.NewFile(uintptr(fds[0]), "passed")
		b := make([]byte, 16)
		m, _ := pf.ReadAt(b, 0)
		pf.Close()
		got <- cmd.Execute + " " + string(b[:m])
		_ = c.Conn().SetWriteDeadline(time.Now().Add(fakeWait))
		_, _ = fmt.Fprintf(c.Conn(), `{"return": {"fdset-id": 1000, "fd": 42}, "id": %q}`+"\r\n", cmd.ID)
		c.WaitStop()
	})
	tr := connectFake(t, f, TransportOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), fakeWait)
	defer cancel()
	ret, err := tr.RunCommand(ctx, Command{Execute: "add-fd", Arguments: json.RawMessage(`{"fdset-id":1000}`), File: file}, time.Now().Add(fakeWait))
	if err != nil {
		t.Fatalf("add-fd with a file: %v", err)
	}
	if s := <-got; s != "add-fd passed" {
		t.Fatalf("the peer got %q, want the command with a readable fd of the file", s)
	}
	if string(ret) != `{"fdset-id": 1000, "fd": 42}` {
		t.Fatalf("reply %s", ret)
	}
}
