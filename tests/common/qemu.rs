//! `Qemu`: a real `qemu-system-x86_64 -nodefaults -S` guard (`-M pc`, or the machine a test names), killed on drop.

use super::*;

pub struct Qemu {
    child: Child,
    pub sock: PathBuf,
    pub name: String,
}

impl Qemu {
    /// `qemu-system-x86_64 -M pc -nodefaults -S -display none -name NAME -qmp unix:SOCK,server=on,wait=off`,
    /// waited for until it answers QMP (our probe connection is closed again before returning).
    pub fn start(name: &str, sock: &Path) -> Qemu {
        Qemu::start_with(name, sock, &["-M", "pc"])
    }

    /// As `start`, with the machine and devices given (`-M q35 -device qemu-xhci,id=xhci`),
    /// the way a user starts a VM; `-nodefaults -S` still apply.
    pub fn start_with(name: &str, sock: &Path, machine: &[&str]) -> Qemu {
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        // A stale socket (SIGKILLed QEMU) would make "the path exists" meaningless.
        let _ = std::fs::remove_file(sock);
        let child = Command::new("qemu-system-x86_64")
            .args(machine)
            .args(["-nodefaults", "-S", "-display", "none", "-name", name, "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64: {e}"));
        let mut q = Qemu { child, sock: sock.to_path_buf(), name: name.into() };
        let start = Instant::now();
        while !sock.exists() {
            if let Some(st) = q.child.try_wait().unwrap() {
                panic!("qemu-system-x86_64 exited early: {st}");
            }
            assert!(start.elapsed() < Duration::from_secs(30), "QEMU socket {} never appeared", sock.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        // Ready when it answers; then let go of the (single) QMP client slot.
        let mut c = q.qmp();
        c.cmd("query-status", json!({}));
        drop(c);
        q
    }

    /// As an earlier run of the tool would have left it: controller xenusb-0
    /// (xhci, 15 ports) holding usb-host devices (port, bus, addr, hostport).
    pub fn holding(&self, devices: &[(u32, u32, u32, &str)]) {
        let mut c = self.qmp();
        c.add_xhci("xenusb-0", 15);
        for (port, bus, addr, hostport) in devices {
            c.place_usb_host("xenusb-0", *port, *bus, *addr, hostport);
        }
    }

    pub fn qmp(&self) -> Qmp {
        Qmp::connect(&self.sock, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("QMP connect to {}: {e}", self.sock.display()))
    }

    /// Makes the socket look created `secs` seconds ago (mtime; ctime becomes now).
    /// The tool lets a brand-new Xen domain settle for a few seconds before it
    /// creates a controller there; tests about established domains age their
    /// sockets first. Call before the tool first sees the socket: the change of
    /// ctime alters the socket's identity ("instance").
    pub fn age(&self, secs: u64) -> &Qemu {
        set_mtime_ago(&self.sock, secs);
        self
    }

    /// SIGKILL, as a crashed/destroyed VM: the socket file stays behind.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets `path`'s atime and mtime to `secs` seconds ago (works on sockets).
pub fn set_mtime_ago(path: &Path, secs: u64) {
    use nix::sys::time::TimeVal;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let t = now.saturating_sub(Duration::from_secs(secs));
    let tv = TimeVal::new(t.as_secs() as _, t.subsec_micros() as _);
    nix::sys::stat::utimes(path, &tv, &tv).unwrap_or_else(|e| panic!("utimes {}: {e}", path.display()));
}
