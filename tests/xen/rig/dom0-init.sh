#!/bin/sh
# PID 1 in dom0's chroot: Xen's daemons (xenstored, xen-init-dom0, xenconsoled), real
# systemd-udevd with the rig's event-log rules, then the command agent (/tmp/rig/ctl).
# The same script for both tiers: Xen 4.17 (Debian 12's tools unpacked over this machine's /)
# and Xen 4.20 (a Debian 13 root); the tools' directory says which.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
exec >/dev/hvc0 2>&1
t() { echo "dom0: $(cut -d' ' -f1 /proc/uptime)s $*"; }
t start; mkdir -p /tmp/rig/ctl /tmp/rig/out
for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xhci_pci ehci_pci usbhid hid_generic usb_storage; do modprobe $m || t "modprobe $m failed"; done
mount -t xenfs xenfs /proc/xen || t "xenfs mount failed"
t "hypervisor $(cat /sys/hypervisor/type) $(cat /sys/hypervisor/version/major).$(cat /sys/hypervisor/version/minor)"
mkdir -p /run/xen /run/xenstored /var/lib/xen /var/log/xen /var/lib/xenstored
mount -t tmpfs tmpfs /var/lib/xen; mount -t tmpfs tmpfs /var/log; mkdir -p /var/log/xen
XL=$(ls -d /usr/lib/xen-4.* | sort -V | tail -1)
t "xenstored ($XL)"; $XL/bin/xenstored --pid-file /run/xenstore.pid
t "xen-init-dom0"; $XL/bin/xen-init-dom0
t "xenconsoled"; $XL/bin/xenconsoled --pid-file=/run/xenconsoled.pid
# Files in the lower layers live on 9p mounts; the device model reads ROMs straight into
# foreign-mapped guest memory, which fails on 9p zero-copy reads: copy them up.
find /usr/share/seabios /usr/share/qemu /usr/lib/ipxe $XL/boot -type f -exec touch {} + 2>/dev/null
mkdir -p /run/lock /run/udev/rules.d
cp /tmp/rig/98-e2e-log.rules /tmp/rig/99-zz-e2e-done.rules /run/udev/rules.d/
for n in hvm1 hvm2 busy fw; do cp /tmp/rig/build/hlt.img /run/hlt-$n.img; done   # one each: QEMU locks an image it writes
: > /run/events.log; : > /run/events-done.log
# udevd: libusb (in the device model) learns about hot-plugged host USB devices from udev
/lib/systemd/systemd-udevd --daemon --resolve-names=never
udevadm trigger --action=add --subsystem-match=usb; udevadm settle -t 30
: > /run/events.log; : > /run/events-done.log; rm -f /run/uevent-env.*
t READY
exec /usr/bin/python3 /tmp/rig/guest-agent.py
