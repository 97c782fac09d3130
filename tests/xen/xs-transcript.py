#!/usr/bin/python3
"""Runs in dom0: speaks xenstored's wire protocol (Xen docs/misc/xenstore.txt, io/xs_wire.h)
on /run/xenstored/socket and prints every exchange as hex, for tests/fixtures.

Each message is a 16-byte little-endian header (type, req_id, tx_id, len) and len bytes
of payload.  Works under the scratch path /aua-test (removed at the end).  Output lines:
  # comment        what the next exchange does
  > HEX            the request's bytes (header + payload)
  < HEX            each message read back for it (a watch event may come first)
Stdlib only."""
import socket, struct, sys

SOCK = sys.argv[1] if len(sys.argv) > 1 else "/run/xenstored/socket"
T = dict(DIRECTORY=1, READ=2, GET_PERMS=3, WATCH=4, UNWATCH=5, TRANSACTION_START=6, TRANSACTION_END=7,
         WRITE=11, MKDIR=12, RM=13, SET_PERMS=14, WATCH_EVENT=15, ERROR=16)
NAMES = {v: k for k, v in T.items()}


class Conn:
    def __init__(self, label):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(SOCK)
        self.label, self.req = label, 0

    def recv_exact(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise EOFError("xenstored closed the connection after %d of %d bytes" % (len(b), n))
            b += c
        return b

    def read_msg(self):
        h = self.recv_exact(16)
        ty, rid, tx, ln = struct.unpack("<IIII", h)
        return ty, rid, tx, h + self.recv_exact(ln)

    def op(self, what, ty, payload, tx=0, expect_watch=False):
        self.req += 1
        msg = struct.pack("<IIII", T[ty], self.req, tx, len(payload)) + payload
        shown = payload if len(payload) <= 80 else b"%s...(%d bytes)" % (payload[:40], len(payload))
        print("# %s [%s] %s req_id=%d tx_id=%d payload=%r" % (self.label, what, ty, self.req, tx, shown))
        print("> " + msg.hex())
        self.s.sendall(msg)
        while True:
            rty, rid, rtx, raw = self.read_msg()
            body = raw[16:]
            print("< " + raw.hex())
            print("#   -> %s req_id=%d tx_id=%d payload=%r" % (NAMES.get(rty, rty), rid, rtx, body))
            if rty == T["WATCH_EVENT"]:
                continue
            return rty, body


def main():
    print("# connection A opened on %s" % SOCK)
    a = Conn("A")
    a.op("read an existing node", "READ", b"/local/domain/0/name\0")
    a.op("write a new node (parents created)", "WRITE", b"/aua-test/a\0hello")
    a.op("read it back", "READ", b"/aua-test/a\0")
    a.op("write an empty value", "WRITE", b"/aua-test/empty\0")
    a.op("read an empty value", "READ", b"/aua-test/empty\0")
    a.op("mkdir", "MKDIR", b"/aua-test/dir\0")
    a.op("mkdir of an existing node", "MKDIR", b"/aua-test/dir\0")
    a.op("directory", "DIRECTORY", b"/aua-test\0")
    a.op("directory of an empty node", "DIRECTORY", b"/aua-test/dir\0")
    a.op("read a missing node", "READ", b"/aua-test/missing\0")
    a.op("directory of a missing node", "DIRECTORY", b"/aua-test/missing\0")
    a.op("get_perms", "GET_PERMS", b"/aua-test/a\0")
    a.op("set_perms owner 0, domain 1 may read", "SET_PERMS", b"/aua-test/a\0n0\0r1\0")
    a.op("get_perms after set_perms", "GET_PERMS", b"/aua-test/a\0")
    a.op("read with a bad path", "READ", b"no-slash//x\0")
    _, tid = a.op("transaction start (commit)", "TRANSACTION_START", b"\0")
    t1 = int(tid.rstrip(b"\0"))
    a.op("write inside the transaction", "WRITE", b"/aua-test/tx\0in-tx", tx=t1)
    a.op("read inside the transaction", "READ", b"/aua-test/tx\0", tx=t1)
    a.op("read outside the transaction (not visible yet)", "READ", b"/aua-test/tx\0")
    a.op("transaction end: commit", "TRANSACTION_END", b"T\0", tx=t1)
    a.op("read after commit", "READ", b"/aua-test/tx\0")
    _, tid = a.op("transaction start (abort)", "TRANSACTION_START", b"\0")
    t2 = int(tid.rstrip(b"\0"))
    a.op("write inside the transaction", "WRITE", b"/aua-test/aborted\0x", tx=t2)
    a.op("transaction end: abort", "TRANSACTION_END", b"F\0", tx=t2)
    a.op("read after abort (missing)", "READ", b"/aua-test/aborted\0")
    a.op("transaction end of an unknown transaction", "TRANSACTION_END", b"T\0", tx=t2)
    print("# connection B opened: a conflicting writer")
    b = Conn("B")
    _, tid = a.op("transaction start (will conflict)", "TRANSACTION_START", b"\0")
    t3 = int(tid.rstrip(b"\0"))
    a.op("read inside the transaction", "READ", b"/aua-test/a\0", tx=t3)
    b.op("B writes the same node outside any transaction", "WRITE", b"/aua-test/a\0changed-by-B")
    a.op("write inside the transaction", "WRITE", b"/aua-test/a\0from-tx", tx=t3)
    a.op("transaction end: commit -> conflict", "TRANSACTION_END", b"T\0", tx=t3)
    a.op("read: B's value won", "READ", b"/aua-test/a\0")
    a.op("watch (fires once at once)", "WATCH", b"/aua-test/w\0tok\0")
    b.op("B writes under the watch", "WRITE", b"/aua-test/w\0x")
    a.op("A's next request: the watch event may arrive before its reply", "READ", b"/aua-test/a\0")
    a.op("unwatch", "UNWATCH", b"/aua-test/w\0tok\0")
    a.op("rm a subtree", "RM", b"/aua-test/dir\0")
    a.op("rm a missing node (parent exists)", "RM", b"/aua-test/dir\0")
    a.op("rm a missing node whose parent is missing", "RM", b"/aua-test/nope/deeper\0")
    a.op("rm the scratch tree", "RM", b"/aua-test\0")
    print("# connection C: a payload over XENSTORE_PAYLOAD_MAX (4096)")
    c = Conn("C")
    try:
        c.op("read with a 4097-byte payload", "READ", b"/" + b"x" * 4095 + b"\0")
    except (EOFError, ConnectionResetError, socket.timeout) as e:
        print("#   -> %s: %s" % (type(e).__name__, e))


if __name__ == "__main__":
    main()
