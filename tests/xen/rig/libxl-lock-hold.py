#!/usr/bin/python3
"""Runs in dom0: takes one of libxl's per-domain locks exactly as libxl does
(libxl_internal.c: open O_RDWR|O_CREAT 0666, flock LOCK_EX, check stat(path) == fstat(fd),
else retry), writes DIR/held, holds it until DIR/release exists (at most 60 s), then
releases it as libxl does (unlink, LOCK_UN, close) and writes DIR/released (time.time()).
Usage: libxl-lock-hold.py DOMID USERID DIR     (USERID e.g. qmp-socket-lock)"""
import fcntl, os, subprocess, sys, time

domid, userid, d = sys.argv[1], sys.argv[2], sys.argv[3]
vm = subprocess.run(["xenstore-read", "/local/domain/%s/vm" % domid], stdout=subprocess.PIPE,
                    check=True).stdout.decode().strip()
path = "/var/lib/xen/userdata-l.%s.%s.%s" % (domid, vm.rsplit("/", 1)[-1], userid)
while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        st = os.stat(path)
        if (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            break
    except FileNotFoundError:
        pass
    os.close(fd)
open(os.path.join(d, "held"), "w").write(path)
deadline = time.time() + 60
while not os.path.exists(os.path.join(d, "release")) and time.time() < deadline:
    time.sleep(0.02)
os.unlink(path)
fcntl.flock(fd, fcntl.LOCK_UN)
os.close(fd)
open(os.path.join(d, "released"), "w").write("%.6f" % time.time())
