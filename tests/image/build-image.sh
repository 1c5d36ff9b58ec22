#!/usr/bin/env bash
# build-image.sh builds the demo VM image: Debian 12 (bookworm) with the
# cloud kernel, systemd, openssh-server, cloud-init (NoCloud) and
# qemu-guest-agent, from Debian packages alone.
#
#   tests/image/build-image.sh [--force | --cached]
#
# --force rebuilds. --cached takes an image built by this very script as is,
# without resolving package versions (no network, no 5 s): for tests.
#
# Output, in ${VMSUP_CACHE:-<repo>/.cache}/image/:
#   debian-12.qcow2   the root filesystem (ext4, label vmsup-root, no
#                     partition table: boot with root=/dev/vda)
#   vmlinuz           the kernel, for direct kernel boot
#   initrd.img        its initramfs (virtio_pci, virtio_blk and ext4 checked)
#   packages          "name version" of every package installed
#   resolved          the package set the key was computed from
#   stamp             the cache key; written last, so it means "complete"
# The key is a hash of the resolved package set (mmdebstrap --simulate,
# about 5 s) and of this script: while both match, nothing is rebuilt.
#
# Needs root, mmdebstrap, e2fsprogs (mke2fs -d) and qemu-img. mmdebstrap
# runs in unshare mode, which as root unshares the mount, pid, uts and ipc
# namespaces (not the user one): its mounts stay out of the host's
# namespace, and the directory it makes has the real owners. The image is
# never mounted: mke2fs -d copies the directory into it.
# The apt sources are the host's bookworm entries, or the file named by
# VMSUP_IMAGE_SOURCES, or mmdebstrap's default Debian mirror when the host
# has none. See tests/image/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="${VMSUP_CACHE:-$repo/.cache}/image"
suite=bookworm
size=2G
label=vmsup-root
# The packages asked for (apt adds their dependencies, never recommends).
# systemd-networkd (part of systemd in bookworm) is cloud-init's renderer;
# systemd-resolved puts the DHCP name servers into resolv.conf.
packages=(linux-image-cloud-amd64 systemd-sysv udev dbus systemd-resolved
	openssh-server cloud-init qemu-guest-agent e2fsprogs sudo)

force=0
cached=0
case "${1:-}" in
--force) force=1 ;;
--cached) cached=1 ;;
"") ;;
*)
	echo "usage: $0 [--force | --cached]" >&2
	exit 2
	;;
esac

log() { echo "build-image: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# Progress: each phase prints its name, and its time when the next begins.
began=$EPOCHREALTIME
phase_name=""
phase_began=""
phase_no=0
phase_count=6
elapsed() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }'; }
phase() {
	[[ -z $phase_name ]] || log "      $phase_name: $(elapsed "$phase_began")"
	phase_name=$1
	phase_began=$EPOCHREALTIME
	[[ -z $phase_name ]] && return 0
	phase_no=$((phase_no + 1))
	log "[$phase_no/$phase_count] $phase_name"
}

for tool in mmdebstrap mke2fs qemu-img sha256sum awk; do
	command -v "$tool" >/dev/null || die "$tool not found (apt-get install mmdebstrap e2fsprogs qemu-utils)"
done
recipe=$(sha256sum "$here/$(basename "${BASH_SOURCE[0]}")" | cut -d' ' -f1)
if [[ $cached == 1 && -f $out/stamp && -f $out/debian-12.qcow2 && -f $out/vmlinuz && -f $out/initrd.img ]] &&
	grep -qx "recipe=$recipe" "$out/stamp"; then
	log "using the cached image ($(sed -n 's/^kernel=//p' "$out/stamp")); versions not checked (--cached)"
	printf '%s\n' "$out/debian-12.qcow2" "$out/vmlinuz" "$out/initrd.img"
	exit 0
fi

# As root, mmdebstrap makes a directory with the right owners for mke2fs -d.
[[ $(id -u) == 0 ]] || die "needs root to install the packages into a directory (run: sudo make image)"

mkdir -p "$out"
# One build at a time.
if command -v flock >/dev/null; then
	exec 9>"$out/.lock"
	flock -w 1200 9 || die "timed out waiting for another build (lock $out/.lock)"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vmsup-image.XXXXXX")
cleanup() {
	rm -rf "$work"
}
trap cleanup EXIT
chmod 0755 "$work"

# sources: the host's apt entries for the suite (deb822 paragraphs and
# one-line entries whose suite is bookworm or bookworm-*), so the image uses
# the same mirror as the host.
sources=()
if [[ -n ${VMSUP_IMAGE_SOURCES:-} ]]; then
	[[ -f $VMSUP_IMAGE_SOURCES ]] || die "VMSUP_IMAGE_SOURCES=$VMSUP_IMAGE_SOURCES is not a file"
	sources=("$VMSUP_IMAGE_SOURCES")
else
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f $f ]] || continue
		awk -v s="$suite" '
			$1 == "deb" {
				line = $0; sub(/\[[^]]*\]/, "", line); split(line, w, /[ \t]+/)
				if (w[3] == s || index(w[3], s "-") == 1) print $0
			}' "$f"
	done >"$work/host.list"
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f $f ]] || continue
		awk -v s="$suite" '
			function flush() {
				if (para != "" && deb && match_suite && enabled) printf "%s\n", para
				para = ""; deb = 0; match_suite = 0; enabled = 1
			}
			BEGIN { enabled = 1 }
			/^[ \t]*$/ { flush(); next }
			{ para = para $0 "\n" }
			tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
			tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == s || index($i, s "-") == 1) match_suite = 1 }
			tolower($1) == "enabled:" && tolower($2) == "no" { enabled = 0 }
			END { flush() }' "$f"
	done >"$work/host.sources"
	[[ -s $work/host.list ]] && sources+=("$work/host.list")
	[[ -s $work/host.sources ]] && sources+=("$work/host.sources")
	[[ ${#sources[@]} -gt 0 ]] || log "the host has no $suite apt source; using mmdebstrap's default Debian mirror"
fi

include=$(
	IFS=,
	echo "${packages[*]}"
)
# Documentation and translations stay out of the image (and out of later
# apt installs in the guest): less to unpack and to copy into the disk.
mmopts=(--variant=minbase --mode=unshare --include="$include"
	--dpkgopt='path-exclude=/usr/share/man/*'
	--dpkgopt='path-exclude=/usr/share/info/*'
	--dpkgopt='path-exclude=/usr/share/doc/*'
	--dpkgopt='path-include=/usr/share/doc/*/copyright'
	--dpkgopt='path-exclude=/usr/share/locale/*'
	--dpkgopt='path-include=/usr/share/locale/locale.alias'
	--aptopt='Acquire::Languages "none"')

# 1. Resolve: the exact package set apt would install now.
phase "resolving the package set (mmdebstrap --simulate)"
if mmdebstrap --verbose --simulate "${mmopts[@]}" "$suite" /dev/null "${sources[@]}" >"$work/simulate.log" 2>&1; then
	sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1 \2/p' "$work/simulate.log" | LC_ALL=C sort -u >"$work/resolved"
fi
if [[ ! -s $work/resolved ]]; then
	if [[ -f $out/stamp ]]; then
		log "warning: cannot resolve the package set (apt sources unreachable?); keeping the existing image"
		tail -n 5 "$work/simulate.log" >&2
		printf '%s\n' "$out/debian-12.qcow2" "$out/vmlinuz" "$out/initrd.img"
		exit 0
	fi
	tail -n 20 "$work/simulate.log" >&2
	die "mmdebstrap --simulate found no packages to install (see above)"
fi
kernel=$(awk '$1 ~ /^linux-image-[0-9].*-cloud-amd64$/ { print $1 " " $2; exit }' "$work/resolved")
[[ -n $kernel ]] || die "the resolved set has no linux-image-*-cloud-amd64"
stamp="suite=$suite
kernel=$kernel
packages=$(wc -l <"$work/resolved") $(sha256sum "$work/resolved" | cut -d' ' -f1)
recipe=$recipe"
if [[ $force == 0 && -f $out/stamp && -f $out/debian-12.qcow2 && -f $out/vmlinuz && -f $out/initrd.img ]] &&
	[[ $(cat "$out/stamp") == "$stamp" ]]; then
	phase ""
	log "up to date ($(wc -l <"$work/resolved") packages, $kernel; checked in $(elapsed "$began")); not rebuilding"
	printf '%s\n' "$out/debian-12.qcow2" "$out/vmlinuz" "$out/initrd.img"
	exit 0
fi

# The customize hook runs after apt has installed everything, with the chroot
# as $1.
cat >"$work/customize" <<'HOOK'
#!/bin/sh
set -eu
root=$1
echo debian >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
echo LANG=C.UTF-8 >"$root/etc/default/locale"
# cloud-init: only the NoCloud seed (never probe a cloud metadata address),
# systemd-networkd as the network renderer, keep the apt sources, and the
# locale that needs no locale-gen at first boot.
cat >"$root/etc/cloud/cloud.cfg.d/90_vmsup.cfg" <<'EOF'
datasource_list: [NoCloud, None]
system_info:
  network:
    renderers: [networkd]
apt:
  preserve_sources_list: true
locale: C.UTF-8
EOF
chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
# No timers that reach the network or scrub disks behind a test's back.
chroot "$root" systemctl disable apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer dpkg-db-backup.timer >/dev/null 2>&1 || true
# Every instance gets its own host keys: cloud-init makes them on first
# boot; without cloud-init, ssh makes the missing ones before it starts.
rm -f "$root"/etc/ssh/ssh_host_*
mkdir -p "$root/etc/systemd/system/ssh.service.d"
cat >"$root/etc/systemd/system/ssh.service.d/vmsup-hostkeys.conf" <<'EOF'
[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
EOF
# Direct kernel boot with root=/dev/vda needs these in the initramfs.
ls "$root"/boot/initrd.img-* >/dev/null
kver=$(basename "$root"/boot/vmlinuz-*)
kver=${kver#vmlinuz-}
chroot "$root" lsinitramfs "/boot/initrd.img-$kver" >"$root/tmp/initrd.list"
for m in virtio_pci virtio_blk ext4; do
	if ! grep -q "/$m\.ko" "$root/tmp/initrd.list" &&
		! grep -q "/$m\.ko" "$root/usr/lib/modules/$kver/modules.builtin"; then
		echo "build-image: error: $m is neither in the initramfs nor built into $kver" >&2
		exit 1
	fi
done
if ! grep -q 'sbin/fsck\.ext4$' "$root/tmp/initrd.list"; then
	echo "build-image: error: the initramfs has no fsck.ext4" >&2
	exit 1
fi
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' >"$root/tmp/packages"
HOOK
chmod 0755 "$work/customize"

# 2. Install into a directory.
phase "installing $(wc -l <"$work/resolved") packages (mmdebstrap)"
if [[ -f $out/stamp ]]; then
	log "rebuilding: the package set or this script changed"
	[[ -f $out/resolved ]] && diff "$out/resolved" "$work/resolved" | sed -n 's/^[<>] /  /p' | head -n 20 >&2 || true
fi
# fstab, and fsck.ext4 in the initramfs (whose hook cannot see the root
# device in a chroot), before the kernel package makes it.
mmdebstrap "${mmopts[@]}" \
	--essential-hook='echo "LABEL='"$label"' / ext4 defaults,errors=remount-ro 0 1" >"$1/etc/fstab"' \
	--essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && echo FSTYPE=ext4 >"$1/etc/initramfs-tools/conf.d/vmsup-fstype"' \
	--customize-hook="$work/customize" \
	--customize-hook="download /tmp/packages $work/packages" \
	--customize-hook='rm -f "$1/tmp/packages" "$1/tmp/initrd.list"' \
	"$suite" "$work/root" "${sources[@]}" >&2 ||
	die "mmdebstrap failed"

# 3. Kernel and initramfs for direct kernel boot.
phase "extracting the kernel and the initramfs"
vmlinuz=$(cd "$work/root/boot" && ls vmlinuz-* | head -n1) || die "no /boot/vmlinuz-* in the image"
initrd=initrd.img-${vmlinuz#vmlinuz-}
cp "$work/root/boot/$vmlinuz" "$work/vmlinuz"
cp "$work/root/boot/$initrd" "$work/initrd.img"
[[ -s $work/vmlinuz && -s $work/initrd.img ]] || die "could not read $vmlinuz or $initrd"

# 4. The root filesystem, filled from the directory (no mount).
phase "making the ext4 filesystem ($size, mke2fs -d)"
truncate -s "$size" "$work/root.ext4"
mke2fs -q -F -t ext4 -L "$label" -d "$work/root" "$work/root.ext4" >&2 ||
	die "mke2fs -d failed"

# 5. qcow2.
phase "converting to qcow2"
qemu-img convert -f raw -O qcow2 "$work/root.ext4" "$work/debian-12.qcow2" >&2 || die "qemu-img convert failed"
rm -f "$work/root.ext4"

# 6. Publish: the files first, the stamp last (its presence means complete).
phase "publishing into $out"
rm -f "$out/stamp"
for f in debian-12.qcow2 vmlinuz initrd.img packages resolved; do
	mv -f "$work/$f" "$out/$f.tmp" && mv -f "$out/$f.tmp" "$out/$f"
done
chmod 0644 "$out/vmlinuz" "$out/initrd.img" "$out/debian-12.qcow2"
printf '%s\n' "$stamp" >"$out/stamp.tmp" && mv -f "$out/stamp.tmp" "$out/stamp"
phase ""
log "built in $(elapsed "$began"): $kernel, $(wc -l <"$out/packages") packages, qcow2 $(du -h "$out/debian-12.qcow2" | cut -f1) (virtual $size)"
printf '%s\n' "$out/debian-12.qcow2" "$out/vmlinuz" "$out/initrd.img"
