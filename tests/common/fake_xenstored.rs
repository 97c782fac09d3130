//! `FakeXenstored`: the project's one xenstored stand-in,
//! tests/e2e/rig/fake-xenstored.py (the e2e rig runs the same script), started
//! per test on `<root>/run/xenstored/socket` as a child process and killed on
//! drop. Its wire format is the real xenstored 4.17's, pinned byte for byte by
//! tests/fake_xenstored_pin.rs against tests/fixtures/xenstored-4.17-transcript.txt;
//! the script's docstring says what it models.
//!
//! The helpers arrange and read the store the way libxl and `xenstore-ls` would:
//! over the wire, on one connection of the test's own ([`XsConn`]) that the
//! fake keeps out of its request log (`/fake-xenstored/quiet`), so
//! [`FakeXenstored::log`] holds only what the tool asked. The test also gets
//! `/var/lib/xen` (libxl's lock dir).

use super::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};

/// The script, in the source tree.
pub const FAKE_XENSTORED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/rig/fake-xenstored.py");

pub struct FakeXenstored {
    child: Child,
    pub sock: PathBuf,
    conn: Mutex<XsConn>,
}

impl FakeXenstored {
    /// Starts the script and returns once its socket accepts (it prints "ready"
    /// after `listen`; a start that takes over 30 s fails the test).
    pub fn start(root: &TestRoot) -> FakeXenstored {
        let sock = root.p("/run/xenstored/socket");
        std::fs::create_dir_all(root.p("/var/lib/xen")).unwrap();
        // The rig's interpreter when there is one: a version manager's `python3` shim
        // (pyenv's) can cost a quarter of a second per start.
        let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        let mut child = Command::new(python)
            .arg(FAKE_XENSTORED)
            .arg("serve")
            .arg(&sock)
            .arg(root.p("/run/xenstored/fake-xenstored.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {python} {FAKE_XENSTORED}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.trim() == "ready" => {}
            other => {
                let _ = child.kill();
                panic!("fake-xenstored did not start: {other:?}, exit {:?}", child.wait());
            }
        }
        let mut conn = XsConn::connect(&sock);
        conn.ok(XS_WRITE, "/fake-xenstored/quiet", b"1");
        FakeXenstored { child, sock, conn: Mutex::new(conn) }
    }

    fn xs<T>(&self, f: impl FnOnce(&mut XsConn) -> T) -> T {
        f(&mut self.conn.lock().unwrap())
    }

    /// A running domain as libxl registers it.
    pub fn domain(&self, domid: u32, name: &str) {
        self.set(&format!("/local/domain/{domid}/name"), name);
        self.set(&format!("/local/domain/{domid}/vm"), &format!("/vm/{}", uuid(domid)));
        self.set(&format!("/libxl/{domid}/dm-version"), "qemu_xen");
    }

    /// `xl destroy`: the domain's nodes go.
    pub fn destroy(&self, domid: u32) {
        for pre in [format!("/local/domain/{domid}"), format!("/libxl/{domid}")] {
            self.xs(|c| c.request(XS_RM, &pre, b"")).ok();
        }
    }

    pub fn get(&self, path: &str) -> Option<String> {
        self.xs(|c| c.request(XS_READ, path, b"")).ok().map(|v| String::from_utf8(v).unwrap())
    }

    pub fn set(&self, path: &str, v: &str) {
        self.xs(|c| c.ok(XS_WRITE, path, v.as_bytes()));
    }

    /// The node's permissions as GET_PERMS answers them ("n0\0" until set), if it exists.
    pub fn perms(&self, path: &str) -> Option<String> {
        self.xs(|c| c.request(XS_GET_PERMS, path, b"")).ok().map(|v| String::from_utf8(v).unwrap())
    }

    /// libxl's records of a devicemodel controller (as `xl usbctrl-attach`).
    pub fn usbctrl(&self, domid: u32, devid: u32, usb_ver: u8, ports: u8) {
        let b = format!("/libxl/{domid}/device/vusb/{devid}");
        self.set(&format!("{b}/type"), "devicemodel");
        self.set(&format!("{b}/usb-ver"), &usb_ver.to_string());
        self.set(&format!("{b}/num-ports"), &ports.to_string());
        for p in 1..=ports {
            self.set(&format!("{b}/port/{p}"), "");
        }
    }

    /// Every node whose path starts with `pre` (as a string), "path = value" per
    /// line, in path order.
    pub fn dump(&self, pre: &str) -> String {
        let mut all = BTreeMap::new();
        self.xs(|c| c.walk("/", &mut all));
        all.iter().filter(|(k, _)| k.starts_with(pre)).map(|(k, v)| format!("{k} = {v:?}\n")).collect()
    }

    /// The requests the tool sent, oldest first, as "TYPE path" (e.g.
    /// "WRITE /libxl/7/device/vusb/0/port/1"); TRANSACTION_START/END are left out.
    pub fn log(&self) -> Vec<String> {
        let b = self.xs(|c| c.ok(XS_READ, "/fake-xenstored/log", b""));
        String::from_utf8(b).unwrap().lines().map(str::to_string).collect()
    }

    /// The next commit of a transaction answers EAGAIN, as when another writer got there first.
    pub fn eagain_next_commit(&self) {
        self.xs(|c| c.ok(XS_WRITE, "/fake-xenstored/eagain-next", b"1"));
    }
}

/// A fixed uuid per domid (libxl's lock files are named with it).
pub fn uuid(domid: u32) -> String {
    format!("00000000-0000-4000-8000-{domid:012}")
}

impl Drop for FakeXenstored {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const XS_DIRECTORY: u32 = 1;
pub const XS_READ: u32 = 2;
pub const XS_GET_PERMS: u32 = 3;
pub const XS_WRITE: u32 = 11;
pub const XS_RM: u32 = 13;
pub const XS_ERROR: u32 = 16;

/// A minimal xenstore client for the test side: one request at a time,
/// "path\0value" payloads, no transactions, no watches.
pub struct XsConn {
    stream: UnixStream,
    next_req: u32,
}

impl XsConn {
    pub fn connect(sock: &Path) -> XsConn {
        let stream = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        XsConn { stream, next_req: 1 }
    }

    /// One request; Ok(reply payload) or Err(errno name).
    pub fn request(&mut self, ty: u32, path: &str, value: &[u8]) -> Result<Vec<u8>, String> {
        let mut body = path.as_bytes().to_vec();
        body.push(0);
        body.extend_from_slice(value);
        let rid = self.next_req;
        self.next_req += 1;
        let mut m = Vec::new();
        for v in [ty, rid, 0, body.len() as u32] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&body);
        self.stream.write_all(&m).unwrap();
        let mut h = [0u8; 16];
        self.stream.read_exact(&mut h).unwrap();
        let w = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        let mut payload = vec![0u8; w(12) as usize];
        self.stream.read_exact(&mut payload).unwrap();
        assert_eq!(w(4), rid, "reply to another request");
        if w(0) == XS_ERROR {
            return Err(String::from_utf8_lossy(&payload).trim_end_matches('\0').to_string());
        }
        Ok(payload)
    }

    /// A request that must succeed.
    pub fn ok(&mut self, ty: u32, path: &str, value: &[u8]) -> Vec<u8> {
        self.request(ty, path, value).unwrap_or_else(|e| panic!("xenstore request {ty} {path}: {e}"))
    }

    /// `path` and everything under it into `out` (path -> value).
    fn walk(&mut self, path: &str, out: &mut BTreeMap<String, String>) {
        let Ok(v) = self.request(XS_READ, path, b"") else { return };
        out.insert(path.to_string(), String::from_utf8_lossy(&v).into_owned());
        let kids = self.request(XS_DIRECTORY, path, b"").unwrap_or_default();
        for k in kids.split(|b| *b == 0).filter(|k| !k.is_empty()) {
            let k = std::str::from_utf8(k).unwrap();
            self.walk(&format!("{}/{k}", path.trim_end_matches('/')), out);
        }
    }
}
