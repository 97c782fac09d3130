"""Host side of the real-Xen tier: boots Xen + a Debian dom0 under TCG in an outer QEMU and
gives the scenarios what tests/e2e's harness gives its own (plug/unplug over the outer QMP,
commands in dom0 through the file agent, QMP views of the domains' QEMUs), plus Xen:
`xl create`/`destroy`, xenstore reads, `xl usb-list`.

Two Xens: 4.17 (Debian 12: its packages fetched with `apt-get download` and unpacked over
this machine's /) and 4.20 (Debian 13: dom0's root is a trixie root directory built with
mmdebstrap, tests/trixie/build-root.sh). Nothing of either is installed on this host.
The work dir ($AUA_XEN_DIR, default /var/tmp/aua-xen, for 4.17; $AUA_XEN420_DIR, default
/var/tmp/aua-xen-4.20, for 4.20: never the same dir) is also the cache.  It is locked for the run, so two runs never share it.  Stdlib only."""
import fcntl, os, re, shlex, shutil, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
E2E = os.path.join(REPO, "tests", "e2e")
sys.path.insert(0, E2E)
from harness import Env, Fail, check, toml, _indent  # noqa: E402,F401
from rig import Rig, RigError, GUEST_RIG, _die_with_parent  # noqa: E402

XEN_FILES = ("initramfs-init", "dom0-init.sh", "hvm1.cfg", "hvm2.cfg", "busy.cfg", "fw.cfg", "libxl-lock-hold.py",
             "create-and-sync.py")
E2E_FILES = ("guest-agent.py", "qmp.py", "gqmp.py", "98-e2e-log.rules", "99-zz-e2e-done.rules")
XENS = {   # version -> (rig scripts: fetch, initramfs; work dir variable, its default)
    "4.17": ("fetch-xen.sh", "build-initramfs.sh", "AUA_XEN_DIR", "/var/tmp/aua-xen"),
    "4.20": ("fetch-xen-4.20.sh", "build-initramfs-4.20.sh", "AUA_XEN420_DIR", "/var/tmp/aua-xen-4.20"),
}


def default_dir(xen):
    return os.environ.get(XENS[xen][2], XENS[xen][3])


class XenRig(Rig):
    """The outer QEMU runs Xen; dom0 is the "guest" of e2e's Rig (same agent, same /tmp/rig)."""

    def __init__(self, workdir=None, keep=False, log=print, xen="4.17"):
        super().__init__(workdir or default_dir(xen), keep, log)
        self.xen = xen
        self._lockf = None
        self.t_fetch = None

    def up(self, boot_timeout=420):
        t0 = time.time()
        os.makedirs(self.dir, exist_ok=True)
        self._lockf = open(os.path.join(self.dir, ".lock"), "w")
        try:
            fcntl.flock(self._lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RigError("work dir %s is in use by another run of the Xen tier" % self.dir)
        for d in ("ctl", "out", "stage"):
            shutil.rmtree(os.path.join(self.dir, d), ignore_errors=True)
            os.makedirs(os.path.join(self.dir, d))
        for f in XEN_FILES:
            shutil.copy2(os.path.join(HERE, "rig", f), self.dir)
        for f in E2E_FILES:
            shutil.copy2(os.path.join(E2E, "rig", f), self.dir)
        self.ensure_deps()
        env = dict(os.environ, XDIR=self.dir)
        fetch, initramfs = XENS[self.xen][:2]
        if self.xen != "4.17":
            env["DOM0_ROOT"] = os.path.join(self.dir, "root")
        for script, what in ((fetch, "fetching Xen packages"), (initramfs, "dom0 initramfs")):
            t = time.time()
            r = subprocess.run([os.path.join(HERE, "rig", script)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if r.returncode:
                raise RigError("%s (%s) failed:\n%s" % (script, what, r.stdout.decode(errors="replace")[-3000:]))
            if script == fetch:
                self.t_fetch = time.time() - t
        self.proc = subprocess.Popen(
            [os.path.join(HERE, "rig", "start-outer.sh")], env=env, stdin=subprocess.DEVNULL,
            stdout=open(os.path.join(self.dir, "out", "outer.stdout"), "w"), stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)
        ready = os.path.join(self.dir, "out", "ready")
        deadline = time.time() + boot_timeout
        while not os.path.exists(ready):
            if self.proc.poll() is not None:
                raise RigError("outer QEMU exited (rc %s): %s\nserial log tail:\n%s" % (
                    self.proc.returncode, self._tail(os.path.join(self.dir, "out", "outer.stdout")),
                    self._tail(self.serial_log)))
            tail = self._tail(self.serial_log, 40)
            if re.search(r"Dom0 crashed|Kernel panic|Panic on CPU", tail):
                raise RigError("Xen/dom0 crashed during boot; serial log tail:\n" + tail)
            if time.time() > deadline:
                raise RigError("dom0 not ready in %ss; serial log tail:\n%s" % (boot_timeout, tail))
            time.sleep(0.1)
        self.t_boot = time.time() - t0
        return self.t_boot

    def down(self):
        keep, self.keep = self.keep, True     # the work dir is the package cache: never rmtree it
        super().down()
        self.keep = keep
        if not keep:
            for d in ("ctl", "stage"):
                shutil.rmtree(os.path.join(self.dir, d), ignore_errors=True)
        if self._lockf:
            self._lockf.close()
            self._lockf = None


class XenEnv(Env):
    """e2e's Env with real Xen domains instead of stand-in QEMUs.  `vms` holds the domains
    the scenarios look into (every views() call asks each one's QEMU); `others` holds the
    rest (e.g. an unrelated domain whose socket a scenario keeps busy)."""

    def __init__(self, rig, bin_path, debs=None, **kw):
        """debs: None (install the binary the way `make install` does, as tests/e2e), or
        {"current": [.deb, ...], "prev": [.deb, ...] or None}: the tool comes from the package,
        `dpkg -i` in dom0 (the previous version first, when given; the upgrade scenario then
        installs the current one), and runs as /usr/sbin/auto-usb-attach with
        /etc/auto-usb-attach.toml, the package's rule in /usr/lib/udev/rules.d."""
        super().__init__(rig, bin_path, **kw)
        self.others = {}
        self.debs = debs

    # ---- the tool from its Debian package -------------------------------------------------
    DEB_BIN = "/usr/sbin/auto-usb-attach"
    DEB_CONF = "/etc/auto-usb-attach.toml"

    def stage_debs(self):
        """Copy the packages into the work dir (dom0's /tmp/rig/stage/debs); {host path: dom0 path}."""
        d = os.path.join(self.rig.dir, "stage", "debs")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        out = {}
        for p in (self.debs.get("current") or []) + (self.debs.get("prev") or []):
            shutil.copy2(p, d)
            out[p] = GUEST_RIG + "/stage/debs/" + os.path.basename(p)
        return out

    def dpkg_install(self, which):
        """dpkg -i the "current" or "prev" packages in dom0; returns the installed version."""
        debs = [self.staged[p] for p in self.debs[which]]
        rc, out = self.g("DEBIAN_FRONTEND=noninteractive dpkg -i %s </dev/null 2>&1" % " ".join(debs), 180)
        check(rc == 0, "dpkg -i %s exited %d:\n%s" % (" ".join(debs), rc, _indent(out.strip())))
        return self.deb_version()

    def deb_version(self):
        rc, out = self.g("dpkg-query -W -f='${Status} ${Version}' auto-usb-attach 2>&1")
        return out.strip().split()[-1] if rc == 0 and out.startswith("install ok installed") else None

    def install(self, config):
        if not self.debs:
            return super().install(config)
        self.staged = self.stage_debs()
        which = "prev" if self.debs.get("prev") else "current"
        v = self.dpkg_install(which)
        rc, out = self.g("test -x %s && grep -c 'RUN+=\"%s ' /usr/lib/udev/rules.d/99-xen-usb.rules" % (self.DEB_BIN, self.DEB_BIN))
        check(rc == 0, "the package did not install %s and its rule: %s" % (self.DEB_BIN, out))
        self.write_config(config)
        self.install_method = "dpkg -i %s (version %s)" % (
            " ".join(os.path.basename(p) for p in self.debs[which]), v)
        return self.install_method

    def write_config(self, cfg):
        if not self.debs:
            return super().write_config(cfg)
        text = toml(cfg)
        src = self.rig.put("stage/auto-usb-attach.toml", text)
        # the tier's log-file is under /run/aua; the config as an admin's edit of the conffile
        self.gcheck("mkdir -p /run/aua && cp %s %s && chown 0:0 %s && chmod 0644 %s"
                    % (src, self.DEB_CONF, self.DEB_CONF, self.DEB_CONF))
        return text

    def tool(self, args, timeout=40):
        if not self.debs:
            return super().tool(args, timeout)
        return self.g("%s %s" % (self.DEB_BIN, args), timeout)

    def check_with_units_linked(self, timeout=60):
        if not self.debs:
            return super().check_with_units_linked(timeout)
        return self.tool("check 2>&1", timeout)     # the package's units are on systemd's path

    # udev events in dom0 take 0.5-2 s under TCG on an idle machine, but 20 s apart when other
    # TCG VMs share the two cores: wait long (these are bounds, not sleeps).
    EVENT_TIMEOUT = 90

    def plug(self, name, driver, port, **props):
        since = self.mark()
        t = self.rig.plug(name, driver, port, **props)
        devs, _ = self.wait_plugged([(name, port, t)], since, timeout=self.EVENT_TIMEOUT)
        return devs[0]

    def unplug(self, name, ports, since=None):
        since = self.mark() if since is None else since
        self.rig.unplug(name, timeout=30)
        self.wait_removed(ports if isinstance(ports, (list, tuple)) else [ports], since, timeout=self.EVENT_TIMEOUT)

    def start_vm(self, name, viewed=True, timeout=120):
        t0 = time.time()
        log_before = len(self.tool_log())
        cmd = "xl create %s/%s.cfg 2>&1 && xl domid %s" % (GUEST_RIG, name, name)
        rc, out = self.g(cmd, timeout)
        if rc and "device model did not start" in out:
            # libxl gives the device model 10 s; on a machine loaded with other TCG VMs it can
            # miss that (seen at load 11). Once more, then it is a failure.
            self.g("xl destroy %s 2>/dev/null" % name, timeout)
            rc, out2 = self.g(cmd, timeout)
            out = out + "(then, on a second try)\n" + out2
        check(rc == 0, "xl create %s failed (rc %d):\n%s" % (name, rc, _indent(out)))
        domid = int(out.strip().splitlines()[-1])
        try:
            self.wait_booted(domid)
        except Fail as e:
            # A domain whose firmware never reaches its boot sector while the tool has not
            # touched it (its log names the VM nowhere since the create) is a rig fault of Xen
            # under TCG (seen once in busy_socket's restart of hvm2, 4.17). Once more, said,
            # then it is a failure. If the tool did act on it, that is the failure.
            acted = [ln for ln in self.tool_log()[log_before:].splitlines() if "VM %s" % name in ln]
            if acted:
                raise Fail("%s; the tool acted on it meanwhile:\n%s" % (e, _indent("\n".join(acted[-10:]))))
            print("    rig: %s; destroying %s and creating it once more" % (e, name), flush=True)
            self.g("xl destroy %s 2>/dev/null" % name, timeout)
            rc, out = self.g(cmd, timeout)
            check(rc == 0, "xl create %s (second try) failed (rc %d):\n%s" % (name, rc, _indent(out)))
            domid = int(out.strip().splitlines()[-1])
            self.wait_booted(domid)
        v = self.view(domid, timeout=60)
        check(v.get("name") == name, "domain %d's QEMU answers query-name %r" % (domid, v.get("name")))
        (self.vms if viewed else self.others)[name] = domid
        return domid, time.time() - t0

    # How long a domain's firmware may take to hand over to the boot sector: tens of seconds
    # under TCG, minutes when other TCG VMs share the two cores (a bound, not a sleep).
    BOOT_TIMEOUT = 300

    def wait_booted(self, domid, timeout=None):
        """Wait until domain <domid>'s firmware has handed over to the boot sector: SeaBIOS's
        "Booting from 0000:7c00", which reaches the hypervisor console (guest_loglvl=all) as
        "(d<domid>) ...". Until then hvmloader has assigned the PCI BARs but SeaBIOS is still
        probing PCI and starting USB controllers; a controller hot-plugged into that window has
        unassigned BARs when SeaBIOS enables it. The rig's guests spend tens of seconds there
        under TCG, and the two self-reboots seen (rig faults) came soon after creation, so
        scenarios begin after it. Returns the seconds waited."""
        t0 = time.time()
        mark = "(d%d) Booting from 0000:7c00" % domid
        deadline = t0 + (timeout or self.BOOT_TIMEOUT)
        pos = 0
        while True:
            with open(self.rig.serial_log, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            # Whole lines only: the console file is written as the guest prints.
            cut = chunk.rfind(b"\n") + 1
            if mark.encode() in chunk[:cut]:
                return time.time() - t0
            pos += cut
            check(time.time() < deadline, "domain %d: firmware did not reach the boot sector within %ss "
                  "(no %r on the hypervisor console)" % (domid, timeout or self.BOOT_TIMEOUT, mark))
            time.sleep(0.2)

    def serial_pos(self):
        """The hypervisor console log's size now: a mark for firmware_or_fault."""
        return os.path.getsize(self.rig.serial_log)

    FAULT_RE = r"Triple fault|MMIO emulation failed|domain_crash|crashed|invoking HVM shutdown"

    def firmware_or_fault(self, domid, since=0, timeout=None):
        """The harness's own view of a new domain's firmware (the product never waits for it):
        reads the hypervisor console from byte <since> until "(d<domid>) Booting from 0000:7c00"
        or a fault line of that domain (triple fault, MMIO emulation failure, crash). Returns
        ("booted", byte offset of SeaBIOS's "(d<domid>) Booting from" line) or ("fault", line).
        Bounded by BOOT_TIMEOUT."""
        deadline = time.time() + (timeout or self.BOOT_TIMEOUT)
        boot, first = ("(d%d) Booting from 0000:7c00" % domid).encode(), ("(d%d) Booting from" % domid).encode()
        fault = re.compile((r"(\(d%d\)|\bd%dv\d|[Dd]omain %d\b|dom%d\b).*(%s)" % (domid, domid, domid, domid, self.FAULT_RE)).encode())
        pos = since
        first_at = None
        while True:
            with open(self.rig.serial_log, "rb") as f:
                f.seek(pos)
                chunk = f.read()
            cut = chunk.rfind(b"\n") + 1
            for line in chunk[:cut].splitlines(keepends=True):
                if first_at is None and first in line:
                    first_at = pos
                if boot in line:
                    return "booted", first_at
                if fault.search(line):
                    return "fault", line.decode(errors="replace").strip()
                pos += len(line)
            check(time.time() < deadline, "domain %d: neither its boot sector nor a fault on the console within %ss"
                  % (domid, timeout or self.BOOT_TIMEOUT))
            time.sleep(0.2)

    def rebooted(self):
        """Domains that came back under a new domid without the harness asking: [(name, old, new)].
        An HVM guest that reboots by itself is a rig fault (seen once under heavy load), not the
        tool's: the caller says so and recreates it."""
        out = []
        for table in (self.vms, self.others):
            for name, domid in list(table.items()):
                rc, o = self.g("xl domid %s 2>/dev/null" % name)
                now = int(o.strip()) if rc == 0 and o.strip().isdigit() else None
                if now != domid:
                    out.append((name, domid, now))
        return out

    def fault_report(self, name, old):
        """What Xen, xl and the device model said about <name>'s unasked reboot (domid <old>):
        xl's log (the shutdown reason), the tail of qemu-dm's log, and the hypervisor console's
        lines for that domid (SeaBIOS prints there through port 0xe9; Xen logs triple faults
        and crashes there)."""
        _, xl = self.g("tail -n 15 /var/log/xen/xl-%s.log 2>&1" % name)
        _, dm = self.g("tail -n 15 /var/log/xen/qemu-dm-%s.log 2>&1" % name)
        hv = []
        if old is not None:
            pat = re.compile(r"\(d%d\)|\bd%dv\d|[Dd]omain %d\b|dom%d\b" % (old, old, old, old))
            try:
                with open(self.rig.serial_log, errors="replace") as f:
                    hv = [ln.rstrip() for ln in f if pat.search(ln)][-25:]
            except OSError as e:
                hv = ["(serial log unreadable: %s)" % e]
        return ("xl-%s.log:\n%s\nqemu-dm-%s.log:\n%s\nhypervisor console, domid %s:\n%s" % (
            name, _indent(xl.strip()), name, _indent(dm.strip()), old, _indent("\n".join(hv))))

    def outer_devices(self):
        """ids of the devices plugged into the outer xHCI (what the harness plugged)."""
        return set(d["name"] for d in self.rig.qmp("qom-list", path="/machine/peripheral")
                   if d.get("type", "").startswith("child<") and d["name"] != "xhci")

    def unplug_new(self, before):
        """Unplug every outer device not in <before> (what a failed attempt left) and let dom0's
        udev finish the remove events, so a retry starts from the same devices."""
        gone = sorted(self.outer_devices() - set(before))
        for dev in gone:
            self.rig.unplug(dev, timeout=30)
        if gone:
            self.g("udevadm settle --timeout=60", 90)
        return gone

    def recreate(self, name):
        """After a rig fault: the domain anew (destroyed first if it came back by itself)."""
        viewed = name in self.vms
        (self.vms if viewed else self.others).pop(name, None)
        self.g("xl destroy %s 2>/dev/null" % name, 60)
        return self.start_vm(name, viewed=viewed)[0]

    def stop_vm(self, name, timeout=60):
        domid = (self.vms if name in self.vms else self.others).pop(name)
        rc, out = self.g("xl destroy %s 2>&1" % name, timeout)
        check(rc == 0, "xl destroy %s (domid %d) failed: %s" % (name, domid, out.strip()))
        return domid

    def xs_tree(self, path):
        """{path: value} from `xenstore-ls -f PATH` (empty if the path does not exist)."""
        rc, out = self.g("xenstore-ls -f %s 2>/dev/null" % shlex.quote(path))
        tree = {}
        for line in out.splitlines():
            m = re.match(r'^(\S+) = "(.*)"$', line)
            if m:
                tree[m.group(1)] = m.group(2)
        return tree

    def vusb(self, name):
        """libxl's records for <name>: {ctrl devid: {"usb-ver", "num-ports", "type", "ports": {n: busid}}}."""
        domid = self.vms[name]
        base = "/libxl/%d/device/vusb/" % domid
        out = {}
        for p, v in self.xs_tree(base[:-1]).items():
            rest = p[len(base):].split("/")
            if not rest[0].isdigit():
                continue
            c = out.setdefault(int(rest[0]), {"ports": {}})
            if len(rest) == 3 and rest[1] == "port":
                c["ports"][int(rest[2])] = v
            elif len(rest) == 2:
                c[rest[1]] = v
        return out

    def libxl_port_of(self, name, busid):
        """(ctrl, port) where libxl's records hold <busid> for domain <name>, or None."""
        for c, d in self.vusb(name).items():
            for p, v in d["ports"].items():
                if v == busid:
                    return c, p
        return None

    def usb_list(self, name):
        rc, out = self.g("xl usb-list %s 2>&1" % name)
        return rc, out

    def busid(self, dev):
        return dev.add.sysname      # sysfs name, e.g. 1-3: what libxl records per port
