#!/bin/sh
# Boot Xen (multiboot via QEMU -kernel) under TCG, in the foreground (the harness runs it with
# PDEATHSIG: it dies with the harness). Xen 4.17: this machine's Debian kernel as dom0 and its
# / as dom0's lower layer. Xen 4.20: DOM0_ROOT, the tier's Debian 13 root, gives both.
# The outer xHCI (bus xhci.0, p2=p3=12) is where the harness plugs devices into dom0.
# -cpu max crashes dom0 at its first instruction (SMAP): qemu64 with emulated SVM + NPT.
# env: XDIR (work dir, required), DOM0_ROOT (default: this machine's /), CPU, MEM, SMP
set -eu
: "${XDIR:?XDIR must name the work dir}"
R=${DOM0_ROOT:-}; R=${R%/}
KVER=${KVER:-$(ls "$R/lib/modules" | sort -V | tail -1)}
mkdir -p "$XDIR/out" "$XDIR/ctl"
rm -f "$XDIR/out/ready" "$XDIR/out/serial.log" "$XDIR/outer.sock"
echo "$$" > "$XDIR/out/outer.pid"
exec qemu-system-x86_64 -name aua-xen-outer -accel tcg,thread=multi -cpu "${CPU:-qemu64,+svm,+npt}" -M pc \
  -m ${MEM:-3072} -smp ${SMP:-2} -nodefaults -display none \
  -kernel "$XDIR/build/xen" \
  -append "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=1024M,max:1024M dom0_max_vcpus=2 noreboot" \
  -initrd "$R/boot/vmlinuz-$KVER console=hvc0 earlyprintk=xen panic=-1,$XDIR/build/initrd-dom0-$KVER.cpio.gz" \
  -no-reboot -serial file:"$XDIR/out/serial.log" \
  -qmp unix:"$XDIR/outer.sock",server=on,wait=off \
  -device qemu-xhci,id=xhci,p2=12,p3=12 \
  -virtfs local,path="${R:-/}",mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap \
  -virtfs local,path="$XDIR",mount_tag=rig,security_model=passthrough,multidevs=remap
