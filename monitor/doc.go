// Package monitor talks to a running QEMU through its QMP socket.
//
// It holds two layers:
//
//   - the monitor actor, one per running VM, which owns the QMP connection,
//     runs one command at a time as a job and turns QMP events into messages
//     to the domain;
//   - the QMP transport (Transport), which the actor uses to speak QMP.
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
//   - accepts lines up to TransportOptions.MaxLineBytes (32 MiB by default)
//     and fails the connection with ErrLineTooLong beyond that;
//   - delivers events through a buffered channel that the reader never
//     blocks on: when it is full, events are dropped and counted
//     (DroppedEvents), and replies keep flowing;
//   - bounds Connect (dial with retries, greeting, qmp_capabilities) by
//     TransportOptions.ConnectTimeout, and every command by the per-command
//     table in CommandTimeout or by the caller's context.
//
// Input from QEMU is treated as hostile: lines that are not JSON objects,
// replies with unknown ids and events of odd shapes are logged and dropped;
// only an over-long line or a bad greeting fails the connection.
//
// Errors wrap sentinels (ErrClosed, ErrNotConnected, ErrLineTooLong,
// ErrProtocol, ErrBadCommand, io.EOF, context.DeadlineExceeded) with %w and
// name the command involved. A QMP error reply is a *QMPError.
package monitor
