#!/bin/sh
# dom0's tiny initramfs: busybox + the modules for the 9p root and overlayfs, built by the
# e2e rig's script with dom0's module list, init and directories.
set -eu
: "${XDIR:?XDIR must name the work dir}"
KVER=${KVER:-$(ls /lib/modules | sort -V | tail -1)}
OUT=$XDIR/build/initrd-dom0-$KVER.cpio.gz STAGE=$XDIR/build/initramfs INIT=$XDIR/initramfs-init \
  MODS="virtio_pci 9pnet_virtio 9p overlay" EXTRA_DIRS="host upper" KVER=$KVER \
  exec "$(dirname "$0")/../../e2e/rig/build-initramfs.sh"
