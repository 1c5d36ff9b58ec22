package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// Limits of the channel. The agent runs in the guest, so everything it
// sends is hostile input: a line longer than MaxLineBytes ends the
// connection.
const (
	// MaxLineBytes is the longest reply line accepted from the agent. The
	// largest ordinary reply, guest-exec-status with captured output, is
	// bounded by the agent's own 16 MiB capture limit in base64; vmsup
	// accepts up to that.
	MaxLineBytes = 24 << 20
	// syncDelimiter is the byte the agent writes before its reply to
	// guest-sync-delimited, and the byte a client writes to reset the
	// agent's JSON parser (QEMU's qga protocol).
	syncDelimiter = 0xFF
)

// Error is an error reply of the agent, or a failure of one command on
// the channel.
type Error struct {
	// Command is the agent command ("guest-ping").
	Command string
	// Class and Desc are the agent's error class and description; empty
	// when the command failed on the channel (Err is set).
	Class, Desc string
	// Err is the channel failure (a timeout, a closed connection).
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("guest agent command %q: %v", e.Command, e.Err)
	}
	return fmt.Sprintf("guest agent command %q: %s: %s", e.Command, e.Class, e.Desc)
}

func (e *Error) Unwrap() error { return e.Err }

// ErrLineTooLong is returned when the agent sends a line longer than
// MaxLineBytes.
var ErrLineTooLong = errors.New("reply line longer than the limit")

// Conn is one connection to a guest agent's channel: a unix socket on
// which QEMU relays the virtio-serial port org.qemu.guest_agent.0. It
// runs one command at a time and is not safe for concurrent use: the
// agent actor's lane is its only user.
type Conn struct {
	nc      net.Conn
	r       *bufio.Reader
	synced  bool
	maxLine int // MaxLineBytes; tests lower it
}

// Dial connects to the agent channel's socket at path, bounded by ctx.
// It does not talk to the agent: Sync does.
func Dial(ctx context.Context, path string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("guest agent channel %s: %w", path, err)
	}
	return &Conn{nc: nc, r: bufio.NewReaderSize(nc, 64<<10), maxLine: MaxLineBytes}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.nc.Close() }

// Synced reports whether the last Sync succeeded and no command failed on
// the channel since.
func (c *Conn) Synced() bool { return c.synced }

// Sync resynchronises with the agent, as the qga protocol prescribes after
// a connect or a timeout: it writes the delimiter byte (which resets the
// agent's parser), sends guest-sync-delimited with a random id, skips
// everything up to the agent's delimiter byte, and then reads replies
// until the one that carries the id. A late reply to an earlier command
// is skipped that way. deadline bounds the whole exchange.
func (c *Conn) Sync(ctx context.Context, deadline time.Duration) error {
	c.synced = false
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	stop := c.bound(ctx)
	defer stop()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return &Error{Command: "guest-sync-delimited", Err: err}
	}
	// The id is a positive int that fits the agent's int64 and JSON.
	id := binary.LittleEndian.Uint64(b[:]) >> 12
	// The delimiter byte is written raw (not as a UTF-8 rune).
	req := fmt.Appendf([]byte{syncDelimiter}, `{"execute":"guest-sync-delimited","arguments":{"id":%d}}`+"\n", id)
	if _, err := c.nc.Write(req); err != nil {
		return c.fail(ctx, "guest-sync-delimited", deadline, err)
	}
	for {
		// Skip to the delimiter: what comes before it is the agent's
		// answer to the parser reset, or stale replies.
		if _, err := c.r.ReadSlice(syncDelimiter); err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return c.fail(ctx, "guest-sync-delimited", deadline, err)
		} else if err != nil {
			continue
		}
		line, err := c.readLine()
		if err != nil {
			return c.fail(ctx, "guest-sync-delimited", deadline, err)
		}
		var rep struct {
			Return *uint64 `json:"return"`
		}
		if json.Unmarshal(line, &rep) == nil && rep.Return != nil && *rep.Return == id {
			c.synced = true
			return nil
		}
	}
}

// Run sends cmd with args (nil for none) and decodes the agent's return
// value into out (nil to discard it), bounded by ctx and deadline. Any
// failure other than an error reply leaves the connection out of sync:
// the caller must Sync (or reconnect) before the next command.
func (c *Conn) Run(ctx context.Context, deadline time.Duration, cmd string, args, out any) error {
	raw, err := c.RunRaw(ctx, deadline, cmd, args)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return &Error{Command: cmd, Err: fmt.Errorf("malformed return value: %w", err)}
	}
	return nil
}

// RunRaw is Run returning the undecoded return value.
func (c *Conn) RunRaw(ctx context.Context, deadline time.Duration, cmd string, args any) (json.RawMessage, error) {
	if !c.synced {
		return nil, &Error{Command: cmd, Err: errors.New("channel not synchronised")}
	}
	req, err := encode(cmd, args)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	stop := c.bound(ctx)
	defer stop()
	if _, err := c.nc.Write(req); err != nil {
		return nil, c.fail(ctx, cmd, deadline, err)
	}
	line, err := c.readLine()
	if err != nil {
		return nil, c.fail(ctx, cmd, deadline, err)
	}
	return decodeReply(cmd, line, c)
}

// Send sends cmd without waiting for a reply, for the commands that send
// none when they succeed (guest-shutdown). The connection stays usable
// only after a Sync.
func (c *Conn) Send(ctx context.Context, deadline time.Duration, cmd string, args any) error {
	if !c.synced {
		return &Error{Command: cmd, Err: errors.New("channel not synchronised")}
	}
	req, err := encode(cmd, args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	stop := c.bound(ctx)
	defer stop()
	c.synced = false
	if _, err := c.nc.Write(req); err != nil {
		return c.fail(ctx, cmd, deadline, err)
	}
	return nil
}

func encode(cmd string, args any) ([]byte, error) {
	msg := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
	}{cmd, args}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, &Error{Command: cmd, Err: fmt.Errorf("encode arguments: %w", err)}
	}
	return append(b, '\n'), nil
}

// decodeReply reads one reply line: {"return": ...} or {"error": {...}}.
func decodeReply(cmd string, line []byte, c *Conn) (json.RawMessage, error) {
	var rep struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(line, &rep); err != nil {
		c.synced = false
		return nil, &Error{Command: cmd, Err: fmt.Errorf("malformed reply %s: %w", clip(line), err)}
	}
	switch {
	case rep.Error != nil:
		return nil, &Error{Command: cmd, Class: printable(rep.Error.Class, 64), Desc: printable(rep.Error.Desc, 512)}
	case rep.Return == nil:
		c.synced = false
		return nil, &Error{Command: cmd, Err: fmt.Errorf("reply without return or error: %s", clip(line))}
	}
	return rep.Return, nil
}

// readLine reads one line of at most c.maxLine bytes, without its newline.
func (c *Conn) readLine() ([]byte, error) {
	var long []byte
	for {
		frag, err := c.r.ReadSlice('\n')
		if err == nil {
			if long == nil {
				return bytes.TrimRight(frag, "\r\n"), nil
			}
			return bytes.TrimRight(append(long, frag...), "\r\n"), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
		if len(long)+len(frag) > c.maxLine {
			return nil, ErrLineTooLong
		}
		long = append(long, frag...)
	}
}

// bound makes the connection's reads and writes end when ctx does.
func (c *Conn) bound(ctx context.Context) (stop func()) {
	if dl, ok := ctx.Deadline(); ok {
		c.nc.SetDeadline(dl)
	}
	unhook := context.AfterFunc(ctx, func() { c.nc.SetDeadline(time.Unix(1, 0)) })
	return func() {
		unhook()
		c.nc.SetDeadline(time.Time{})
	}
}

// fail marks the channel out of sync and explains err: the context's
// cause when it ended the exchange.
func (c *Conn) fail(ctx context.Context, cmd string, within time.Duration, err error) error {
	c.synced = false
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &Error{Command: cmd, Err: fmt.Errorf("no reply within its deadline of %v: %w", within, context.DeadlineExceeded)}
	}
	if ctx.Err() != nil {
		return &Error{Command: cmd, Err: ctx.Err()}
	}
	if errors.Is(err, io.EOF) {
		err = errors.New("the channel closed (no agent, or it exited)")
	}
	return &Error{Command: cmd, Err: err}
}

// clip shortens a line for an error message and keeps it printable.
func clip(b []byte) string {
	return fmt.Sprintf("%q", printable(string(b), 120))
}

// printable keeps at most n bytes of s, with control characters replaced.
func printable(s string, n int) string {
	if len(s) > n {
		s = s[:n] + "..."
	}
	return string(bytes.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, []byte(s)))
}
