#!/bin/sh
# The Xen 4.20 tier's dom0 initramfs: this machine's busybox + the trixie kernel's modules for the
# 9p root and overlayfs, from $XDIR/root (trixie ships them as .ko.xz: busybox insmod gets them
# decompressed; 6.12's 9p also needs netfs, which modprobe -D resolves).
set -eu
: "${XDIR:?XDIR must name the work dir}"
ROOT=$XDIR/root
KVER=${KVER:-$(ls "$ROOT/lib/modules" | sort -V | tail -1)}
OUT=$XDIR/build/initrd-dom0-$KVER.cpio.gz STAGE=$XDIR/build/initramfs
rm -rf "$STAGE"; mkdir -p "$STAGE"/bin "$STAGE"/proc "$STAGE"/sys "$STAGE"/dev "$STAGE"/mods "$STAGE"/host \
  "$STAGE"/newroot "$STAGE"/upper
cp /bin/busybox "$STAGE"/bin/busybox
: > "$STAGE"/mods/order
for m in virtio_pci 9pnet_virtio 9p overlay; do
  modprobe -d "$ROOT" -D -S "$KVER" "$m" | awk '$1=="insmod"{print $2}' | while read -r ko; do
    b=$(basename "$ko"); b=${b%.xz}; b=${b%.zst}
    grep -qx "$b" "$STAGE"/mods/order && continue
    case "$ko" in *.xz) xz -dc "$ko" > "$STAGE/mods/$b";; *.zst) zstd -qdc "$ko" > "$STAGE/mods/$b";; *) cp "$ko" "$STAGE/mods/$b";; esac
    echo "$b" >> "$STAGE"/mods/order
  done
done
cp "$XDIR"/initramfs-init "$STAGE"/init; chmod 755 "$STAGE"/init
(cd "$STAGE" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT"
echo "$OUT ($(du -h "$OUT" | cut -f1)): $(tr '\n' ' ' < "$STAGE"/mods/order)"
