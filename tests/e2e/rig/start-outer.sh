#!/bin/sh
# Boot the OUTER VM.  Usage: start-outer.sh [kvm|tcg]  (default tcg)
# Env: RIG (work dir, required), FOREGROUND=1 (exec QEMU in the foreground instead of
# -daemonize; the e2e harness does this so the VM dies with it), OUTER_MEM, OUTER_SMP,
# E2E_QEMU_ROOT (another root, e.g. Debian 13's, shared read-only as 9p tag qemuroot: the guest
# runs its inner QEMUs from there through rig/qemu-in-root).
set -eu
: "${RIG:?RIG must name the work dir}"
KVER=${KVER:-$(ls /lib/modules | sort -V | tail -1)}
ACCEL=${1:-tcg}
if [ "$ACCEL" = kvm ] && ! [ -w /dev/kvm ]; then echo "no usable /dev/kvm, using tcg" >&2; ACCEL=tcg; fi
if [ "$ACCEL" = kvm ]; then ACC="-accel kvm -cpu host,-arch-capabilities"; else ACC="-accel tcg,thread=multi -cpu max"; fi
mkdir -p "$RIG/out" "$RIG/ctl"
rm -f "$RIG/out/ready" "$RIG/out/serial.log" "$RIG/outer.sock" "$RIG"/ctl/*
if [ "${FOREGROUND:-0}" = 1 ]; then DAEMON=""; else DAEMON="-daemonize"; fi
echo "$$" > "$RIG/out/outer.pid"
exec qemu-system-x86_64 $ACC -name aua-e2e-outer -M pc -m ${OUTER_MEM:-1024} -smp ${OUTER_SMP:-2} \
  -nodefaults -display none \
  -kernel ${KERNEL:-/boot/vmlinuz-$KVER} -initrd "$RIG/build/initrd-$KVER.cpio.gz" \
  -append "console=ttyS0 earlyprintk=ttyS0 panic=-1 ${KAPPEND:-}" -no-reboot \
  -serial file:"$RIG/out/serial.log" \
  -qmp unix:"$RIG/outer.sock",server=on,wait=off \
  -device qemu-xhci,id=xhci,p2=15,p3=15 \
  -virtfs local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap \
  -virtfs local,path="$RIG",mount_tag=rig,security_model=passthrough,multidevs=remap \
  ${E2E_QEMU_ROOT:+-virtfs local,path=$E2E_QEMU_ROOT,mount_tag=qemuroot,security_model=passthrough,readonly=on,multidevs=remap} \
  $DAEMON -pidfile "$RIG/out/outer.pid"
