#!/usr/bin/env python3
"""dom0 side of the Xen tier's firmware_cycles scenario: `xl create CFG` and the tool's
`sync` at once, with no firmware wait.  WHEN = "socket": sync starts as soon as
/run/xen/qmp-libxl-<new domid> appears (what the path unit does: the domain is still
paused, libxl still setting it up); "exit": right after `xl create` returns (the domain
unpaused, hvmloader starting).  Prints one JSON object: domid, the times (s after xl
create started), both exit codes and outputs.  Bounded: 180 s for xl create.
usage: create-and-sync.py CFG WHEN TOOL [TOOL ARGS...]"""
import json, os, subprocess, sys, time

cfg, when, tool = sys.argv[1], sys.argv[2], sys.argv[3:]
RUN = "/run/xen"
before = set(os.listdir(RUN))
t0 = time.time()
xl = subprocess.Popen(["xl", "create", cfg], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
res = {"when": when}
deadline = t0 + 180
while time.time() < deadline:
    new = [n for n in set(os.listdir(RUN)) - before if n.startswith("qmp-libxl-")]
    if new and "t_socket" not in res:
        res["domid"], res["t_socket"] = int(new[0].rsplit("-", 1)[1]), round(time.time() - t0, 3)
    done = xl.poll() is not None
    if done and "t_exit" not in res:
        res["t_exit"] = round(time.time() - t0, 3)
    if (when == "socket" and "t_socket" in res) or (when == "exit" and done):
        break
    time.sleep(0.005)     # a poll interval, bounded by the deadline above
res["t_sync_start"] = round(time.time() - t0, 3)
s = subprocess.run(tool + ["sync"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
res["t_sync_end"] = round(time.time() - t0, 3)
res["sync_rc"], res["sync_out"] = s.returncode, s.stdout.decode(errors="replace").strip()[-1500:]
out, _ = xl.communicate(timeout=max(1, deadline - time.time()))
res.setdefault("t_exit", round(time.time() - t0, 3))
res["xl_rc"], res["xl_out"] = xl.returncode, out.decode(errors="replace").strip()[-800:]
print(json.dumps(res))
