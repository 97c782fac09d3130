#!/bin/sh
# Fetch Debian's Xen 4.17 packages with `apt-get download` and unpack them into
# $XDIR/xentree (dpkg-deb -x): they are never installed on this host.  Also the
# hypervisor image and the domU's idle boot disk.  Idempotent: a warm $XDIR is reused.
# Usage: fetch-xen.sh   env: XDIR (required: the tier's work/cache dir)
set -eu
: "${XDIR:?XDIR must name the work dir}"
PKGS="xen-hypervisor-4.17-amd64 xen-utils-4.17 xen-utils-common xenstore-utils qemu-system-xen
 libxencall1 libxenevtchn1 libxenforeignmemory1 libxengnttab1 libxenmisc4.17 libxenstore4
 libxentoollog1 libxendevicemodel1 libxentoolcore1 libxenhypfs1 libyajl2 seabios ipxe-qemu
 qemu-system-data libspice-server1 libfdt1"
mkdir -p "$XDIR/debs" "$XDIR/build"
if [ ! -e "$XDIR/xentree/.complete" ]; then
  rm -rf "$XDIR/xentree" "$XDIR"/debs/*.deb; mkdir -p "$XDIR/xentree"
  ls /var/lib/apt/lists 2>/dev/null | grep -q Packages || apt-get update -qq
  (cd "$XDIR/debs" && apt-get download -q $PKGS >/dev/null) \
    || { apt-get update -qq && (cd "$XDIR/debs" && apt-get download -q $PKGS >/dev/null); }
  for d in "$XDIR"/debs/*.deb; do dpkg-deb -x "$d" "$XDIR/xentree"; done
  ls "$XDIR"/debs/*.deb | sed 's|.*/||' > "$XDIR/xentree/.complete"
fi
[ -s "$XDIR/build/xen" ] || gunzip -c "$XDIR"/xentree/boot/xen-4.17-amd64.gz > "$XDIR/build/xen"
# 1 MiB disk whose MBR is "sti; hlt; jmp $-3": SeaBIOS boots it and the domU idles with
# the same domid (without a bootable disk SeaBIOS reboots after 60 s: new domid).
[ -s "$XDIR/build/hlt.img" ] || python3 -c "
import sys
b = bytearray(1 << 20); b[0:4] = bytes([0xfb, 0xf4, 0xeb, 0xfd]); b[510:512] = b'\x55\xaa'
open(sys.argv[1], 'wb').write(b)" "$XDIR/build/hlt.img"
echo "xen packages: $(wc -l < "$XDIR/xentree/.complete") debs unpacked in $XDIR/xentree"
