#!/usr/bin/env python3
"""The project's one xenstored stand-in.  The e2e rig runs it inside its VM (whose inner QEMUs
stand for Xen domains without Xen); the cargo tests start it per test through
tests/common/fake_xenstored.rs, a handle that speaks to it over the wire.  Stdlib only.

  fake-xenstored.py serve SOCKET LOGFILE     serve the xenstore wire protocol on SOCKET; once it
                                             accepts, "fake-xenstored: serving SOCKET" goes to
                                             LOGFILE and "ready" to stdout
  fake-xenstored.py SOCKET write PATH VALUE  one WRITE as a client (the harness: "libxl")
  fake-xenstored.py SOCKET rm PATH           one RM as a client
  fake-xenstored.py SOCKET dump PATH         every node under PATH, "path = value" per line

It answers in the exact wire format of the real xenstored 4.17 recorded in
tests/fixtures/xenstored-4.17-transcript.txt, and tests/fake_xenstored_pin.rs replays that
transcript's requests against it and wants every reply byte for byte:
- a 16-byte header (type, req_id, tx_id, len, little-endian u32) echoing the request's type,
  req_id and tx_id; errors are type 16 with the errno name ("ENOENT\\0");
- WRITE, MKDIR, RM, SET_PERMS, TRANSACTION_END, WATCH and UNWATCH answer "OK\\0"; READ the
  bare value; DIRECTORY the NUL-terminated child names in creation order; GET_PERMS "n0\\0"
  until SET_PERMS; TRANSACTION_START the id as "N\\0";
- WRITE/MKDIR create missing parents; RM removes the subtree; RM of a missing node whose
  parent exists is OK, of one whose parent is missing ENOENT;
- a path with characters other than [A-Za-z0-9/_@-], a "//" or a trailing "/" is EINVAL; a
  relative path is under /local/domain/0 (the clients are dom0's);
- transactions are isolated: a transaction works on its own copy of the store; its commit
  answers EAGAIN (and is dropped) when a node it read or wrote was changed outside it since it
  started, else applies its changes; TRANSACTION_END of an unknown id is ENOENT;
- a watch fires once when set and then on every change at or under its path (the event may
  come before the reply to the watcher's next request, as the real one's does);
- a payload over 4096 bytes resets the connection.

Test controls.  Nodes under /fake-xenstored/ are never stored and never listed: the real
xenstored has no such top-level node and the tool touches only /local, /libxl, /vm and /tool,
so the product cannot reach them by accident.  A request on one of them is not logged.
- WRITE /fake-xenstored/quiet (any value): this connection's requests are kept out of the
  request log from now on (the test harness's own connection, so that what a test asserts
  on the log is what the tool did).
- READ /fake-xenstored/log: the request log, one "TYPE path" line (e.g. "WRITE /libxl/7/x")
  per request of every connection that is not quiet, oldest first, TRANSACTION_START/END
  left out, "?" for a type it does not know.  This reply may exceed 4096 bytes.
- WRITE /fake-xenstored/eagain-next (any value): the next commit (TRANSACTION_END "T")
  answers EAGAIN and drops the transaction, as a conflict with another writer would.
Any other request under /fake-xenstored/ answers EINVAL."""
import itertools, os, socket, struct, sys, threading

DIRECTORY, READ, GET_PERMS, WATCH, UNWATCH, TX_START, TX_END = 1, 2, 3, 4, 5, 6, 7
WRITE, MKDIR, RM, SET_PERMS, WATCH_EVENT, ERROR = 11, 12, 13, 14, 15, 16
NAMES = {DIRECTORY: "DIRECTORY", READ: "READ", GET_PERMS: "GET_PERMS", WATCH: "WATCH", UNWATCH: "UNWATCH",
         WRITE: "WRITE", MKDIR: "MKDIR", RM: "RM", SET_PERMS: "SET_PERMS"}
PAYLOAD_MAX = 4096
VALID = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/_@")
CONTROL = "/fake-xenstored"
OK = b"OK\0"


class XsErr(Exception):
    """An errno name for an ERROR reply."""


_gen = itertools.count(1)


class Store:
    """Nodes (path -> value bytes, in creation order), their permissions, and a generation per
    path that changes whenever the node's value, permissions, presence or children change."""

    def __init__(self, nodes, perms, gen):
        self.nodes, self.perms, self.gen = nodes, perms, gen
        for p in nodes:
            self.gen.setdefault(p, next(_gen))

    def copy(self):
        return Store(dict(self.nodes), dict(self.perms), dict(self.gen))

    def bump(self, path):
        self.gen[path] = next(_gen)

    def put(self, path, value):
        """Write `path`, creating missing parents empty (as xenstored does)."""
        if path not in self.nodes:
            if parent(path) not in self.nodes:
                self.put(parent(path), b"")
            self.bump(parent(path))
        self.nodes[path] = value
        self.bump(path)

    def rm(self, path):
        gone = [k for k in self.nodes if k == path or k.startswith(path.rstrip("/") + "/")]
        for k in gone:
            del self.nodes[k]
            self.perms.pop(k, None)
            self.bump(k)
        self.bump(parent(path))
        return gone


def parent(path):
    return path.rsplit("/", 1)[0] or "/"


store = Store({"/": b"", "/local": b"", "/local/domain": b"", "/local/domain/0": b"",
               "/local/domain/0/name": b"Domain-0"}, {}, {})
lock = threading.Lock()          # guards everything below and every Conn's socket writes
outbox = []                      # watch events to send once the request's reply is out
txs = {}                         # tx id -> Tx
next_tx = [0]
watches = []                     # (Conn, path, token)
request_log = []
eagain_next = [False]


class Tx:
    def __init__(self, conn):
        self.conn, self.view, self.start = conn, store.copy(), dict(store.gen)
        self.touched = set()


class Conn:
    def __init__(self, sock):
        self.sock, self.quiet = sock, False

    def send(self, ty, rid, tx, payload):
        try:
            self.sock.sendall(struct.pack("<4I", ty, rid, tx, len(payload)) + payload)
        except OSError:
            pass


def canon(path):
    if not path.startswith("/"):
        path = "/local/domain/0/" + path
    if not path or not set(path) <= VALID or "//" in path or (path != "/" and path.endswith("/")):
        raise XsErr("EINVAL")
    return path


def fire(path, removed=False):
    """Queue the watch events for a change of `path` (and, when a subtree went, for the
    watches inside it); they are sent after the reply to the request that made the change."""
    for conn, wpath, token in watches:
        if path == wpath or path.startswith(wpath.rstrip("/") + "/"):
            outbox.append((conn, path.encode() + b"\0" + token + b"\0"))
        elif removed and wpath.startswith(path.rstrip("/") + "/"):
            outbox.append((conn, wpath.encode() + b"\0" + token + b"\0"))


def control(conn, ty, path):
    if ty == WRITE and path == CONTROL + "/quiet":
        conn.quiet = True
        return OK
    if ty == WRITE and path == CONTROL + "/eagain-next":
        eagain_next[0] = True
        return OK
    if ty == READ and path == CONTROL + "/log":
        return "".join(line + "\n" for line in request_log).encode()
    raise XsErr("EINVAL")


def answer(conn, ty, tx, body):
    """The reply payload to one request; raises XsErr for an ERROR reply."""
    if ty == TX_START:
        next_tx[0] += 1
        txs[next_tx[0]] = Tx(conn)
        return ("%d\0" % next_tx[0]).encode()
    t = None
    if tx:
        t = txs.get(tx)
        if t is None or t.conn is not conn:
            raise XsErr("ENOENT")
    if ty == TX_END:
        if t is None:
            raise XsErr("ENOENT")
        del txs[tx]
        if body.rstrip(b"\0") != b"T":
            return OK
        changed = [p for p in t.view.gen if t.view.gen.get(p) != t.start.get(p)]
        if eagain_next[0] or any(store.gen.get(p) != t.start.get(p) for p in t.touched.union(changed)):
            eagain_next[0] = False
            raise XsErr("EAGAIN")
        for p in sorted(changed, key=t.view.gen.get):      # parents before children
            if p in t.view.nodes:
                store.nodes[p] = t.view.nodes[p]
                if p in t.view.perms:
                    store.perms[p] = t.view.perms[p]
                store.bump(p)
                fire(p)
            elif p in store.nodes:
                store.rm(p)
                fire(p, removed=True)
        return OK
    raw, _, rest = body.partition(b"\0")
    path = raw.decode(errors="replace")
    if path == CONTROL or path.startswith(CONTROL + "/"):
        return control(conn, ty, path)
    if not conn.quiet:
        request_log.append("%s %s" % (NAMES.get(ty, "?"), path))
    path = canon(path)
    s = t.view if t else store
    if t:
        t.touched.add(path)
    if ty == READ:
        if path not in s.nodes:
            raise XsErr("ENOENT")
        return s.nodes[path]
    if ty == DIRECTORY:
        if path not in s.nodes:
            raise XsErr("ENOENT")
        pre = path.rstrip("/") + "/"
        return b"".join(k[len(pre):].encode() + b"\0" for k in s.nodes
                        if k.startswith(pre) and k != pre and "/" not in k[len(pre):])
    if ty == GET_PERMS:
        if path not in s.nodes:
            raise XsErr("ENOENT")
        return s.perms.get(path, b"n0\0")
    if ty == WATCH or ty == UNWATCH:
        token = rest.rstrip(b"\0")
        if ty == WATCH:
            watches.append((conn, path, token))
            outbox.append((conn, path.encode() + b"\0" + token + b"\0"))   # fires once at once
        else:
            watches[:] = [w for w in watches if not (w[0] is conn and w[1] == path and w[2] == token)]
        return OK
    if ty == WRITE:
        s.put(path, rest)
    elif ty == MKDIR:
        if path not in s.nodes:
            s.put(path, b"")
    elif ty == RM:
        if path not in s.nodes:
            if parent(path) not in s.nodes:
                raise XsErr("ENOENT")
            return OK
        gone = s.rm(path)
        if t:
            t.touched.update(gone)
        else:
            fire(path, removed=True)
        return OK
    elif ty == SET_PERMS:
        if path not in s.nodes:
            raise XsErr("ENOENT")
        s.perms[path] = rest
        s.bump(path)
    else:
        raise XsErr("EINVAL")
    if not t:
        fire(path)
    return OK


def serve_one(c):
    conn = Conn(c)
    try:
        serve_requests(conn, c)
    finally:
        with lock:      # a client's watches and transactions go with it, as in the real one
            watches[:] = [w for w in watches if w[0] is not conn]
            for i in [i for i, t in txs.items() if t.conn is conn]:
                del txs[i]
        c.close()


def serve_requests(conn, c):
    while True:
        h = recv(c, 16)
        if h is None:
            return
        ty, rid, tx, n = struct.unpack("<4I", h)
        if n > PAYLOAD_MAX:
            # As the real one: drop the client.  The payload left unread makes the close a reset.
            return
        body = recv(c, n) if n else b""
        if body is None:
            return
        with lock:
            try:
                out, rty = answer(conn, ty, tx, body), ty
            except XsErr as e:
                out, rty = str(e).encode() + b"\0", ERROR
            conn.send(rty, rid, tx, out)
            for to, event in outbox:
                to.send(WATCH_EVENT, 0, 0, event)
            del outbox[:]


def recv(c, n):
    b = b""
    while len(b) < n:
        try:
            x = c.recv(n - len(b))
        except OSError:
            return None
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
                walk(p.rstrip("/") + "/" + k.decode())
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
        print("ready", flush=True)
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
