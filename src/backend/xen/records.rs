//! libxl's records in xenstore, read and kept the way libxl keeps them
//! (tools/libs/light/libxl_usb.c), so `xl usb-list` is truthful about what
//! the tool holds and `xl usbdev-attach` never collides with it.
//!
//! - A domain is found by name: `/local/domain/<domid>/name`; its uuid is
//!   `/local/domain/<domid>/vm` = `/vm/<uuid>` (libxl's lock files carry it).
//! - A devicemodel USB controller `<devid>` (QEMU id `xenusb-<devid>`) is
//!   recorded under `/libxl/<domid>/device/vusb/<devid>/`: `type` =
//!   "devicemodel", `usb-ver`, `num-ports`, and `port/1..N`, each "" when
//!   free or the host device's sysfs bus id ("1-2") when used. libxl makes
//!   the controller node with permissions "n0" (dom0 owns it, nobody else
//!   reads it); everything below inherits that.
//!
//! Generic over the xenstore stream so every function here is unit-tested
//! on in-memory replies; the Xen backend (`LibxlRecords` in `backend/xen/mod.rs`) calls them.

use crate::backend::wire::xenstore::{Tx, Xs, XsError, XsResult};
use crate::state::{Controller, CtrlOrigin, Origin, VmState};
use std::io::{Read, Write};

/// A running domain as xenstore names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    pub domid: u32,
    pub uuid: String,
}

/// What libxl records about one USB controller of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VusbCtrl {
    pub devid: u32,
    /// "devicemodel" (QEMU's), "pv" or "qusb" (backends this tool never uses).
    pub kind: String,
    pub usb_ver: String,
    /// `ports[i]` is port i+1's entry: "" free, else a sysfs bus id.
    pub ports: Vec<String>,
}

impl VusbCtrl {
    pub fn qemu_id(&self) -> String {
        format!("xenusb-{}", self.devid)
    }
    pub fn is_devicemodel(&self) -> bool {
        self.kind == "devicemodel"
    }
}

pub fn vusb_dir(domid: u32) -> String {
    format!("/libxl/{domid}/device/vusb")
}

pub fn ctrl_dir(domid: u32, devid: u32) -> String {
    format!("{}/{devid}", vusb_dir(domid))
}

pub fn port_path(domid: u32, devid: u32, port: u8) -> String {
    format!("{}/port/{port}", ctrl_dir(domid, devid))
}

/// The controller libxl records as `c` (driver from `usb-ver`, ports from
/// `num-ports`), to finish creating it in QEMU.
pub fn controller_of(c: &VusbCtrl) -> Option<Controller> {
    let driver = match c.usb_ver.as_str() {
        "1" => "piix3-usb-uhci",
        "2" => "usb-ehci",
        "3" => "nec-usb-xhci",
        _ => return None,
    };
    let n = u8::try_from(c.ports.len()).ok()?;
    let usb3_ports = if driver == "nec-usb-xhci" { n } else { 0 };
    Some(Controller { id: c.qemu_id(), driver: driver.into(), ports: n, usb3_ports, ..Default::default() })
}

/// libxl's `usb-ver` for the controller drivers it creates (libxl_usb.c:
/// version 1 piix3-usb-uhci, 2 usb-ehci, 3 nec-usb-xhci).
pub fn usb_ver(driver: &str) -> Option<u8> {
    match driver {
        "piix3-usb-uhci" => Some(1),
        "usb-ehci" => Some(2),
        "nec-usb-xhci" => Some(3),
        _ => None,
    }
}

/// Our own notes beside libxl's records (never a key in libxl's directory):
/// each change the tool starts to libxl's records, a controller's or a port
/// entry, is marked under `/tool/auto-usb-attach/<domid>/` in the same
/// transaction, and unmarked once QEMU has answered. A mark whose writer is
/// gone is a change that was interrupted (the run was killed, or QEMU did
/// not answer within the budget and the undo could not run): the next run
/// that reads the domain finishes or undoes it (`LibxlRecords::amend`).
pub fn mark_dir(domid: u32) -> String {
    format!("/tool/auto-usb-attach/{domid}")
}

pub fn ctrl_mark(domid: u32, devid: u32) -> String {
    format!("{}/controller/{devid}", mark_dir(domid))
}

pub fn port_mark(domid: u32, devid: u32, port: u8) -> String {
    format!("{}/port/{devid}-{port}", mark_dir(domid))
}

/// A removal under way: the entry emptied before `device_del`; the mark's
/// value ends with the bus id the entry held, to restore if QEMU kept it.
pub fn freeing_mark(domid: u32, devid: u32, port: u8) -> String {
    format!("{}/freeing/{devid}-{port}", mark_dir(domid))
}

/// The mark subdirectories, for finding a domain's marks all gone.
pub const MARK_KINDS: [&str; 3] = ["controller", "port", "freeing"];

/// This process as a mark's writer: "<pid> <start time>" (the start time, in
/// clock ticks since boot, tells a reused pid apart).
pub fn writer() -> String {
    let pid = std::process::id();
    format!("{pid} {}", start_time(pid).unwrap_or_default())
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the command name (field 2) may hold spaces, so count after its ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Is the process that wrote `mark` still running (and not this one)?
pub fn writer_alive(mark: &str) -> bool {
    let mut it = mark.split_whitespace();
    let (Some(Ok(pid)), Some(Ok(started))) = (it.next().map(str::parse::<u32>), it.next().map(str::parse::<u64>))
    else {
        return false;
    };
    pid != std::process::id() && start_time(pid) == Some(started)
}

/// Marks whose writer is gone: controllers (devids) and port entries (devid, port).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeadMarks {
    pub controllers: Vec<u32>,
    pub ports: Vec<(u32, u8)>,
    /// (devid, port, the bus id the entry held before it was emptied).
    pub freeing: Vec<(u32, u8, String)>,
}

/// The marks of `domid` whose writer is gone.
pub fn dead_marks<S: Read + Write>(xs: &mut Xs<S>, domid: u32) -> XsResult<DeadMarks> {
    // The usual case, no mark at all, costs one request.
    let kinds = match xs.directory(Tx::NONE, &mark_dir(domid)) {
        Ok(k) => k,
        Err(e) if e.is_enoent() => return Ok(DeadMarks::default()),
        Err(e) => return Err(e),
    };
    let mut list = |sub: &str| -> XsResult<Vec<(String, String)>> {
        if !kinds.iter().any(|k| k == sub) {
            return Ok(Vec::new());
        }
        let dir = format!("{}/{sub}", mark_dir(domid));
        let names = match xs.directory(Tx::NONE, &dir) {
            Ok(n) => n,
            Err(e) if e.is_enoent() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for n in names {
            if let Some(v) = xs.read_opt(Tx::NONE, &format!("{dir}/{n}"))? {
                if !writer_alive(&v) {
                    out.push((n, v));
                }
            }
        }
        Ok(out)
    };
    let controllers = list("controller")?.into_iter().filter_map(|(n, _)| n.parse().ok()).collect();
    let place = |n: &str| -> Option<(u32, u8)> {
        let (d, p) = n.split_once('-')?;
        Some((d.parse().ok()?, p.parse().ok()?))
    };
    let ports = list("port")?.into_iter().filter_map(|(n, _)| place(&n)).collect();
    let freeing = list("freeing")?
        .into_iter()
        .filter_map(|(n, v)| {
            let (d, p) = place(&n)?;
            Some((d, p, v.split_whitespace().nth(2).unwrap_or_default().to_string()))
        })
        .collect();
    Ok(DeadMarks { controllers, ports, freeing })
}

/// `xenusb-<devid>` -> devid.
pub fn devid_of(qemu_id: &str) -> Option<u32> {
    crate::plan::parse_controller_id(qemu_id)
}

/// Domains' names as read in this invocation: each domid's name is asked
/// of xenstore once, so finding N VMs among M domains costs about N + M
/// reads, not N x M (1,000 configured VMs and 100 domains fit the budget).
/// A domain renamed during one invocation is seen by the next.
#[derive(Debug, Default)]
pub struct Names(std::cell::RefCell<std::collections::HashMap<u32, Vec<u8>>>);

/// Domain `name`: the cached domid first (one read), else every domain's
/// name (each read once per invocation, `names`). A cached domid that now
/// has another name, or none, is logged and passed over.
pub fn find_domain<S: Read + Write>(
    xs: &mut Xs<S>,
    name: &str,
    cached: Option<u32>,
    names: &Names,
) -> XsResult<Option<Domain>> {
    if let Some(d) = cached {
        match xs.read_opt(Tx::NONE, &format!("/local/domain/{d}/name"))? {
            Some(n) if n == name => return Ok(Some(Domain { domid: d, uuid: uuid_of(xs, d)? })),
            Some(n) => log::info!("Xen domain {d} is now named {n:?}, not {name}; looking {name} up again"),
            None => log::info!("Xen domain {d} (was {name}) is gone; looking {name} up again"),
        }
    }
    let ids = match xs.directory(Tx::NONE, "/local/domain") {
        Ok(ids) => ids,
        Err(e) if e.is_enoent() => Vec::new(),
        Err(e) => return Err(e),
    };
    for id in ids.iter().filter_map(|i| i.parse::<u32>().ok()).filter(|i| Some(*i) != cached) {
        // Compared as bytes: a name that is not UTF-8 (any domain's, even one
        // the config never names) is simply not the one we look for.
        let known = names.0.borrow().get(&id).cloned();
        let found = match known {
            Some(n) => n,
            None => match xs.read(Tx::NONE, &format!("/local/domain/{id}/name")) {
                Ok(n) => {
                    names.0.borrow_mut().insert(id, n.clone());
                    n
                }
                // A domain dying meanwhile has no name any more: not ours.
                Err(e) if e.is_enoent() => continue,
                Err(e) => return Err(e),
            },
        };
        if found == name.as_bytes() {
            return Ok(Some(Domain { domid: id, uuid: uuid_of(xs, id)? }));
        }
        if std::str::from_utf8(&found).is_err() {
            log::debug!("Xen domain {id}'s name is not UTF-8 ({:?}); skipped", String::from_utf8_lossy(&found));
        }
    }
    Ok(None)
}

fn uuid_of<S: Read + Write>(xs: &mut Xs<S>, domid: u32) -> XsResult<String> {
    let path = format!("/local/domain/{domid}/vm");
    let vm = xs.read_opt(Tx::NONE, &path)?.unwrap_or_default();
    match vm.strip_prefix("/vm/") {
        Some(u) if !u.is_empty() => Ok(u.to_string()),
        _ => Err(XsError::Protocol(format!("{path} is {vm:?}, not /vm/<uuid>"))),
    }
}

/// Every USB controller libxl records for `domid` (none: empty).
pub fn read_vusb<S: Read + Write>(xs: &mut Xs<S>, tx: Tx, domid: u32) -> XsResult<Vec<VusbCtrl>> {
    let dir = vusb_dir(domid);
    let ids = match xs.directory(tx, &dir) {
        Ok(ids) => ids,
        Err(e) if e.is_enoent() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for devid in ids.iter().filter_map(|i| i.parse::<u32>().ok()) {
        let base = ctrl_dir(domid, devid);
        let kind = xs.read_opt(tx, &format!("{base}/type"))?.unwrap_or_default();
        let usb_ver = xs.read_opt(tx, &format!("{base}/usb-ver"))?.unwrap_or_default();
        let n: u8 = xs.read_opt(tx, &format!("{base}/num-ports"))?.and_then(|n| n.parse().ok()).unwrap_or(0);
        let mut ports = Vec::with_capacity(n as usize);
        for p in 1..=n {
            ports.push(xs.read_opt(tx, &port_path(domid, devid, p))?.unwrap_or_default());
        }
        out.push(VusbCtrl { devid, kind, usb_ver, ports });
    }
    out.sort_by_key(|c| c.devid);
    Ok(out)
}

/// libxl's records for a devicemodel controller the tool creates, all
/// ports free. Fails (EEXIST) if libxl already records that devid.
pub fn write_ctrl<S: Read + Write>(xs: &mut Xs<S>, tx: Tx, domid: u32, c: &Controller) -> XsResult<()> {
    let devid = devid_of(&c.id).ok_or_else(|| XsError::Protocol(format!("{} is not a xenusb-<devid> id", c.id)))?;
    let ver = usb_ver(&c.driver).ok_or_else(|| XsError::Protocol(format!("libxl has no usb-ver for {}", c.driver)))?;
    let base = ctrl_dir(domid, devid);
    if xs.read_opt(tx, &base)?.is_some() {
        return Err(XsError::Xenstored { errno: "EEXIST".into(), what: format!("{base}: libxl already records it") });
    }
    let n = c.ports.max(c.usb3_ports);
    xs.mkdir(tx, &base)?;
    // libxl: libxl__xs_mknod(..., noperm = n0); the rest inherit.
    xs.set_perms(tx, &base, &["n0"])?;
    xs.write(tx, &format!("{base}/type"), b"devicemodel")?;
    xs.write(tx, &format!("{base}/usb-ver"), ver.to_string().as_bytes())?;
    xs.write(tx, &format!("{base}/num-ports"), n.to_string().as_bytes())?;
    xs.write(tx, &format!("{base}/port"), b"")?;
    for p in 1..=n {
        xs.write(tx, &port_path(domid, devid, p), b"")?;
    }
    Ok(())
}

/// What the planner must know from libxl's records, folded into a view read
/// from QEMU: a port libxl records as used is taken (a device of ours on
/// it, or a foreign port); a `usb-host` device QEMU holds that libxl
/// records and we did not ask for is xl's. Returns the controllers libxl
/// records that QEMU does not hold (yet): libxl writes a controller's
/// records before its device_add, so such a controller means libxl is
/// adding it right now (domain start, `xl usbctrl-attach`).
pub fn fold_into(view: &mut VmState, recs: &[VusbCtrl]) -> Vec<String> {
    // A controller libxl has no record of (`-usb`'s UHCI from `usb = 1`) can
    // hold nothing `xl usb-list` would show: not ours to use on Xen.
    view.controllers.retain(|c| c.origin != CtrlOrigin::Vm);
    view.foreign_ports.retain(|f| f.rsplit_once(':').is_some_and(|(c, _)| view.controllers.iter().any(|q| q.id == c)));
    for c in &mut view.controllers {
        if recs.iter().any(|b| b.is_devicemodel() && b.qemu_id() == c.id) {
            c.origin = CtrlOrigin::Libxl;
        }
    }
    let mut pending = Vec::new();
    for c in recs.iter().filter(|c| c.is_devicemodel()) {
        let id = c.qemu_id();
        if !view.controllers.iter().any(|q| q.id == id) {
            pending.push(id);
            continue;
        }
        for (i, busid) in c.ports.iter().enumerate() {
            let port = i as u8 + 1;
            if busid.is_empty() {
                continue;
            }
            match view.devices.iter_mut().find(|d| d.controller == id && d.port == port) {
                Some(d) => {
                    if d.origin == Origin::Found {
                        d.origin = Origin::Xl;
                    }
                    if d.port_path.is_empty() {
                        d.port_path = busid.clone();
                    }
                }
                None => {
                    let f = format!("{id}:{port}");
                    if !view.foreign_ports.contains(&f) {
                        view.foreign_ports.push(f);
                    }
                }
            }
        }
    }
    pending
}

/// Where libxl's records and QEMU disagree, one line each (for `check`).
pub fn disagreements(qemu: &VmState, recs: &[VusbCtrl]) -> Vec<String> {
    let mut out = Vec::new();
    for c in recs.iter().filter(|c| c.is_devicemodel()) {
        let id = c.qemu_id();
        if !qemu.controllers.iter().any(|q| q.id == id) {
            out.push(format!("libxl records controller {id} (usb-ver {}), QEMU has none", c.usb_ver));
            continue;
        }
        for (i, busid) in c.ports.iter().enumerate() {
            let port = i as u8 + 1;
            let dev = qemu.devices.iter().find(|d| d.controller == id && d.port == port);
            let other = qemu.foreign_ports.contains(&format!("{id}:{port}"));
            match (busid.is_empty(), dev, other) {
                (false, None, false) => {
                    out.push(format!("libxl records {busid} on {id} port {port}, QEMU has nothing there"))
                }
                (true, Some(d), _) => out.push(format!("QEMU has {} on {id} port {port}, libxl records it free", d.id)),
                _ => {}
            }
        }
    }
    for q in qemu.controllers.iter().filter(|q| q.origin != CtrlOrigin::Vm) {
        if !recs.iter().any(|c| c.qemu_id() == q.id) {
            out.push(format!("QEMU has controller {} ({}), libxl has no record of it", q.id, q.driver));
        }
    }
    out
}

/// One line per controller: libxl's view ("xenusb-0 usb-ver 2: 1=1-8 2=- ...").
pub fn describe(recs: &[VusbCtrl]) -> String {
    if recs.is_empty() {
        return "no USB controllers".into();
    }
    recs.iter()
        .map(|c| {
            let ports: Vec<String> = c
                .ports
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{}={}", i + 1, if b.is_empty() { "-" } else { b }))
                .collect();
            format!("xenusb-{} ({} usb-ver {}): {}", c.devid, c.kind, c.usb_ver, ports.join(" "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Attached;
    use std::collections::BTreeMap;
    use std::io::Cursor;

    /// A tiny xenstored: answers READ/DIRECTORY/WRITE/MKDIR/SET_PERMS from a
    /// map, in the wire format of tests/fixtures/xenstored-4.17-transcript.txt
    /// (reply header echoes type and req_id; errors are XS_ERROR "ENOENT\0";
    /// DIRECTORY lists NUL-terminated names; WRITE/MKDIR answer "OK\0").
    struct Store {
        nodes: BTreeMap<String, String>,
        /// Values that are not UTF-8, read back as these bytes.
        raw: BTreeMap<String, Vec<u8>>,
        perms: BTreeMap<String, String>,
        inbox: Vec<u8>,
        out: Cursor<Vec<u8>>,
    }

    impl Store {
        fn new(nodes: &[(&str, &str)]) -> Store {
            let nodes = nodes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Store {
                nodes,
                raw: BTreeMap::new(),
                perms: BTreeMap::new(),
                inbox: Vec::new(),
                out: Cursor::new(Vec::new()),
            }
        }
        fn answer(&mut self, ty: u32, rid: u32, body: &[u8]) {
            let mut m = Vec::new();
            for v in [ty, rid, 0, body.len() as u32] {
                m.extend_from_slice(&v.to_le_bytes());
            }
            m.extend_from_slice(body);
            let pos = self.out.position();
            let mut buf = self.out.get_ref()[pos as usize..].to_vec();
            buf.extend_from_slice(&m);
            self.out = Cursor::new(buf);
        }
        fn handle(&mut self) {
            while self.inbox.len() >= 16 {
                let w = |i: usize| u32::from_le_bytes(self.inbox[i..i + 4].try_into().unwrap());
                let (ty, rid, len) = (w(0), w(4), w(12) as usize);
                if self.inbox.len() < 16 + len {
                    return;
                }
                let body: Vec<u8> = self.inbox[16..16 + len].to_vec();
                self.inbox.drain(..16 + len);
                let nul = body.iter().position(|b| *b == 0).unwrap_or(body.len());
                let path = String::from_utf8_lossy(&body[..nul]).into_owned();
                let rest = body.get(nul + 1..).unwrap_or(&[]).to_vec();
                let enoent = |s: &mut Store| s.answer(16, rid, b"ENOENT\0");
                match ty {
                    2 if self.raw.contains_key(&path) => {
                        let v = self.raw[&path].clone();
                        self.answer(2, rid, &v)
                    }
                    2 => match self.nodes.get(&path).cloned() {
                        Some(v) => self.answer(2, rid, v.as_bytes()),
                        None => enoent(self),
                    },
                    1 => {
                        if !self.nodes.contains_key(&path) {
                            enoent(self);
                            continue;
                        }
                        let pre = format!("{path}/");
                        let mut kids: Vec<String> = self
                            .nodes
                            .keys()
                            .filter_map(|k| k.strip_prefix(&pre))
                            .filter(|k| !k.contains('/'))
                            .map(str::to_string)
                            .collect();
                        kids.dedup();
                        let mut b = Vec::new();
                        for k in kids {
                            b.extend_from_slice(k.as_bytes());
                            b.push(0);
                        }
                        self.answer(1, rid, &b);
                    }
                    11 | 12 => {
                        let v = if ty == 11 { String::from_utf8_lossy(&rest).into_owned() } else { String::new() };
                        // xenstored creates missing parents (empty).
                        let mut at = 0;
                        while let Some(i) = path[at + 1..].find('/') {
                            at += i + 1;
                            self.nodes.entry(path[..at].to_string()).or_default();
                        }
                        if ty == 11 || !self.nodes.contains_key(&path) {
                            self.nodes.insert(path, v);
                        }
                        self.answer(ty, rid, b"OK\0");
                    }
                    14 => {
                        self.perms.insert(path, String::from_utf8_lossy(&rest).into_owned());
                        self.answer(14, rid, b"OK\0");
                    }
                    _ => self.answer(16, rid, b"EINVAL\0"),
                }
            }
        }
    }
    impl Read for Store {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.out.read(b)
        }
    }
    impl Write for Store {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.inbox.extend_from_slice(b);
            self.handle();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const UUID: &str = "98ded3d9-cda0-4c20-bd6d-99adbfa050fc";

    fn domains() -> Xs<Store> {
        Xs::new(Store::new(&[
            ("/local/domain", ""),
            ("/local/domain/0", ""),
            ("/local/domain/0/name", "Domain-0"),
            ("/local/domain/3", ""),
            ("/local/domain/3/name", "other"),
            ("/local/domain/3/vm", "/vm/00000000-0000-0000-0000-000000000003"),
            ("/local/domain/5", ""),
            ("/local/domain/5/name", "hvm1"),
            ("/local/domain/5/vm", &format!("/vm/{UUID}")),
        ]))
    }

    #[test]
    fn domains_are_found_by_name_and_a_stale_cached_domid_is_passed_over() {
        let mut xs = domains();
        assert_eq!(
            find_domain(&mut xs, "hvm1", None, &Names::default()).unwrap(),
            Some(Domain { domid: 5, uuid: UUID.into() })
        );
        assert_eq!(find_domain(&mut xs, "hvm1", Some(5), &Names::default()).unwrap().unwrap().domid, 5);
        // domid 3 is another domain now; domid 9 is gone: both passed over
        assert_eq!(find_domain(&mut xs, "hvm1", Some(3), &Names::default()).unwrap().unwrap().domid, 5);
        assert_eq!(find_domain(&mut xs, "hvm1", Some(9), &Names::default()).unwrap().unwrap().domid, 5);
        assert_eq!(find_domain(&mut xs, "nope", Some(5), &Names::default()).unwrap(), None);
    }

    #[test]
    fn a_mark_names_its_writer_and_a_gone_or_reused_pid_is_dead() {
        let me = writer();
        assert!(!writer_alive(&me), "our own marks are never 'alive' to us");
        let parent = std::os::unix::process::parent_id();
        let p = format!("{parent} {}", start_time(parent).unwrap());
        assert!(writer_alive(&p), "{p}");
        // Same pid, another start time: a reused pid, so the writer is gone.
        assert!(!writer_alive(&format!("{parent} 1")));
        assert!(!writer_alive("4194305 1"), "no such pid");
        assert!(!writer_alive("garbage"));
    }

    #[test]
    fn a_domain_name_that_is_not_utf8_is_skipped_not_fatal() {
        let xs = domains();
        let mut store = xs.into_inner();
        store.nodes.insert("/local/domain/4".into(), String::new());
        store.nodes.insert("/local/domain/4/name".into(), String::new());
        store.raw.insert("/local/domain/4/name".into(), vec![0x77, 0xff, 0xfe]);
        let mut xs = Xs::new(store);
        assert_eq!(find_domain(&mut xs, "hvm1", None, &Names::default()).unwrap().unwrap().domid, 5);
        assert_eq!(find_domain(&mut xs, "nope", None, &Names::default()).unwrap(), None);
    }

    fn records_of(xs: &mut Xs<Store>) -> Vec<VusbCtrl> {
        read_vusb(xs, Tx::NONE, 5).unwrap()
    }

    #[test]
    fn a_controller_is_recorded_as_libxl_records_it() {
        // tests/fixtures/libxl-usb-xenstore.txt, "after usbctrl-attach version=2"
        let mut xs = domains();
        let c = Controller {
            id: "xenusb-0".into(),
            driver: "usb-ehci".into(),
            ports: 6,
            usb3_ports: 0,
            ..Default::default()
        };
        write_ctrl(&mut xs, Tx::NONE, 5, &c).unwrap();
        let s = xs.into_inner();
        let got: Vec<(String, String)> = s
            .nodes
            .iter()
            .filter(|(k, _)| k.starts_with("/libxl/5/device/vusb/0"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut want = vec![
            ("/libxl/5/device/vusb/0".to_string(), String::new()),
            ("/libxl/5/device/vusb/0/num-ports".into(), "6".into()),
            ("/libxl/5/device/vusb/0/port".into(), String::new()),
            ("/libxl/5/device/vusb/0/type".into(), "devicemodel".into()),
            ("/libxl/5/device/vusb/0/usb-ver".into(), "2".into()),
        ];
        for p in 1..=6 {
            want.push((format!("/libxl/5/device/vusb/0/port/{p}"), String::new()));
        }
        want.sort();
        assert_eq!(got, want);
        assert_eq!(s.perms.get("/libxl/5/device/vusb/0").map(String::as_str), Some("n0\0"));
        // xhci: num-ports = max(p2, p3), usb-ver 3; and an existing devid is refused
        let mut xs = Xs::new(s);
        let x = Controller {
            id: "xenusb-1".into(),
            driver: "nec-usb-xhci".into(),
            ports: 8,
            usb3_ports: 8,
            ..Default::default()
        };
        write_ctrl(&mut xs, Tx::NONE, 5, &x).unwrap();
        let b = records_of(&mut xs);
        assert_eq!((b[1].usb_ver.as_str(), b[1].ports.len()), ("3", 8));
        assert_eq!(write_ctrl(&mut xs, Tx::NONE, 5, &x).unwrap_err().errno(), Some("EEXIST"));
    }

    fn dev(id: &str, ctrl: &str, port: u8, origin: Origin) -> Attached {
        let (bus, addr) = crate::plan::parse_device_id(id).unwrap();
        Attached {
            id: id.into(),
            bus,
            addr,
            controller: ctrl.into(),
            port,
            port_path: String::new(),
            usb_id: String::new(),
            serial: String::new(),
            origin,
        }
    }

    #[test]
    fn libxls_used_ports_are_taken_and_its_devices_are_xls() {
        let ehci = Controller {
            id: "xenusb-0".into(),
            driver: "usb-ehci".into(),
            ports: 6,
            usb3_ports: 0,
            ..Default::default()
        };
        let mut view = VmState {
            controllers: vec![ehci],
            devices: vec![
                dev("xenusb-1-2", "xenusb-0", 1, Origin::Found),
                dev("xenusb-1-5", "xenusb-0", 3, Origin::Rule),
            ],
            ..Default::default()
        };
        let mut ports = vec![String::new(); 6];
        ports[0] = "1-8".into(); // xl's device, QEMU has it
        ports[1] = "1-9".into(); // libxl about to add one (written before its device_add)
        ports[2] = "1-4.1".into(); // ours
        let recs = vec![
            VusbCtrl { devid: 0, kind: "devicemodel".into(), usb_ver: "2".into(), ports },
            VusbCtrl { devid: 1, kind: "devicemodel".into(), usb_ver: "3".into(), ports: vec![String::new(); 8] },
        ];
        let raw = view.clone();
        let pending = fold_into(&mut view, &recs);
        assert_eq!(pending, ["xenusb-1"]);
        assert_eq!(view.foreign_ports, ["xenusb-0:2"]);
        assert_eq!((view.devices[0].origin, view.devices[0].port_path.as_str()), (Origin::Xl, "1-8"));
        assert_eq!(view.devices[1].origin, Origin::Rule);
        let d = disagreements(&raw, &recs);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("libxl records 1-9 on xenusb-0 port 2, QEMU has nothing there"), "{d:?}");
        assert!(d[1].contains("libxl records controller xenusb-1"), "{d:?}");
        // QEMU holding a device on a port libxl calls free, and a controller libxl never heard of
        view.devices.push(dev("xenusb-1-7", "xenusb-0", 5, Origin::Rule));
        view.controllers.push(Controller {
            id: "xenusb-2".into(),
            driver: "usb-ehci".into(),
            ports: 6,
            usb3_ports: 0,
            ..Default::default()
        });
        let d = disagreements(&view, &recs[..1]);
        assert!(d.iter().any(|l| l.contains("QEMU has xenusb-1-7 on xenusb-0 port 5, libxl records it free")), "{d:?}");
        assert!(d.iter().any(|l| l.contains("QEMU has controller xenusb-2")), "{d:?}");
        assert!(describe(&recs[..1]).starts_with("xenusb-0 (devicemodel usb-ver 2): 1=1-8 2=1-9 3=1-4.1 4=-"));
    }
}
