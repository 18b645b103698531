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
guest_lib=$here/../../scripts/guest-lib.sh
guest_prog=build-guest
# shellcheck source=scripts/guest-lib.sh
. "$guest_lib"

# The modules the guest loads, in this order, each after what it depends on
# (modules.dep; crc32c is ext4's and jbd2's soft dependency).
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
	crc32c_generic crc16 mbcache jbd2 ext4"

guest_require apt-get apt-cache dpkg-deb depmod cpio gzip mke2fs e2fsck ldd

mkdir -p "$out"
out=$(cd "$out" && pwd)
stamp_want=$(cat "$0" "$guest_lib" "$init" "$(command -v mke2fs)" "$(command -v e2fsck)" | sha256sum | cut -d' ' -f1)
if [[ -f $out/vmlinuz && -f $out/initramfs.cpio.gz && -f $out/stamp ]] &&
	[[ $(head -n1 "$out/stamp") == "$stamp_want" ]]; then
	exit 0
fi

work=$(mktemp -d /tmp/isolde-guest-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
# apt-get download drops privileges to _apt where it can: let it write here.
chmod 0777 "$work"

kpkg=$(guest_kernel_package)
echo "build-guest: kernel $kpkg, busybox-static" >&2
guest_unpack_kernel "$kpkg"
guest_download busybox-static
dpkg-deb -x "$work"/debs/busybox-static_*.deb "$work/busybox"

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
# shellcheck disable=SC2086 # MODULES is a list
guest_install_modules "$root" $MODULES

cp "$init" "$root/init"
chmod 0755 "$root/init"

guest_cpio_gz "$root" "$work/initramfs.cpio.gz"
cp "$guest_vmlinuz" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$out/vmlinuz"
mv -f "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
printf '%s\n%s\n%s\n' "$stamp_want" "$kpkg" "$(tr '\n' ' ' <"$root/lib/modules/order")" >"$out/stamp"
echo "build-guest: wrote $out/vmlinuz and $out/initramfs.cpio.gz (modules: ${guest_module_order[*]})" >&2
