#!/bin/sh
# dom0's tiny initramfs: busybox + the modules for the 9p root and overlayfs.
set -eu
: "${XDIR:?XDIR must name the work dir}"
KVER=${KVER:-$(ls /lib/modules | sort -V | tail -1)}
OUT=$XDIR/build/initrd-dom0-$KVER.cpio.gz
STAGE=$XDIR/build/initramfs
MODS="virtio_pci 9pnet_virtio 9p overlay"
rm -rf "$STAGE"; mkdir -p "$STAGE"/bin "$STAGE"/proc "$STAGE"/sys "$STAGE"/dev "$STAGE"/mods "$STAGE"/host "$STAGE"/newroot "$STAGE"/upper
cp /bin/busybox "$STAGE"/bin/busybox
: > "$STAGE"/mods/order
for m in $MODS; do
  modprobe -D -S "$KVER" "$m" | awk '$1=="insmod"{print $2}' | while read -r ko; do
    b=$(basename "$ko")
    grep -qx "$b" "$STAGE"/mods/order || { cp "$ko" "$STAGE"/mods/; echo "$b" >> "$STAGE"/mods/order; }
  done
done
cp "$XDIR"/initramfs-init "$STAGE"/init; chmod 755 "$STAGE"/init
(cd "$STAGE" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT"
echo "$OUT ($(du -h "$OUT" | cut -f1)): $(tr '\n' ' ' < "$STAGE"/mods/order)"
