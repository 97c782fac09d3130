"""Host side of the e2e rig: boots the OUTER QEMU (real kernel + systemd-udevd, chroot
into this machine's / read-only), plugs USB devices into it over its QMP, and runs
commands in the guest through the file agent in <workdir>/ctl (9p, guest: /tmp/rig).

Stdlib only.  Each Rig has its own fresh work dir (mktemp), so it never collides
with a developer's /tmp/rig or another run."""
import ctypes, itertools, json, os, shutil, signal, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from qmp import QMP  # noqa: E402

GUEST_RIG = "/tmp/rig"           # where the work dir is mounted inside the guest
GUEST_FILES = ("build-initramfs.sh", "initramfs-init", "guest-init.sh", "guest-agent.py",
               "qmp.py", "gqmp.py", "start-outer.sh", "98-e2e-log.rules",
               "99-zz-e2e-done.rules", "pathunit.py", "fake-xenstored.py", "qemu-in-root")
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


class RigError(Exception):
    pass


class Rig:
    def __init__(self, workdir=None, keep=False, log=print, systemd=False):
        """systemd=True boots the guest with the real systemd as PID 1 (units-systemd/):
        udevd, journald, path units and timers are then systemd's own."""
        self.systemd = systemd
        self.dir = workdir or tempfile.mkdtemp(prefix="aua-systemd." if systemd else "aua-e2e.")
        self.keep = keep
        self.log = log
        self.ctl = os.path.join(self.dir, "ctl")
        self.proc = None
        self._outer = None
        self._seq = itertools.count()
        self.t_boot = None

    # ---- lifecycle -------------------------------------------------------------
    def ensure_deps(self):
        r = subprocess.run([os.path.join(HERE, "ensure-deps.sh"), os.path.join(self.dir, "apt.log")],
                           env=dict(os.environ, RIG_SYSTEMD="1" if self.systemd else "0"))
        if r.returncode:
            raise RigError("could not install the rig's Debian packages; apt log tail:\n"
                           + self._tail(os.path.join(self.dir, "apt.log"), 20))

    def up(self, boot_timeout=240, accel=None):
        t0 = time.time()
        os.makedirs(self.dir, exist_ok=True)
        for f in GUEST_FILES:
            shutil.copy2(os.path.join(HERE, f), self.dir)
        env = dict(os.environ, RIG=self.dir)
        if self.systemd:
            shutil.copytree(os.path.join(HERE, "units-systemd"), os.path.join(self.dir, "units-systemd"),
                            dirs_exist_ok=True)
            env["KAPPEND"] = "systemd.unit=aua-rig.target"
        if os.environ.get("E2E_QEMU_ROOT"):   # inner QEMUs from that root (rig/qemu-in-root)
            env["KAPPEND"] = (env.get("KAPPEND", "") + " aua.qemuroot").strip()
        self.ensure_deps()
        r = subprocess.run([os.path.join(self.dir, "build-initramfs.sh")], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode:
            raise RigError("build-initramfs.sh failed:\n" + r.stdout.decode(errors="replace"))
        env["FOREGROUND"] = "1"
        self.proc = subprocess.Popen(
            [os.path.join(self.dir, "start-outer.sh"), accel or os.environ.get("ACCEL", "tcg")],
            env=env, stdin=subprocess.DEVNULL, stdout=open(os.path.join(self.dir, "outer.stdout"), "w"),
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        ready = os.path.join(self.dir, "out", "ready")
        deadline = time.time() + boot_timeout
        while not os.path.exists(ready):
            if self.proc.poll() is not None:
                raise RigError("outer QEMU exited (rc %s): %s" % (
                    self.proc.returncode, self._tail(os.path.join(self.dir, "outer.stdout"))))
            if time.time() > deadline:
                raise RigError("outer VM not ready in %ss; serial log tail:\n%s" % (
                    boot_timeout, self._tail(self.serial_log)))
            time.sleep(0.1)
        self.t_boot = time.time() - t0
        return self.t_boot

    @property
    def serial_log(self):
        return os.path.join(self.dir, "out", "serial.log")

    @staticmethod
    def _tail(path, n=30):
        try:
            return "".join(open(path, errors="replace").readlines()[-n:])
        except OSError as e:
            return str(e)

    def down(self):
        """Stop the outer VM (inner QEMUs live inside it and die with it)."""
        if self.proc and self.proc.poll() is None:
            try:   # our open session if any: a second client would get no greeting
                q = self._outer or QMP(os.path.join(self.dir, "outer.sock"), timeout=3)
                q.s.settimeout(3)
                q.cmd("quit")
            except Exception:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()          # our own child, by pid
                self.proc.wait(5)
        if self._outer:
            self._outer.close()
            self._outer = None
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- outer QMP: plug / unplug ------------------------------------------------
    def outer(self):
        if self._outer is None:
            self._outer = QMP(os.path.join(self.dir, "outer.sock"), timeout=30)
        return self._outer

    def qmp(self, execute, **args):
        r = self.outer().cmd(execute, **args)
        if "error" in r:
            raise RigError("outer %s %s: %s" % (execute, args, r["error"].get("desc")))
        return r.get("return")

    def plug(self, dev_id, driver, port, **props):
        """Plug an emulated USB device into the outer xHCI ('port' e.g. "3" or "4.1")."""
        self.qmp("device_add", driver=driver, id=dev_id, bus="xhci.0", port=str(port), **props)
        return time.time()

    def unplug(self, dev_id, timeout=10):
        self.qmp("device_del", id=dev_id)
        ev = self.outer().wait_event("DEVICE_DELETED", timeout,
                                     lambda e: e.get("data", {}).get("device") == dev_id)
        if ev is None:
            raise RigError("outer: no DEVICE_DELETED for %s within %ss" % (dev_id, timeout))
        return time.time()

    # ---- guest command agent ---------------------------------------------------------
    def gstart(self, cmd, kind=".cmd"):
        name = "%06d-%d" % (next(self._seq), os.getpid())
        tmp = os.path.join(self.ctl, name + ".tmp")
        with open(tmp, "w") as f:
            f.write(cmd)
        os.rename(tmp, os.path.join(self.ctl, name + kind))
        return name

    def gwait(self, name, timeout=60):
        rc = os.path.join(self.ctl, name + ".rc")
        deadline = time.time() + timeout
        while not os.path.exists(rc):
            if self.proc is not None and self.proc.poll() is not None:
                raise RigError("outer QEMU died (rc %s)" % self.proc.returncode)
            if time.time() > deadline:
                raise TimeoutError("guest command %s timed out after %ss" % (name, timeout))
            time.sleep(0.005)
        out = open(os.path.join(self.ctl, name + ".out"), "rb").read().decode(errors="replace")
        code = int(open(rc).read())
        for ext in (".out", ".rc"):
            os.unlink(os.path.join(self.ctl, name + ext))
        return code, out

    def gexec(self, cmd, timeout=60):
        """Run a /bin/sh command in the guest; returns (rc, stdout+stderr)."""
        return self.gwait(self.gstart(cmd), timeout)

    def greq(self, req, timeout=60):
        """A JSON request served inside the guest agent itself (ops: views, qmp, read)."""
        rc, out = self.gwait(self.gstart(json.dumps(req), ".req"), timeout)
        r = json.loads(out)
        if "error" in r:
            raise RigError("guest agent: %s" % r["error"])
        return r["ok"]

    def gcheck(self, cmd, timeout=60):
        rc, out = self.gexec(cmd, timeout)
        if rc:
            raise RigError("guest command failed (rc %d): %s\n%s" % (rc, cmd, out))
        return out

    def put(self, name, data):
        """Write a file into the work dir; returns its path as the guest sees it."""
        p = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        return GUEST_RIG + "/" + name
