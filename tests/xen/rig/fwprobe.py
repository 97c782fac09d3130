#!/usr/bin/env python3
"""Research probe, run in dom0 (issue 19, "the booting guest"): start a domain with `xl create`
N times and timestamp, from dom0, everything that could tell a tool where the domain is in its
start: the QMP socket appearing, `xl create` returning, the domain's paused flag (`xl list`),
QMP query-status, query-pci (BAR addresses: -1 = not mapped), query-blockstats (the boot
disk's reads), xenstore changes under /local/domain/<domid> and /libxl/<domid>, and the
guest's own console lines (hvmloader, SeaBIOS) read with `xl dmesg -c`.  Optionally runs the
tool's `sync` a given delay after the socket appears.  Reboots (a new domid, "Triple fault")
are counted.  Prints one JSON object per start.  Stdlib only.

usage: fwprobe.py --cfg CFG --name NAME [--n N] [--sync-after SEC] [--tool 'BIN --config C']
                  [--tail SEC] [--no-poll]"""
import argparse, json, os, re, subprocess, sys, threading, time

sys.path.insert(0, "/tmp/rig")
from qmp import QMP  # noqa: E402

T0 = None


def now():
    return round(time.time() - T0, 3)


def run(argv, timeout=5):
    t = time.time()
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        return r.returncode, r.stdout.decode(errors="replace"), time.time() - t
    except subprocess.TimeoutExpired:
        return -1, "timeout", time.time() - t


def qmp_probe(sock):
    """One short session: status, pci regions, blockstats.  None if busy/absent."""
    try:
        q = QMP(sock, timeout=1, greeting_timeout=0.3)
    except Exception as e:  # noqa
        return {"err": type(e).__name__}
    try:
        st = q.cmd("query-status").get("return", {}).get("status")
        pci = {}
        for bus in q.cmd("query-pci").get("return", []):
            for d in bus.get("devices", []):
                key = "%02x.%x %s" % (d["slot"], d["function"], d.get("qdev_id") or d.get("class_info", {}).get("desc", ""))
                pci[key] = [("%x" % r["address"]) if r["address"] != 0xffffffffffffffff else "-"
                            for r in d.get("regions", [])]
        rd = {}
        for b in q.cmd("query-blockstats").get("return", []):
            rd[b.get("device") or b.get("qdev") or "?"] = b.get("stats", {}).get("rd_operations")
        return {"status": st, "pci": pci, "rd": rd}
    except Exception as e:  # noqa
        return {"err": "%s %s" % (type(e).__name__, e)}
    finally:
        q.close()


def xs_snapshot(domid):
    out = {}
    for base in ("/local/domain/%d" % domid, "/libxl/%d" % domid):
        rc, o, _ = run(["xenstore-ls", "-f", base])
        for line in o.splitlines():
            m = re.match(r'^(\S+) = "(.*)"$', line)
            if m:
                out[m.group(1)] = m.group(2)
    return out


def one(args, k):
    global T0
    ev = []
    delays = [float(x) for x in args.sync_after.split(",")] if args.sync_after else None
    sync_after = delays[k % len(delays)] if delays else None

    def note(kind, detail=None):
        ev.append((now(), kind, detail))

    run(["xl", "dmesg", "-c"])
    before = set(os.listdir("/run/xen"))
    T0 = time.time()
    log = open("/tmp/fwprobe-xl-%d.log" % k, "w")
    p = subprocess.Popen(["xl", "create", args.cfg], stdout=log, stderr=subprocess.STDOUT)
    note("xl-create-start")
    domid = None
    xl_exit = None
    last = {"paused": None, "status": None, "pci": None, "rd": None}
    xs_prev = {}
    tool = None
    tool_res = {}
    booted = None
    guest = []
    t_sock = None
    fault_t = None
    deadline = time.time() + args.limit
    while time.time() < deadline:
        if xl_exit is None and p.poll() is not None:
            xl_exit = p.returncode
            note("xl-create-exit", p.returncode)
        if domid is None:
            new = [n for n in set(os.listdir("/run/xen")) - before if n.startswith("qmp-libxl-")]
            if new:
                domid = int(new[0].rsplit("-", 1)[1])
                t_sock = time.time()
                note("qmp-socket", domid)
        if domid is not None:
            t_from = t_sock if args.trigger == "sock" else (T0 + ev[[e[1] for e in ev].index("xl-create-exit")][0]
                                                            if xl_exit is not None else None)
            if sync_after is not None and tool is None and t_from is not None and time.time() >= t_from + sync_after:
                def go():
                    tool_res["start"] = now()
                    if args.raw:
                        try:
                            q = QMP("/run/xen/qmp-libxl-%d" % domid, timeout=10)
                            r = q.cmd("device_add", driver="nec-usb-xhci", id="fwprobe-x", p2=15, p3=15)
                            q.close()
                            tool_res.update(end=now(), rc=0 if "return" in r else 1, out=json.dumps(r))
                        except Exception as e:  # noqa
                            tool_res.update(end=now(), rc=-1, out="%s %s" % (type(e).__name__, e))
                        return
                    rc, out, took = run(args.tool.split() + ["sync"], timeout=60)
                    tool_res.update(end=now(), rc=rc, out=out.strip()[-600:])
                tool = threading.Thread(target=go)
                tool.start()
                note("sync-start", sync_after)
            if not args.no_poll:
                rc, o, took = run(["xl", "list", str(domid)])
                lines = o.strip().splitlines()
                flag = lines[-1].split()[4] if rc == 0 and len(lines) >= 2 and len(lines[-1].split()) >= 6 else "rc%d" % rc
                if flag != last["paused"]:
                    note("xl-list-state", "%s (xl list took %.3fs)" % (flag, took))
                    last["paused"] = flag
                sock = "/run/xen/qmp-libxl-%d" % domid
                r = qmp_probe(sock)
                if "err" in r:
                    pass
                else:
                    for key in ("status", "pci", "rd"):
                        if r[key] != last[key]:
                            note("qmp-" + key, r[key])
                            last[key] = r[key]
                xs = xs_snapshot(domid)
                diff = {kk: v for kk, v in xs.items() if xs_prev.get(kk) != v}
                gone = [kk for kk in xs_prev if kk not in xs]
                if diff or gone:
                    note("xenstore", {"set": diff if len(xs_prev) else "%d keys" % len(xs), "rm": gone})
                    if not xs_prev:
                        note("xenstore-initial", xs)
                xs_prev = xs
        rc, o, _ = run(["xl", "dmesg", "-c"])
        for line in o.splitlines():
            if domid is not None and ("(d%d)" % domid in line or "d%d" % domid in line) or "Triple" in line \
                    or "MMIO emulation" in line:
                guest.append((now(), line.strip()))
                if "Booting from 0000:7c00" in line and booted is None:
                    booted = now()
                    note("booting-from-7c00")
                if "Triple fault" in line or "MMIO emulation failed" in line:
                    note("FAULT", line.strip())
                    fault_t = fault_t or time.time()
        if booted is not None and time.time() - T0 > booted + args.tail and xl_exit is not None \
                and (tool is None or not tool.is_alive()):
            break
        if fault_t and time.time() > fault_t + 10 and (tool is None or not tool.is_alive()):
            break
        if args.no_poll:
            time.sleep(0.02)
    if tool is not None:
        tool.join(60)
    rc, o, _ = run(["xl", "domid", args.name])
    now_id = int(o.strip()) if rc == 0 and o.strip().isdigit() else None
    socks = sorted(n for n in set(os.listdir("/run/xen")) - before if n.startswith("qmp-libxl-"))
    res = {"k": k, "domid": domid, "domid_after": now_id, "rebooted": now_id != domid,
           "new_sockets": socks, "booted": booted, "xl_exit": xl_exit, "tool": tool_res,
           "events": ev, "guest": [g for g in guest if re.search(
               r"HVM Loader|pci dev|SeaBIOS|Booting|Triple|MMIO|XHCI|xhci|USB|Found|Relocat|BAR|Invoking|Loading|"
               r"Searching|enabled|vcpu|crash|shutdown", g[1])][:80]}
    subprocess.run(["xl", "destroy", args.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cfg", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--sync-after", help="seconds after the socket appears; a comma list is cycled per start")
    ap.add_argument("--tool", default="/run/aua/sbin/auto-usb-attach --config /run/aua/etc/auto-usb-attach.toml")
    ap.add_argument("--trigger", default="sock", choices=["sock", "xlexit"],
                    help="what --sync-after counts from: the QMP socket appearing or `xl create` exiting")
    ap.add_argument("--raw", action="store_true",
                    help="instead of the tool's sync, one QMP device_add of nec-usb-xhci (id fwprobe-x)")
    ap.add_argument("--tail", type=float, default=3.0)
    ap.add_argument("--limit", type=float, default=240.0)
    ap.add_argument("--no-poll", action="store_true")
    args = ap.parse_args()
    for k in range(args.n):
        print(json.dumps(one(args, k)), flush=True)


if __name__ == "__main__":
    main()
