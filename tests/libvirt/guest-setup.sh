#!/bin/sh
# Runs INSIDE the systemd rig's guest, as root: bring up libvirt's QEMU driver (Debian 12's
# libvirtd + virtlogd; packages installed on the host, whose / the guest overlays), then
# define and start the domain XML given.  Everything it writes lands in the guest's tmpfs.
set -eu
xml=$1
command -v libvirtd >/dev/null || { echo "libvirt: libvirtd missing (install libvirt-daemon-driver-qemu libvirt-clients libvirt-daemon on the host)"; exit 1; }
# The QEMU driver refuses to start without its compiled-in user (Debian: libvirt-qemu),
# whatever qemu.conf says; libvirt-daemon-system, not installed, would create it.
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /run/libvirt
# Transient units of their own: `systemctl stop rig-libvirtd` is how a scenario takes libvirtd away.
systemctl is-active -q rig-virtlogd || systemd-run -q --unit=rig-virtlogd /usr/sbin/virtlogd
systemctl is-active -q rig-libvirtd || systemd-run -q --unit=rig-libvirtd /usr/sbin/libvirtd
i=0; while [ ! -S /run/libvirt/libvirt-sock ] || [ ! -S /run/libvirt/virtlogd-sock ]; do
  i=$((i+1)); [ $i -lt 600 ] || { echo "libvirt: sockets did not appear in 60 s"; journalctl -u rig-libvirtd --no-pager | tail -20; exit 1; }
  sleep 0.1; done
# The first call waits for QEMU's capability probe (15-23 s under TCG), cached for the boot.
virsh -q -c qemu:///system version >/dev/null || { journalctl -u rig-libvirtd --no-pager | tail -20; exit 1; }
name=$(sed -n 's:.*<name>\(.*\)</name>.*:\1:p' "$xml" | head -1)
virsh -q -c qemu:///system dominfo "$name" >/dev/null 2>&1 || virsh -q -c qemu:///system define "$xml" >/dev/null
[ "$(virsh -q -c qemu:///system domstate "$name")" = running ] || virsh -q -c qemu:///system start "$name" >/dev/null
echo "libvirt: $name running"
