#!/usr/bin/python3
"""Stand-in for systemd's path unit, for the e2e rig (PID 1 there is a shell script, not
systemd, so the installed .path unit can't run).  This is NOT systemd: it models only
what auto-usb-attach-sync.path relies on.

  pathunit.py UNIT_DIR NAME.path LOG [STATUS]

Reads the INSTALLED unit files: PathChanged= (and PathModified=) and MakeDirectory= from
UNIT_DIR/NAME.path, Unit= (default NAME.service) from it, and ExecStart= from that
service.  Watches each PathChanged= path with inotify (IN_ATTRIB, IN_CLOSE_WRITE,
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF, IN_MOVED_FROM, IN_MOVED_TO: the set
systemd uses for PathChanged=) through ctypes, or by polling the directory listing every
100 ms if inotify is unavailable (or PATHUNIT_POLL=1).  On a change it runs ExecStart (split with shlex, no
shell, stdin /dev/null, a clean environment with systemd's default PATH).  Never more than
one run at a time; a change during a run makes it run once more afterwards.  A run that
outlives 60 s is killed (and logged as such).

LOG gets one line per run start and end (with exit code and the command's output,
indented); STATUS (JSON, replaced atomically) tells the harness whether it is idle:
{"pid", "started", "finished", "running", "pending", "last_rc", "events"}.
Stdlib only."""
import ctypes, ctypes.util, errno, json, os, select, shlex, struct, subprocess, sys, time

IN_ATTRIB, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x4, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
CHANGED = (IN_ATTRIB | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
           | IN_MOVED_FROM | IN_MOVED_TO)
NAMES = {IN_ATTRIB: "ATTRIB", IN_CLOSE_WRITE: "CLOSE_WRITE", IN_MOVED_FROM: "MOVED_FROM",
         IN_MOVED_TO: "MOVED_TO", IN_CREATE: "CREATE", IN_DELETE: "DELETE",
         IN_DELETE_SELF: "DELETE_SELF", IN_MOVE_SELF: "MOVE_SELF"}
RUN_LIMIT = 60.0
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"


def parse_unit(path):
    """{section: {key: [values...]}} of a systemd unit file (comments, continuation lines,
    repeated keys; an empty assignment resets the list, as systemd does)."""
    secs, cur, pending = {}, None, ""
    for raw in open(path).read().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            cur = secs.setdefault(line[1:-1], {})
            continue
        if cur is None or "=" not in line:
            raise ValueError("%s: cannot parse %r" % (path, raw))
        k, v = (x.strip() for x in line.split("=", 1))
        if v == "":
            cur[k] = []
        else:
            cur.setdefault(k, []).append(v)
    return secs


def one(sec, key, default=None):
    vals = sec.get(key) or []
    return vals[-1] if vals else default


class Watch:
    def __init__(self, paths, log):
        self.paths, self.log = paths, log
        self.fd, self.wd = None, {}
        try:
            if os.environ.get("PATHUNIT_POLL") == "1":
                raise OSError("PATHUNIT_POLL=1")
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
            if fd < 0:
                raise OSError(ctypes.get_errno(), "inotify_init1")
            for p in paths:
                wd = libc.inotify_add_watch(fd, p.encode(), CHANGED)
                if wd < 0:
                    raise OSError(ctypes.get_errno(), "inotify_add_watch %s" % p)
                self.wd[wd] = p
            self.fd = fd
            self.log("watching %s with inotify" % ", ".join(paths))
        except (OSError, AttributeError) as e:
            self.log("inotify unavailable (%s); polling %s every 100 ms" % (e, ", ".join(paths)))
            self.snap = self._listing()

    def _listing(self):
        out = {}
        for p in self.paths:
            try:
                st = os.stat(p)
                ents = {}
                if os.path.isdir(p):
                    for n in os.listdir(p):
                        try:
                            s = os.lstat(os.path.join(p, n))
                            ents[n] = (s.st_ino, s.st_mtime_ns, s.st_ctime_ns, s.st_size)
                        except FileNotFoundError:
                            pass
                out[p] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, ents)
            except FileNotFoundError:
                out[p] = None
        return out

    def wait(self, timeout):
        """Changes seen within timeout seconds: a list of short descriptions (maybe empty)."""
        if self.fd is None:
            time.sleep(min(timeout, 0.1))
            now = self._listing()
            changed = []
            for p in self.paths:
                a, b = self.snap.get(p), now.get(p)
                if a != b:
                    an, bn = (a or (0, 0, 0, {}))[3], (b or (0, 0, 0, {}))[3]
                    names = sorted(set(an) ^ set(bn)) + sorted(n for n in set(an) & set(bn) if an[n] != bn[n])
                    changed.append("poll %s: %s" % (p, ",".join(names) or "(dir itself)"))
            self.snap = now
            return changed
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return []
        try:
            buf = os.read(self.fd, 65536)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return []
            raise
        out, i = [], 0
        while i + 16 <= len(buf):
            wd, mask, _cookie, ln = struct.unpack_from("iIII", buf, i)
            name = buf[i + 16:i + 16 + ln].split(b"\0", 1)[0].decode(errors="replace")
            i += 16 + ln
            what = "|".join(v for k, v in NAMES.items() if mask & k) or hex(mask)
            out.append("%s %s" % (what, os.path.join(self.wd.get(wd, "?"), name)))
        return out


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    unit_dir, path_unit, log_path = sys.argv[1:4]
    status_path = sys.argv[4] if len(sys.argv) == 5 else log_path + ".status"
    logf = open(log_path, "a", buffering=1)

    def log(msg):
        t = time.time()
        logf.write("%s.%03d pathunit: %s\n" % (time.strftime("%H:%M:%S", time.localtime(t)), int(t * 1000) % 1000, msg))

    st = {"pid": os.getpid(), "started": 0, "finished": 0, "running": False, "pending": False,
          "last_rc": None, "events": 0}

    def status():
        tmp = status_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f)
        os.rename(tmp, status_path)

    try:
        pu = parse_unit(os.path.join(unit_dir, path_unit))
        sec = pu.get("Path", {})
        paths = sec.get("PathChanged", []) + sec.get("PathModified", [])
        unsupported = [k for k in sec if k not in ("PathChanged", "PathModified", "MakeDirectory",
                                                   "DirectoryMode", "Unit")]
        if unsupported:
            raise ValueError("%s: [Path] keys this stand-in does not model: %s" % (path_unit, unsupported))
        if not paths:
            raise ValueError("%s has no PathChanged=" % path_unit)
        svc_name = one(sec, "Unit", path_unit[:-len(".path")] + ".service")
        svc = parse_unit(os.path.join(unit_dir, svc_name)).get("Service", {})
        execs = svc.get("ExecStart", [])
        if len(execs) != 1:
            raise ValueError("%s: expected one ExecStart=, found %r" % (svc_name, execs))
        line, ignore_rc = execs[0], False
        while line[:1] in ("-", "@", ":", "+", "!"):   # systemd's prefixes; only "-" matters here
            ignore_rc |= line[0] == "-"
            line = line[1:]
        argv = shlex.split(line)
        if one(sec, "MakeDirectory", "no").lower() in ("yes", "true", "1", "on"):
            mode = int(one(sec, "DirectoryMode", "0755"), 8)
            for p in paths:
                os.makedirs(p, mode=mode, exist_ok=True)
        log("%s: PathChanged=%s -> %s: ExecStart=%s" % (path_unit, paths, svc_name, argv))
    except (OSError, ValueError) as e:
        log("FATAL %s" % e)
        st["error"] = str(e)
        status()
        sys.exit(1)

    watch = Watch(paths, log)
    status()
    proc, t_run, out_path = None, 0.0, log_path + ".run"
    while True:
        evs = watch.wait(0.05 if proc else 1.0)
        if evs:
            st["events"] += len(evs)
            if proc:
                if not st["pending"]:
                    log("change during run #%d (%s): will run again" % (st["started"], "; ".join(evs[:4])))
                st["pending"] = True
            else:
                st["pending"] = True
                why = "; ".join(evs[:4]) + (" (+%d)" % (len(evs) - 4) if len(evs) > 4 else "")
            status()
        if proc and proc.poll() is None and time.time() - t_run > RUN_LIMIT:
            proc.kill()          # our own child
            log("run #%d exceeded %.0f s: killed" % (st["started"], RUN_LIMIT))
        if proc and proc.poll() is not None:
            rc = proc.returncode
            out = open(out_path, errors="replace").read().rstrip("\n")
            log("run #%d exit %d in %.2f s%s%s" % (st["started"], rc, time.time() - t_run,
                                                   " (ignored: '-' prefix)" if ignore_rc and rc else "",
                                                   "".join("\n    | " + l for l in out.splitlines())))
            st.update(finished=st["started"], running=False, last_rc=rc)
            proc = None
            if st["pending"]:
                why = "changes during the previous run"
            status()
        if proc is None and st["pending"]:
            st["pending"] = False
            st["started"] += 1
            st["running"] = True
            log("run #%d start (%s): %s" % (st["started"], why, " ".join(shlex.quote(a) for a in argv)))
            t_run = time.time()
            try:
                with open(out_path, "w") as o:
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=o, stderr=subprocess.STDOUT,
                                            env={"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}, cwd="/")
            except OSError as e:
                log("run #%d could not start: %s" % (st["started"], e))
                st.update(finished=st["started"], running=False, last_rc=-1)
            status()


if __name__ == "__main__":
    main()
