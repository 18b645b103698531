# shellcheck shell=bash disable=SC2154
# What the scripts that build a Linux guest from Debian's packages share
# (tests/guest/build-guest.sh, scripts/build-vm-guest.sh): fetching packages
# without installing them, Debian's kernel, and its modules in load order.
# Sourced, not run. The caller sets, before calling anything:
#   guest_prog  its name, for messages
#   work        a scratch directory of its own, mode 0777 (apt-get download
#               drops privileges to _apt where it can, and writes there)

guest_die() { # guest_die MESSAGE...
	echo "$guest_prog: $*" >&2
	exit 1
}

guest_require() { # guest_require TOOL...: each must be on PATH
	local tool
	for tool; do
		command -v "$tool" >/dev/null || guest_die "$tool is missing: run \`make deps\` as root"
	done
}

guest_download() { # guest_download PACKAGE: into $work/debs, refreshing stale lists once
	mkdir -p "$work/debs"
	chmod 0777 "$work/debs"
	(cd "$work/debs" && apt-get download -q "$1") ||
		{ apt-get update -q && (cd "$work/debs" && apt-get download -q "$1"); }
}

guest_kernel_package() { # prints the linux-image-6.1.*-amd64 that linux-image-amd64 names
	local kpkg
	kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-6\.1\.[^ ]*-amd64\)$/\1/p' | head -n1)
	if [[ -z $kpkg ]]; then
		apt-get update -q >&2
		kpkg=$(apt-cache depends linux-image-amd64 |
			sed -n 's/^ *Depends: \(linux-image-6\.1\.[^ ]*-amd64\)$/\1/p' | head -n1)
	fi
	[[ -n $kpkg ]] || guest_die "linux-image-amd64 names no linux-image-6.1.*-amd64"
	echo "$kpkg"
}

# guest_unpack_kernel KPKG: the package, downloaded and unpacked into
# $work/kernel; sets guest_kver, guest_moddir and guest_vmlinuz.
guest_unpack_kernel() {
	local kpkg=$1
	guest_download "$kpkg"
	dpkg-deb -x "$work"/debs/"$kpkg"_*.deb "$work/kernel"
	guest_kver=${kpkg#linux-image-}
	guest_moddir=$work/kernel/lib/modules/$guest_kver
	guest_vmlinuz=$work/kernel/boot/vmlinuz-$guest_kver
	[[ -d $guest_moddir ]] || guest_die "no modules for $guest_kver"
	[[ -f $guest_vmlinuz ]] || guest_die "no kernel image for $guest_kver"
	# The package ships no modules.dep (its postinst makes it): make it here.
	[[ -f $guest_moddir/modules.dep ]] || depmod -b "$work/kernel" "$guest_kver"
}

# guest_install_modules ROOT NAME...: the modules named and everything they
# depend on (modules.dep), each after its dependencies, uncompressed (plain
# .ko: what finit_module and busybox insmod read) as ROOT/lib/modules/NAME.ko,
# and their names in that order in ROOT/lib/modules/order, one a line. Sets
# guest_module_order. Needs guest_unpack_kernel first.
guest_install_modules() {
	local root=$1 line mod name src dst
	shift
	declare -gA guest_path_of=() guest_loaded=()
	guest_module_order=()
	while IFS= read -r line; do
		mod=${line%%:*}
		name=$(basename "$mod")
		name=${name%%.ko*}
		guest_path_of[${name//-/_}]=$mod
	done <"$guest_moddir/modules.dep"
	for name; do guest_add_module "$name"; done
	mkdir -p "$root/lib/modules"
	: >"$root/lib/modules/order"
	for name in "${guest_module_order[@]}"; do
		src=$guest_moddir/${guest_path_of[$name]}
		dst=$root/lib/modules/$name.ko
		case $src in
		*.ko.xz) xz -dc "$src" >"$dst" ;;
		*.ko.zst) zstd -q -dc "$src" >"$dst" ;;
		*.ko.gz) gzip -dc "$src" >"$dst" ;;
		*) cp "$src" "$dst" ;;
		esac
		echo "$name" >>"$root/lib/modules/order"
	done
}

guest_add_module() { # guest_add_module NAME: its dependencies first
	local name=${1//-/_} dep deps
	[[ -n ${guest_loaded[$name]:-} ]] && return
	[[ -n ${guest_path_of[$name]:-} ]] || guest_die "module $name not found"
	deps=$(grep -m1 "^${guest_path_of[$name]}:" "$guest_moddir/modules.dep" | cut -d: -f2)
	for dep in $deps; do
		dep=$(basename "$dep")
		guest_add_module "${dep%%.ko*}"
	done
	guest_loaded[$name]=1
	guest_module_order+=("$name")
}

guest_cpio_gz() { # guest_cpio_gz ROOT OUT: ROOT as a gzipped newc archive, owned by root
	(cd "$1" && find . -print0 | LC_ALL=C sort -z |
		cpio --null -o -H newc --owner=0:0 --quiet) | gzip -6 >"$2"
}
