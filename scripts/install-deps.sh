#!/bin/sh
# Install the Debian packages isolde needs, if any are missing. As root with
# apt-get this installs them; otherwise it prints the command to run.
set -eu
missing=""
for pkg in "$@"; do
	status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
	case "$status" in
	*"install ok installed"*) ;;
	*) missing="$missing $pkg" ;;
	esac
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
	echo "isolde: installing missing packages:$missing"
	export DEBIAN_FRONTEND=noninteractive
	# An install can fail on a stale package list; refresh it once and retry.
	apt-get install -y -q --no-install-recommends $missing ||
		{ apt-get update -q && apt-get install -y -q --no-install-recommends $missing; }
else
	echo "isolde: missing packages:$missing" >&2
	echo "isolde: run as root:  apt-get install -y$missing" >&2
	exit 1
fi
