#!/bin/sh
# The outer guest's userland start. Plain rig: PID 1 inside the chroot (host rootfs,
# read-only 9p), starts udevd itself. systemd rig (RIG_SYSTEMD=1): ExecStart of
# aua-rig-agent.service; udevd is systemd-udevd.service.
# The e2e work dir is mounted at /tmp/rig (read-write, shared with the host).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
[ "${RIG_SYSTEMD:-0}" = 1 ] || exec >/dev/ttyS0 2>&1
echo "rig-guest: $(cut -d' ' -f1 /proc/uptime)s start"
mkdir -p /run/udev/rules.d /tmp/rig/ctl /tmp/rig/out
cp /tmp/rig/98-e2e-log.rules /tmp/rig/99-zz-e2e-done.rules /run/udev/rules.d/
: > /run/events.log; : > /run/events-done.log
if [ "${RIG_SYSTEMD:-0}" = 1 ]; then
  udevadm control --reload
else
  /lib/systemd/systemd-udevd --daemon --resolve-names=never
fi
udevadm trigger --type=subsystems --action=add --subsystem-match=usb
udevadm trigger --type=devices --action=add --subsystem-match=usb
udevadm settle --timeout=30
: > /run/events.log; : > /run/events-done.log; rm -f /run/uevent-env.*
echo "rig-guest: $(cut -d' ' -f1 /proc/uptime)s READY"
exec /usr/bin/python3 /tmp/rig/guest-agent.py
