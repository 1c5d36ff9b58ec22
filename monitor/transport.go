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
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"
)

// Defaults applied by NewTransport to zero (or negative) TransportOptions
// fields.
const (
	// DefaultConnectTimeout bounds Connect: dial, greeting and
	// qmp_capabilities together.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultMaxLineBytes is the longest ordinary line accepted from
	// QEMU. Ordinary replies and events are a few KB at most.
	DefaultMaxLineBytes = 1 << 20
	// DefaultMaxBigLineBytes is the longest line accepted while a command
	// known to answer big (BigReplyCommands) is in flight. The largest
	// real reply, query-qmp-schema, is about 200 KB.
	DefaultMaxBigLineBytes = 32 << 20
	// DefaultEventRate and DefaultEventBurst bound the events a QEMU may
	// send: a token bucket of DefaultEventBurst events refilled at
	// DefaultEventRate a second. A guest that makes QEMU flood events
	// (STOP/RESUME in a loop) breaks its monitor instead of taking a core
	// of the daemon; the monitor reconnects with backoff.
	DefaultEventRate  = 500
	DefaultEventBurst = 2000
	// DefaultEventBuffer is the capacity of the events channel.
	DefaultEventBuffer = 128
)

// idPrefix starts every id the transport puts into a command.
const idPrefix = "vmsup-"

// TransportOptions configures a Transport. The zero value gives the defaults.
type TransportOptions struct {
	// ConnectTimeout bounds Connect as a whole: dialing the socket (retried
	// while it does not exist yet or refuses connections), reading the
	// greeting and running qmp_capabilities. Default 10s.
	ConnectTimeout time.Duration
	// MaxLineBytes is the longest line (without its newline) accepted from
	// QEMU while no command of BigReplyCommands is in flight. A longer
	// line fails the connection with ErrLineTooLong. Default 1 MiB.
	MaxLineBytes int
	// MaxBigLineBytes is the longest line accepted while a command of
	// BigReplyCommands is in flight. Default 32 MiB (never less than
	// MaxLineBytes).
	MaxBigLineBytes int
	// EventRate is how many events a second QEMU may send on average, and
	// EventBurst how many at once; past them the connection fails with
	// ErrEventFlood. Defaults DefaultEventRate, DefaultEventBurst.
	EventRate  float64
	EventBurst int
	// EventBuffer is the capacity of the channel returned by Events. When
	// it is full, new events are dropped and counted (see DroppedEvents).
	// Default 128: the monitor actor drains it continuously into the
	// domain's mailbox.
	EventBuffer int
	// Logger receives warnings about hostile or unexpected input (lines
	// that are not JSON objects, replies with unknown ids, dropped events),
	// at most MalformedLogBurst of them a second. Nil means no logging.
	Logger *zerolog.Logger
}

// MalformedLogBurst is how many warnings about malformed QMP a transport
// logs a second; the rest of that second's are dropped, so a hostile QEMU
// cannot flood the daemon's log.
const MalformedLogBurst = 5

// BigReplyCommands are the commands whose reply may be longer than
// MaxLineBytes (up to MaxBigLineBytes).
var bigReplyCommands = map[string]bool{"query-qmp-schema": true}

// AnswersBig reports whether command name may answer with a line longer
// than TransportOptions.MaxLineBytes.
func AnswersBig(name string) bool { return bigReplyCommands[name] }

// transportState is the life cycle of a Transport. It only moves forward:
// a Transport is connected at most once.
type transportState int

const (
	transportNew transportState = iota
	transportConnecting
	transportConnected
	transportDone
)

// qmpPending is a command waiting for its reply.
type qmpPending struct {
	id    string
	name  string
	reply chan qmpResult // capacity 1; receives exactly one result
}

// qmpResult is what a waiting command receives: the whole reply line, or an
// error.
type qmpResult struct {
	line []byte
	ret  json.RawMessage // the "return" member of line
	err  error
}

// Transport is a QMP client over a unix socket. It implements go-qemu's
// qmp.Monitor, so go-qemu's typed commands (qmp/raw) work on top of it, and
// fixes the gaps of go-qemu's qmp.SocketMonitor:
//
//   - replies are matched to commands by an "id" the transport adds to each
//     command, so several commands may be in flight at once and a late reply
//     to a timed-out command is discarded;
//   - the handshake goes through the same reader, so an event arriving
//     before the qmp_capabilities reply is delivered as an event;
//   - lines may be up to MaxLineBytes long (query-qmp-schema is ~200 KB);
//   - events go to a buffered channel that the reader never blocks on: when
//     it is full the event is dropped and counted, and replies keep flowing;
//   - Connect and every command have a deadline.
//
// One goroutine, the reader, owns the read side of the socket. It is started
// by Connect and ends when the connection ends; Disconnect waits for it.
// Writes are serialized by a one-slot semaphore and bounded by the command's
// deadline.
//
// Cancellation rules: a command whose context ends while it waits for its
// reply is removed from the pending table and returns a timeout error; its
// reply, if it comes later, has an unknown id and is dropped. A command whose
// context ends before any byte of it was written is simply not sent. A write
// that fails after some bytes were written leaves the stream unusable, so it
// fails the connection. When the connection ends for any reason, every
// pending command fails at once with an error wrapping the cause.
//
// A Transport is used for one connection: after Disconnect, a failed Connect
// or a broken connection, make a new one.
type Transport struct {
	path string
	opts TransportOptions
	log  zerolog.Logger

	nextID  atomic.Uint64
	dropped atomic.Uint64
	// big counts the commands of BigReplyCommands in flight: while it is
	// not zero, lines may be MaxBigLineBytes long.
	big atomic.Int32
	// eventLimit bounds the rate of events (reader goroutine only).
	eventLimit *rate.Limiter
	// bad logs malformed input, sampled.
	bad zerolog.Logger

	// evMu orders handing an event over with RouteEvents switching the
	// road; onEvent, when set, takes events instead of the channel.
	evMu    sync.Mutex
	onEvent func(qmp.Event)

	events   chan qmp.Event // sent to and closed by the reader only (or by fail if no reader ever ran)
	done     chan struct{}  // closed by fail
	greeted  chan struct{}  // closed by the reader after a valid greeting
	writeSem chan struct{}  // one slot: serializes writes

	readerWG sync.WaitGroup

	mu            sync.Mutex
	state         transportState
	conn          net.Conn
	err           error
	version       qmp.Version
	pending       map[string]*qmpPending
	readerStarted bool
	connectCancel context.CancelFunc
}

// Transport implements go-qemu's monitor interface.
var _ qmp.Monitor = (*Transport)(nil)

// NewTransport returns a Transport for the QMP unix socket at socketPath. It
// does not connect; call Connect or ConnectContext. Zero fields of opts take
// their defaults (DefaultConnectTimeout, DefaultMaxLineBytes,
// DefaultEventBuffer).
func NewTransport(socketPath string, opts TransportOptions) *Transport {
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.MaxLineBytes <= 0 {
		opts.MaxLineBytes = DefaultMaxLineBytes
	}
	if opts.MaxBigLineBytes < opts.MaxLineBytes {
		opts.MaxBigLineBytes = max(DefaultMaxBigLineBytes, opts.MaxLineBytes)
	}
	if opts.EventBuffer <= 0 {
		opts.EventBuffer = DefaultEventBuffer
	}
	if opts.EventRate <= 0 {
		opts.EventRate = DefaultEventRate
	}
	if opts.EventBurst <= 0 {
		opts.EventBurst = DefaultEventBurst
	}
	log := zerolog.Nop()
	if opts.Logger != nil {
		log = opts.Logger.With().Str("qmp_socket", socketPath).Logger()
	}
	return &Transport{
		path:       socketPath,
		opts:       opts,
		log:        log,
		bad:        log.Sample(&zerolog.BurstSampler{Burst: MalformedLogBurst, Period: time.Second}),
		eventLimit: rate.NewLimiter(rate.Limit(opts.EventRate), opts.EventBurst),
		events:     make(chan qmp.Event, opts.EventBuffer),
		done:       make(chan struct{}),
		greeted:    make(chan struct{}),
		writeSem:   make(chan struct{}, 1),
		pending:    make(map[string]*qmpPending),
	}
}

// Connect connects to QEMU and completes the QMP handshake within
// TransportOptions.ConnectTimeout. It implements qmp.Monitor.
func (t *Transport) Connect() error {
	return t.ConnectContext(context.Background())
}

// ConnectContext dials the socket, reads the QMP greeting and runs
// qmp_capabilities. The whole sequence is bounded by ctx; if ctx has no
// deadline, TransportOptions.ConnectTimeout applies. Dialing is retried while
// the socket does not exist yet (ENOENT) or refuses connections
// (ECONNREFUSED), because QEMU may still be starting. A QEMU that accepts the
// connection but never greets (for example one stopped with SIGSTOP) makes
// ConnectContext fail at the deadline.
//
// A Transport connects once: a second call, or a call after Disconnect,
// fails with ErrClosed. A failed ConnectContext ends the Transport (Done is
// closed and Err returns the reason).
func (t *Transport) ConnectContext(ctx context.Context) error {
	start := time.Now()
	var cancel context.CancelFunc
	if _, ok := ctx.Deadline(); ok {
		ctx, cancel = context.WithCancel(ctx)
	} else {
		ctx, cancel = context.WithTimeout(ctx, t.opts.ConnectTimeout)
	}
	defer cancel()
	deadline, _ := ctx.Deadline()
	budget := deadline.Sub(start)

	t.mu.Lock()
	if t.state != transportNew {
		t.mu.Unlock()
		return fmt.Errorf("QMP connect to %s: a transport connects only once: %w", t.path, ErrClosed)
	}
	t.state = transportConnecting
	t.connectCancel = cancel
	t.mu.Unlock()

	err := t.connect(ctx, budget)

	t.mu.Lock()
	t.connectCancel = nil
	t.mu.Unlock()
	if err != nil {
		t.fail(err)
		t.readerWG.Wait()
		return err
	}
	return nil
}

// connect runs the three connection steps. On error the caller fails the
// transport.
func (t *Transport) connect(ctx context.Context, budget time.Duration) error {
	conn, err := t.dial(ctx, budget)
	if err != nil {
		return err
	}

	t.mu.Lock()
	if t.state != transportConnecting { // Disconnect ran meanwhile.
		t.mu.Unlock()
		_ = conn.Close()
		return t.connectError(ctx, budget, "dialing", nil)
	}
	t.conn = conn
	t.readerStarted = true
	t.readerWG.Add(1)
	t.mu.Unlock()
	go t.readLoop(conn)

	select {
	case <-t.greeted:
	case <-t.done:
		return t.connectError(ctx, budget, "waiting for the greeting", nil)
	case <-ctx.Done():
		return t.connectError(ctx, budget, "waiting for the greeting", nil)
	}

	if _, err := t.run(ctx, []byte(`{"execute":"qmp_capabilities"}`), true); err != nil {
		return fmt.Errorf("QMP connect to %s: %w", t.path, err)
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state != transportConnecting {
		return fmt.Errorf("QMP connect to %s: %w", t.path, t.err)
	}
	t.state = transportConnected
	return nil
}

// dial connects to the socket, retrying while QEMU has not created it yet or
// is not listening yet.
func (t *Transport) dial(ctx context.Context, budget time.Duration) (net.Conn, error) {
	var d net.Dialer
	delay := 5 * time.Millisecond
	var last error
	for {
		conn, err := d.DialContext(ctx, "unix", t.path)
		if err == nil {
			return conn, nil
		}
		var nerr net.Error
		if ctx.Err() != nil || (errors.As(err, &nerr) && nerr.Timeout()) {
			// The dialer uses ctx's deadline and may see it pass before
			// ctx itself reports it.
			if last == nil {
				last = err
			}
			return nil, t.connectError(ctx, budget, "dialing", last)
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.EAGAIN) {
			return nil, fmt.Errorf("QMP connect to %s: %w", t.path, err)
		}
		last = err
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return nil, t.connectError(ctx, budget, "dialing", last)
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
}

// connectError explains why a connection step was cut short: Disconnect, a
// failed connection, or the deadline.
func (t *Transport) connectError(ctx context.Context, budget time.Duration, step string, last error) error {
	select {
	case <-t.done:
		return fmt.Errorf("QMP connect to %s: %s: %w", t.path, step, t.Err())
	default:
	}
	cause := ctx.Err()
	verb := "canceled"
	if cause == nil || errors.Is(cause, context.DeadlineExceeded) {
		cause = context.DeadlineExceeded
		verb = "timed out after " + roundBudget(budget).String()
	}
	if last != nil {
		return fmt.Errorf("QMP connect to %s: %s %s: %w (last error: %w)", t.path, verb, step, cause, last)
	}
	return fmt.Errorf("QMP connect to %s: %s %s: %w", t.path, verb, step, cause)
}

// Disconnect closes the connection. Commands waiting for a reply fail with an
// error wrapping ErrClosed, a Connect in progress is aborted, the events
// channel is closed, and Disconnect waits for the reader goroutine to end.
// It is idempotent and always returns nil. It implements qmp.Monitor.
func (t *Transport) Disconnect() error {
	t.mu.Lock()
	cancel := t.connectCancel
	t.failLocked(ErrClosed)
	t.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	t.readerWG.Wait()
	return nil
}

// fail ends the connection with cause, once.
func (t *Transport) fail(cause error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failLocked(cause)
}

// failLocked ends the connection with cause: it closes the socket (which
// stops the reader), fails every pending command and closes Done. Later
// calls do nothing. t.mu must be held; nothing here blocks.
func (t *Transport) failLocked(cause error) {
	if t.state == transportDone {
		return
	}
	t.state = transportDone
	t.err = cause
	if t.conn != nil {
		_ = t.conn.Close()
	}
	for id, p := range t.pending {
		delete(t.pending, id)
		p.reply <- qmpResult{err: fmt.Errorf("QMP command %q: no reply: %w", p.name, cause)}
	}
	close(t.done)
	if !t.readerStarted {
		close(t.events)
	}
}

// Run executes one QMP command, given as a JSON object such as
// {"execute":"query-status"}, with the deadline CommandTimeout gives for its
// name. See RunContext. It implements qmp.Monitor.
func (t *Transport) Run(cmd []byte) ([]byte, error) {
	return t.RunContext(context.Background(), cmd)
}

// RunContext executes one QMP command and returns the whole reply object,
// for example {"return": {...}, "id": "vmsup-3"}. The transport adds an "id"
// member to cmd (which must not have one) and leaves everything else as is.
//
// The wait is bounded by ctx; if ctx has no deadline, CommandTimeout(name)
// applies. When it expires the error names the command and the timeout and
// wraps context.DeadlineExceeded (`QMP command "query-status" timed out after
// 5s: ...`); a late reply is discarded. A QMP error reply returns a *QMPError.
// If the connection ends first, the error names the command and wraps the
// cause (io.EOF, ErrClosed, ErrLineTooLong ...). Commands may run
// concurrently.
func (t *Transport) RunContext(ctx context.Context, cmd []byte) ([]byte, error) {
	r, err := t.run(ctx, cmd, false)
	return r.line, err
}

// RunReturn is RunContext that returns only the reply's "return" member,
// which the reader has already cut out of the line: the reply is decoded
// once.
func (t *Transport) RunReturn(ctx context.Context, cmd []byte) (json.RawMessage, error) {
	r, err := t.run(ctx, cmd, false)
	return r.ret, err
}

// run sends cmd and waits for its reply. handshake allows it while the
// transport is still connecting (for qmp_capabilities).
func (t *Transport) run(ctx context.Context, cmd []byte, handshake bool) (qmpResult, error) {
	name, id, wire, err := t.prepare(cmd)
	if err != nil {
		return qmpResult{}, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(CommandTimeout(name))
	}
	return t.send(ctx, name, id, wire, deadline, handshake)
}

// RunCommand runs a command that its caller has checked already (the
// monitor's Link, with a command from ParseCommand or the domain's own
// code). The transport writes it with its id, without decoding it again,
// and returns the reply's "return" member. The wait ends at deadline or
// when ctx ends, whichever is first, without a context of its own; see
// RunContext for the errors.
func (t *Transport) RunCommand(ctx context.Context, cmd Command, deadline time.Time) (json.RawMessage, error) {
	n := t.nextID.Add(1)
	wire := make([]byte, 0, len(cmd.Execute)+len(cmd.Arguments)+len(cmd.Wire)+64)
	wire = cmd.AppendWire(wire)
	obj := bytes.TrimSpace(wire)
	if len(obj) < 2 || obj[0] != '{' || obj[len(obj)-1] != '}' {
		return nil, fmt.Errorf("%w: not a JSON object: %s", ErrBadCommand, quoteLine(wire))
	}
	// Add the id in place: the closing brace becomes its member.
	wire = appendID(obj[:len(obj)-1], len(obj) > 2, n)
	r, err := t.sendFile(ctx, cmd.Execute, idString(n), wire, deadline, false, cmd.File)
	return r.ret, err
}

// send registers the command id and writes wire, then waits for the reply
// until deadline or ctx's end.
func (t *Transport) send(ctx context.Context, name, id string, wire []byte, deadline time.Time, handshake bool) (qmpResult, error) {
	return t.sendFile(ctx, name, id, wire, deadline, handshake, nil)
}

// sendFile is send with a file passed along with the command's bytes
// (SCM_RIGHTS), when file is set.
func (t *Transport) sendFile(ctx context.Context, name, id string, wire []byte, deadline time.Time, handshake bool, file *os.File) (qmpResult, error) {
	start := time.Now()
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	budget := deadline.Sub(start)

	p := &qmpPending{id: id, name: name, reply: make(chan qmpResult, 1)}
	t.mu.Lock()
	switch {
	case t.state == transportConnected, handshake && t.state == transportConnecting:
	case t.state == transportDone:
		cause := t.err
		t.mu.Unlock()
		return qmpResult{}, fmt.Errorf("QMP command %q %w: %w", name, ErrNotSent, cause)
	default:
		t.mu.Unlock()
		return qmpResult{}, fmt.Errorf("QMP command %q %w: %w", name, ErrNotSent, ErrNotConnected)
	}
	conn := t.conn
	t.pending[id] = p
	t.mu.Unlock()
	if AnswersBig(name) {
		// Before the write: the reply cannot come before it.
		t.big.Add(1)
		defer t.big.Add(-1)
	}

	timer := getTimer(budget)
	defer putTimer(timer)
	switch n, werr := t.write(ctx, conn, wire, deadline, timer.C, file); {
	case werr == nil:
	case errors.Is(werr, errTransportDone):
		// fail has already answered p.
	case n == 0 && (ctx.Err() != nil || errors.Is(werr, errExpired) || errors.Is(werr, os.ErrDeadlineExceeded)):
		// Nothing was written: the stream is intact; just give up.
		if t.forget(p) {
			return qmpResult{}, timeoutError(ctx, name, budget)
		}
	default:
		t.fail(fmt.Errorf("QMP write of command %q failed: %w", name, werr))
	}

	select {
	case r := <-p.reply:
		return r, r.err
	case <-ctx.Done():
	case <-timer.C:
	}
	if t.forget(p) {
		return qmpResult{}, timeoutError(ctx, name, budget)
	}
	// The reply (or the failure) was delivered meanwhile.
	r := <-p.reply
	return r, r.err
}

// errExpired tells send that the command's deadline passed while it
// waited to write.
var errExpired = errors.New("command deadline passed")

// timerPool keeps the timers of commands' deadlines: a command waits on
// one without a context of its own.
var timerPool sync.Pool

func getTimer(d time.Duration) *time.Timer {
	if t, ok := timerPool.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

// putTimer stops t and keeps it; since Go 1.23 a stopped timer's channel
// holds no stale value.
func putTimer(t *time.Timer) {
	t.Stop()
	timerPool.Put(t)
}

// errTransportDone tells run that the connection ended while it waited to
// write; fail has then already answered the command.
var errTransportDone = errors.New("transport done")

// write sends one command line, serialized with other writers and bounded by
// deadline (expire fires then) and ctx. It returns how many bytes were
// written.
func (t *Transport) write(ctx context.Context, conn net.Conn, wire []byte, deadline time.Time, expire <-chan time.Time, file *os.File) (int, error) {
	select {
	case t.writeSem <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-expire:
		return 0, errExpired
	case <-t.done:
		return 0, errTransportDone
	}
	defer func() { <-t.writeSem }()
	if err := conn.SetWriteDeadline(deadline); err != nil {
		return 0, err
	}
	if file == nil {
		return conn.Write(wire)
	}
	return writeWithFile(conn, wire, file)
}

// writeWithFile writes wire with file's descriptor as SCM_RIGHTS on its
// first byte, then the rest of wire.
func writeWithFile(conn net.Conn, wire []byte, file *os.File) (int, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return 0, errors.New("a file can only be passed on a unix socket")
	}
	raw, err := file.SyscallConn()
	if err != nil {
		return 0, err
	}
	var n int
	var werr error
	if cerr := raw.Control(func(fd uintptr) {
		n, _, werr = uc.WriteMsgUnix(wire, syscall.UnixRights(int(fd)), nil)
	}); cerr != nil {
		return 0, cerr
	}
	if werr != nil || n == len(wire) {
		return n, werr
	}
	m, err := conn.Write(wire[n:])
	return n + m, err
}

// forget removes p from the pending table. It reports false if the reader
// or fail has already taken it out (and so answered it).
func (t *Transport) forget(p *qmpPending) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.pending[p.id]; ok {
		delete(t.pending, p.id)
		return true
	}
	return false
}

// timeoutError is the error of a command whose context ended, or whose
// deadline passed, before its reply came.
func timeoutError(ctx context.Context, name string, budget time.Duration) error {
	if cause := ctx.Err(); errors.Is(cause, context.Canceled) {
		return fmt.Errorf("QMP command %q canceled: %w", name, cause)
	}
	return fmt.Errorf("QMP command %q timed out after %s: %w", name, roundBudget(budget), context.DeadlineExceeded)
}

// roundBudget rounds a deadline budget for messages: a caller's context
// created a moment before the command started shows as "30s", not
// "29.999812s".
func roundBudget(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

// prepare checks cmd, reads its name and returns the bytes to send: cmd with
// an "id" member added before its closing brace, and a newline.
func (t *Transport) prepare(cmd []byte) (name, id string, wire []byte, err error) {
	obj := bytes.TrimSpace(cmd)
	nameRaw, hasID, err := commandHeader(obj)
	if err != nil {
		return "", "", nil, fmt.Errorf("%w: not a JSON object: %s", ErrBadCommand, quoteLine(cmd))
	}
	if name = jsonString(nameRaw); name == "" {
		return "", "", nil, fmt.Errorf("%w: no \"execute\" string member: %s", ErrBadCommand, quoteLine(cmd))
	}
	if hasID {
		return "", "", nil, fmt.Errorf("%w: command %q already has an \"id\" member; the transport sets ids itself", ErrBadCommand, name)
	}
	n := t.nextID.Add(1)
	wire = make([]byte, 0, len(obj)+32)
	return name, idString(n), appendWithID(wire, obj, n), nil
}

// appendWithID appends obj, a JSON object, with the member "id":"vmsup-N"
// added before its closing brace, and a newline.
func appendWithID(dst, obj []byte, n uint64) []byte {
	dst = append(dst, obj[:len(obj)-1]...)
	return appendID(dst, len(bytes.TrimSpace(obj[1:len(obj)-1])) > 0, n)
}

// appendID closes an object whose members so far are in dst (an object
// without its closing brace) with the member "id":"vmsup-N" and a newline.
func appendID(dst []byte, members bool, n uint64) []byte {
	if members {
		dst = append(dst, ',')
	}
	dst = append(dst, `"id":"`+idPrefix...)
	dst = strconv.AppendUint(dst, n, 10)
	return append(dst, "\"}\n"...)
}

// idString is the id of command n.
func idString(n uint64) string {
	return idPrefix + strconv.FormatUint(n, 10)
}

// Events returns the channel of QMP events. Every call returns the same
// channel; ctx is not used. The channel is buffered (EventBuffer); when it is
// full, events are dropped and counted by DroppedEvents rather than holding
// up replies. It is closed when the connection ends. It implements
// qmp.Monitor.
func (t *Transport) Events(context.Context) (<-chan qmp.Event, error) {
	return t.events, nil
}

// Done returns a channel closed when the connection is broken or
// disconnected, or when Connect failed.
func (t *Transport) Done() <-chan struct{} {
	return t.done
}

// Err says why the transport ended: an error wrapping io.EOF when QEMU closed
// the connection, ErrClosed after Disconnect, ErrLineTooLong, ErrProtocol, a
// read error or the Connect error. It is nil while the transport is new or
// healthy.
func (t *Transport) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state != transportDone {
		return nil
	}
	return t.err
}

// Version returns the QEMU version from the QMP greeting; the zero Version
// before the greeting was read.
func (t *Transport) Version() qmp.Version {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.version
}

// RouteEvents makes the reader hand every later event to fn, on the
// reader goroutine, instead of putting it on the Events channel; the
// events already on the channel go to fn first. fn therefore sees each
// event before any reply read after it reaches its command: events and
// replies take one road, in QEMU's order. fn must not block.
func (t *Transport) RouteEvents(fn func(qmp.Event)) {
	t.evMu.Lock()
	defer t.evMu.Unlock()
	drainEvents(t.events, fn)
	t.onEvent = fn
}

// drainEvents hands the events waiting on ch to fn, without blocking.
func drainEvents(ch <-chan qmp.Event, fn func(qmp.Event)) {
	for {
		select {
		case ev, ok := <-ch:
			if ok {
				fn(ev)
				continue
			}
		default:
		}
		return
	}
}

// DroppedEvents returns how many events were dropped because the events
// channel was full.
func (t *Transport) DroppedEvents() uint64 {
	return t.dropped.Load()
}

// readLoop is the reader goroutine. It reads lines until the connection
// ends, then fails the transport with the cause and closes the events
// channel. It never blocks on anything but the socket.
func (t *Transport) readLoop(conn net.Conn) {
	defer t.readerWG.Done()
	defer close(t.events)
	// A small buffer: most replies are short, and readQMPLine gathers a
	// longer line (query-qmp-schema is ~200 KB) from several fills. Per
	// VM memory matters with thousands of VMs.
	br := bufio.NewReaderSize(conn, 4<<10)
	greeted := false
	for {
		line, err := t.readLine(br)
		if err != nil {
			t.fail(readError(err))
			return
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if !greeted {
			if err := t.handleGreeting(line); err != nil {
				t.fail(err)
				return
			}
			greeted = true
			close(t.greeted)
			continue
		}
		t.handleLine(line)
	}
}

// readError turns a read error into the reason the connection ended.
func readError(err error) error {
	switch {
	case errors.Is(err, ErrLineTooLong):
		return err
	case errors.Is(err, io.EOF):
		return fmt.Errorf("QMP connection closed by QEMU: %w", err)
	default:
		return fmt.Errorf("QMP read failed: %w", err)
	}
}

// readLine reads one line within the limit of the moment: MaxLineBytes,
// or MaxBigLineBytes while a command of BigReplyCommands is in flight. The
// limit is looked at as the line grows: the reader waits for a reply's
// first byte before its command is sent.
func (t *Transport) readLine(br *bufio.Reader) ([]byte, error) {
	line, err := readLimited(br, func() int {
		if t.big.Load() > 0 {
			return t.opts.MaxBigLineBytes
		}
		return t.opts.MaxLineBytes
	})
	if errors.Is(err, ErrLineTooLong) && t.big.Load() == 0 {
		err = fmt.Errorf("%w (no command that answers big, such as query-qmp-schema, was in flight)", err)
	}
	return line, err
}

// readQMPLine reads one line of at most limit bytes (not counting the
// newline). It never buffers more than limit bytes plus one read buffer.
func readQMPLine(br *bufio.Reader, limit int) ([]byte, error) {
	return readLimited(br, func() int { return limit })
}

// readLimited reads one line of at most limit() bytes, asking limit again
// as the line grows.
func readLimited(br *bufio.Reader, limit func() int) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		n := len(line) + len(frag)
		if err == nil {
			n-- // the newline
		}
		if lim := limit(); n > lim {
			return nil, fmt.Errorf("%w: QEMU sent a line of more than %d bytes (TransportOptions.MaxLineBytes)", ErrLineTooLong, lim)
		}
		switch {
		case err == nil:
			return append(line, frag...), nil // append copies: frag is reused by br
		case errors.Is(err, bufio.ErrBufferFull):
			line = append(line, frag...)
		default:
			return nil, err // a partial last line is dropped
		}
	}
}

// qmpEnvelope holds the members that tell a greeting, a reply and an event
// apart. Every member is decoded leniently, so odd shapes never fail the
// decoding of the line as a whole.
type qmpEnvelope struct {
	QMP       json.RawMessage `json:"QMP"`
	Event     json.RawMessage `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp json.RawMessage `json:"timestamp"`
	ID        json.RawMessage `json:"id"`
	Return    json.RawMessage `json:"return"`
	Error     json.RawMessage `json:"error"`
}

// handleGreeting checks the first line and records the version.
func (t *Transport) handleGreeting(line []byte) error {
	var g struct {
		QMP *struct {
			Version      qmp.Version `json:"version"`
			Capabilities []string    `json:"capabilities"`
		} `json:"QMP"`
	}
	if line[0] != '{' || json.Unmarshal(line, &g) != nil || g.QMP == nil {
		return fmt.Errorf("%w: expected the QMP greeting, got %s", ErrProtocol, quoteLine(line))
	}
	t.mu.Lock()
	t.version = g.QMP.Version
	t.mu.Unlock()
	t.log.Debug().Str("version", g.QMP.Version.String()).Strs("capabilities", g.QMP.Capabilities).Msg("QMP greeting")
	return nil
}

// handleLine dispatches one line after the greeting. Nothing QEMU sends
// here can fail the connection: bad lines are logged and dropped.
func (t *Transport) handleLine(line []byte) {
	if line[0] != '{' {
		t.bad.Warn().Str("line", quoteLine(line)).Msg("QMP: ignoring a line that is not a JSON object")
		return
	}
	var env qmpEnvelope
	if err := json.Unmarshal(line, &env); err != nil {
		t.bad.Warn().Err(err).Str("line", quoteLine(line)).Msg("QMP: ignoring an undecodable line")
		return
	}
	switch {
	case env.QMP != nil:
		t.bad.Warn().Str("line", quoteLine(line)).Msg("QMP: ignoring a second greeting")
	case len(env.Return) > 0 || isSet(env.Error):
		t.handleReply(line, &env)
	case env.Event != nil:
		t.handleEvent(line, &env)
	default:
		t.bad.Warn().Str("line", quoteLine(line)).Msg("QMP: ignoring a line that is neither a reply nor an event")
	}
}

// handleReply hands a reply to the command with its id. A reply without id
// (QEMU sends those for JSON parse errors) goes to the only pending command,
// if there is exactly one.
func (t *Transport) handleReply(line []byte, env *qmpEnvelope) {
	var id string
	hasID := isSet(env.ID)
	idOK := hasID && json.Unmarshal(env.ID, &id) == nil

	t.mu.Lock()
	var p *qmpPending
	switch {
	case !hasID && len(t.pending) == 1:
		for _, q := range t.pending {
			p = q
		}
	case idOK:
		p = t.pending[id]
	}
	if p == nil {
		n := len(t.pending)
		t.mu.Unlock()
		t.log.Debug().Str("line", quoteLine(line)).Int("pending", n).Msg("QMP: dropping a reply that matches no pending command")
		return
	}
	delete(t.pending, p.id)
	r := qmpResult{line: line, ret: env.Return}
	if isSet(env.Error) {
		r = qmpResult{err: decodeQMPError(p.name, env.Error)}
	}
	p.reply <- r // capacity 1 and answered once: never blocks
	t.mu.Unlock()
}

// decodeQMPError builds the QMPError of an error reply, whatever its shape.
func decodeQMPError(name string, raw json.RawMessage) *QMPError {
	var e struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	}
	if json.Unmarshal(raw, &e) != nil {
		return &QMPError{Command: name, Desc: quoteLine(raw)}
	}
	return &QMPError{Command: name, Class: e.Class, Desc: e.Desc}
}

// handleEvent decodes an event and offers it to the events channel without
// ever blocking. An event past the rate limit fails the connection.
func (t *Transport) handleEvent(line []byte, env *qmpEnvelope) {
	if !t.eventLimit.Allow() {
		t.fail(fmt.Errorf("%w: QEMU sent events faster than %g a second (burst %d); the monitor is broken rather than let it take the daemon's CPU",
			ErrEventFlood, t.opts.EventRate, t.opts.EventBurst))
		return
	}
	var ev qmp.Event
	if json.Unmarshal(env.Event, &ev.Event) != nil || ev.Event == "" {
		t.bad.Warn().Str("line", quoteLine(line)).Msg("QMP: ignoring an event without a name")
		return
	}
	if isSet(env.Data) {
		if err := json.Unmarshal(env.Data, &ev.Data); err != nil {
			ev.Data = nil
			t.bad.Warn().Str("event", ev.Event).Str("line", quoteLine(line)).Msg("QMP: event data is not an object; delivering the event without data")
		}
	}
	if isSet(env.Timestamp) {
		if err := json.Unmarshal(env.Timestamp, &ev.Timestamp); err != nil {
			ev.Timestamp.Seconds, ev.Timestamp.Microseconds = 0, 0
		}
	}
	t.evMu.Lock()
	defer t.evMu.Unlock()
	if t.onEvent != nil {
		t.onEvent(ev)
		return
	}
	select {
	case t.events <- ev:
	default:
		n := t.dropped.Add(1)
		if n == 1 || n%1000 == 0 {
			t.log.Warn().Str("event", ev.Event).Uint64("dropped", n).Msg("QMP: events channel full; dropping events")
		}
	}
}

// isSet reports whether a raw member was present with a non-null value.
func isSet(raw json.RawMessage) bool {
	return len(raw) > 0 && string(raw) != "null"
}

// quoteLine quotes the start of a line for error messages and logs.
func quoteLine(b []byte) string {
	const keep = 200
	if len(b) > keep {
		return strconv.Quote(string(b[:keep])) + fmt.Sprintf("... (%d bytes)", len(b))
	}
	return strconv.Quote(string(b))
}
