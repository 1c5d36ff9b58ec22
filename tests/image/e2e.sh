#!/usr/bin/env bash
# End-to-end check of the demo (make test-debian): a vmsup daemon on a temp
# state dir, `vmsup up` of examples/debian.yaml without a terminal, then
# `vmsup ssh demo -- uname -a` once vmsup says SSH answers, then SIGINT to
# `vmsup up`, which must shut the guest down through ACPI. The guest's key
# is the one vmsup generates under its cache (HOME is a temp dir).
#
#   tests/image/e2e.sh [--timeout SECONDS]    (default 900: TCG on 2 shared cores can take minutes)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
cache=${VMSUP_CACHE:-$repo/.cache}
bin=${BIN:-$repo/bin}
timeout=900
[ "${1:-}" = --timeout ] && timeout=$2

for f in debian-12.qcow2 vmlinuz initrd.img; do
	[ -f "$cache/image/$f" ] || { echo "e2e: no $cache/image/$f; run make image" >&2; exit 1; }
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/vmsup-e2e.XXXXXX")
# A root daemon runs QEMU as its unprivileged user, which must enter the
# state dir below (mktemp makes it 0700).
chmod 0711 "$dir"
export VMSUP_SOCKET="$dir/vmsup.sock" HOME="$dir/home" VMSUP_CACHE="$dir/cache"
mkdir -p "$HOME"
sed -e "s#\.\./\.cache/image/#$cache/image/#" examples/debian.yaml >"$dir/debian.yaml"

setsid "$bin/vmsup" daemon --state-dir "$dir/state" --image-root "$cache" --log-format console 2>"$dir/daemon.log" &
daemon=$!
up=
cleanup() {
	status=$?
	[ -n "$up" ] && kill -KILL "$up" 2>/dev/null || true
	"$bin/vmsup" destroy demo >/dev/null 2>&1 || true
	kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true
	if [ $status -ne 0 ]; then
		echo "e2e: FAILED; vmsup up said:" >&2; tail -n 30 "$dir/up.err" >&2 || true
		echo "e2e: console tail:" >&2; tail -n 30 "$dir/up.out" >&2 || true
		echo "e2e: daemon log tail:" >&2; tail -n 20 "$dir/daemon.log" >&2 || true
	fi
	rm -rf "$dir"
}
trap cleanup EXIT
for i in $(seq 100); do
	"$bin/vmsup" list >/dev/null 2>&1 && break
	kill -0 "$daemon" 2>/dev/null || { echo "e2e: the daemon failed to start" >&2; exit 1; }
	sleep 0.1
done

began=$(date +%s.%N)
"$bin/vmsup" up "$dir/debian.yaml" </dev/null >"$dir/up.out" 2>"$dir/up.err" &
up=$!
deadline=$(( $(date +%s) + timeout ))
until grep -q "SSH answers after" "$dir/up.err"; do
	kill -0 "$up" 2>/dev/null || { echo "e2e: vmsup up exited before SSH answered" >&2; exit 1; }
	[ "$(date +%s)" -lt "$deadline" ] || { echo "e2e: SSH did not answer within ${timeout}s" >&2; exit 1; }
	sleep 1
done
ready=$(date +%s.%N)
grep "SSH answers" "$dir/up.err"

out=$("$bin/vmsup" ssh demo -- uname -a)
echo "vmsup ssh demo -- uname -a: $out"
case $out in
Linux\ demo\ *) ;;
*) echo "e2e: uname -a did not come from the guest named demo" >&2; exit 1 ;;
esac
"$bin/vmsup" port demo

# A disk-only snapshot with the guest agent: its ext4 root is frozen around
# the switch to the new overlay (frozen_fs > 0), then thawed (the guest
# writes again).
for i in $(seq 120); do
	"$bin/vmsup" info demo | grep -q "available (qemu-ga " && break
	[ "$i" -lt 120 ] || { echo "e2e: the guest agent did not answer within 120s" >&2; exit 1; }
	sleep 1
done
snap0=$(date +%s.%N)
"$bin/vmsup" snapshot create demo e2e --disk-only
snap1=$(date +%s.%N)
list=$("$bin/vmsup" snapshot list demo)
echo "$list"
frozen=$(grep -E '^e2e +disk +complete +frozen\([1-9][0-9]*\)' <<<"$list") || { echo "e2e: the disk-only snapshot was not made with a freeze of at least one filesystem" >&2; exit 1; }
st=$("$bin/vmsup" agent demo '{"execute":"guest-fsfreeze-status"}')
[ "$st" = '"thawed"' ] || { echo "e2e: the guest is $st after the snapshot" >&2; exit 1; }
"$bin/vmsup" ssh demo -- sh -c 'echo after > /var/tmp/vmsup-e2e && sync' || { echo "e2e: the guest cannot write after the snapshot" >&2; exit 1; }
awk -v a="$snap0" -v b="$snap1" -v f="$(awk '{print $4}' <<<"$frozen")" 'BEGIN { printf "e2e: disk-only snapshot: %s in %.2fs\n", f, b - a }'

kill -INT "$up"
for i in $(seq 120); do kill -0 "$up" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$up" 2>/dev/null; then echo "e2e: vmsup up still runs 60s after SIGINT" >&2; exit 1; fi
wait "$up" || true
up=
grep -q "stopped: shutoff (shutdown)" "$dir/up.err" || { echo "e2e: the guest did not shut down through ACPI" >&2; exit 1; }
awk -v a="$began" -v b="$ready" 'BEGIN { printf "e2e: ok; vmsup up to SSH answering: %.1fs\n", b - a }'
