#!/usr/bin/env bash
# smoke.sh boots the demo image (tests/image/build-image.sh) with plain QEMU,
# no vmsup, and checks what vmsup relies on:
#   - direct kernel boot: -kernel/-initrd, root=/dev/vda, console=ttyS0;
#   - a qcow2 overlay (8G) on the base image, which the guest grows into;
#   - a NoCloud seed ISO (volume id cidata, Rock Ridge + Joliet) with
#     meta-data (instance-id, local-hostname, public-keys), user-data and
#     network-config (v2, matched by MAC);
#   - user networking with hostfwd host port 0 (QEMU picks a free one;
#     read back with "info usernet"), and SSH with the generated key;
#   - qemu-guest-agent on virtio-serial org.qemu.guest_agent.0;
#   - system_powerdown over QMP: the guest powers off by itself.
#
#   tests/image/smoke.sh [--accel kvm|tcg] [--cpu MODEL] [--timeout SECONDS] [--keep]
#
# --accel defaults, like vmsup's accel auto, to kvm when /dev/kvm opens
# read-write and the CPU flags list vmx or svm, else tcg. --cpu defaults to
# host (kvm) or max (tcg); a nested host whose KVM refuses MSR 0x10a needs
# --cpu host,-arch-capabilities. --timeout bounds
# the wait for SSH (default 300 s). --keep leaves the temp dir (serial log,
# seed, key) in place. It prints the boot-to-SSH and powerdown times and
# exits non-zero on the first failed check. QMP and the guest agent go
# through QEMU pipe chardevs (FIFOs), so it needs no socat.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
accel=""
cpu=""
ssh_timeout=300
keep=0
while [[ $# -gt 0 ]]; do
	case $1 in
	--accel)
		accel=${2:?--accel needs kvm or tcg}
		shift 2
		;;
	--cpu)
		cpu=${2:?--cpu needs a CPU model}
		shift 2
		;;
	--timeout)
		ssh_timeout=${2:?--timeout needs seconds}
		shift 2
		;;
	--keep)
		keep=1
		shift
		;;
	*)
		echo "usage: $0 [--accel kvm|tcg] [--cpu MODEL] [--timeout SECONDS] [--keep]" >&2
		exit 2
		;;
	esac
done
if [[ -z $accel ]]; then
	accel=tcg
	if [[ -r /dev/kvm && -w /dev/kvm ]] && grep -qw -e vmx -e svm /proc/cpuinfo; then accel=kvm; fi
fi
case $accel in
kvm) cpu=${cpu:-host} ;;
tcg) cpu=${cpu:-max} ;;
*)
	echo "smoke: --accel must be kvm or tcg, not $accel" >&2
	exit 2
	;;
esac

log() { echo "smoke: $*" >&2; }
fail() {
	log "FAIL: $*"
	if [[ -f ${dir:-}/serial.log ]]; then
		log "serial log tail ($dir/serial.log):"
		tail -n 25 "$dir/serial.log" >&2
	fi
	exit 1
}
for tool in qemu-system-x86_64 qemu-img genisoimage ssh ssh-keygen; do
	command -v "$tool" >/dev/null || fail "$tool not found"
done

mapfile -t built < <(bash "$here/build-image.sh")
base=${built[0]} kernel=${built[1]} initrd=${built[2]}
[[ -f $base && -f $kernel && -f $initrd ]] || fail "build-image.sh did not name the image, kernel and initrd"

dir=$(mktemp -d "${TMPDIR:-/tmp}/vmsup-smoke.XXXXXX")
qemu_pid=""
cleanup() {
	if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
		kill -KILL "$qemu_pid" 2>/dev/null || true
		wait "$qemu_pid" 2>/dev/null || true
	fi
	if [[ $keep == 1 ]]; then log "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

now() { echo "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# The seed.
ssh-keygen -q -t ed25519 -N '' -C vmsup-smoke -f "$dir/key"
instance=$(cat /proc/sys/kernel/random/uuid)
mac=52:54:00:5e:00:01
mkdir "$dir/seed"
cat >"$dir/seed/meta-data" <<EOF
instance-id: $instance
local-hostname: smoke
public-keys:
  - $(cat "$dir/key.pub")
EOF
printf '#cloud-config\n{}\n' >"$dir/seed/user-data"
cat >"$dir/seed/network-config" <<EOF
version: 2
ethernets:
  nic0:
    match:
      macaddress: "$mac"
    dhcp4: true
EOF
genisoimage -quiet -output "$dir/seed.iso" -volid cidata -joliet -rock \
	"$dir/seed/meta-data" "$dir/seed/user-data" "$dir/seed/network-config"
# The overlay: the base is never written.
base_sum=$(sha256sum "$base" | cut -d' ' -f1)
qemu-img create -q -f qcow2 -F qcow2 -b "$base" "$dir/disk.qcow2" 8G

mkfifo "$dir/qmp.in" "$dir/qmp.out" "$dir/qga.in" "$dir/qga.out"
exec 3<>"$dir/qmp.in" 4<>"$dir/qmp.out" 5<>"$dir/qga.in" 6<>"$dir/qga.out"

# qmp_read reads QMP lines until one matches $1, for at most $2 seconds;
# events go to qmp.events. The matching line is in $reply.
qmp_read() {
	local want=$1 deadline=$((SECONDS + $2)) line
	while ((SECONDS < deadline)); do
		IFS= read -r -t 1 -u 4 line || continue
		case $line in
		*'"event"'*) echo "$line" >>"$dir/qmp.events" ;;
		esac
		if [[ $line =~ $want ]]; then
			reply=$line
			return 0
		fi
	done
	return 1
}
qmp() { # command-json
	echo "$1" >&3
	qmp_read '"return"|"error"' 30 || fail "no QMP reply to $1"
	[[ $reply == *'"return"'* ]] || fail "QMP $1: $reply"
}

log "booting $base (overlay $dir/disk.qcow2) under $accel"
start=$(now)
qemu-system-x86_64 -name smoke -machine q35 -accel "$accel" -cpu "$cpu" -smp 2 -m 1G \
	-nodefaults -no-user-config -display none \
	-kernel "$kernel" -initrd "$initrd" -append "root=/dev/vda console=ttyS0" \
	-blockdev driver=file,filename="$dir/disk.qcow2",node-name=disk0-file \
	-blockdev driver=qcow2,file=disk0-file,node-name=disk0 \
	-device virtio-blk-pci,drive=disk0 \
	-blockdev driver=file,filename="$dir/seed.iso",node-name=seed-file,read-only=on \
	-blockdev driver=raw,file=seed-file,node-name=seed,read-only=on \
	-device virtio-blk-pci,drive=seed \
	-netdev user,id=net0,hostfwd=tcp:127.0.0.1:0-:22 \
	-device virtio-net-pci,netdev=net0,mac="$mac" \
	-device virtio-serial-pci \
	-chardev pipe,id=qga0,path="$dir/qga" \
	-device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
	-chardev pipe,id=qmp,path="$dir/qmp" -mon chardev=qmp,mode=control \
	-serial file:"$dir/serial.log" &
qemu_pid=$!

qmp_read '"QMP"' 30 || fail "no QMP greeting"
qmp '{"execute":"qmp_capabilities"}'
qmp '{"execute":"human-monitor-command","arguments":{"command-line":"info usernet"}}'
# "  TCP[HOST_FORWARD]  13  127.0.0.1 38233  10.0.2.15  22  0  0"
port=$(printf '%b' "${reply//\\r/}" | awk '/HOST_FORWARD/ && $6 == 22 { print $4; exit }')
[[ $port =~ ^[0-9]+$ && $port != 0 ]] || fail "no SSH forward in info usernet: $reply"
log "QEMU pid $qemu_pid; SSH forward 127.0.0.1:$port -> guest :22"

sshopts=(-i "$dir/key" -p "$port" -o BatchMode=yes -o StrictHostKeyChecking=no
	-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5)
deadline=$((SECONDS + ssh_timeout))
until out=$(ssh "${sshopts[@]}" debian@127.0.0.1 uname -a 2>"$dir/ssh.err"); do
	kill -0 "$qemu_pid" 2>/dev/null || fail "QEMU exited while waiting for SSH"
	((SECONDS < deadline)) || fail "no SSH within ${ssh_timeout}s (last: $(tail -n1 "$dir/ssh.err"))"
	sleep 1
done
boot=$(since "$start")
log "boot to SSH: ${boot}s ($accel)"
echo "$out"
[[ $out == "Linux smoke "* ]] || fail "uname -a = $out, want Linux smoke ... (hostname from meta-data)"

# cloud-init finished without errors, grew the root filesystem into the
# overlay's 8G, and the guest agent runs.
status=$(ssh "${sshopts[@]}" debian@127.0.0.1 'cloud-init status --wait >/dev/null; cloud-init status --long; echo; df -k --output=size / | tail -n1; systemctl is-active qemu-guest-agent; cat /var/lib/cloud/data/instance-id') ||
	fail "ssh status command failed"
echo "$status" | sed 's/^/  guest: /' >&2
grep -q '^status: done' <<<"$status" || fail "cloud-init did not finish cleanly"
rootkb=$(sed -n '/^ *[0-9][0-9]*$/{s/ //g;p;q}' <<<"$status")
((rootkb > 7 * 1024 * 1024)) || fail "root filesystem is ${rootkb} KiB, want it grown to about 8G"
grep -qx active <<<"$status" || fail "qemu-guest-agent is not active"
grep -qx "$instance" <<<"$status" || fail "cloud-init's instance-id is not $instance"

echo '{"execute":"guest-ping"}' >&5
IFS= read -r -t 10 -u 6 line || fail "no guest agent reply to guest-ping"
[[ $line == *'"return"'* ]] || fail "guest-ping: $line"
echo '{"execute":"guest-get-host-name"}' >&5
IFS= read -r -t 10 -u 6 line || fail "no guest agent reply to guest-get-host-name"
[[ $line == *'"smoke"'* ]] || fail "guest-get-host-name: $line"
log "guest agent: guest-ping ok, host name smoke"

began=$(now)
qmp '{"execute":"system_powerdown"}'
qmp_read '"SHUTDOWN"' 120 || fail "no SHUTDOWN event within 120s of system_powerdown"
[[ $reply == *'"guest": true'* && $reply == *guest-shutdown* ]] || fail "SHUTDOWN event: $reply"
code=0
wait "$qemu_pid" || code=$?
qemu_pid=""
[[ $code == 0 ]] || fail "QEMU exited with status $code after the powerdown"
grep -q 'reboot: Power down' "$dir/serial.log" || fail "the serial log does not show the kernel powering down"
log "system_powerdown to QEMU exit: $(since "$began")s"
[[ $(sha256sum "$base" | cut -d' ' -f1) == "$base_sum" ]] || fail "the base image changed"
log "ok: boot to SSH ${boot}s under $accel"
