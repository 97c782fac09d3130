"""auto-usb-attach e2e harness: project-specific helpers on top of rig/rig.py.

Installs the tool inside the rig's outer guest the way `make install` would, starts
inner QEMUs standing for Xen domains, waits for udev events (with deadlines), asks the
INNER QEMU for its real state over QMP (short sessions: connect, query, disconnect),
and collects diagnostics and timing figures.  Stdlib only."""
import datetime, json, os, re, shlex, shutil, statistics, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "rig"))
from rig import Rig, RigError, GUEST_RIG  # noqa: E402,F401

DEFAULT_BIN = os.path.join(REPO, "target", "release", "auto-usb-attach")
PREFIX = "/run/aua"
BIN_G = PREFIX + "/sbin/auto-usb-attach"
CONF_G = PREFIX + "/etc/auto-usb-attach.toml"
RULE_G = "/run/udev/rules.d/99-xen-usb.rules"
TOOL_LOG = PREFIX + "/tool.log"
STATE_DIR = "/run/auto-usb-attach"
XEN_RUN = "/run/xen"
UNIT_DIR_G = PREFIX + "/systemd"          # SYSTEMDUNITDIR given to make install
PATH_UNIT = "auto-usb-attach-sync.path"
UNITS = ("auto-usb-attach-sync.service", "auto-usb-attach-sync.path", "auto-usb-attach-sync.timer")
PATHUNIT_LOG = PREFIX + "/pathunit.log"   # the path-unit stand-in's log (rig/pathunit.py)
PATHUNIT_STATUS = PREFIX + "/pathunit.status"
# The shipped rule and units name the default install paths; installing under PREFIX by
# hand rewrites them as `make install` does for non-default paths.
SUBST_DEFAULTS = ("-e 's|/usr/local/sbin/auto-usb-attach|%s/sbin/auto-usb-attach|g' "
                  "-e 's|/etc/auto-usb-attach.toml|%s/etc/auto-usb-attach.toml|g'" % (PREFIX, PREFIX))
XS_SOCK = "/run/xenstored/socket"        # rig/fake-xenstored.py: the domains' names, libxl's records
XS_LOG = PREFIX + "/xenstored.log"
XEN_LIB = "/run/xen-lib"                  # the config's xen-lib-dir (the guest's /var is read-only)
QEMU_PID_DIR = "/run/e2e-qemu"            # inner QEMUs' pidfiles (not in XEN_RUN: the watcher sees that)
# The inner QEMU: this machine's, or (tests/e2e/run --qemu-root) another root's through rig/qemu-in-root.
INNER_QEMU = os.environ.get("E2E_INNER_QEMU", "qemu-system-x86_64")


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def toml(cfg):
    """Tiny TOML writer for the tool's config: top-level scalars + [[vm]] tables."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return json.dumps(str(v))
    out = ["%s = %s" % (k, val(v)) for k, v in cfg.items() if k != "vm"]
    for vm in cfg.get("vm", []):
        out += ["", "[[vm]]"] + ["%s = %s" % (k, val(v)) for k, v in vm.items()]
    return "\n".join(out) + "\n"


class Event:
    __slots__ = ("action", "bus", "addr", "vidpid", "devpath", "seq", "ts", "idx")

    def __init__(self, line, idx):
        f = line.split()
        self.action, self.bus, self.addr, self.vidpid, self.devpath = f[0], int(f[1]), int(f[2]), f[3], f[4]
        self.seq, self.ts, self.idx = int(f[5]), float(f[6]), idx

    @property
    def sysname(self):
        return self.devpath.rsplit("/", 1)[-1]

    def __repr__(self):
        return "%s %d-%d %s %s #%d" % (self.action, self.bus, self.addr, self.vidpid, self.sysname, self.seq)


class Device:
    """One emulated USB device as the guest saw it (from the rig's event log)."""

    def __init__(self, name, port, bus, addr, add, bind, plug_t):
        self.name, self.port, self.bus, self.addr = name, port, bus, addr
        self.add, self.bind, self.plug_t = add, bind, plug_t

    @property
    def qid(self):
        return "xenusb-%d-%d" % (self.bus, self.addr)

    def __repr__(self):
        return "%s@%s=%d:%d" % (self.name, self.port, self.bus, self.addr)


class Env:
    def __init__(self, rig, bin_path, log=print):
        self.rig, self.bin, self.log = rig, bin_path, log
        self.vms = {}          # name -> domid (inner QEMUs we started)
        self.plain = {}        # name -> QMP socket of plain QEMU VMs we started (backend qemu)
        self.figures = []      # (label, seconds, source)
        self.install_method = None

    # ---- guest helpers -------------------------------------------------------------
    def g(self, cmd, timeout=60):
        return self.rig.gexec(cmd, timeout)

    def gcheck(self, cmd, timeout=60):
        return self.rig.gcheck(cmd, timeout)

    # ---- install -------------------------------------------------------------------
    def stage(self):
        """Put the binary and the shipped files (Makefile, rule, units, man pages, example)
        in the shared work dir; returns their guest paths (binary, repo copy, rule) and
        the rule's source name."""
        if not os.path.isfile(self.bin):
            raise RigError("binary %s not found (build it: cargo build --release)" % self.bin)
        # stage what the guest needs in the shared work dir (visible at /tmp/rig)
        with open(self.bin, "rb") as f:
            gbin = self.rig.put("stage/auto-usb-attach", f.read())
        os.chmod(os.path.join(self.rig.dir, "stage/auto-usb-attach"), 0o755)
        rule_src = os.path.join(REPO, "udev-rules", "99-xen-usb.rules")
        rule_text, rule_from = open(rule_src).read(), "udev-rules/99-xen-usb.rules"
        grule = self.rig.put("stage/99-xen-usb.rules", rule_text)
        # The guest sees this machine's / read-only but has its own tmpfs /tmp,
        # so a checkout under /tmp (CI's clone may be one) is invisible there:
        # stage what `make install` reads in the shared work dir instead.
        srepo = os.path.join(self.rig.dir, "stage", "repo")
        shutil.rmtree(srepo, ignore_errors=True)
        os.makedirs(srepo)
        for name in ("Makefile", "udev-rules", "systemd", "man", "examples", "README.md", "CHANGELOG.md", "LICENSE"):
            src = os.path.join(REPO, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(srepo, name))
            elif os.path.isfile(src):
                shutil.copy2(src, srepo)
        return gbin, GUEST_RIG + "/stage/repo", grule, rule_from

    def install(self, config):
        """Install binary, rule and config in the guest like `make install` would.
        Tries the repo's Makefile first (if it has an install target and the repo is
        visible in the guest), else installs by hand.  Returns a one-line description."""
        gbin, grepo, grule, rule_from = self.stage()
        method = None
        mk = os.path.join(REPO, "Makefile")
        if os.path.isfile(mk) and re.search(r"^install\s*:", open(mk).read(), re.M) \
                and os.environ.get("E2E_INSTALL", "make") == "make":
            rc, out = self.g("test -f %s/Makefile && make -C %s install %s 2>&1"
                             % (shlex.quote(grepo), shlex.quote(grepo), " ".join(
                                 "%s=%s" % kv for kv in self.make_vars(gbin).items())), timeout=120)
            ok, why = self._installed_ok()
            if rc == 0 and ok:
                method = "make install %s" % " ".join("%s=%s" % kv for kv in self.make_vars("<bin>").items())
            else:
                self.log("  note: make install did not do it (rc %d, %s); installing by hand\n%s"
                         % (rc, why, _indent(out[-1500:])))
        if method is None:
            self.gcheck("set -e; mkdir -p %(p)s/sbin %(p)s/etc /run/udev/rules.d; "
                        "install -m 0755 %(bin)s %(p)s/sbin/auto-usb-attach; "
                        "sed %(sub)s %(rule)s > %(dst)s; "
                        "mkdir -p %(u)s; for f in %(units)s; do test -f %(repo)s/systemd/$f || continue; "
                        "sed %(sub)s %(repo)s/systemd/$f > %(u)s/$f; done"
                        % dict(p=PREFIX, bin=gbin, rule=grule, dst=RULE_G, u=UNIT_DIR_G, sub=SUBST_DEFAULTS,
                               units=" ".join(UNITS), repo=shlex.quote(grepo)))
            method = "by hand (rule from %s)" % rule_from
            ok, why = self._installed_ok()
            if not ok:
                raise RigError("install by hand failed: " + why)
        self.write_config(config)
        self.gcheck("udevadm control --reload")
        self.install_method = method
        return method

    @staticmethod
    def make_vars(bin_path):
        """Everything `make install` writes goes under /run (the guest's / is read-only)."""
        return {"DESTDIR": "", "PREFIX": PREFIX, "SBINDIR": PREFIX + "/sbin", "SYSCONFDIR": PREFIX + "/etc",
                "UDEVDIR": "/run/udev", "SYSTEMDUNITDIR": PREFIX + "/systemd", "MANDIR": PREFIX + "/man",
                "XENRUNDIR": XEN_RUN, "BIN": bin_path}

    def _installed_ok(self):
        units = "".join("test -f %(d)s/%(u)s || echo 'no unit %(d)s/%(u)s'; "
                        "grep -Eq '@[A-Z]+@' %(d)s/%(u)s 2>/dev/null && echo '%(u)s not substituted'; "
                        % dict(d=UNIT_DIR_G, u=u) for u in UNITS) if os.path.isdir(os.path.join(REPO, "systemd")) else ""
        rc, out = self.g("test -x %s || echo 'no binary %s'; test -f %s || echo 'no rule %s'; "
                         "grep -Eq '@[A-Z]+@' %s 2>/dev/null && echo 'rule not substituted'; "
                         "grep -q '%s/sbin/auto-usb-attach' %s 2>/dev/null || echo 'rule does not run %s'; %s true"
                         % (BIN_G, BIN_G, RULE_G, RULE_G, RULE_G, PREFIX, RULE_G, BIN_G, units))
        return (rc == 0 and not out.strip()), out.strip().replace("\n", "; ")

    def write_config(self, cfg):
        text = toml(cfg)
        src = self.rig.put("stage/auto-usb-attach.toml", text)
        # root-owned, not writable by group/others: the tool refuses (and `check` complains) otherwise
        self.gcheck("mkdir -p %s/etc && cp %s %s && chown 0:0 %s/etc %s && chmod 0755 %s/etc && chmod 0644 %s"
                    % (PREFIX, src, CONF_G, PREFIX, CONF_G, PREFIX, CONF_G))
        return text

    # ---- xenstore (rig/fake-xenstored.py stands in for xenstored) ---------------------------
    def start_xenstored(self, timeout=30):
        """Serve xenstore on XS_SOCK; the domains are registered in it as libxl would."""
        # stdout carries only its "ready" line (for tests/common/fake_xenstored.rs); the log gets the rest.
        self.gcheck("mkdir -p %(lib)s %(logdir)s && setsid /usr/bin/python3 %(g)s/fake-xenstored.py serve %(s)s %(log)s "
                    "</dev/null >/dev/null 2>>%(log)s &"
                    % dict(lib=XEN_LIB, logdir=os.path.dirname(XS_LOG), g=GUEST_RIG, s=XS_SOCK, log=XS_LOG))
        deadline = time.time() + timeout
        while self.g("test -S %s" % XS_SOCK)[0] != 0:
            if time.time() > deadline:
                raise RigError("fake xenstored did not start in %ss: %s" % (timeout, self.g("cat " + XS_LOG)[1]))
            time.sleep(0.2)

    def xs(self, *args):
        return self.gcheck("/usr/bin/python3 %s/fake-xenstored.py %s %s"
                           % (GUEST_RIG, XS_SOCK, " ".join(shlex.quote(str(a)) for a in args)))

    def xs_dump(self, path):
        rc, out = self.g("/usr/bin/python3 %s/fake-xenstored.py %s dump %s" % (GUEST_RIG, XS_SOCK, path))
        return out if rc == 0 else ""

    # ---- inner QEMUs (stand-ins for Xen domains) ------------------------------------------
    def start_vm(self, name, domid):
        sock = "%s/qmp-libxl-%d" % (XEN_RUN, domid)
        t0 = time.time()
        # As libxl: the domain is in xenstore before its device model starts.
        self.xs("write", "/local/domain/%d/name" % domid, name)
        self.xs("write", "/local/domain/%d/vm" % domid, "/vm/00000000-0000-4000-8000-%012d" % domid)
        self.xs("write", "/libxl/%d/dm-version" % domid, "qemu_xen")
        self.gcheck("mkdir -p %s %s && %s -M pc -nodefaults -display none -S -accel tcg -m 64 "
                    "-name %s -qmp unix:%s,server=on,wait=off -daemonize -pidfile %s/qemu-%d.pid"
                    % (XEN_RUN, QEMU_PID_DIR, INNER_QEMU, shlex.quote(name), sock, QEMU_PID_DIR, domid), timeout=60)
        self.vms[name] = domid
        v = self.view(domid)
        check(v.get("name") == name, "inner QEMU %d answers query-name %r" % (domid, v.get("name")))
        return time.time() - t0

    def start_plain_vm(self, name, machine, user=None):
        """A plain QEMU/KVM VM as its user starts it (`machine`: e.g. "-M q35 -device qemu-xhci,id=xhci"),
        QMP at /run/qemu/<name>.qmp: no xenstore, nothing for the path unit to see.  With `user` (a
        uid), QEMU runs as that user, unprivileged (setpriv), its socket and pidfile in
        /run/qemu-<user>/, a directory of its own."""
        sock = "/run/qemu/%s.qmp" % name
        pids, run_as = QEMU_PID_DIR, ""
        if user is not None:
            pids = "/run/qemu-%d" % user
            sock = "%s/%s.qmp" % (pids, name)
            run_as = "install -d -o %d -g %d -m 0700 %s && " % (user, user, pids)
            # Another root's QEMU (--qemu-root) is started through a chroot wrapper that must
            # stay root until it execs QEMU: it switches to the user itself.
            run_as += ("RUNAS=%d " % user if INNER_QEMU.endswith("qemu-in-root")
                       else "setpriv --reuid=%d --regid=%d --clear-groups " % (user, user))
        t0 = time.time()
        self.gcheck("mkdir -p /run/qemu %s && %s%s %s -nodefaults -display none -S -accel tcg -m 64 "
                    "-name %s -qmp unix:%s,server=on,wait=off -daemonize -pidfile %s/plain-%s.pid"
                    % (QEMU_PID_DIR, run_as, INNER_QEMU, machine, shlex.quote(name), sock, pids, name), timeout=60)
        self.plain[name] = sock
        v = self.views()[name]
        check(v.get("name") == name, "inner QEMU %s answers query-name %r" % (name, v.get("name")))
        return time.time() - t0

    def stop_plain_vm(self, name, timeout=20):
        """Kill a plain QEMU VM (by its pidfile), wait until it is gone, remove its QMP socket."""
        sock = self.plain.pop(name)
        pidf = "%s/plain-%s.pid" % (QEMU_PID_DIR, name)
        rc, out = self.g("pid=$(cat %(f)s) && kill $pid && i=0 && while [ -e /proc/$pid ] && "
                         "[ \"$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)\" != Z ]; do "
                         "i=$((i+1)); [ $i -gt %(n)d ] && { echo still alive; exit 1; }; sleep 0.1; done; "
                         "rm -f %(s)s %(f)s" % dict(f=pidf, n=timeout * 10, s=sock), timeout=timeout + 10)
        check(rc == 0, "could not stop %s's QEMU: %s" % (name, out.strip()))

    def stop_vm(self, name, timeout=20):
        """Like `xl destroy`: kill the domain's QEMU (by its pidfile's pid), wait until it is
        gone, remove its QMP socket.  The harness stops querying it."""
        domid = self.vms.pop(name)
        pidf = "%s/qemu-%d.pid" % (QEMU_PID_DIR, domid)
        # Gone = no /proc entry, or a zombie: the daemonized QEMU's parent is the guest's PID 1
        # (the agent), which does not reap.
        rc, out = self.g("pid=$(cat %(f)s) && kill $pid && i=0 && while [ -e /proc/$pid ] && "
                         "[ \"$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)\" != Z ]; do "
                         "i=$((i+1)); [ $i -gt %(n)d ] && { echo still alive; exit 1; }; sleep 0.1; done; "
                         "rm -f %(s)s %(f)s" % dict(f=pidf, n=timeout * 10, s=self.sock(domid)), timeout=timeout + 10)
        check(rc == 0, "could not stop %s's QEMU (domid %d): %s" % (name, domid, out.strip()))
        self.xs("rm", "/local/domain/%d" % domid)
        self.xs("rm", "/libxl/%d" % domid)
        return domid

    def sock(self, domid):
        return "%s/qmp-libxl-%d" % (XEN_RUN, domid)

    def qmp(self, domid, *cmds, timeout=30):
        """One short QMP session with inner QEMU <domid>: cmds = ("execute", {args}), ..."""
        try:
            return self.rig.greq({"op": "qmp", "sock": self.sock(domid), "timeout": 15,
                                  "cmds": [list(c) for c in cmds]}, timeout)
        except RigError as e:
            raise Fail("QMP to domain %d failed: %s" % (domid, e))

    def views(self, timeout=60):
        """{vm: view} of every inner QEMU we started, one short QMP session each."""
        vs = self.rig.greq({"op": "views", "timeout": 15,
                            "socks": dict({n: self.sock(d) for n, d in self.vms.items()}, **self.plain)}, timeout)
        for n, v in vs.items():
            if "error" in v:
                raise Fail("QMP view of %s (%s) failed: %s" % (n, self.plain.get(n) or self.sock(self.vms[n]),
                                                              v["error"]))
        return vs

    def view(self, domid, timeout=30):
        """Inner QEMU's real state: peripheral ids + usb-host props (short session)."""
        v = self.rig.greq({"op": "views", "timeout": 15, "socks": {"x": self.sock(domid)}}, timeout)["x"]
        if "error" in v:
            raise Fail("QMP view of domain %d failed: %s" % (domid, v["error"]))
        return v

    def wait_attached(self, vm, qid, timeout=20):
        """Poll (deadline) until QEMU's /machine/peripheral/<qid> in <vm> has attached == true.
        Returns (props, time seen, views of all VMs at that moment)."""
        deadline = time.time() + timeout
        while True:
            vs = self.views()
            u = vs[vm]["usb"].get(qid)
            if u and u.get("attached") is True:
                return u, time.time(), vs
            if time.time() > deadline:
                raise Fail("%s not attached in %s after %ss (QEMU has: %s)" % (qid, vm, timeout, _brief(vs[vm])))
            time.sleep(0.3)

    def wait_absent(self, vm, qid, timeout=20):
        deadline = time.time() + timeout
        while True:
            v = self.views()[vm] if vm in self.plain else self.view(self.vms[vm])
            if qid not in [p["name"] for p in v["peripheral"]]:
                return v
            if time.time() > deadline:
                raise Fail("%s still in %s's QEMU after %ss (%s)" % (qid, vm, timeout, _brief(v)))
            time.sleep(0.3)

    def read(self, *paths):
        return self.rig.greq({"op": "read", "paths": list(paths)})

    # ---- events ------------------------------------------------------------------------------
    def events(self):
        r = self.read("/run/events.log", "/run/events-done.log")
        ev_txt, done_txt = r["/run/events.log"] or "", r["/run/events-done.log"] or ""
        # A line udev is appending right now may be read half-written: it is read whole on the
        # next poll (each event's line is one O_APPEND write).
        ev_txt = ev_txt[:ev_txt.rfind("\n") + 1]
        evs = [Event(l, i) for i, l in enumerate(ev_txt.splitlines()) if l.strip()]
        done = {}
        for l in done_txt.splitlines():
            f = l.split()
            if len(f) == 3:
                done[int(f[0])] = float(f[2])
        return evs, done

    def mark(self):
        return len(self.events()[0])

    @staticmethod
    def _match(ev, port):
        return re.fullmatch(r"\d+-" + re.escape(str(port)), ev.sysname) is not None

    def wait_plugged(self, plugs, since, timeout=40):
        """plugs: [(name, port, plug_time)].  Waits until each port's add+bind events were
        logged AND every RUN of those events (the tool's included) has returned."""
        deadline = time.time() + timeout
        while True:
            evs, done = self.events()
            devs, missing = [], []
            for name, port, t in plugs:
                mine = [e for e in evs[since:] if self._match(e, port)]
                add = next((e for e in mine if e.action == "add"), None)
                bind = next((e for e in mine if e.action == "bind"), None)
                if add and bind and add.seq in done and bind.seq in done:
                    devs.append(Device(name, port, add.bus, add.addr, add, bind, t))
                else:
                    missing.append("%s@%s(%s)" % (name, port, ",".join(
                        "%s%s" % (e.action, "" if e.seq in done else "-running") for e in mine) or "no event"))
            if not missing:
                return devs, done
            if time.time() > deadline:
                raise Fail("udev events not complete after %ss: %s" % (timeout, " ".join(missing)))
            time.sleep(0.2)

    def wait_removed(self, ports, since, timeout=30):
        deadline = time.time() + timeout
        while True:
            evs, done = self.events()
            missing = []
            for port in ports:
                rm = next((e for e in evs[since:] if self._match(e, port) and e.action == "remove"), None)
                if not (rm and rm.seq in done):
                    missing.append(str(port))
            if not missing:
                return
            if time.time() > deadline:
                raise Fail("no completed remove event for port(s) %s after %ss" % (",".join(missing), timeout))
            time.sleep(0.2)

    def plug(self, name, driver, port, **props):
        """Plug one device into the outer VM and wait for the guest to finish its events."""
        since = self.mark()
        t = self.rig.plug(name, driver, port, **props)
        devs, done = self.wait_plugged([(name, port, t)], since)
        return devs[0]

    def unplug(self, name, ports, since=None):
        since = self.mark() if since is None else since
        self.rig.unplug(name)
        self.wait_removed(ports if isinstance(ports, (list, tuple)) else [ports], since)

    # ---- stand-in for systemd's path unit ---------------------------------------------------------
    def start_pathunit(self, timeout=30):
        """Start rig/pathunit.py in the guest on the INSTALLED units (UNIT_DIR_G)."""
        # On a Xen host xencommons made /run/xen at boot; the path unit no longer makes it.
        self.gcheck("mkdir -p %s" % XEN_RUN)
        self.gcheck("rm -f %(st)s; setsid /usr/bin/python3 %(g)s/pathunit.py %(d)s %(p)s %(log)s %(st)s "
                    "</dev/null >/dev/null 2>>%(log)s &" % dict(st=PATHUNIT_STATUS, g=GUEST_RIG, d=UNIT_DIR_G,
                                                         p=PATH_UNIT, log=PATHUNIT_LOG))
        deadline = time.time() + timeout
        while True:
            st = self.pathunit_status()
            if st is not None:
                if "error" in st:
                    raise RigError("path-unit stand-in refused the installed units: %s" % st["error"])
                return st
            if time.time() > deadline:
                raise RigError("path-unit stand-in did not start in %ss:\n%s" % (timeout, self.pathunit_log()))
            time.sleep(0.2)

    def pathunit_status(self):
        txt = self.read(PATHUNIT_STATUS)[PATHUNIT_STATUS]
        try:
            return json.loads(txt) if txt else None
        except ValueError:
            return None

    def pathunit_log(self):
        return self.read(PATHUNIT_LOG)[PATHUNIT_LOG] or ""

    def wait_pathunit_idle(self, after=None, timeout=40):
        """Wait until the stand-in has nothing running or pending (and, with after=N, has
        started a run numbered > N).  Returns its status."""
        deadline = time.time() + timeout
        while True:
            st = self.pathunit_status() or {}
            if st and not st["running"] and not st["pending"] and (after is None or st["started"] > after):
                return st
            if time.time() > deadline:
                raise Fail("path-unit stand-in not idle%s after %ss: %s" % (
                    "" if after is None else " with a run after #%d" % after, timeout, st))
            time.sleep(0.2)

    def pathunit_runs(self, after=0):
        """[(run number, exit code)] of the stand-in's finished runs numbered > after."""
        return [(int(n), int(rc)) for n, rc in re.findall(r"run #(\d+) exit (-?\d+)", self.pathunit_log())
                if int(n) > after]

    # ---- the tool ------------------------------------------------------------------------------
    def tool(self, args, timeout=40):
        return self.g("%s --config %s %s" % (BIN_G, CONF_G, args), timeout)

    def check_with_units_linked(self, timeout=60):
        """`check` as on an installed host: the units (installed to UNIT_DIR_G, which systemd
        does not search) linked into /run/systemd/system for the one run, then removed again
        (and the directory, if this made it). Returns (rc, output)."""
        _, made = self.g("test -d /run/systemd/system || echo made")
        self.gcheck("mkdir -p /run/systemd/system && " + " && ".join(
            "ln -sf %s/%s /run/systemd/system/%s" % (UNIT_DIR_G, u, u) for u in UNITS))
        try:
            return self.tool("check 2>&1", timeout)
        finally:
            self.g("rm -f %s; %s" % (" ".join("/run/systemd/system/" + u for u in UNITS),
                                     "rmdir /run/systemd/system 2>/dev/null; true" if "made" in made else "true"))

    def state(self):
        out = self.read(STATE_DIR + "/state.json")[STATE_DIR + "/state.json"]
        if out is None:
            return None
        try:
            return json.loads(out)
        except ValueError:
            return {"_unparsable": out}

    def tool_log(self):
        return self.read(TOOL_LOG)[TOOL_LOG] or ""

    def attached_anywhere(self, qid, views=None):
        """[(vm, props)] of every inner QEMU that has <qid>."""
        views = views or self.views()
        return [(name, v["usb"].get(qid)) for name, v in views.items()
                if qid in [p["name"] for p in v["peripheral"]]]

    # ---- figures -------------------------------------------------------------------------------------
    def figure(self, dev, observed_t, label=None, done=None, group="one at a time"):
        """Record the attach time of a udev-driven attach.  Preferred source: the tool's own
        log line (timestamped) minus the rig's add-event timestamp (written by the RUN that
        runs just before the tool's, same guest clock).  Fallback: the add event's RUN
        window (rig timestamp -> all RUNs of the event returned; QEMU then showed
        attached=true).  Also kept: plug -> attached as seen from the host."""
        label = label or dev.qid
        ts = self.tool_log_time(dev.qid)
        if ts is not None and -0.5 <= ts - dev.add.ts <= 60:
            self.figures.append((label, ts - dev.add.ts, "tool-log", group))
        else:
            done = (done or self.events()[1]).get(dev.add.seq)
            if done is not None:
                self.figures.append((label, done - dev.add.ts, "udev-run", group))
        self.figures.append((label, observed_t - dev.plug_t, "host-plug", group))

    _log_cache = (0, "")

    def tool_log_time(self, qid):
        """Timestamp of the tool's log line that reports <qid> attached, if the log has usable
        (sub-second) timestamps; else None."""
        now = time.time()
        if now - self._log_cache[0] > 0.5:
            self._log_cache = (now, self.tool_log())
        for line in self._log_cache[1].splitlines():
            if qid in line and re.search(r"attach", line, re.I) and not re.search(r"detach|fail|error|refus", line, re.I):
                t = parse_ts(line)
                if t is not None:
                    return t
        return None

    # ---- diagnostics ---------------------------------------------------------------------------------
    def diagnostics(self):
        parts = []
        rc, out = self.g("tail -n 40 /run/events.log")
        parts.append("--- guest udev event log (/run/events.log, last 40) ---\n" + out)
        rc, out = self.g("tail -n 60 %s 2>&1" % TOOL_LOG)
        parts.append("--- tool log (%s, last 60) ---\n%s" % (TOOL_LOG, out))
        rc, out = self.g("tail -n 40 %s 2>&1; cat %s 2>&1" % (PATHUNIT_LOG, PATHUNIT_STATUS))
        parts.append("--- path-unit stand-in log (%s, last 40; then its status) ---\n%s" % (PATHUNIT_LOG, out))
        try:
            ser = [l for l in open(self.rig.serial_log, errors="replace").read().splitlines()
                   if re.search(r"udev|auto-usb-attach|99-xen-usb", l)]
            parts.append("--- outer serial console, udevd/tool lines (last 15 of %d) ---\n%s"
                         % (len(ser), "\n".join(ser[-15:]) or "(none)"))
        except OSError:
            pass
        st = self.state()
        st = "(none)" if st is None else json.dumps(st, separators=(",", ":"))
        parts.append("--- state (%s/state.json) ---\n%s" % (STATE_DIR, st[:3000] + ("..." if len(st) > 3000 else "")))
        for name, domid in self.vms.items():
            try:
                parts.append("--- inner QEMU %s (domid %d) ---\n%s" % (name, domid, format_view(self.view(domid))))
            except Exception as e:  # noqa
                parts.append("--- inner QEMU %s (domid %d): view failed: %s" % (name, domid, e))
        for name, sock in self.plain.items():
            try:
                parts.append("--- plain QEMU %s (%s) ---\n%s" % (name, sock, format_view(self.views()[name])))
            except Exception as e:  # noqa
                parts.append("--- plain QEMU %s (%s): view failed: %s" % (name, sock, e))
        return "\n".join(_indent(p) for p in parts)


def parse_ts(line):
    """Seconds since the epoch from a log line's timestamp (ISO 8601 with sub-second part,
    or a bare epoch with decimals), or None if it has no sub-second timestamp."""
    m = re.search(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)[.,](\d+)\s*(Z|[+-]\d\d:?\d\d|UTC)?", line)
    if m:
        frac = float("0." + m.group(3))
        dt = datetime.datetime.strptime(m.group(1) + " " + m.group(2), "%Y-%m-%d %H:%M:%S")
        tz = m.group(4)
        if tz in (None, "Z", "UTC"):
            dt = dt.replace(tzinfo=datetime.timezone.utc) if tz else dt.astimezone()
        else:
            sign = 1 if tz[0] == "+" else -1
            h, mi = int(tz[1:3]), int(tz[-2:])
            dt = dt.replace(tzinfo=datetime.timezone(sign * datetime.timedelta(hours=h, minutes=mi)))
        return dt.timestamp() + frac
    m = re.search(r"(?<![\d.])(\d{10}\.\d{3,})(?![\d])", line)
    if m:
        return float(m.group(1))
    return None


def format_view(v):
    lines = ["query-name: %s" % v.get("name"),
             "qom-list /machine/peripheral: %s" % (", ".join("%s(%s)" % (p["name"], p["type"][6:-1])
                                                            for p in v["peripheral"]) or "(none)")]
    for qid, u in sorted(v["usb"].items()):
        lines.append("%s: port=%s hostbus=%s hostaddr=%s hostdevice=%s attached=%s bus=%s" % (
            qid, u.get("port"), u.get("hostbus"), u.get("hostaddr"), u.get("hostdevice"),
            u.get("attached"), str(u.get("parent_bus")).rsplit("/", 1)[-1]))
    return "\n".join(lines)


def _brief(v):
    return ", ".join("%s%s" % (p["name"], "" if p["name"] not in v["usb"] else
                               "[attached=%s]" % v["usb"][p["name"]].get("attached"))
                     for p in v["peripheral"]) or "nothing"


def _indent(s, pre="    "):
    return "\n".join(pre + l for l in s.rstrip("\n").splitlines())


def median_report(figures):
    out = []
    names = {"tool-log": "udev event reaching the tool -> tool logs QEMU attached (tool log timestamps)",
             "udev-run": "udev add event reaching the tool -> tool returned, QEMU attached=true (rig RUN timestamps)",
             "host-plug": "host plug (outer device_add) -> harness saw attached=true (checked after add+bind finished)"}
    groups = []
    for f in figures:
        if f[3] not in groups:
            groups.append(f[3])
    for src in ("tool-log", "udev-run", "host-plug"):
        for grp in groups + ["all"]:
            xs = [f[1] for f in figures if f[2] == src and (grp == "all" or f[3] == grp)]
            if xs and not (grp == "all" and len(groups) < 2):
                out.append("median %.3fs  min %.3fs  max %.3fs  n=%-2d [%s] %s" % (
                    statistics.median(xs), min(xs), max(xs), len(xs), grp, names[src]))
    return out


def run_scenario(env, name, fn):
    """Run one scenario; print its PASS/FAIL/SKIP line (and diagnostics on failure).
    Returns "pass", "skip", "fail" or "error" (a harness bug, with its traceback)."""
    import traceback
    t0 = time.time()
    try:
        detail = fn()
        print("PASS %s (%s) [%.1fs]" % (name, detail, time.time() - t0), flush=True)
        return "pass"
    except Skip as e:
        print("SKIP %s (%s)" % (name, e), flush=True)
        return "skip"
    except (Fail, RigError, TimeoutError) as e:
        print("FAIL %s: %s [%.1fs]" % (name, e, time.time() - t0), flush=True)
        try:
            print(env.diagnostics(), flush=True)
        except Exception as e2:  # noqa: a diagnostic, not an assertion
            print("    (diagnostics failed: %s)" % e2)
        return "fail"
    except Exception as e:  # a harness bug: say so, keep going
        print("FAIL %s: harness error %s: %s" % (name, type(e).__name__, e), flush=True)
        print(_indent(traceback.format_exc()))
        return "error"
