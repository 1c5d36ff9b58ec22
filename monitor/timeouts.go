package monitor

import "time"

// DefaultCommandTimeout is the deadline of a QMP command that has no entry in
// the command timeout table. Most QMP commands only read or flip state inside
// QEMU and reply within milliseconds; five seconds leaves room for a loaded
// host while still reporting a hung QEMU quickly.
const DefaultCommandTimeout = 5 * time.Second

// commandTimeouts is the per-command deadline table used by CommandTimeout.
//
// The deadline covers one command: writing it and waiting for its reply. It
// does not cover what the command starts. Commands that start long work
// (migration, block jobs, device unplug, guest shutdown) reply as soon as the
// work has started; its end is reported later by a QMP event or seen by
// polling (query-migrate, query-jobs). Their deadline is therefore about how
// long QEMU may hold the big lock while starting the work (opening images,
// draining I/O), not about how long the work lasts.
//
// Keep the table sorted by group, and give a reason for each value above the
// default.
var commandTimeouts = map[string]time.Duration{
	// Handshake and introspection.
	"qmp_capabilities": DefaultCommandTimeout,
	"query-qmp-schema": 30 * time.Second, // ~200 KB reply, built on demand

	// Run state. stop drains all block I/O (bdrv_drain_all), which waits
	// for slow or network storage; cont may first re-activate images after
	// an incoming migration.
	"stop":             30 * time.Second,
	"cont":             30 * time.Second,
	"system_powerdown": DefaultCommandTimeout, // only injects the ACPI event; wait for SHUTDOWN separately
	"system_reset":     DefaultCommandTimeout,
	"quit":             10 * time.Second, // QEMU replies, then tears down

	// Migration. migrate returns once the migration thread is started;
	// progress comes from MIGRATION events or query-migrate. Setting up the
	// stream (connecting, opening files) and cancelling may take a while.
	"migrate":                  60 * time.Second,
	"migrate-incoming":         60 * time.Second,
	"migrate_cancel":           30 * time.Second,
	"migrate-continue":         30 * time.Second,
	"migrate-pause":            30 * time.Second,
	"migrate-recover":          60 * time.Second,
	"migrate-set-capabilities": 10 * time.Second,
	"migrate-set-parameters":   10 * time.Second,
	"query-migrate":            10 * time.Second,

	// Block layer: opening, closing and resizing images touches storage.
	// Jobs (mirror, commit, backup, snapshots) reply once started.
	"blockdev-add":       30 * time.Second,
	"blockdev-del":       30 * time.Second,
	"blockdev-create":    30 * time.Second,
	"block_resize":       30 * time.Second,
	"blockdev-mirror":    30 * time.Second,
	"drive-mirror":       30 * time.Second,
	"block-commit":       30 * time.Second,
	"blockdev-backup":    30 * time.Second,
	"drive-backup":       30 * time.Second,
	"block-job-cancel":   30 * time.Second,
	"block-job-complete": 30 * time.Second,
	"job-dismiss":        10 * time.Second,
	"transaction":        30 * time.Second,
	"snapshot-save":      30 * time.Second,
	"snapshot-load":      30 * time.Second,
	"snapshot-delete":    30 * time.Second,
	"query-block":        10 * time.Second,
	"query-blockstats":   10 * time.Second,

	// Devices. device_del only requests the unplug; DEVICE_DELETED reports
	// the end. device_add may open backends.
	"device_add":  15 * time.Second,
	"device_del":  15 * time.Second,
	"netdev_add":  15 * time.Second,
	"netdev_del":  15 * time.Second,
	"chardev-add": 15 * time.Second,

	// Synchronous heavy work.
	"screendump":            30 * time.Second,
	"dump-guest-memory":     60 * time.Second, // synchronous unless detach=true
	"human-monitor-command": 60 * time.Second, // HMP savevm/loadvm are synchronous
}

// CommandTimeout returns the deadline for the QMP command named command, for
// example "query-status". Commands not in the table get
// DefaultCommandTimeout (5s). Notable entries: query-qmp-schema 30s,
// stop/cont 30s (block I/O drain), system_powerdown 5s (the guest's shutdown
// itself is awaited through the SHUTDOWN event, not through the command),
// migrate 60s, block-layer commands 30s, device_add/device_del 15s,
// dump-guest-memory and human-monitor-command 60s.
//
// Transport.Run uses this table; Transport.RunContext uses it only when the
// caller's context has no deadline.
func CommandTimeout(command string) time.Duration {
	if d, ok := commandTimeouts[command]; ok {
		return d
	}
	return DefaultCommandTimeout
}
