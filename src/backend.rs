//! Where a backend's bookkeeping beside each change to a VM goes.
//!
//! `Session` calls `before` ahead of every `device_add`/`device_del` it
//! sends and `after` once QEMU has answered, with the outcome. A backend can
//! veto a change (an error from `before`: nothing is sent) and undo its own
//! bookkeeping when QEMU refused (`after` with `Err`). libxl's order, which
//! the Xen backend follows: write the xenstore port entry, device_add, empty
//! the entry on failure; on removal empty the entry, device_del, restore it
//! on failure.
//!
//! These hooks are for backends reached over QMP (plain QEMU, Xen); a
//! libvirt domain is changed through libvirtd instead (`session::Link`).
//! Also here: finding which Xen domain libxl records an unplugged device in
//! (`libxl_holder`), for the event path.

use crate::error::Result;
use crate::qmp::QmpError;
use crate::state::{Attached, Controller, VmState};
use crate::types::BusAddr;
use std::fmt;

/// One change to a VM, as the session is about to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddController(Controller),
    /// `device_add` of a controller the backend already records: an earlier
    /// run wrote its records and was interrupted before QEMU had it.
    FinishController(Controller),
    /// The record the device will have once added (controller, port, host
    /// bus:addr); `hostdevice` is the node QEMU opens, if any.
    AddDevice {
        dev: Attached,
        hostdevice: Option<String>,
    },
    /// `place`: the controller and port the view has it on, if known.
    DelDevice {
        id: String,
        at: BusAddr,
        place: Option<(String, u8)>,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddController(c) => write!(f, "device_add {} ({})", c.id, c.driver),
            Op::FinishController(c) => {
                write!(f, "device_add {} ({}), finishing an interrupted creation", c.id, c.driver)
            }
            Op::AddDevice { dev, .. } => {
                write!(f, "device_add {} (usb-host {}) on {} port {}", dev.id, dev.at(), dev.controller, dev.port)
            }
            Op::DelDevice { id, at, .. } => write!(f, "device_del {id} ({at})"),
        }
    }
}

pub trait Backend {
    /// Short name for logs ("qemu", "xen").
    fn name(&self) -> &'static str;
    /// Called before `op` is sent; an error vetoes it (nothing is sent).
    fn before(&mut self, _op: &Op) -> Result<()> {
        Ok(())
    }
    /// Called after QEMU answered `op` (`Err`: QEMU refused or did not
    /// answer; undo what `before` did). An error here is reported, after
    /// QEMU's own.
    fn after(&mut self, _op: &Op, _outcome: std::result::Result<(), &QmpError>) -> Result<()> {
        Ok(())
    }
    /// For `--dry-run`: what `before` and `after` would write for `op`
    /// (e.g. xenstore paths and values), one line each, writing nothing.
    /// The session prints these around the QMP command it would send.
    fn describe(&self, _op: &Op) -> Vec<String> {
        Vec::new()
    }
    /// Fold the backend's own records into a view just read from QEMU (Xen:
    /// ports libxl records as used are taken; xl's devices are marked).
    /// Returns what the backend records that QEMU does not hold yet (Xen:
    /// controllers libxl is adding right now): the VM is not ready.
    fn amend(&mut self, _view: &mut VmState) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// `d`, ours, is gone from the same QEMU: did someone remove it by hand
    /// (Xen: `xl usbdev-detach` leaves libxl's entry empty)?
    fn removed_by_hand(&mut self, _d: &Attached) -> Result<bool> {
        Ok(false)
    }
    /// Controllers an interrupted run left recorded but not in QEMU, found by
    /// the last `amend`: the session finishes them (`Op::FinishController`).
    fn take_unfinished(&mut self) -> Vec<Controller> {
        Vec::new()
    }
    /// The backend's own records, where it keeps any (Xen: libxl's).
    fn records(&mut self) -> Option<Result<Vec<crate::xen::VusbCtrl>>> {
        None
    }
}

/// A QEMU/KVM VM with its own QMP socket: QEMU is the only record.
#[derive(Debug, Default)]
pub struct PlainQemu;

impl Backend for PlainQemu {
    fn name(&self) -> &'static str {
        "qemu"
    }
}

/// A Xen domain's device model, whose USB records libxl keeps in xenstore
/// (`crate::xen`). The hooks keep them exactly as libxl does:
///
/// - new controller: its full records (`xen::write_ctrl`) in one
///   transaction under libxl's domain-userdata-lock, before `device_add`;
///   removed again if QEMU refuses;
/// - new device: its port entry (sysfs bus id) in a transaction under the
///   domain-userdata-lock, before `device_add`; emptied if QEMU refuses. A
///   port libxl records as used by another device vetoes the change;
/// - removal: the entry emptied (no lock, as libxl), then `device_del`;
///   restored if QEMU refuses.
///
/// Lock order: the caller already holds our state lock and libxl's
/// qmp-socket-lock for this domain (`qmp_lock`, taken before connecting);
/// the domain-userdata-lock is taken last and only around one xenstore
/// transaction. No cycle with `xl`: libxl takes the userdata lock with a
/// blocking flock inside a synchronous section (libxl_usb.c's
/// `*_add_xenstore`) and releases it before it asks for the QMP lock, which
/// it takes asynchronously (`libxl__ev_slowlock`), so it never waits for the
/// QMP lock while holding the userdata lock; and nothing of libxl's waits on
/// our state lock. Every wait is bounded by the invocation's deadline anyway.
pub struct Xen {
    pub domid: u32,
    pub uuid: String,
    pub xs: crate::xenstore::Client,
    pub root: crate::root::Root,
    pub lib_dir: std::path::PathBuf,
    pub deadline: crate::deadline::Deadline,
    /// libxl's qmp-socket-lock, held for as long as the session's socket is
    /// open: `Session` declares its QMP client before its backend, so the
    /// socket is closed before this is released.
    pub qmp_lock: Option<crate::xenlock::XenLock>,
    /// What `before` changed, for `after` to undo: (node, old value).
    undo: Option<(String, Vec<u8>)>,
    /// The mark `before` wrote beside libxl's records (`xen::mark_dir`), for
    /// `after` to remove once QEMU answered and any undo is done.
    mark: Option<String>,
    /// Found by `amend`: controllers of ours an interrupted run left unfinished.
    unfinished: Vec<Controller>,
    /// A dry run: `amend` says what it would repair and writes nothing.
    pub dry_run: bool,
}

impl Xen {
    pub fn new(
        link: crate::vm::XenLink,
        root: crate::root::Root,
        lib_dir: std::path::PathBuf,
        deadline: crate::deadline::Deadline,
    ) -> Xen {
        Xen {
            domid: link.domain.domid,
            uuid: link.domain.uuid,
            xs: link.xs,
            root,
            lib_dir,
            deadline,
            qmp_lock: Some(link.qmp_lock),
            undo: None,
            mark: None,
            unfinished: Vec::new(),
            dry_run: false,
        }
    }

    fn userdata_lock(&self) -> Result<crate::xenlock::XenLock> {
        let p = crate::xenlock::path(
            &self.root,
            &self.lib_dir,
            self.domid,
            &self.uuid,
            crate::xenlock::Kind::DomainUserdata,
        )?;
        crate::xenlock::XenLock::acquire(&p, &self.deadline)
    }

    fn xs_err(&self, e: crate::xenstore::XsError) -> crate::error::Error {
        crate::error::Error::new(format!("Xen domain {}: libxl's records: {e}", self.domid))
    }

    /// libxl's records of this domain's USB controllers.
    pub fn books(&mut self) -> Result<Vec<crate::xen::VusbCtrl>> {
        let domid = self.domid;
        crate::xen::read_vusb(&mut self.xs, crate::xenstore::Tx::NONE, domid).map_err(|e| self.xs_err(e))
    }

    /// Undo what `before` wrote when QEMU refused `op` or did not answer.
    fn undo_after(&mut self, op: &Op, outcome: std::result::Result<(), &QmpError>) -> Result<()> {
        let Some((node, old)) = self.undo.take() else { return Ok(()) };
        let Err(e) = outcome else { return Ok(()) };
        let tx = crate::xenstore::Tx::NONE;
        match op {
            Op::AddController(_) | Op::FinishController(_) => {
                let _lock = self.userdata_lock()?;
                self.xs.rm(tx, &node).map_err(|e| self.xs_err(e))
            }
            // Gone from QEMU already: the entry stays empty.
            Op::DelDevice { .. } if e.refusal() == Some(crate::qmp::Refusal::DeviceNotFound) => Ok(()),
            _ => self.xs.write(tx, &node, &old).map_err(|e| self.xs_err(e)),
        }
    }

    /// What interrupted runs of ours left (marks whose writer is gone):
    /// - a controller libxl records and QEMU lacks: finished by the session
    ///   (taken out of `pending`, which otherwise would call the domain "not
    ///   ready" until it restarts);
    /// - a port entry naming a device QEMU does not hold on that port:
    ///   emptied, so `xl usb-list` is true and the port free again.
    ///
    /// A mark whose change QEMU does have is simply removed.
    fn repair_interrupted(
        &mut self,
        view: &mut VmState,
        books: &[crate::xen::VusbCtrl],
        pending: &mut Vec<String>,
    ) -> Result<()> {
        let domid = self.domid;
        let crate::xen::DeadMarks { controllers: ctrls, ports, freeing } =
            crate::xen::dead_marks(&mut self.xs, domid).map_err(|e| self.xs_err(e))?;
        let tx = crate::xenstore::Tx::NONE;
        let mut unmark = Vec::new();
        for devid in ctrls {
            let id = format!("xenusb-{devid}");
            let spec = books.iter().find(|b| b.devid == devid).and_then(crate::xen::controller_of);
            match spec {
                Some(c) if pending.contains(&id) => {
                    pending.retain(|p| *p != id);
                    if self.dry_run {
                        println!(
                            "would finish {id} ({}), which an interrupted run left in libxl's records only",
                            c.driver
                        );
                    } else {
                        self.unfinished.push(c);
                    }
                }
                _ => unmark.push(crate::xen::ctrl_mark(domid, devid)),
            }
        }
        for (devid, port) in ports {
            let id = format!("xenusb-{devid}");
            let held = view.devices.iter().any(|d| d.controller == id && d.port == port);
            let node = crate::xen::port_path(domid, devid, port);
            if !held {
                let entry = self.xs.read_opt(tx, &node).map_err(|e| self.xs_err(e))?.unwrap_or_default();
                if !entry.is_empty() {
                    if self.dry_run {
                        println!(
                            "would empty {node} ({entry:?}): an interrupted attach left it, QEMU has no device there"
                        );
                        continue;
                    }
                    self.xs.write(tx, &node, b"").map_err(|e| self.xs_err(e))?;
                    log::info!(
                        "Xen domain {domid}: emptied libxl's entry {node} ({entry}) that an interrupted attach left \
                         (QEMU has no device there)"
                    );
                }
                view.foreign_ports.retain(|f| *f != format!("{id}:{port}"));
            }
            unmark.push(crate::xen::port_mark(domid, devid, port));
        }
        for (devid, port, busid) in freeing {
            // A removal cut off: if QEMU kept the device, libxl's entry says so again;
            // if it went, the entry stays empty.
            let id = format!("xenusb-{devid}");
            let held = view.devices.iter().any(|d| d.controller == id && d.port == port);
            let node = crate::xen::port_path(domid, devid, port);
            let entry = self.xs.read_opt(tx, &node).map_err(|e| self.xs_err(e))?;
            let want = if held { busid.as_str() } else { "" };
            if entry.is_some_and(|e| e != want && (e.is_empty() || e == busid)) {
                if self.dry_run {
                    println!("would write {node} = {want:?}: an interrupted detach left it");
                    continue;
                }
                self.xs.write(tx, &node, want.as_bytes()).map_err(|e| self.xs_err(e))?;
                log::info!("Xen domain {domid}: {node} = {want:?} again, after an interrupted detach");
            }
            unmark.push(crate::xen::freeing_mark(domid, devid, port));
        }
        if !self.dry_run && !unmark.is_empty() {
            self.unmark(&unmark).map_err(|e| self.xs_err(e))?;
        }
        Ok(())
    }

    /// Remove `marks`, and the domain's mark directory once it holds none.
    fn unmark(&mut self, marks: &[String]) -> crate::xenstore::XsResult<()> {
        let tx = crate::xenstore::Tx::NONE;
        for m in marks {
            self.xs.rm(tx, m)?;
        }
        let dir = crate::xen::mark_dir(self.domid);
        for sub in crate::xen::MARK_KINDS {
            match self.xs.directory(tx, &format!("{dir}/{sub}")) {
                Ok(left) if !left.is_empty() => return Ok(()),
                Err(e) if !e.is_enoent() => return Err(e),
                _ => {}
            }
        }
        self.xs.rm(tx, &dir)
    }

    fn add_device(&mut self, dev: &Attached) -> Result<()> {
        let Some(devid) = crate::xen::devid_of(&dev.controller) else { return Ok(()) };
        let node = crate::xen::port_path(self.domid, devid, dev.port);
        let busid = dev.port_path.clone();
        let mark = crate::xen::port_mark(self.domid, devid, dev.port);
        let writer = crate::xen::writer();
        let _lock = self.userdata_lock()?;
        let deadline = self.deadline;
        let res = self.xs.transaction(&deadline, |xs, tx| {
            match xs.read_opt(tx, &node)? {
                // A controller libxl has no record of (not libxl's books).
                None => Ok(false),
                Some(v) if v.is_empty() || v == busid => {
                    xs.write(tx, &node, busid.as_bytes())?;
                    xs.write(tx, &mark, writer.as_bytes())?;
                    Ok(true)
                }
                Some(v) => Err(crate::xenstore::XsError::Xenstored {
                    errno: "EBUSY".into(),
                    what: format!("libxl records port {} of {} as used by {v}", dev.port, dev.controller),
                }),
            }
        });
        match res {
            Ok(true) => {
                log::debug!("xenstore: {node} = {busid:?}");
                self.undo = Some((node, Vec::new()));
                self.mark = Some(crate::xen::port_mark(self.domid, devid, dev.port));
                Ok(())
            }
            Ok(false) => {
                log::warn!(
                    "Xen domain {}: libxl has no record of {}; xl will not see {}",
                    self.domid,
                    dev.controller,
                    dev.id
                );
                Ok(())
            }
            Err(e) => Err(self.xs_err(e)),
        }
    }
}

impl Backend for Xen {
    fn name(&self) -> &'static str {
        "xen"
    }

    fn before(&mut self, op: &Op) -> Result<()> {
        self.undo = None;
        self.mark = None;
        match op {
            Op::AddController(c) => {
                let _lock = self.userdata_lock()?;
                let (domid, deadline) = (self.domid, self.deadline);
                let devid = crate::xen::devid_of(&c.id).unwrap_or_default();
                let (mark, writer) = (crate::xen::ctrl_mark(domid, devid), crate::xen::writer());
                self.xs
                    .transaction(&deadline, |xs, tx| {
                        crate::xen::write_ctrl(xs, tx, domid, c)?;
                        xs.write(tx, &mark, writer.as_bytes())
                    })
                    .map_err(|e| self.xs_err(e))?;
                self.undo = Some((crate::xen::ctrl_dir(domid, devid), Vec::new()));
                self.mark = Some(mark);
                Ok(())
            }
            // The records are there; if QEMU refuses again, they go.
            Op::FinishController(c) => {
                let devid = crate::xen::devid_of(&c.id).unwrap_or_default();
                self.undo = Some((crate::xen::ctrl_dir(self.domid, devid), Vec::new()));
                self.mark = Some(crate::xen::ctrl_mark(self.domid, devid));
                Ok(())
            }
            Op::AddDevice { dev, .. } => self.add_device(dev),
            Op::DelDevice { place: Some((ctrl, port)), .. } => {
                let Some(devid) = crate::xen::devid_of(ctrl) else { return Ok(()) };
                let node = crate::xen::port_path(self.domid, devid, *port);
                let tx = crate::xenstore::Tx::NONE;
                let old = match self.xs.read(tx, &node) {
                    Ok(v) => v,
                    Err(e) if e.is_enoent() => return Ok(()),
                    Err(e) => return Err(self.xs_err(e)),
                };
                // libxl__device_usbdev_remove_xenstore: a plain write, no lock.
                // Ours adds a mark naming what the entry held, in the same
                // transaction, so a cut-off device_del can be told and undone.
                let mark = crate::xen::freeing_mark(self.domid, devid, *port);
                let value = format!("{} {}", crate::xen::writer(), String::from_utf8_lossy(&old));
                let deadline = self.deadline;
                self.xs
                    .transaction(&deadline, |xs, tx| {
                        xs.write(tx, &node, b"")?;
                        if !old.is_empty() {
                            xs.write(tx, &mark, value.as_bytes())?;
                        }
                        Ok(())
                    })
                    .map_err(|e| self.xs_err(e))?;
                if !old.is_empty() {
                    self.mark = Some(mark);
                }
                self.undo = Some((node, old));
                Ok(())
            }
            Op::DelDevice { place: None, .. } => Ok(()),
        }
    }

    fn after(&mut self, op: &Op, outcome: std::result::Result<(), &QmpError>) -> Result<()> {
        let undone = self.undo_after(op, outcome);
        // A failed undo keeps its mark: the next run repairs what is left.
        if let (Ok(()), Some(mark)) = (&undone, self.mark.take()) {
            if let Err(e) = self.unmark(&[mark]) {
                log::debug!("xenstore: removing our mark: {e} (the next run removes it)");
            }
        }
        undone
    }

    fn take_unfinished(&mut self) -> Vec<Controller> {
        std::mem::take(&mut self.unfinished)
    }

    /// The xenstore writes `before` would make (a dry run makes none).
    fn describe(&self, op: &Op) -> Vec<String> {
        let domid = self.domid;
        match op {
            Op::AddController(c) => {
                let Some(devid) = crate::xen::devid_of(&c.id) else { return Vec::new() };
                let n = c.ports.max(c.usb3_ports);
                let ver = crate::xen::usb_ver(&c.driver).map(|v| v.to_string()).unwrap_or_default();
                vec![format!(
                    "write xenstore {} = {{type = \"devicemodel\", usb-ver = \"{ver}\", num-ports = \"{n}\", \
                     port/1..{n} = \"\"}} (under libxl's domain-userdata-lock)",
                    crate::xen::ctrl_dir(domid, devid)
                )]
            }
            Op::AddDevice { dev, .. } => match crate::xen::devid_of(&dev.controller) {
                Some(devid) => vec![format!(
                    "write xenstore {} = {:?} if libxl records {} (under libxl's domain-userdata-lock)",
                    crate::xen::port_path(domid, devid, dev.port),
                    dev.port_path,
                    dev.controller
                )],
                None => Vec::new(),
            },
            Op::DelDevice { place: Some((ctrl, port)), .. } => match crate::xen::devid_of(ctrl) {
                Some(devid) => vec![format!("write xenstore {} = \"\"", crate::xen::port_path(domid, devid, *port))],
                None => Vec::new(),
            },
            Op::DelDevice { place: None, .. } | Op::FinishController(_) => Vec::new(),
        }
    }

    fn amend(&mut self, view: &mut VmState) -> Result<Vec<String>> {
        let books = self.books()?;
        let mut pending = crate::xen::fold_into(view, &books);
        self.repair_interrupted(view, &books, &mut pending)?;
        Ok(pending)
    }

    fn removed_by_hand(&mut self, d: &Attached) -> Result<bool> {
        let Some(devid) = crate::xen::devid_of(&d.controller) else { return Ok(false) };
        let node = crate::xen::port_path(self.domid, devid, d.port);
        match self.xs.read_opt(crate::xenstore::Tx::NONE, &node) {
            Ok(v) => Ok(v.is_some_and(|v| v.is_empty())),
            Err(e) => Err(self.xs_err(e)),
        }
    }

    fn records(&mut self) -> Option<Result<Vec<crate::xen::VusbCtrl>>> {
        Some(self.books())
    }
}

/// Where libxl records a host device (`xl usbdev-attach`): the configured
/// VM (index into `config.vms`), its domain, and the controller and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibxlPlace {
    pub vm: usize,
    pub domid: u32,
    pub devid: u32,
    pub port: u8,
}

/// Which of the Xen VMs `vms` ((index, name, cached domid)) has a domain in
/// whose records libxl has `busid` on a port, within `deadline`.
pub fn libxl_holder(
    root: &crate::root::Root,
    deadline: &crate::deadline::Deadline,
    vms: &[(usize, &str, Option<u32>)],
    busid: &str,
    names: &crate::xen::Names,
) -> crate::xenstore::XsResult<Option<LibxlPlace>> {
    let mut xs = crate::xenstore::connect(root, deadline)?;
    for &(vm, name, cached) in vms {
        let Some(dom) = crate::xen::find_domain(&mut xs, name, cached, names)? else { continue };
        let books = crate::xen::read_vusb(&mut xs, crate::xenstore::Tx::NONE, dom.domid)?;
        if let Some((devid, port)) = books
            .iter()
            .filter(|c| c.is_devicemodel())
            .find_map(|c| c.ports.iter().position(|b| b == busid).map(|p| (c.devid, p as u8 + 1)))
        {
            return Ok(Some(LibxlPlace { vm, domid: dom.domid, devid, port }));
        }
    }
    Ok(None)
}

/// Empty libxl's entry at `place` if it still names `busid` (QEMU no longer
/// has the device: the entry must not outlive it).
pub fn empty_libxl_entry(
    root: &crate::root::Root,
    deadline: &crate::deadline::Deadline,
    place: &LibxlPlace,
    busid: &str,
) -> Result<()> {
    let err = |e: crate::xenstore::XsError| crate::error::Error::new(format!("Xen domain {}: {e}", place.domid));
    let mut xs = crate::xenstore::connect(root, deadline).map_err(err)?;
    let node = crate::xen::port_path(place.domid, place.devid, place.port);
    let tx = crate::xenstore::Tx::NONE;
    if xs.read_opt(tx, &node).map_err(err)?.as_deref() == Some(busid) {
        xs.write(tx, &node, b"").map_err(err)?;
        log::info!("emptied libxl's entry for {busid} ({node})");
    }
    Ok(())
}
