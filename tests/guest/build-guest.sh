#!/usr/bin/env bash
# build-guest.sh builds the vmsup test guest: a Debian cloud kernel and a
# busybox initramfs whose /init powers off on the ACPI power button, gets a
# DHCP address and serves HTTP, reads a cloud-init seed, writes a disk marker
# and keeps a shell on the console (tests/guest/README.md).
#
#   tests/guest/build-guest.sh [--force]
#
# Output: ${VMSUP_CACHE:-<repo>/.cache}/guest/{vmlinuz,initrd.img,stamp}.
# The stamp records the package versions and a hash of this script and of
# tests/guest/init; when it matches, nothing is rebuilt. Needs a Debian or
# Ubuntu host with apt (packages are fetched with `apt-get download`, never
# installed), dpkg-deb and gzip. See tests/guest/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="${VMSUP_CACHE:-$repo/.cache}/guest"
init_src="$here/init"
kernel_meta="linux-image-cloud-amd64"
busybox_pkg="busybox-static"
# The QEMU guest agent and the shared libraries it needs (qemu-ga is not
# static): their files are copied into the initramfs, with the loader.
agent_pkgs=(qemu-guest-agent libc6 libglib2.0-0 libnuma1 libudev1 liburing2 libffi8 libmount1 libblkid1
	libpcre2-8-0 libselinux1 zlib1g)
# Modules loaded by /init when the kernel does not build them in (with their
# dependencies): the ACPI power button, evdev (acpid reads the button as an
# input device), pvpanic (GUEST_PANICKED with -device pvpanic or
# pvpanic-pci), virtio-pci with the net and block drivers, and ISO 9660 for
# the cloud-init seed.
modules=(drivers/acpi/button drivers/input/evdev drivers/misc/pvpanic/pvpanic-mmio drivers/misc/pvpanic/pvpanic-pci
	drivers/virtio/virtio_pci drivers/net/virtio_net drivers/block/virtio_blk fs/isofs/isofs
	drivers/char/virtio_console)

force=0
case "${1:-}" in
--force) force=1 ;;
"") ;;
*)
	echo "usage: $0 [--force]" >&2
	exit 2
	;;
esac

log() { echo "build-guest: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

for tool in apt-get apt-cache dpkg-deb gzip sha256sum; do
	command -v "$tool" >/dev/null || die "$tool not found; this script needs a Debian or Ubuntu host"
done

mkdir -p "$out"
# One build at a time (go test runs packages in parallel).
if command -v flock >/dev/null; then
	exec 9>"$out/.lock"
	flock -w 600 9 || die "timed out waiting for another build (lock $out/.lock)"
fi

# recipe identifies this script and the init script: changing either
# rebuilds. tests/guest_test.go computes the same hash.
recipe=$(cat "$here/$(basename "${BASH_SOURCE[0]}")" "$init_src" | sha256sum | cut -d' ' -f1)

# resolve sets kpkg/kver (the concrete kernel image package the metapackage
# depends on, for example linux-image-6.1.0-56-cloud-amd64, and its version)
# and bver. One apt-cache call: on hosts without a package cache file
# (Docker images) each call costs about a second.
resolve() {
	local info dep
	info=$(apt-cache show --no-all-versions "$kernel_meta" "$busybox_pkg" 2>/dev/null) || info=""
	dep=$(awk -v p="$kernel_meta" '/^Package:/ { pkg = $2 } pkg == p && /^Depends:/ { print; exit }' <<<"$info" |
		grep -o 'linux-image-[0-9][^ ,|]*-cloud-amd64\( (= [^)]*)\)\{0,1\}' | head -n1) || true
	kpkg=${dep%% *}
	kver=""
	if [[ $dep == *"(= "* ]]; then
		kver=${dep#*(= }
		kver=${kver%)}
	elif [[ -n $kpkg ]]; then
		kver=$(apt-cache show --no-all-versions "$kpkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1) || true
	fi
	bver=$(awk -v p="$busybox_pkg" '/^Package:/ { pkg = $2 } pkg == p && /^Version:/ { print $2; exit }' <<<"$info")
	# "pkg=version" of each agent package, in the order of agent_pkgs.
	aver=$(apt-cache show --no-all-versions "${agent_pkgs[@]}" 2>/dev/null |
		awk '/^Package:/ { pkg = $2 } /^Version:/ { print pkg "=" $2 }') || aver=""
	[[ -n $kpkg && -n $kver && -n $bver && $(wc -l <<<"$aver") == "${#agent_pkgs[@]}" ]]
}

apt_updated=0
resolved=0
if resolve; then
	resolved=1
elif [[ $(id -u) == 0 ]]; then
	log "apt does not know $kernel_meta or $busybox_pkg; running apt-get update"
	if apt-get update -qq >&2; then
		apt_updated=1
		if resolve; then resolved=1; fi
	fi
fi
if [[ $resolved == 0 ]]; then
	if [[ -f $out/stamp && -f $out/vmlinuz && -f $out/initrd.img ]]; then
		log "warning: apt cannot resolve $kernel_meta/$busybox_pkg; keeping the existing guest"
		printf '%s\n%s\n' "$out/vmlinuz" "$out/initrd.img"
		exit 0
	fi
	[[ $(id -u) == 0 ]] || die "apt does not know $kernel_meta or $busybox_pkg; as root, run: apt-get update"
	die "apt does not know $kernel_meta or $busybox_pkg, even after apt-get update (is this Debian amd64?)"
fi

stamp="kernel=$kpkg $kver
busybox=$busybox_pkg $bver
agent=$(echo $aver)
recipe=$recipe"

if [[ $force == 0 && -f $out/vmlinuz && -f $out/initrd.img && -f $out/stamp ]] &&
	[[ $(cat "$out/stamp") == "$stamp" ]]; then
	log "up to date ($kpkg $kver, $busybox_pkg $bver)"
	printf '%s\n%s\n' "$out/vmlinuz" "$out/initrd.img"
	exit 0
fi

# cpio: the host's, installed when missing and root; otherwise the cpio
# applet of the busybox we download anyway (it writes newc archives too).
cpio=()
if command -v cpio >/dev/null; then
	cpio=(cpio)
elif [[ $(id -u) == 0 ]]; then
	log "installing cpio"
	[[ $apt_updated == 1 ]] || apt-get update -qq >&2 || true
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cpio >&2 ||
		die "apt-get install cpio failed"
	cpio=(cpio)
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vmsup-guest.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
mkdir -p "$work/dl" "$work/kernel" "$work/busybox" "$work/agent" "$work/root"
# apt drops privileges to _apt for downloads; let it write there.
if [[ $(id -u) == 0 ]] && id _apt >/dev/null 2>&1; then
	chown _apt "$work/dl"
fi

log "downloading $kpkg $kver and $busybox_pkg $bver"
# shellcheck disable=SC2086 # aver is a list of pkg=version words
(cd "$work/dl" && apt-get download -q "$kpkg=$kver" "$busybox_pkg=$bver" $aver >&2) ||
	die "apt-get download failed (as root, try: apt-get update)"
dpkg-deb -x "$work"/dl/"${kpkg}"_*.deb "$work/kernel"
dpkg-deb -x "$work"/dl/"${busybox_pkg}"_*.deb "$work/busybox"
for p in "${agent_pkgs[@]}"; do
	dpkg-deb -x "$work"/dl/"${p}"_*.deb "$work/agent"
done

vmlinuz=$(find "$work/kernel/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)
[[ -n $vmlinuz ]] || die "no boot/vmlinuz-* in $kpkg"
kdir=$(find "$work/kernel/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)
[[ -n $kdir ]] || die "no lib/modules/<version> in $kpkg"
busybox="$work/busybox/bin/busybox"
[[ -x $busybox ]] || die "no bin/busybox in $busybox_pkg"
if [[ ${#cpio[@]} == 0 ]]; then
	log "cpio not installed; using busybox cpio (as root this script installs cpio)"
	cpio=("$busybox" cpio)
fi

root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc/acpi/PWRF,etc/udhcpc,lib/modules,mnt,root,var/run,var/log}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
	[[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
done
# qemu-ga with the libraries it links, as the dynamic loader resolves them
# among the extracted packages (the loader's --list only reads, it runs no
# code of qemu-ga's).
alib="$work/agent/lib/x86_64-linux-gnu:$work/agent/usr/lib/x86_64-linux-gnu"
loader="$work/agent/lib64/ld-linux-x86-64.so.2"
[[ -e $loader && -x $work/agent/usr/sbin/qemu-ga ]] || die "qemu-guest-agent or libc6 did not unpack as expected"
mkdir -p "$root/lib64" "$root/lib/x86_64-linux-gnu"
cp "$work/agent/usr/sbin/qemu-ga" "$root/sbin/qemu-ga"
cp -L "$loader" "$root/lib64/ld-linux-x86-64.so.2"
libs=$("$loader" --list --library-path "$alib" "$work/agent/usr/sbin/qemu-ga" | awk '$2 == "=>" { print $3 }')
for l in $libs; do
	[[ $l == "$work"/agent/* ]] || die "qemu-ga needs $l, which is not in the agent packages"
	cp -L "$l" "$root/lib/x86_64-linux-gnu/"
done
cp "$init_src" "$root/init"
chmod 0755 "$root/init"
# busybox acpid runs /etc/acpi/PWRF/00000080 for the power button (evdev
# KEY_POWER is mapped to "button/power PWRF 00000080").
cat >"$root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "vmsup-guest: power button (acpid), powering off" >/dev/console
poweroff -f
EOF
chmod 0755 "$root/etc/acpi/PWRF/00000080"
# udhcpc runs this at each DHCP event; on a new address it prints the line
# tests wait for: "vmsup-guest: ip=10.0.2.15/24 dev=eth0 mac=... gw=10.0.2.2".
cat >"$root/etc/udhcpc/default.script" <<'EOF'
#!/bin/sh
case $1 in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound | renew)
	old=$(ip -4 addr show dev "$interface" | sed -n 's/.* inet \([^ ]*\).*/\1/p' | head -n1)
	if [ "$old" != "$ip/$mask" ]; then
		ip -4 addr flush dev "$interface"
		ip addr add "$ip/$mask" ${broadcast:+broadcast "$broadcast"} dev "$interface"
	fi
	gw=${router%% *}
	[ -n "$gw" ] && ip route replace default via "$gw" dev "$interface"
	: >/etc/resolv.conf
	for s in $dns; do echo "nameserver $s" >>/etc/resolv.conf; done
	if [ "$1" = bound ] || [ "$old" != "$ip/$mask" ]; then
		echo "vmsup-guest: ip=$ip/$mask dev=$interface mac=$(cat "/sys/class/net/$interface/address")${gw:+ gw=$gw}" >/dev/console
	fi
	;;
nak)
	echo "vmsup-guest: DHCP NAK on $interface: $message" >/dev/console
	;;
esac
exit 0
EOF
chmod 0755 "$root/etc/udhcpc/default.script"
# The console shell's login profile.
cat >"$root/etc/profile" <<'EOF'
export HOME=/root PATH=/bin:/sbin PS1='\h:\w# '
cd "$HOME"
EOF

# Modules: skip the built-in ones; add the others after their dependencies
# (read from the "depends=" field of each module's .modinfo section).
builtin="$kdir/modules.builtin"
loaded=()
find_module() { # name (with - or _) -> path relative to $kdir/kernel
	local n=${1//_/[-_]}
	(cd "$kdir/kernel" && find . -name "$n.ko" -o -name "$n.ko.xz" -o -name "$n.ko.zst" | sed 's|^\./||' | head -n1)
}
add_module() { # path relative to $kdir/kernel, without .ko
	local rel=$1 file dep m
	for m in "${loaded[@]}"; do [[ $m == "$rel" ]] && return 0; done
	if grep -qx "kernel/$rel.ko" "$builtin" 2>/dev/null; then
		log "module $rel is built in"
		return 0
	fi
	file=""
	for m in "$kdir/kernel/$rel".ko*; do
		[[ -e $m ]] && file=${m#"$kdir/kernel/"} && break
	done
	[[ -n $file ]] || die "module $rel not found in $kpkg"
	[[ $file == *.ko ]] || die "module $file is compressed; busybox insmod needs plain .ko"
	for dep in $(tr '\0' '\n' <"$kdir/kernel/$file" | sed -n 's/^depends=//p' | tr ',' ' '); do
		m=$(find_module "$dep")
		[[ -n $m ]] || die "module $dep (needed by $rel) not found"
		add_module "${m%.ko}"
	done
	mkdir -p "$root/lib/modules/$(dirname "$file")"
	cp "$kdir/kernel/$file" "$root/lib/modules/$file"
	echo "$file" >>"$root/lib/modules/load"
	loaded+=("$rel")
}
for m in "${modules[@]}"; do add_module "$m"; done

log "packing initramfs"
if ! (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "${cpio[@]}" -o -H newc -R 0:0 2>"$work/cpio.log") |
	gzip -9 -n >"$work/initrd.img"; then
	cat "$work/cpio.log" >&2
	die "cpio failed"
fi

# Publish: the files first, the stamp last (its presence means complete).
rm -f "$out/stamp"
cp "$vmlinuz" "$out/vmlinuz.tmp" && mv -f "$out/vmlinuz.tmp" "$out/vmlinuz"
cp "$work/initrd.img" "$out/initrd.img.tmp" && mv -f "$out/initrd.img.tmp" "$out/initrd.img"
printf '%s\n' "$stamp" >"$out/stamp.tmp" && mv -f "$out/stamp.tmp" "$out/stamp"
log "built ($kpkg $kver, $busybox_pkg $bver; $(du -h "$out/initrd.img" | cut -f1) initrd)"
printf '%s\n%s\n' "$out/vmlinuz" "$out/initrd.img"
