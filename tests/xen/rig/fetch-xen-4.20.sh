#!/bin/sh
# The Xen 4.20 tier's dom0: a Debian 13 root directory in $XDIR/root (tests/trixie/build-root.sh,
# profile dom0: mmdebstrap from the Debian registry, suite trixie: Xen 4.20, qemu-system-xen 10,
# udev 257, trixie's kernel 6.12 unpacked). Nothing from trixie is installed on this host. Also
# the hypervisor image and the domU's idle boot disk. Idempotent: a warm $XDIR is reused.
# Usage: fetch-xen-4.20.sh   env: XDIR (required: the tier's work/cache dir)
set -eu
: "${XDIR:?XDIR must name the work dir}"
HERE=$(cd "$(dirname "$0")" && pwd)
"$HERE/../../trixie/build-root.sh" "$XDIR/root" dom0
mkdir -p "$XDIR/build"
[ -s "$XDIR/build/xen" ] || gunzip -c "$XDIR"/root/boot/xen-4.20-amd64.gz > "$XDIR/build/xen"
# 1 MiB disk whose MBR is "sti; hlt; jmp $-3" (see fetch-xen.sh)
[ -s "$XDIR/build/hlt.img" ] || python3 -c "
import sys
b = bytearray(1 << 20); b[0:4] = bytes([0xfb, 0xf4, 0xeb, 0xfd]); b[510:512] = b'\x55\xaa'
open(sys.argv[1], 'wb').write(b)" "$XDIR/build/hlt.img"
echo "xen 4.20: dom0 root $XDIR/root ($(cat "$XDIR/root/.aua-root")), kernel $(ls "$XDIR/root/lib/modules")"
