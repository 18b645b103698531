#!/usr/bin/env bash
# Builds the Linux guest with a network card that the vhost-user-net tests and
# bench/net_guest.py boot under QEMU (TCG):
#   OUTDIR/vmlinuz             Debian's kernel (the package linux-image-amd64 names)
#   OUTDIR/initramfs.cpio.gz   busybox-static, the virtio-net modules, the
#                              host's iperf3 with its libraries, and
#                              tests/guest/net-init as /init (the workloads)
# Nothing is installed on the host: the packages are fetched with
# `apt-get download` and unpacked with `dpkg-deb -x`. The result is cached: a
# second run with the same script, init and iperf3 does nothing.
#
# usage: tests/guest/build-net-guest.sh OUTDIR      (the tests use build/net-guest)
set -euo pipefail
out=${1:?usage: build-net-guest.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
init=$here/net-init
guest_lib=$here/../../scripts/guest-lib.sh
guest_prog=build-net-guest
# shellcheck source=scripts/guest-lib.sh
. "$guest_lib"

# The modules the guest loads, in this order, each after what it depends on
# (guest_install_modules follows modules.dep and adds what is missing).
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
	failover net_failover virtio_net"

guest_require apt-get apt-cache dpkg-deb depmod cpio gzip ldd iperf3

iperf3_bin=$(command -v iperf3)
# The libraries iperf3 loads and the dynamic loader, as ldd names them.
host_libs() { # host_libs BINARY
	ldd "$1" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}'
}

mkdir -p "$out"
out=$(cd "$out" && pwd)
# shellcheck disable=SC2046 # one path a line, none with spaces
stamp_want=$(cat "$0" "$guest_lib" "$init" "$iperf3_bin" $(host_libs "$iperf3_bin") | sha256sum | cut -d' ' -f1)
if [[ -f $out/vmlinuz && -f $out/initramfs.cpio.gz && -f $out/stamp ]] &&
	[[ $(head -n1 "$out/stamp") == "$stamp_want" ]]; then
	exit 0
fi

work=$(mktemp -d /tmp/isolde-net-guest-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
# apt-get download drops privileges to _apt where it can: let it write here.
chmod 0777 "$work"

kpkg=$(guest_kernel_package)
echo "build-net-guest: kernel $kpkg, busybox-static, $iperf3_bin" >&2
guest_unpack_kernel "$kpkg"
guest_download busybox-static
dpkg-deb -x "$work"/debs/busybox-static_*.deb "$work/busybox"

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc,lib/modules,lib/x86_64-linux-gnu,lib64}
ln -s bin "$root/sbin"
mkdir -p "$root/usr"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"

# busybox, an applet link for each of its applets
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
	[[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done

# the host's iperf3, with every shared library it loads and the dynamic loader
cp "$iperf3_bin" "$root/bin/iperf3"
host_libs "$iperf3_bin" | while read -r lib; do
	mkdir -p "$root$(dirname "$lib")"
	cp -L "$lib" "$root$lib"
done
# What the C library reads when it resolves (numeric) addresses.
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
printf 'hosts: files\n' >"$root/etc/nsswitch.conf"

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
echo "build-net-guest: wrote $out/vmlinuz and $out/initramfs.cpio.gz (modules: ${guest_module_order[*]})" >&2
