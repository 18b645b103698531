#!/usr/bin/env bash
# Builds the base guest of a VM driver domain (QEMU, TCG):
#   OUTDIR/vmlinuz            Debian's kernel (the package linux-image-amd64
#                             names), a bzImage: for machines that boot those
#   OUTDIR/vmlinux            the same kernel as the ELF inside the bzImage:
#                             QEMU boots it directly at its PVH entry (microvm,
#                             and q35 too), without the decompressor's seconds
#                             under TCG
#   OUTDIR/initramfs.cpio.gz  the directories /dev /proc /sys /isolde
#                             /lib/modules and the modules the agent loads, in
#                             /lib/modules/order; nothing else
# The host appends a second, uncompressed newc archive with /init (the agent,
# src/vm/guest_agent.c), /isolde/driver and /isolde/argv: the kernel unpacks
# concatenated archives into one root. The gzip member is padded with NULs to
# a multiple of 4 bytes for that (gzip -t calls them trailing garbage).
# Nothing is installed on the host: the kernel package is fetched with
# `apt-get download` and unpacked with `dpkg-deb -x`. The result is cached: a
# second run of the same script does nothing.
#
# usage: scripts/build-vm-guest.sh OUTDIR
set -euo pipefail
out=${1:?usage: build-vm-guest.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
guest_lib=$here/guest-lib.sh
guest_prog=build-vm-guest
# shellcheck source=scripts/guest-lib.sh
. "$guest_lib"

# virtio_pci for the PCI devices (the ivshmem BAR needs no driver: the agent
# maps it through sysfs), virtio_blk for /dev/vda, virtio_console for the
# kick and call ports; pvpanic_pci so that a guest kernel panic ends QEMU
# with status 1 (-device pvpanic-pci -action panic=exit-failure) instead of
# a reboot (status 0 under -no-reboot).
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
	virtio_console pvpanic pvpanic_pci"

guest_require apt-get apt-cache dpkg-deb depmod cpio gzip xz od dd stat

mkdir -p "$out"
out=$(cd "$out" && pwd)
stamp_want=$(cat "$0" "$guest_lib" | sha256sum | cut -d' ' -f1)
if [[ -f $out/vmlinuz && -f $out/vmlinux && -f $out/initramfs.cpio.gz && -f $out/stamp ]] &&
	[[ $(head -n1 "$out/stamp") == "$stamp_want" ]]; then
	exit 0
fi

work=$(mktemp -d /tmp/isolde-vm-guest-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 0777 "$work"

kpkg=$(guest_kernel_package)
echo "$guest_prog: kernel $kpkg" >&2
guest_unpack_kernel "$kpkg"

u32() { # u32 FILE OFFSET: the little-endian 32-bit word there
	od -An -tu4 --endian=little -j "$2" -N4 "$1" | tr -d ' '
}
u8() { # u8 FILE OFFSET
	od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '
}
payload() { # payload FILE OFFSET COUNT: those bytes
	dd if="$1" bs=1M iflag=skip_bytes,count_bytes skip="$2" count="$3" status=none
}
hex_at() { # hex_at FILE OFFSET COUNT: the bytes there, as hex
	od -An -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n'
}

# The ELF kernel from the bzImage. Its setup header (boot protocol 2.08+,
# Documentation/x86/boot.rst) gives where the compressed payload starts and
# how long it is; the payload's magic says how it is compressed (Debian's
# 6.1 uses xz). xz, zstd and the others but gzip end with the decompressed
# size in 4 bytes (the kernel's size_append), which is not part of the stream.
extract_vmlinux() { # extract_vmlinux BZIMAGE OUT
	local img=$1 dst=$2 setup_sects start len magic
	[[ $(hex_at "$img" 0x202 4) == 48647253 ]] || guest_die "$img is not a bzImage (no HdrS)"
	setup_sects=$(u8 "$img" 0x1f1)
	((setup_sects != 0)) || setup_sects=4
	start=$(((setup_sects + 1) * 512 + $(u32 "$img" 0x248)))
	len=$(u32 "$img" 0x24c)
	((len > 4)) || guest_die "$img has no payload in its setup header"
	magic=$(hex_at "$img" "$start" 6)
	case $magic in
	fd377a585a00) payload "$img" "$start" $((len - 4)) | xz -dc >"$dst" ||
		guest_die "the xz payload of $img does not decompress" ;;
	28b52ffd*) payload "$img" "$start" $((len - 4)) | zstd -q -dc >"$dst" ||
		guest_die "the zstd payload of $img does not decompress" ;;
	1f8b*) payload "$img" "$start" "$len" | gzip -dc >"$dst" ||
		guest_die "the gzip payload of $img does not decompress" ;;
	*) guest_die "the payload of $img starts with $magic: a compression this script does not know" ;;
	esac
	[[ $(hex_at "$dst" 0 4) == 7f454c46 ]] || guest_die "the payload of $img is not an ELF file"
}
extract_vmlinux "$guest_vmlinuz" "$work/vmlinux"

root=$work/root
mkdir -p "$root"/{dev,proc,sys,isolde,lib/modules}
# shellcheck disable=SC2086 # MODULES is a list
guest_install_modules "$root" $MODULES
guest_cpio_gz "$root" "$work/initramfs.cpio.gz"
# The kernel takes an uncompressed archive after a compressed one only at a
# 4-byte aligned offset (NUL bytes between archives are skipped): padded,
# the host's archive can simply be appended.
size=$(stat -c %s "$work/initramfs.cpio.gz")
head -c $(((4 - size % 4) % 4)) /dev/zero >>"$work/initramfs.cpio.gz"

cp "$guest_vmlinuz" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$out/vmlinuz"
mv -f "$work/vmlinux" "$out/vmlinux"
mv -f "$work/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
printf '%s\n%s\n%s\n' "$stamp_want" "$kpkg" "${guest_module_order[*]}" >"$out/stamp"
echo "$guest_prog: wrote $out/vmlinuz, vmlinux and initramfs.cpio.gz (modules: ${guest_module_order[*]})" >&2
