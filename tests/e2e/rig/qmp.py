"""Minimal synchronous QMP client (stdlib only); used on the host and in the guest.

QEMU serves one QMP client at a time: a second client's connect() succeeds (kernel
backlog) but it gets no greeting until the first one disconnects.  So the greeting
wait has its own short timeout (Busy) and callers retry until their deadline."""
import json, socket, time


class Busy(Exception):
    """Connected, but no greeting: another client holds the QMP socket."""


class QMP:
    def __init__(self, path, timeout=30, greeting_timeout=None):
        deadline = time.time() + timeout
        while True:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.s.settimeout(timeout)
            try:
                self.s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError, BlockingIOError):
                # BlockingIOError (EAGAIN): the listen backlog is full -- other clients wait
                # for the one QEMU serves; as busy as no greeting, retry within the deadline.
                self.s.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.f = self.s.makefile("rwb")
        self.events = []
        self.s.settimeout(greeting_timeout or timeout)
        try:
            self.greeting = self._read()
        except socket.timeout:
            self.close()
            raise Busy("no QMP greeting within %ss on %s (another client connected?)"
                       % (greeting_timeout or timeout, path))
        self.s.settimeout(timeout)
        self.cmd("qmp_capabilities")

    def close(self):
        try:
            self.f.close()
        except Exception:
            pass
        try:
            self.s.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _read(self):
        line = self.f.readline()
        if not line:
            raise EOFError("QMP socket closed")
        return json.loads(line)

    def cmd(self, execute, **args):
        msg = {"execute": execute}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
                continue
            return r   # {"return": ...} or {"error": {...}}

    def wait_event(self, name, timeout=10, pred=lambda e: True):
        deadline = time.time() + timeout
        old = self.s.gettimeout()
        try:
            while True:
                for i, e in enumerate(self.events):
                    if e["event"] == name and pred(e):
                        return self.events.pop(i)
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.s.settimeout(left)
                try:
                    self.events.append(self._read())
                except socket.timeout:
                    return None
        finally:
            self.s.settimeout(old)


def connect_retry(path, timeout=15, greeting_timeout=0.3):
    """Connect, retrying while the socket is busy (another client) or not there yet."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            return QMP(path, timeout=max(1.0, deadline - time.time()),
                       greeting_timeout=greeting_timeout)
        except (Busy, FileNotFoundError, ConnectionRefusedError, EOFError) as e:
            last = e
            time.sleep(0.05)
    raise TimeoutError("QMP %s: could not get a session within %ss (%s)" % (path, timeout, last))
