//! A xenstored stand-in on `<root>/run/xenstored/socket`, for the black-box
//! tests that run real QEMUs as Xen domains' device models without Xen.
//!
//! It answers in the exact wire format of the real xenstored 4.17 recorded in
//! tests/fixtures/xenstored-4.17-transcript.txt: every reply echoes the
//! request's type, req_id and tx_id; WRITE/MKDIR/RM/SET_PERMS/TRANSACTION_END
//! answer "OK\0"; READ answers the bare value; DIRECTORY the NUL-terminated
//! child names (in name order; the real one keeps creation order, which the
//! tool does not rely on); TRANSACTION_START the id as "N\0"; errors are type 16 with
//! the errno name ("ENOENT\0"); missing parents are created by WRITE/MKDIR;
//! RM of a missing node whose parent exists is OK. Transactions are not
//! isolated (one client at a time here); a test can make the next commit
//! answer EAGAIN. The test also gets `/var/lib/xen` (libxl's lock dir).

use super::*;
use std::collections::BTreeMap;

#[derive(Default)]
pub struct Store {
    pub nodes: BTreeMap<String, String>,
    pub perms: BTreeMap<String, String>,
    /// Requests seen, as "TYPE path" (for asserting what was done).
    pub log: Vec<String>,
    next_tx: u32,
}

pub struct FakeXenstored {
    pub store: Arc<Mutex<Store>>,
    pub sock: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeXenstored {
    pub fn start(root: &TestRoot) -> FakeXenstored {
        let sock = root.p("/run/xenstored/socket");
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        std::fs::create_dir_all(root.p("/var/lib/xen")).unwrap();
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).unwrap();
        listener.set_nonblocking(true).unwrap();
        let store = Arc::new(Mutex::new(Store::default()));
        store.lock().unwrap().put("/local/domain/0/name", "Domain-0");
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (store.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((c, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || serve(c, st));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(2))
                    }
                    Err(_) => return,
                }
            }
        });
        FakeXenstored { store, sock, stop, thread: Some(thread) }
    }

    /// A running domain as libxl registers it.
    pub fn domain(&self, domid: u32, name: &str) {
        let mut s = self.store.lock().unwrap();
        s.put(&format!("/local/domain/{domid}/name"), name);
        s.put(&format!("/local/domain/{domid}/vm"), &format!("/vm/{}", uuid(domid)));
        s.put(&format!("/libxl/{domid}/dm-version"), "qemu_xen");
    }

    /// `xl destroy`: the domain's nodes go.
    pub fn destroy(&self, domid: u32) {
        let mut s = self.store.lock().unwrap();
        for pre in [format!("/local/domain/{domid}"), format!("/libxl/{domid}")] {
            s.nodes.retain(|k, _| !(k == &pre || k.starts_with(&format!("{pre}/"))));
        }
    }

    pub fn get(&self, path: &str) -> Option<String> {
        self.store.lock().unwrap().nodes.get(path).cloned()
    }

    pub fn set(&self, path: &str, v: &str) {
        self.store.lock().unwrap().put(path, v);
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

    /// Every node under `pre`, "path = value" per line.
    pub fn dump(&self, pre: &str) -> String {
        let s = self.store.lock().unwrap();
        s.nodes.iter().filter(|(k, _)| k.starts_with(pre)).map(|(k, v)| format!("{k} = {v:?}\n")).collect()
    }
}

/// A fixed uuid per domid (libxl's lock files are named with it).
pub fn uuid(domid: u32) -> String {
    format!("00000000-0000-4000-8000-{domid:012}")
}

impl Drop for FakeXenstored {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Store {
    /// Write `path`, creating missing parents empty (as xenstored does).
    pub fn put(&mut self, path: &str, v: &str) {
        let mut at = 0;
        while let Some(i) = path[at + 1..].find('/') {
            at += i + 1;
            self.nodes.entry(path[..at].to_string()).or_default();
        }
        self.nodes.insert(path.to_string(), v.to_string());
    }

    fn answer(&mut self, ty: u32, path: &str, rest: &[u8]) -> Result<Vec<u8>, &'static str> {
        let has_parent = |s: &Store| path.rfind('/').is_some_and(|i| i == 0 || s.nodes.contains_key(&path[..i]));
        match ty {
            // READ
            2 => self.nodes.get(path).map(|v| v.as_bytes().to_vec()).ok_or("ENOENT"),
            // DIRECTORY
            1 => {
                if !self.nodes.contains_key(path) {
                    return Err("ENOENT");
                }
                let pre = format!("{path}/");
                let mut b = Vec::new();
                for k in self.nodes.keys().filter_map(|k| k.strip_prefix(&pre)).filter(|k| !k.contains('/')) {
                    b.extend_from_slice(k.as_bytes());
                    b.push(0);
                }
                Ok(b)
            }
            // WRITE
            11 => {
                self.put(path, &String::from_utf8_lossy(rest));
                Ok(b"OK\0".to_vec())
            }
            // MKDIR
            12 => {
                if !self.nodes.contains_key(path) {
                    self.put(path, "");
                }
                Ok(b"OK\0".to_vec())
            }
            // RM
            13 => {
                if !self.nodes.contains_key(path) && !has_parent(self) {
                    return Err("ENOENT");
                }
                let pre = format!("{path}/");
                self.nodes.retain(|k, _| !(k == path || k.starts_with(&pre)));
                Ok(b"OK\0".to_vec())
            }
            // SET_PERMS
            14 => {
                if !self.nodes.contains_key(path) {
                    return Err("ENOENT");
                }
                self.perms.insert(path.to_string(), String::from_utf8_lossy(rest).into_owned());
                Ok(b"OK\0".to_vec())
            }
            // GET_PERMS
            3 => {
                if !self.nodes.contains_key(path) {
                    return Err("ENOENT");
                }
                Ok(self.perms.get(path).cloned().unwrap_or_else(|| "n0\0".into()).into_bytes())
            }
            _ => Err("EINVAL"),
        }
    }
}

fn serve(mut c: UnixStream, store: Arc<Mutex<Store>>) {
    loop {
        let mut h = [0u8; 16];
        if c.read_exact(&mut h).is_err() {
            return;
        }
        let w = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
        let (ty, rid, tx, len) = (w(0), w(4), w(8), w(12) as usize);
        if len > 4096 {
            return; // the real one resets the connection
        }
        let mut body = vec![0u8; len];
        if c.read_exact(&mut body).is_err() {
            return;
        }
        let nul = body.iter().position(|b| *b == 0).unwrap_or(body.len());
        let path = String::from_utf8_lossy(&body[..nul]).into_owned();
        let rest = body.get(nul + 1..).unwrap_or(&[]).to_vec();
        let res = {
            let mut s = store.lock().unwrap();
            match ty {
                6 => {
                    s.next_tx += 1;
                    Ok(format!("{}\0", s.next_tx).into_bytes())
                }
                7 => Ok(b"OK\0".to_vec()),
                _ => {
                    let names = [
                        "",
                        "DIRECTORY",
                        "READ",
                        "GET_PERMS",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "",
                        "WRITE",
                        "MKDIR",
                        "RM",
                        "SET_PERMS",
                    ];
                    let name = names.get(ty as usize).copied().unwrap_or("?");
                    s.log.push(format!("{name} {path}"));
                    s.answer(ty, &path, &rest)
                }
            }
        };
        let (rty, payload) = match res {
            Ok(p) => (ty, p),
            Err(errno) => (16, format!("{errno}\0").into_bytes()),
        };
        let mut m = Vec::with_capacity(16 + payload.len());
        for v in [rty, rid, tx, payload.len() as u32] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&payload);
        if c.write_all(&m).is_err() {
            return;
        }
    }
}
