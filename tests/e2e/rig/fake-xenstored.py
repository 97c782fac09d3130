#!/usr/bin/env python3
"""A xenstored stand-in for the e2e rig, whose inner QEMUs stand for Xen domains without Xen.

  fake-xenstored.py serve SOCKET LOGFILE     serve the xenstore wire protocol on SOCKET
  fake-xenstored.py SOCKET write PATH VALUE  one WRITE as a client (the harness: "libxl")
  fake-xenstored.py SOCKET rm PATH           one RM as a client
  fake-xenstored.py SOCKET dump PATH         every node under PATH, "path = value" per line

It answers in the exact wire format of the real xenstored 4.17 recorded in
tests/fixtures/xenstored-4.17-transcript.txt: 16-byte header (type, req_id, tx_id, len,
little-endian u32) echoing the request's type, req_id and tx_id; WRITE, MKDIR, RM,
SET_PERMS and TRANSACTION_END answer "OK\\0"; READ the bare value; DIRECTORY the
NUL-terminated child names (in name order; the real one keeps creation order, which the tool
does not rely on); TRANSACTION_START the id as "N\\0"; errors are type 16 with
the errno name ("ENOENT\\0"); WRITE/MKDIR create missing parents; RM of a missing node whose
parent exists is OK; a payload over 4096 bytes closes the connection.  Transactions are
applied at once (no isolation, no EAGAIN): the rig never has two writers at one instant
on the same node.  Stdlib only."""
import os, socket, struct, sys, threading

READ, DIRECTORY, GET_PERMS, TX_START, TX_END, WRITE, MKDIR, RM, SET_PERMS, ERROR = 2, 1, 3, 6, 7, 11, 12, 13, 14, 16
nodes = {"/local/domain/0/name": "Domain-0", "/local/domain/0": "", "/local/domain": "", "/local": ""}
perms = {}
lock = threading.Lock()
next_tx = [0]


def put(path, value):
    parts = path.split("/")
    for i in range(2, len(parts)):
        nodes.setdefault("/".join(parts[:i]), "")
    nodes[path] = value


def answer(ty, body):
    path, _, rest = body.partition(b"\0")
    path = path.decode(errors="replace")
    if ty == READ:
        return nodes[path].encode() if path in nodes else None
    if ty == DIRECTORY:
        if path not in nodes:
            return None
        pre = path + "/"
        kids = sorted({k[len(pre):] for k in nodes if k.startswith(pre) and "/" not in k[len(pre):]})
        return b"".join(k.encode() + b"\0" for k in kids)
    if ty == WRITE:
        put(path, rest.decode(errors="replace"))
        return b"OK\0"
    if ty == MKDIR:
        if path not in nodes:
            put(path, "")
        return b"OK\0"
    if ty == RM:
        parent = path.rsplit("/", 1)[0]
        if path not in nodes and parent and parent not in nodes:
            return None
        for k in [k for k in nodes if k == path or k.startswith(path + "/")]:
            del nodes[k]
        return b"OK\0"
    if ty == SET_PERMS:
        if path not in nodes:
            return None
        perms[path] = rest
        return b"OK\0"
    if ty == GET_PERMS:
        return perms.get(path, b"n0\0") if path in nodes else None
    return b"EINVAL"


def serve_one(c):
    with c:
        while True:
            h = recv(c, 16)
            if h is None:
                return
            ty, rid, tx, n = struct.unpack("<4I", h)
            if n > 4096:
                return
            body = recv(c, n) if n else b""
            if body is None:
                return
            with lock:
                if ty == TX_START:
                    next_tx[0] += 1
                    out = ("%d\0" % next_tx[0]).encode()
                elif ty == TX_END:
                    out = b"OK\0"
                else:
                    out = answer(ty, body)
            rty = ty
            if out is None:
                rty, out = ERROR, b"ENOENT\0"
            elif out == b"EINVAL":
                rty, out = ERROR, b"EINVAL\0"
            c.sendall(struct.pack("<4I", rty, rid, tx, len(out)) + out)


def recv(c, n):
    b = b""
    while len(b) < n:
        x = c.recv(n - len(b))
        if not x:
            return None
        b += x
    return b


def client(sock, ty, path, value=b""):
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(10)
    c.connect(sock)
    body = path.encode() + b"\0" + value
    c.sendall(struct.pack("<4I", ty, 1, 0, len(body)) + body)
    h = recv(c, 16)
    rty, _, _, n = struct.unpack("<4I", h)
    out = recv(c, n) if n else b""
    c.close()
    if rty == ERROR:
        raise SystemExit("xenstore %s: %s" % (path, out.rstrip(b"\0").decode()))
    return out


def dump(sock, path):
    out = []

    def walk(p):
        out.append("%s = %r" % (p, client(sock, READ, p).decode()))
        for k in client(sock, DIRECTORY, p).split(b"\0"):
            if k:
                walk(p + "/" + k.decode())
    walk(path)
    print("\n".join(out))


def main():
    if sys.argv[1] == "serve":
        path = sys.argv[2]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.listen(64)
        with open(sys.argv[3], "a") as f:
            f.write("fake-xenstored: serving %s\n" % path)
        while True:
            c, _ = s.accept()
            threading.Thread(target=serve_one, args=(c,), daemon=True).start()
    sock, op = sys.argv[1], sys.argv[2]
    if op == "write":
        client(sock, WRITE, sys.argv[3], sys.argv[4].encode())
    elif op == "rm":
        client(sock, RM, sys.argv[3])
    elif op == "dump":
        dump(sock, sys.argv[3])
    else:
        raise SystemExit("unknown op %s" % op)


if __name__ == "__main__":
    main()
