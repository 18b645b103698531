#!/bin/sh
# meson's install script for the VM domain's guest: builds it (cached in the
# build tree, scripts/build-vm-guest.sh) and installs the kernel and the
# initramfs the launcher boots into DATADIR/isolde/vm-guest.
# usage (from meson.add_install_script): install-vm-guest.sh DATADIR
set -eu
datadir=${1:?usage: install-vm-guest.sh DATADIR}
guest=$MESON_BUILD_ROOT/vm-guest
"$MESON_SOURCE_ROOT/scripts/build-vm-guest.sh" "$guest"
dest=$MESON_INSTALL_DESTDIR_PREFIX/$datadir/isolde/vm-guest
install -d "$dest"
install -m 0644 "$guest/vmlinux" "$guest/initramfs.cpio.gz" "$dest/"
