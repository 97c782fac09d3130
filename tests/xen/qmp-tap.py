#!/usr/bin/python3
"""Runs in dom0 for record-fixtures: moves a domain's QMP socket aside and serves its path
itself, forwarding each client to the real socket and logging every line both ways
(so libxl's exact QMP commands can be recorded).  Usage: qmp-tap.py SOCK LOG; stops (and
puts the socket back) when LOG.stop appears."""
import os, select, socket, sys, time

path, log = sys.argv[1], sys.argv[2]
real = path + ".real"
os.rename(path, real)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
srv.settimeout(0.2)
out = open(log, "a", buffering=1)
open(log + ".ready", "w").close()
try:
    while not os.path.exists(log + ".stop"):
        try:
            c, _ = srv.accept()
        except socket.timeout:
            continue
        u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        u.connect(real)
        out.write("# client connected\n")
        bufs = {c: b"", u: b""}
        while True:
            r, _, _ = select.select([c, u], [], [], 30)
            if not r:
                break
            done = False
            for s in r:
                d = s.recv(65536)
                if not d:
                    done = True
                    break
                (u if s is c else c).sendall(d)
                bufs[s] += d
                while b"\n" in bufs[s]:
                    line, bufs[s] = bufs[s].split(b"\n", 1)
                    out.write(("C> " if s is c else "Q< ") + line.decode(errors="replace").rstrip("\r") + "\n")
            if done:
                break
        out.write("# client disconnected\n")
        c.close()
        u.close()
finally:
    srv.close()
    os.unlink(path)
    os.rename(real, path)
