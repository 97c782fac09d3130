#!/usr/bin/python3
"""Runs INSIDE the outer guest: one short QMP session with an inner QEMU, then disconnect.
(The tool under test needs the same one-client-at-a-time socket: never hold it.)

  gqmp.py SOCK cmd EXECUTE [JSON-ARGS] [EXECUTE [JSON-ARGS]...]   -> JSON list of replies
  gqmp.py SOCK view     -> JSON {"name":..., "peripheral":[{name,type}], "usb":{id:{props}},
                                  "controllers":{id:type}}
Busy sockets are retried until --timeout (default 15 s)."""
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import connect_retry

USB_PROPS = ("port", "hostbus", "hostaddr", "hostport", "hostdevice", "attached", "parent_bus")


def view(q):
    out = {"name": q.cmd("query-name").get("return", {}).get("name")}
    per = q.cmd("qom-list", path="/machine/peripheral").get("return", [])
    out["peripheral"] = [{"name": p["name"], "type": p["type"]} for p in per
                         if p["type"].startswith("child<")]
    out["usb"], out["controllers"] = {}, {}
    for p in out["peripheral"]:
        t = p["type"][6:-1]
        if t == "usb-host":
            props = {}
            for k in USB_PROPS:
                r = q.cmd("qom-get", path="/machine/peripheral/" + p["name"], property=k)
                props[k] = r.get("return", {"error": r.get("error", {}).get("desc")})
            out["usb"][p["name"]] = props
        elif p["name"].startswith("xenusb-"):
            out["controllers"][p["name"]] = t
    return out


def run_view(sock, timeout=15.0):
    q = connect_retry(sock, timeout=timeout)
    try:
        return view(q)
    finally:
        q.close()


def run_cmds(sock, cmds, timeout=15.0):
    """cmds: [[execute, {args}], ...] -> list of replies (one session)."""
    q = connect_retry(sock, timeout=timeout)
    try:
        return [q.cmd(c[0], **(c[1] if len(c) > 1 else {})) for c in cmds]
    finally:
        q.close()


def main():
    args = sys.argv[1:]
    timeout = 15.0
    if args[:1] == ["--timeout"]:
        timeout = float(args[1]); args = args[2:]
    sock, mode, rest = args[0], args[1], args[2:]
    q = connect_retry(sock, timeout=timeout)
    try:
        if mode == "view":
            res = view(q)
        else:
            res = []
            while rest:
                ex = rest.pop(0)
                a = json.loads(rest.pop(0)) if rest and rest[0].startswith("{") else {}
                res.append(q.cmd(ex, **a))
    finally:
        q.close()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
