#!/bin/sh
# Install the Debian packages the rig needs, if missing (needs root and apt).
# Usage: [RIG_SYSTEMD=1] ensure-deps.sh [LOGFILE]
set -eu
LOG=${1:-/dev/null}
need=""
ls /lib/modules/*/kernel >/dev/null 2>&1 || need="$need linux-image-amd64"
ls /boot/vmlinuz-* >/dev/null 2>&1 || need="$need linux-image-amd64"
[ -x /bin/busybox ] || need="$need busybox-static"
[ -x /lib/systemd/systemd-udevd ] || need="$need udev"
command -v qemu-system-x86_64 >/dev/null || need="$need qemu-system-x86"
command -v cpio >/dev/null || need="$need cpio"
command -v make >/dev/null || need="$need make"
[ -x /usr/bin/python3 ] || need="$need python3"
# The systemd rig (RIG_SYSTEMD=1) boots this machine's systemd as the guest's PID 1.
if [ "${RIG_SYSTEMD:-0}" = 1 ]; then [ -x /lib/systemd/systemd ] || need="$need systemd"; fi
if [ -n "$need" ]; then
  echo "rig: installing$need (once)" >&2
  export DEBIAN_FRONTEND=noninteractive
  inst() { apt-get install -y -q --no-install-recommends $need >>"$LOG" 2>&1; }
  # fresh machines/containers often have no package lists yet ("partial" and "lock" only)
  ls /var/lib/apt/lists 2>/dev/null | grep -q Packages || apt-get update -qq >>"$LOG" 2>&1 || true
  inst || { apt-get update -qq >>"$LOG" 2>&1; inst; } \
    || { echo "rig: apt-get install$need failed, see $LOG" >&2; exit 1; }
fi
exit 0
