#!/bin/sh
# Build a Debian 13 (trixie) root directory with mmdebstrap, from the Debian registry (the
# mirror this machine's apt uses, suite trixie). Nothing from trixie is installed on this
# host: the packages go only into ROOT. Idempotent: a root whose stamp names the same
# package list is kept. The root keeps no sources.list and no apt lists.
# Usage: build-root.sh ROOT PROFILE     (minbase + the profile's packages)
#   build: Debian 13's rustc/cargo 1.85 and what the build links (tests/msrv), lintian (tests/deb)
#   dom0:  the Xen 4.20 tier's dom0 (tests/xen): Xen 4.20's tools and hypervisor, qemu-system-xen
#          and qemu-system-x86 10, udev 257, python3, kmod; and trixie's kernel (6.12), unpacked
#          with dpkg-deb -x + depmod rather than installed (its postinst would build an
#          initramfs nobody uses; the tier builds its own)
# Host packages: mmdebstrap (installed if missing, with apt-get).
set -eu
ROOT=${1:?usage: build-root.sh ROOT build|dom0}
case "${2:-}" in
build) PKGS=rustc,cargo,gcc,libc6-dev,pkg-config,libvirt-dev,lintian ;;
dom0) PKGS=xen-utils-4.20,xen-hypervisor-4.20-amd64,xenstore-utils,qemu-system-xen,qemu-system-x86,udev,python3,kmod ;;
*) echo "usage: build-root.sh ROOT build|dom0" >&2; exit 2 ;;
esac
STAMP="trixie minbase +$PKGS"
mkdir -p "$(dirname "$ROOT")"
exec 8>"$ROOT.lock"; flock 8     # one builder at a time; a second caller then finds it built
if [ -f "$ROOT/.aua-root" ] && [ "$(cat "$ROOT/.aua-root")" = "$STAMP" ]; then
  echo "trixie root $ROOT: present"; exit 0
fi
if ! command -v mmdebstrap >/dev/null; then
  echo "build-root: installing mmdebstrap (once)" >&2
  ls /var/lib/apt/lists 2>/dev/null | grep -q Packages || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null; }
fi
# This machine's Debian mirror: the first deb822 URIs: line, else the first one-line entry.
MIRROR=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}')
[ -n "$MIRROR" ] || MIRROR=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
  | awk '$1=="deb" && $2 !~ /security/ {print $2; exit}')
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
rm -rf "$ROOT"; mkdir -p "$(dirname "$ROOT")"
t0=$(date +%s)
mmdebstrap --quiet --mode=root --variant=minbase --include="$PKGS" \
  --customize-hook='rm -f "$1"/etc/apt/sources.list; rm -rf "$1"/var/lib/apt/lists/*; rm -f "$1"/var/cache/apt/*.bin' \
  trixie "$ROOT" "$MIRROR"
if [ "$2" = dom0 ]; then
  T=$(mktemp -d); chmod 755 "$T"; trap 'rm -rf "$T"' EXIT
  mkdir -p "$T/lists/partial" "$T/cache/archives/partial"; echo "deb $MIRROR trixie main" > "$T/sources.list"
  A="-o Dir::Etc::SourceList=$T/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$T/lists -o Dir::Cache=$T/cache -o Dir::State::Status=$ROOT/var/lib/dpkg/status"
  apt-get $A update -qq
  KPKG=$(apt-cache $A depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  (cd "$T" && apt-get $A download -q "$KPKG" >/dev/null)
  dpkg-deb -x "$T"/linux-image-*.deb "$ROOT"
  depmod -b "$ROOT" "$(ls "$ROOT/lib/modules" | sort -V | tail -1)"
  echo "trixie root $ROOT: kernel $KPKG unpacked"
fi
echo "$STAMP" > "$ROOT/.aua-root"
echo "trixie root $ROOT: built in $(( $(date +%s) - t0 )) s ($(du -sm "$ROOT" | cut -f1) MB) from $MIRROR"
