#!/usr/bin/env bash
# smoke.sh boots the tiny test guest (build-guest.sh) with plain QEMU, no
# vmsup, and checks every console line it promises (tests/guest/README.md):
# the ready line, the cloud-init seed's instance-id and hostname, the disk
# marker landing in a qcow2 overlay and not in its base, the DHCP address
# and MAC, a host connection through a hostfwd to the guest's HTTP server,
# a command typed on the console shell, and the ACPI powerdown.
#
#   tests/guest/smoke.sh [--keep]
#
# It uses TCG, QMP and the serial line through QEMU pipe chardevs (FIFOs), and
# curl for the HTTP check. --keep leaves the temp dir (serial log) in place.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
keep=0
case "${1:-}" in
--keep) keep=1 ;;
"") ;;
*)
	echo "usage: $0 [--keep]" >&2
	exit 2
	;;
esac

log() { echo "guest-smoke: $*" >&2; }
fail() {
	log "FAIL: $*"
	if [[ -f ${dir:-}/serial.log ]]; then
		log "serial log tail ($dir/serial.log):"
		tail -n 25 "$dir/serial.log" >&2
	fi
	exit 1
}
for tool in qemu-system-x86_64 qemu-img genisoimage curl; do
	command -v "$tool" >/dev/null || fail "$tool not found"
done
mapfile -t built < <(bash "$here/build-guest.sh")
kernel=${built[0]} initrd=${built[1]}
[[ -f $kernel && -f $initrd ]] || fail "build-guest.sh did not name the kernel and initrd"

dir=$(mktemp -d "${TMPDIR:-/tmp}/vmsup-guest-smoke.XXXXXX")
qemu_pid="" drain_pid=""
cleanup() {
	for p in $qemu_pid $drain_pid; do
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	if [[ $keep == 1 ]]; then log "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

instance="iid-$RANDOM$RANDOM"
mac=52:54:00:5e:00:02
mkdir "$dir/seed"
printf 'instance-id: %s\nlocal-hostname: "tinyhost"\n' "$instance" >"$dir/seed/meta-data"
printf '#cloud-config\n{}\n' >"$dir/seed/user-data"
genisoimage -quiet -output "$dir/seed.iso" -volid cidata -joliet -rock "$dir/seed/meta-data" "$dir/seed/user-data"
qemu-img create -q -f raw "$dir/base.raw" 1M
qemu-img create -q -f qcow2 -F raw -b "$dir/base.raw" "$dir/overlay.qcow2"

mkfifo "$dir/qmp.in" "$dir/qmp.out" "$dir/ser.in" "$dir/ser.out"
exec 3<>"$dir/qmp.in" 4<>"$dir/qmp.out" 5<>"$dir/ser.in"
# QEMU blocks when nobody reads the serial FIFO; the log file has it all.
cat "$dir/ser.out" >/dev/null &
drain_pid=$!

qmp_read() { # regex seconds: reads QMP lines until one matches; it is in $reply
	local deadline=$((SECONDS + $2)) line
	while ((SECONDS < deadline)); do
		IFS= read -r -t 1 -u 4 line || continue
		if [[ $line =~ $1 ]]; then
			reply=$line
			return 0
		fi
	done
	return 1
}
qmp() {
	echo "$1" >&3
	qmp_read '"return"|"error"' 30 || fail "no QMP reply to $1"
	[[ $reply == *'"return"'* ]] || fail "QMP $1: $reply"
}
wait_line() { # text seconds
	local deadline=$((SECONDS + $2))
	until grep -qF -- "$1" "$dir/serial.log" 2>/dev/null; do
		((SECONDS < deadline)) || fail "no \"$1\" on the console within $2 s"
		kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU exited while waiting for \"$1\""
		sleep 0.1
	done
	log "console: $1 ($(since "$start") s)"
}

start=$EPOCHREALTIME
qemu-system-x86_64 -name tiny-smoke -machine q35 -accel tcg -m 256M \
	-nodefaults -no-user-config -display none \
	-kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 panic=-1 vmsup.write=vda" \
	-blockdev driver=file,filename="$dir/overlay.qcow2",node-name=disk0-file \
	-blockdev driver=qcow2,file=disk0-file,node-name=disk0 \
	-device virtio-blk-pci,drive=disk0 \
	-blockdev driver=file,filename="$dir/seed.iso",node-name=seed-file,read-only=on \
	-blockdev driver=raw,file=seed-file,node-name=seed,read-only=on \
	-device virtio-blk-pci,drive=seed \
	-netdev user,id=net0,hostfwd=tcp:127.0.0.1:0-:8080 \
	-device virtio-net-pci,netdev=net0,mac="$mac" \
	-chardev pipe,id=ser,path="$dir/ser",logfile="$dir/serial.log" -serial chardev:ser \
	-chardev pipe,id=qmp,path="$dir/qmp" -mon chardev=qmp,mode=control &
qemu_pid=$!
qmp_read '"QMP"' 30 || fail "no QMP greeting"
qmp '{"execute":"qmp_capabilities"}'
qmp '{"execute":"human-monitor-command","arguments":{"command-line":"info usernet"}}'
port=$(printf '%b' "${reply//\\r/}" | awk '/HOST_FORWARD/ && $6 == 8080 { print $4; exit }')
[[ $port =~ ^[0-9]+$ && $port != 0 ]] || fail "no forward in info usernet: $reply"

wait_line "guest ready" 60
wait_line "vmsup-guest: instance-id=$instance" 30
wait_line "vmsup-guest: hostname=tinyhost" 5
wait_line "vmsup-guest: vda marker absent" 30
wait_line "vmsup-guest: vda marker written" 30
wait_line "vmsup-guest: ip=10.0.2.15/24 dev=eth0 mac=$mac gw=10.0.2.2" 60
wait_line "vmsup-guest: http listening on port 8080" 30
page=$(curl -sS --max-time 10 "http://127.0.0.1:$port/") || fail "curl through the forward 127.0.0.1:$port failed"
[[ $page == "vmsup-guest http ok"*"instance-id=$instance"* ]] || fail "page through the forward: $page"
log "http through 127.0.0.1:$port: ok"

# The console shell: the answer is computed in the guest, not echoed input.
sleep 1
printf 'echo "shell says $((6 * 7))"\r' >&5
wait_line "shell says 42" 30

qmp '{"execute":"system_powerdown"}'
began=$EPOCHREALTIME
qmp_read '"SHUTDOWN"' 60 || fail "no SHUTDOWN event within 60 s of system_powerdown"
[[ $reply == *'"guest": true'* ]] || fail "SHUTDOWN event: $reply"
code=0
wait "$qemu_pid" || code=$?
qemu_pid=""
[[ $code == 0 ]] || fail "QEMU exited with status $code"
grep -qF "vmsup-guest: power button" "$dir/serial.log" || fail "the guest did not see the power button"
log "powerdown to QEMU exit: $(since "$began") s"

qemu-img convert -f qcow2 -O raw "$dir/overlay.qcow2" "$dir/overlay.raw"
[[ $(head -c 17 "$dir/overlay.raw") == VMSUP-GUEST-WRITE ]] || fail "the overlay does not start with the marker"
cmp -s -n 1048576 "$dir/base.raw" /dev/zero || fail "the base image was written"
log "disk marker in the overlay, base untouched"
log "ok"
