#!/usr/bin/python3
"""Runs INSIDE the rig's outer guest for tests/bench/run: one process that listens, like any other
udev listener on a host, and writes what it hears as JSON lines (one write each) to LOG:

  - the uevent netlink socket, both multicast groups: the kernel's uevents (group 1) and udevd's
    broadcast of each event once it has processed it, RUN programs included (group 2).
    {"src": "kernel"|"udev", "t": receive time, "seq", "action", "devpath", "subsystem", "devtype"}
    (USB events only; SEQNUM pairs a kernel event with udev's broadcast of it);
  - a second QMP monitor of the inner QEMU (not the socket the tool uses, so it takes nothing from
    it): {"src": "qmp", "t": QEMU's own timestamp of the event, "trecv", "event", "device"}.

Every "t" is CLOCK_REALTIME of this one guest (QEMU stamps its events with the same clock).
Usage: listen.py LOG QMP-EVENT-SOCKET.  Writes {"src": "ready"} once both are open.  Stdlib only."""
import json, os, select, socket, struct, sys, time

NETLINK_KOBJECT_UEVENT = 15
GROUP_KERNEL, GROUP_UDEV = 1, 2


def props(data):
    """KEY=VALUE pairs of a kernel uevent ("ACTION@DEVPATH\\0K=V\\0...") or of udevd's broadcast
    ("libudev\\0" + monitor_netlink_header, the properties at properties_off)."""
    if data.startswith(b"libudev\0"):
        off, length = struct.unpack_from("=II", data, 16)
        body, src = data[off:off + length], "udev"
    else:
        body, src = data.split(b"\0", 1)[1] if b"\0" in data else b"", "kernel"
    kv = {}
    for item in body.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            kv[k.decode(errors="replace")] = v.decode(errors="replace")
    return src, kv


def main():
    log_path, qmp_path = sys.argv[1], sys.argv[2]
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def emit(rec):
        os.write(out, (json.dumps(rec, separators=(",", ":")) + "\n").encode())

    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_KOBJECT_UEVENT)
    try:
        nl.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)          # SO_RCVBUFFORCE (root)
    except OSError:
        nl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    nl.bind((0, GROUP_KERNEL | GROUP_UDEV))

    q = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.time() + 30
    while True:
        try:
            q.connect(qmp_path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    qf = q.makefile("rwb")
    qf.readline()                                               # greeting
    qf.write(b'{"execute":"qmp_capabilities"}\n')
    qf.flush()
    qf.readline()
    qbuf = b""
    emit({"src": "ready", "t": time.time()})
    while True:
        r, _, _ = select.select([nl, q], [], [])
        if nl in r:
            data = nl.recv(1 << 16)
            t = time.time()
            src, kv = props(data)
            if kv.get("SUBSYSTEM") == "usb":
                emit({"src": src, "t": t, "seq": int(kv.get("SEQNUM", -1)), "action": kv.get("ACTION"),
                      "devpath": kv.get("DEVPATH"), "subsystem": "usb", "devtype": kv.get("DEVTYPE")})
        if q in r:
            chunk = q.recv(1 << 16)
            trecv = time.time()
            if not chunk:
                emit({"src": "qmp-closed", "t": trecv})
                return
            qbuf += chunk
            while b"\n" in qbuf:
                line, qbuf = qbuf.split(b"\n", 1)
                try:
                    m = json.loads(line)
                except ValueError:
                    continue
                if "event" in m:
                    ts = m.get("timestamp", {})
                    emit({"src": "qmp", "t": ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6,
                          "trecv": trecv, "event": m["event"], "device": (m.get("data") or {}).get("device")})


if __name__ == "__main__":
    main()
