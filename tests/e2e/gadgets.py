"""Real USB devices from the rig guest's own kernel, shared by tests/soak/run and tests/bench/run:
dummy_hcd (one UDC + one host bus per instance) and configfs gadgets (libcomposite + usb_f_ss_lb
SourceSink functions, which, unlike HID, have no instance limit).  Writing a UDC name to a
gadget's UDC file plugs it (real uevents, real /dev/bus/usb node); writing "" unplugs it.
Also the waits on the rig's udev done-markers and a bounded `udevadm settle`.  Stdlib only."""
import re, time

from harness import Fail, RigError

CFS = "/sys/kernel/config/usb_gadget"
VID = 0x1209                        # pid.codes' test vendor id: no host driver binds to it


class Gadgets:
    """dummy_hcd UDCs and SourceSink gadgets in the guest."""

    def __init__(self, env, n_udc, n_gadgets):
        self.env, self.rig = env, env.rig
        self.n_udc, self.n_gadgets = n_udc, n_gadgets
        self.udc_bus = {}          # "dummy_udc.N" -> host bus number
        self.at = {}               # gadget name -> udc it is bound to, or None

    def setup(self):
        e = self.env
        out = e.gcheck("set -e; modprobe dummy_hcd num=%d; modprobe libcomposite; modprobe usb_f_ss_lb; "
                       "mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config; "
                       "for i in $(seq 0 %d); do echo dummy_udc.$i $(basename /sys/devices/platform/dummy_hcd.$i/usb*); done"
                       % (self.n_udc, self.n_udc - 1), timeout=120)
        for m in re.finditer(r"^(dummy_udc\.\d+) usb(\d+)$", out, re.M):
            self.udc_bus[m.group(1)] = int(m.group(2))
        if len(self.udc_bus) != self.n_udc:
            raise RigError("dummy_hcd num=%d gave these UDC/bus pairs: %r" % (self.n_udc, out))
        script = ["set -e"]
        for i in range(self.n_gadgets):
            g = "%s/sg%d" % (CFS, i)
            script.append("mkdir %(g)s; echo 0x%(v)04x > %(g)s/idVendor; echo 0x%(p)04x > %(g)s/idProduct; "
                          "mkdir %(g)s/strings/0x409; echo SOAK%(i)d > %(g)s/strings/0x409/serialnumber; "
                          "echo soak > %(g)s/strings/0x409/manufacturer; echo sg%(i)d > %(g)s/strings/0x409/product; "
                          "mkdir %(g)s/configs/c.1 %(g)s/functions/SourceSink.ss%(i)d; "
                          "ln -s %(g)s/functions/SourceSink.ss%(i)d %(g)s/configs/c.1/"
                          % dict(g=g, v=VID, p=self.product(i), i=i))
            self.at["sg%d" % i] = None
        e.gcheck("\n".join(script), timeout=120)

    @staticmethod
    def product(i):
        return 0x5000 + i

    def vidpid(self, g):
        return "%04x:%04x" % (VID, self.product(int(g[2:])))

    def serial(self, g):
        return "SOAK" + g[2:]

    def free_udcs(self):
        used = set(v for v in self.at.values() if v)
        return [u for u in sorted(self.udc_bus, key=lambda u: int(u.split(".")[1])) if u not in used]

    def plugged(self):
        return sorted((g for g, u in self.at.items() if u), key=lambda g: int(g[2:]))

    def unplugged(self):
        return sorted((g for g, u in self.at.items() if not u), key=lambda g: int(g[2:]))

    def sysname(self, udc):
        return "%d-1" % self.udc_bus[udc]

    def writes(self, ops):
        """ops: [(gadget, udc or None)], all written in one agent request (as fast as the guest
        can).  Returns [(gadget, sysname, guest time)] and the expected udev events."""
        w, want, res = [], [], []
        for g, udc in ops:
            if udc is None:
                old = self.at[g]
                w.append(["%s/%s/UDC" % (CFS, g), "\n"])
                want.append((self.sysname(old), "remove"))
                res.append((g, self.sysname(old)))
            else:
                w.append(["%s/%s/UDC" % (CFS, g), udc + "\n"])
                want += [(self.sysname(udc), "add"), (self.sysname(udc), "bind")]
                res.append((g, self.sysname(udc)))
        return w, want, res

    def commit(self, ops):
        for g, udc in ops:
            self.at[g] = udc


def wait_events(env, want, since, timeout=60):
    """Until each (sysname, action) was logged after <since> and its RUNs (the tool's
    included) returned (done marker).  Returns {(sysname, action): Event}."""
    deadline = time.time() + timeout
    while True:
        evs, done = env.events()
        got, missing = {}, []
        for sysname, action in want:
            e = next((e for e in evs[since:] if e.sysname == sysname and e.action == action
                      and e.seq in done), None)
            if e is None:
                missing.append("%s %s" % (action, sysname))
            else:
                got[(sysname, action)] = e
        if not missing:
            return got
        if time.time() > deadline:
            raise Fail("udev events not done after %ss: %s" % (timeout, ", ".join(missing)))
        time.sleep(0.1)


# `udevadm settle` (as root) pings udevd over its control socket, then sends an end message;
# once in a CI run (step 41 of seed 7, under load) udevd had dropped the connection in
# between and the second send failed with EPIPE ("Failed to wait for daemon to reply: Broken
# pipe"). udevd's control connection is nothing the tool touches (it never runs udevadm), so
# ask again, a bounded number of times; returns how often it asked again.
SETTLE_RACE = "Failed to wait for daemon to reply"


def settle(env):
    retries = 0
    for attempt in range(3):
        rc, out = env.g("udevadm settle --timeout=60", timeout=90)
        if not rc:
            return retries
        if SETTLE_RACE not in out:
            break
        retries += 1
    raise Fail("udevadm settle failed (rc %d): %s" % (rc, out.strip()))
