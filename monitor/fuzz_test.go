package monitor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

// Flags of a FuzzTransportLines input (its third argument).
const (
	// fuzzCapsReply: the server answers qmp_capabilities itself, then
	// waits for one command and sends the body. Without it the body is
	// what QEMU sends during the handshake.
	fuzzCapsReply = 1 << iota
	// fuzzCloseAfter: the server closes the connection after the body
	// (EOF); otherwise it keeps it open until the client disconnects.
	fuzzCloseAfter
	// fuzzBigLines: MaxLineBytes is fuzzBigLimit instead of
	// fuzzSmallLimit.
	fuzzBigLines
	// fuzzRawGreeting: the greeting is sent as is, without CRLF.
	fuzzRawGreeting
	// fuzzTwoCommands: the client runs two commands at once.
	fuzzTwoCommands
	// fuzzChunked: the body is written in small pieces.
	fuzzChunked
)

const (
	fuzzSmallLimit = 512
	fuzzBigLimit   = 32 << 10
	// fuzzConnectTimeout and fuzzCommandTimeout keep an execution well
	// under 50 ms even when QEMU never answers.
	fuzzConnectTimeout = 25 * time.Millisecond
	fuzzCommandTimeout = 20 * time.Millisecond
	// fuzzHang is how late after its deadline a call may return before
	// the input counts as a hang. It is generous: fuzz workers share
	// the CPU.
	fuzzHang = 2 * time.Second
)

// fuzzGreeting is the greeting of QEMU 7.2, as the seeds use it.
const fuzzGreeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}`

// FuzzTransportLines feeds a Transport arbitrary QMP server output: a
// greeting, then a body of arbitrary lines, from a scripted server on a real
// unix socket. In the body, $CAP stands for the id of qmp_capabilities and
// $ID and $ID2 for the ids of the commands the client runs after the
// handshake, so replies can hit pending commands. Whatever the input, the
// transport must not panic, every call must return by its deadline, a
// successful reply must be an object with "return" and the command's id
// (or no id), a line-too-long failure needs a line that is too long,
// Disconnect must return, the events channel must close and no goroutine
// may be left.
func FuzzTransportLines(f *testing.F) {
	f.Add(fuzzGreeting, []byte(`{"return": {"status": "running", "running": true}, "id": "$ID"}`), uint8(fuzzCapsReply))
	f.Add(fuzzGreeting, []byte(`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}`+"\n"+`{"return": {}, "id": "$CAP"}`), uint8(0))
	f.Add("not a greeting", []byte(""), uint8(fuzzCloseAfter))

	dir, err := os.MkdirTemp("", "qf")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	var n atomic.Uint64

	f.Fuzz(func(t *testing.T, greeting string, body []byte, flags uint8) {
		path := filepath.Join(dir, fmt.Sprintf("%d.sock", n.Add(1)))
		fuzzTransportLines(t, path, greeting, body, flags)
	})
}

func fuzzTransportLines(t *testing.T, path, greeting string, body []byte, flags uint8) {
	baseGoroutines := runtime.NumGoroutine()
	limit := fuzzSmallLimit
	if flags&fuzzBigLines != 0 {
		limit = fuzzBigLimit
	}
	body = bytes.ReplaceAll(body, []byte("$ID2"), []byte(idPrefix+"3"))
	body = bytes.ReplaceAll(body, []byte("$ID"), []byte(idPrefix+"2"))
	body = bytes.ReplaceAll(body, []byte("$CAP"), []byte(idPrefix+"1"))
	g := []byte(greeting)
	if flags&fuzzRawGreeting == 0 {
		g = append(g, "\r\n"...)
	}

	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	serverDone := make(chan struct{})
	go func() {
		defer close(serverDone)
		fuzzServe(ln, g, body, flags)
	}()

	// The client runs in its own goroutine so that a hang is reported
	// with the stacks instead of stalling the fuzzer.
	clientDone := make(chan []string, 1)
	tr := NewTransport(path, TransportOptions{ConnectTimeout: fuzzConnectTimeout, MaxLineBytes: limit, EventBuffer: 4})
	go func() { clientDone <- fuzzClient(tr, flags) }()
	var problems []string
	select {
	case problems = <-clientDone:
	case <-time.After(fuzzConnectTimeout + 2*fuzzCommandTimeout + 3*fuzzHang):
		t.Fatalf("client hung: connect, commands, Disconnect or the events channel did not end\n%s", allStacks())
	}
	for _, p := range problems {
		t.Error(p)
	}
	_ = ln.Close()
	select {
	case <-serverDone:
	case <-time.After(fuzzHang):
		t.Fatalf("fuzz server did not end after Disconnect\n%s", allStacks())
	}

	if err := tr.Err(); errors.Is(err, ErrLineTooLong) {
		longest := 0
		for _, l := range bytes.Split(append(append([]byte{}, g...), body...), []byte("\n")) {
			longest = max(longest, len(l))
		}
		if longest <= limit {
			t.Errorf("transport failed with %v, but no line is longer than %d bytes (longest %d)", err, limit, longest)
		}
	}

	deadline := time.Now().Add(fuzzHang)
	for runtime.NumGoroutine() > baseGoroutines {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left, %d before\n%s", runtime.NumGoroutine(), baseGoroutines, allStacks())
		}
		time.Sleep(time.Millisecond)
	}
}

// fuzzServe plays a QEMU that sends greeting, reads qmp_capabilities,
// answers it or not, and sends body. It ignores every I/O error: the
// transport may close the connection at any point.
func fuzzServe(ln *net.UnixListener, greeting, body []byte, flags uint8) {
	_ = ln.SetDeadline(time.Now().Add(fuzzHang))
	c, err := ln.Accept()
	_ = ln.Close()
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(fuzzHang))
	r := bufio.NewReader(c)
	readLine := func(within time.Duration) bool {
		_ = c.SetReadDeadline(time.Now().Add(within))
		_, err := r.ReadSlice('\n')
		return err == nil
	}
	if _, err := c.Write(greeting); err != nil {
		return
	}
	if !readLine(fuzzConnectTimeout) { // qmp_capabilities
		return
	}
	if flags&fuzzCapsReply != 0 {
		if _, err := c.Write([]byte(`{"return": {}, "id": "` + idPrefix + "1\"}\r\n")); err != nil {
			return
		}
		readLine(fuzzCommandTimeout) // the first command, if any comes
	}
	if flags&fuzzChunked != 0 {
		for i := 0; i < len(body); i += 7 {
			if _, err := c.Write(body[i:min(i+7, len(body))]); err != nil {
				return
			}
		}
	} else if _, err := c.Write(body); err != nil {
		return
	}
	if flags&fuzzCloseAfter != 0 {
		return
	}
	// Keep the connection open until the client closes it.
	_ = c.SetReadDeadline(time.Now().Add(fuzzHang))
	_, _ = r.WriteTo(discard{})
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// fuzzClient connects, runs one or two commands, disconnects and drains
// the events. It returns the broken expectations.
func fuzzClient(tr *Transport, flags uint8) (problems []string) {
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	ctx, cancel := context.WithTimeout(context.Background(), fuzzConnectTimeout)
	start := time.Now()
	err := tr.ConnectContext(ctx)
	cancel()
	if took := time.Since(start); took > fuzzConnectTimeout+fuzzHang {
		bad("Connect returned after %s, its deadline was %s", took, fuzzConnectTimeout)
	}
	if err == nil {
		n := 1
		if flags&fuzzTwoCommands != 0 {
			n = 2
		}
		type result struct {
			reply []byte
			err   error
			took  time.Duration
		}
		results := make(chan result, n)
		for i := 0; i < n; i++ {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), fuzzCommandTimeout)
				defer cancel()
				start := time.Now()
				reply, err := tr.RunContext(ctx, []byte(`{"execute":"query-status"}`))
				results <- result{reply, err, time.Since(start)}
			}()
		}
		ids := map[string]bool{}
		for i := 0; i < n; i++ {
			r := <-results
			if r.took > fuzzCommandTimeout+fuzzHang {
				bad("RunContext returned after %s, its deadline was %s", r.took, fuzzCommandTimeout)
			}
			if r.err != nil {
				continue
			}
			var env struct {
				Return json.RawMessage `json:"return"`
				ID     *string         `json:"id"`
			}
			if r.reply == nil || r.reply[0] != '{' || json.Unmarshal(r.reply, &env) != nil || env.Return == nil {
				bad("RunContext succeeded with a reply that is not an object with \"return\": %q", r.reply)
				continue
			}
			if env.ID != nil {
				if *env.ID != idPrefix+"2" && *env.ID != idPrefix+"3" {
					bad("RunContext got the reply of another command: %q", r.reply)
				}
				if ids[*env.ID] {
					bad("two commands got the reply with id %q", *env.ID)
				}
				ids[*env.ID] = true
			}
		}
	}

	start = time.Now()
	if err := tr.Disconnect(); err != nil {
		bad("Disconnect: %v", err)
	}
	if took := time.Since(start); took > fuzzHang {
		bad("Disconnect took %s", took)
	}
	select {
	case <-tr.Done():
	default:
		bad("Done is not closed after Disconnect")
	}
	if tr.Err() == nil {
		bad("Err is nil after Disconnect")
	}
	if _, err := tr.RunContext(context.Background(), []byte(`{"execute":"query-status"}`)); err == nil {
		bad("RunContext after Disconnect succeeded")
	}
	events, _ := tr.Events(context.Background())
	timeout := time.After(fuzzHang)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return problems
			}
			if ev.Event == "" {
				bad("an event without a name was delivered: %+v", ev)
			}
		case <-timeout:
			bad("the events channel is not closed %s after Disconnect", fuzzHang)
			return problems
		}
	}
}

func allStacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// FuzzParseCommand checks the edge's command check and the wire form the
// transport sends:
//   - ParseCommand accepts cmd exactly when a full decode does (one
//     object, only "execute", a non-empty string, and "arguments", an
//     object or null, keys spelled exactly), but for duplicate members,
//     which it refuses; what it accepts reads the same as that decode;
//   - the wire form of what it accepts (AppendCommand), and of any name
//     with any object as arguments, parses back to the same command, and
//     the transport sends it adding only an id.
func FuzzParseCommand(f *testing.F) {
	f.Add("query-status", []byte(nil))
	f.Add("qom-get", []byte(`{"path": "/machine", "property": "type"}`))
	f.Add("x", []byte(`null`))
	f.Add("x", []byte(`[1]`))
	f.Add("x", []byte(`{"execute":"stop","arguments":{"a":[1,{"b":"}"}]}}`))
	f.Add("x", []byte(`{"execute":"stop","execute":"quit"}`))
	f.Add("x", []byte(`{"\u0065xecute":"stop"}`))

	tr := NewTransport("/nonexistent/qmp.sock", TransportOptions{})
	f.Fuzz(func(t *testing.T, execute string, cmd []byte) {
		name, args, err := ParseCommand(cmd)
		refName, refArgs, refErr := referenceParse(cmd)
		switch {
		case err == nil && refErr != nil:
			t.Fatalf("ParseCommand(%q) accepted what a full decode refuses (%v)", cmd, refErr)
		case err != nil && refErr == nil && !strings.Contains(err.Error(), "duplicate member"):
			t.Fatalf("ParseCommand(%q) refused a good command: %v", cmd, err)
		case err != nil && !errors.Is(err, ErrBadCommand):
			t.Fatalf("ParseCommand(%q): %v does not wrap ErrBadCommand", cmd, err)
		case err == nil:
			if name != refName || !bytes.Equal(bytes.TrimSpace(args), bytes.TrimSpace(refArgs)) {
				t.Fatalf("ParseCommand(%q) = %q %s, a full decode %q %s", cmd, name, args, refName, refArgs)
			}
			checkWire(t, tr, name, args)
		}
		if isObject := len(cmd) > 0 && json.Valid(cmd) && bytes.TrimLeft(cmd, " \t\r\n")[0] == '{'; isObject && execute != "" && utf8.ValidString(execute) {
			checkWire(t, tr, execute, cmd)
		}
	})
}

// checkWire checks the wire form of a command named execute with args (an
// object, or empty): it parses back to the same, and the transport adds
// only an id.
func checkWire(t *testing.T, tr *Transport, execute string, args []byte) {
	t.Helper()
	wire := AppendCommand(nil, execute, args)
	name, back, err := ParseCommand(wire)
	if err != nil || name != execute || (len(args) > 0) != (len(back) > 0) || len(args) > 0 && !jsonEqual(t, args, back) {
		t.Fatalf("AppendCommand(%q, %s) = %s, which parses as %q %s (%v)", execute, args, wire, name, back, err)
	}
	name, id, line, err := tr.prepare(wire)
	if err != nil || name != execute {
		t.Fatalf("transport refused the command %s or misread its name %q: %v", wire, name, err)
	}
	var sent map[string]json.RawMessage
	if !bytes.HasSuffix(line, []byte("}\n")) || json.Unmarshal(line, &sent) != nil {
		t.Fatalf("transport line %q is not one JSON object", line)
	}
	var sentID string
	if json.Unmarshal(sent["id"], &sentID) != nil || sentID != id || !strings.HasPrefix(id, idPrefix) {
		t.Errorf("transport line %s does not carry id %q", line, id)
	}
	delete(sent, "id")
	var orig map[string]json.RawMessage
	_ = json.Unmarshal(wire, &orig)
	if len(sent) != len(orig) {
		t.Errorf("transport changed the members: %s became %s", wire, line)
	}
	for k, v := range orig {
		if !jsonEqual(t, v, sent[k]) {
			t.Errorf("transport changed member %q: %s became %s", k, v, sent[k])
		}
	}
}

// referenceParse is the edge's check done with a full decode (the
// implementation ParseCommand replaced); it keeps the last of duplicate
// members.
func referenceParse(command []byte) (string, json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(command))
	var members map[string]json.RawMessage
	if err := dec.Decode(&members); err != nil || members == nil {
		return "", nil, errors.New("not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return "", nil, errors.New("trailing data")
	}
	for k := range members {
		if k != "execute" && k != "arguments" {
			return "", nil, fmt.Errorf("unknown member %q", k)
		}
	}
	var execute string
	if err := json.Unmarshal(members["execute"], &execute); err != nil || execute == "" {
		return "", nil, errors.New("bad execute")
	}
	var args json.RawMessage
	if a := bytes.TrimSpace(members["arguments"]); len(a) > 0 && !bytes.Equal(a, []byte("null")) {
		if a[0] != '{' {
			return "", nil, errors.New("bad arguments")
		}
		args = a
	}
	return execute, args, nil
}

// jsonEqual reports whether a and b hold the same JSON value.
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	decode := func(data []byte) (any, error) {
		d := json.NewDecoder(bytes.NewReader(data))
		d.UseNumber()
		var v any
		err := d.Decode(&v)
		return v, err
	}
	va, errA := decode(a)
	vb, errB := decode(b)
	if errA != nil || errB != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}
