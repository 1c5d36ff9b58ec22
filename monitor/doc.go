// Package monitor talks to a running QEMU through its QMP socket.
//
// It holds three parts:
//
//   - the monitor actor, one per running VM, which owns the QMP connection
//     (dial, handshake, reconnect with backoff, marking it broken), sends
//     QMP events to the domain from the connection's reader, and runs a
//     Command sent to it as a job of its lane;
//   - the Link, through which the domain's job steps run their commands on
//     the connection the actor put there, from their own goroutine;
//   - the QMP transport (Transport), which speaks QMP.
//
// # Transport
//
// Transport implements go-qemu's qmp.Monitor interface, so the typed
// commands of github.com/digitalocean/go-qemu/qmp/raw work on top of it:
//
//	t := monitor.NewTransport("/run/vmsup/web1/qmp.sock", monitor.TransportOptions{})
//	if err := t.Connect(); err != nil { ... }
//	defer t.Disconnect()
//	status, err := raw.NewMonitor(t).QueryStatus()
//
// It exists because go-qemu's qmp.SocketMonitor has gaps that matter for a
// supervisor: it does not match replies to commands by id, may take an
// event that arrives before the qmp_capabilities reply for that reply, reads
// with a bufio.Scanner limited to 64 KiB lines (query-qmp-schema replies are
// about 200 KB), blocks replies on an unbuffered events channel, and has no
// deadline on Connect, so it hangs against a stopped QEMU.
// transport_qemu_test.go shows the 64 KiB failure against a real QEMU and
// checks the transport against a real (and a SIGSTOPped) QEMU; the unit
// tests cover the other gaps with a scripted server.
//
// The transport:
//
//   - adds an "id" member ("vmsup-N") to every command and matches replies
//     by it, so commands may be issued concurrently and a late reply to a
//     command that timed out is dropped;
//   - reads every line, the handshake included, in one reader goroutine,
//     which tells greetings, replies and events apart;
//   - accepts lines up to TransportOptions.MaxLineBytes (1 MiB by default),
//     or MaxBigLineBytes (32 MiB) while a command that answers big
//     (query-qmp-schema, AnswersBig) is in flight, and fails the
//     connection with ErrLineTooLong beyond that;
//   - bounds the rate of events (EventRate, EventBurst: 500 a second,
//     bursts of 2000) and fails the connection with ErrEventFlood past
//     it; the monitor actor reconnects with backoff, which starts again
//     only after a connection stayed up 10 s;
//   - delivers events through a buffered channel that the reader never
//     blocks on: when it is full, events are dropped and counted
//     (DroppedEvents), and replies keep flowing; or, after RouteEvents, to
//     a function on the reader, in QEMU's order with the replies;
//   - bounds Connect (dial with retries, greeting, qmp_capabilities) by
//     TransportOptions.ConnectTimeout, and every command by the per-command
//     table in CommandTimeout or by the caller's context.
//
// Input from QEMU is treated as hostile: lines that are not JSON objects,
// replies with unknown ids and events of odd shapes are logged (at most
// MalformedLogBurst a second) and dropped; only an over-long line, an event
// flood or a bad greeting fails the connection.
//
// Errors wrap sentinels (ErrClosed, ErrNotSent, ErrNotConnected, ErrLineTooLong, ErrEventFlood,
// ErrProtocol, ErrBadCommand, io.EOF, context.DeadlineExceeded) with %w and
// name the command involved. A QMP error reply is a *QMPError.
package monitor
