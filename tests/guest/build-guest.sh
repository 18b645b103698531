#!/usr/bin/env bash
# Builds the Linux guest that the vhost-user-blk tests boot under QEMU (TCG):
#   OUTDIR/vmlinuz             Debian's kernel (the package linux-image-amd64 names)
#   OUTDIR/initramfs.cpio.gz   busybox-static, the virtio-blk and ext4 modules,
#                              the host's mke2fs and e2fsck with their libraries,
#                              and tests/guest/init (the workloads)
# Nothing is installed on the host: the packages are fetched with
# `apt-get download` and unpacked with `dpkg-deb -x`. The result is cached: a
# second run with the same script and init does nothing.
#
# usage: tests/guest/build-guest.sh OUTDIR
set -euo pipefail
out=${1:?usage: build-guest.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
init=$here/init

# The modules the guest loads, in this order, each after what it depends on
# (modules.dep; crc32c is ext4's and jbd2's soft dependency).
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
	crc32c_generic crc16 mbcache jbd2 ext4"

for tool in apt-get apt-cache dpkg-deb depmod cpio gzip mke2fs e2fsck ldd; do
	command -v "$tool" >/dev/null || {
		echo "build-guest: $tool is missing: run \`make deps\` as root" >&2
		exit 1
	}
done

mkdir -p "$out"
out=$(cd "$out" && pwd)
stamp_want=$(cat "$0" "$init" "$(command -v mke2fs)" "$(command -v e2fsck)" | sha256sum | cut -d' ' -f1)
if [[ -f $out/vmlinuz && -f $out/initramfs.cpio.gz && -f $out/stamp ]] &&
	[[ $(head -n1 "$out/stamp") == "$stamp_want" ]]; then
	exit 0
fi

work=$(mktemp -d /tmp/isolde-guest-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
# apt-get download drops privileges to _apt where it can: let it write here.
chmod 0777 "$work"

download() { # download PACKAGE: into $work/debs, refreshing stale lists once
	mkdir -p "$work/debs"
	chmod 0777 "$work/debs"
	(cd "$work/debs" && apt-get download -q "$1") ||
		{ apt-get update -q && (cd "$work/debs" && apt-get download -q "$1"); }
}

kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
	sed -n 's/^ *Depends: \(linux-image-6\.1\.[^ ]*-amd64\)$/\1/p' | head -n1)
if [[ -z $kpkg ]]; then
	apt-get update -q
	kpkg=$(apt-cache depends linux-image-amd64 |
		sed -n 's/^ *Depends: \(linux-image-6\.1\.[^ ]*-amd64\)$/\1/p' | head -n1)
fi
[[ -n $kpkg ]] || { echo "build-guest: linux-image-amd64 names no linux-image-6.1.*-amd64" >&2; exit 1; }
echo "build-guest: kernel $kpkg, busybox-static" >&2
download "$kpkg"
download busybox-static
dpkg-deb -x "$work"/debs/linux-image-*.deb "$work/kernel"
dpkg-deb -x "$work"/debs/busybox-static_*.deb "$work/busybox"

kver=${kpkg#linux-image-}
moddir=$work/kernel/lib/modules/$kver
[[ -d $moddir ]] || { echo "build-guest: no modules for $kver" >&2; exit 1; }
# The package ships no modules.dep (its postinst makes it): make it here.
[[ -f $moddir/modules.dep ]] || depmod -b "$work/kernel" "$kver"

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,mnt,tmp,etc,lib/modules,lib/x86_64-linux-gnu,lib64}
ln -s bin "$root/sbin"
mkdir -p "$root/usr"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"

# busybox, an applet link for each of its applets
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
	[[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done

# the host's mke2fs and e2fsck (busybox's mke2fs is not the real thing), with
# every shared library they load and the dynamic loader
for tool in mke2fs e2fsck; do
	rm -f "$root/bin/$tool"
	cp "$(command -v "$tool")" "$root/bin/$tool"
	ldd "$(command -v "$tool")" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}' |
		while read -r lib; do
			mkdir -p "$root$(dirname "$lib")"
			cp -L "$lib" "$root$lib"
		done
done
rm -f "$root/bin/mkfs.ext4"
ln -s mke2fs "$root/bin/mkfs.ext4"
cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"
ln -s /proc/mounts "$root/etc/mtab"

# the modules, in load order, uncompressed (busybox insmod reads plain .ko)
declare -A path_of loaded
while IFS= read -r line; do
	mod=${line%%:*}
	name=$(basename "$mod")
	name=${name%%.ko*}
	path_of[${name//-/_}]=$mod
done <"$moddir/modules.dep"
order=()
add_module() { # add_module NAME: its dependencies first
	local name=${1//-/_} dep deps
	[[ -n ${loaded[$name]:-} ]] && return
	[[ -n ${path_of[$name]:-} ]] || { echo "build-guest: module $name not found" >&2; exit 1; }
	deps=$(grep -m1 "^${path_of[$name]}:" "$moddir/modules.dep" | cut -d: -f2)
	for dep in $deps; do
		dep=$(basename "$dep")
		add_module "${dep%%.ko*}"
	done
	loaded[$name]=1
	order+=("$name")
}
for m in $MODULES; do add_module "$m"; done
: >"$root/lib/modules/order"
for name in "${order[@]}"; do
	src=$moddir/${path_of[$name]}
	dst=$root/lib/modules/$name.ko
	case $src in
	*.ko.xz) xz -dc "$src" >"$dst" ;;
	*.ko.zst) zstd -q -dc "$src" >"$dst" ;;
	*.ko.gz) gzip -dc "$src" >"$dst" ;;
	*) cp "$src" "$dst" ;;
	esac
	echo "$name" >>"$root/lib/modules/order"
done

cp "$init" "$root/init"
chmod 0755 "$root/init"

(cd "$root" && find . -print0 | LC_ALL=C sort -z |
	cpio --null -o -H newc --owner=0:0 --quiet) | gzip -6 >"$work/initramfs.cpio.gz"
cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$out/vmlinuz"
mv -f "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
printf '%s\n%s\n%s\n' "$stamp_want" "$kpkg" "$(tr '\n' ' ' <"$root/lib/modules/order")" >"$out/stamp"
echo "build-guest: wrote $out/vmlinuz and $out/initramfs.cpio.gz (modules: ${order[*]})" >&2
