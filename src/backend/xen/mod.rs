//! Xen HVM domains: the device model's QMP socket (`qmp-libxl-<domid>`,
//! found through xenstore, connected to under libxl's qmp-socket-lock) plus
//! libxl's own USB records in xenstore, kept exactly as libxl keeps them so
//! `xl usb-list` stays true and `xl` keeps working beside the tool.
//!
//! `records` reads and writes libxl's xenstore layout, `lock` takes libxl's
//! lock files; `XenVm` is the `Link`: `Qemu` for QEMU, `LibxlRecords` around each
//! change.

mod lock;
mod records;

use super::qemu::{self, Dialled, Qemu};
use super::wire::qmp::{QmpError, QmpResult, Refusal};
use super::wire::xenstore as xs;
use super::{Env, Finder, Link, Located, Op, OpError, Opened, OwnerRecord, RecordsReport};
use crate::config::{Config, VmConfig};
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::root::Root;
use crate::state::{Attached, Controller, VmState};
use serde_json::Value;

pub(crate) use records::Names;

/// Where libxl puts a domain's QMP socket: `<xen-run-dir>/qmp-libxl-<domid>`.
const SOCKET_PREFIX: &str = "qmp-libxl-";

/// A Xen domain's device model, reached over QMP, with libxl's records
/// kept around each change. Field order is drop order: the QMP socket is
/// closed before `libxl` lets go of libxl's QMP lock.
pub(super) struct XenVm {
    qemu: Qemu,
    libxl: LibxlRecords,
}

impl Link for XenVm {
    fn enumerate(&mut self) -> QmpResult<VmState> {
        self.qemu.enumerate()
    }

    fn holds(&mut self, id: &str) -> QmpResult<bool> {
        self.qemu.holds(id)
    }

    fn holds_device_open(&mut self, id: &str) -> QmpResult<bool> {
        self.qemu.holds_device_open(id)
    }

    fn has_pci_bus(&mut self) -> QmpResult<bool> {
        self.qemu.has_pci_bus()
    }

    fn pci_room(&mut self) -> QmpResult<crate::plan::PciRoom> {
        self.qemu.pci_room()
    }

    /// HVM guests rebooted in SeaBIOS about when a controller was hot-plugged
    /// right after `xl create` (issue 19): none goes in while the firmware
    /// runs (`firmware`). Before it (hvmloader has mapped no BAR: found like
    /// a cold-plugged one) and after it (a boot sector was read) is fine.
    fn controller_wait(&mut self) -> QmpResult<Option<String>> {
        Ok(match super::firmware::guest_can_take_controller(&mut self.qemu.q)? {
            super::firmware::Phase::Inside(why) => Some(why),
            phase => {
                log::debug!("Xen domain {}: {phase:?}: a controller may go in", self.libxl.domid);
                None
            }
        })
    }

    /// libxl's order: records first (a veto sends nothing), then QEMU, then
    /// the records undone if QEMU refused.
    fn send(&mut self, op: &Op, args: Value) -> std::result::Result<(), OpError> {
        self.libxl.before(op).map_err(OpError::Records)?;
        let res = self.qemu.execute(op, args);
        let after = self.libxl.after(op, res.as_ref().map(|_| ()));
        res?;
        after.map_err(OpError::Records)
    }

    fn describe(&self, vm: &str, op: &Op, args: &Value) -> Vec<String> {
        let mut lines: Vec<String> =
            self.libxl.describe(op).into_iter().map(|l| format!("would {l} (xen bookkeeping) in VM {vm}")).collect();
        lines.push(Qemu::describe_line(vm, op, args));
        lines
    }

    fn amend(&mut self, view: &mut VmState) -> Result<Vec<String>> {
        self.libxl.amend(view)
    }

    fn take_unfinished(&mut self) -> Vec<Controller> {
        self.libxl.take_unfinished()
    }

    fn removed_by_hand(&mut self, d: &Attached) -> Result<bool> {
        self.libxl.removed_by_hand(d)
    }

    fn records_report(&mut self, view: &mut VmState) -> Option<Result<RecordsReport>> {
        let recs = match self.libxl.read() {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        for c in &mut view.controllers {
            if recs.iter().any(|b| b.is_devicemodel() && b.qemu_id() == c.id) {
                c.origin = crate::state::CtrlOrigin::Libxl;
            }
        }
        Some(Ok(RecordsReport {
            described: records::describe(&recs),
            has_controller: recs.iter().any(|c| c.is_devicemodel()),
            disagreements: records::disagreements(view, &recs),
        }))
    }

    fn set_dry_run(&mut self, on: bool) {
        self.libxl.dry_run = on;
    }

    fn settles_after_start(&self) -> bool {
        true
    }
}

/// Xen domains: found by name through xenstore.
pub(super) struct Xen;

impl Finder for Xen {
    fn locate(&self, env: &Env<'_>, vm: &VmConfig, cached: Option<u32>, deadline: &Deadline) -> Result<Located> {
        locate(env.root, env.config, vm, cached, deadline, env.names)
    }
    /// A domain's device model makes `qmp-libxl-<domid>` there as it starts.
    fn start_dir(&self, config: &crate::config::Config, _: &VmConfig) -> Option<std::path::PathBuf> {
        Some(config.xen_run_dir.clone())
    }

    /// xenstored answers and says which domain is the VM's (cached in
    /// `Names`, so the `locate` that follows asks less).
    fn probe(&self, env: &Env<'_>, vm: &VmConfig, cached: Option<u32>, deadline: &Deadline) -> Result<()> {
        let mut xs = xs::connect(env.root, deadline)
            .map_err(|e| Error::caused(format!("VM {}: cannot reach xenstored", vm.name), e))?;
        records::find_domain(&mut xs, &vm.name, cached, env.names)
            .map_err(|e| Error::caused(format!("VM {}: looking up its domain in xenstore", vm.name), e))
            .map(drop)
    }

    /// `xl usbdev-attach` puts a host device in a domain and writes libxl's
    /// entry for it; QEMU and that entry must not outlive the device.
    fn owner_record(
        &self,
        env: &Env<'_>,
        vms: &[(usize, Option<u32>)],
        busid: &str,
        deadline: &Deadline,
    ) -> Result<Option<OwnerRecord>> {
        holder(env, vms, busid, deadline).map_err(|e| Error::caused("xenstore", e))
    }

    fn forget_owner_record(&self, env: &Env<'_>, rec: &OwnerRecord, busid: &str, deadline: &Deadline) -> Result<()> {
        empty_entry(env.root, deadline, &rec.place, busid)
    }
}

/// A Xen domain by name, through xenstore (never by asking sockets: a
/// socket is libxl's, and a busy one would cost us our budget): name ->
/// domid -> `<xen-run-dir>/qmp-libxl-<domid>`, connected to under libxl's
/// qmp-socket-lock for that domain (held until the link is dropped).
fn locate(
    root: &Root,
    config: &Config,
    vm: &VmConfig,
    cached_domid: Option<u32>,
    deadline: &Deadline,
    names: &Names,
) -> Result<Located> {
    let mut xs = xs::connect(root, deadline).map_err(|e| {
        Error::caused(format!("VM {}: cannot reach xenstored (is this a Xen dom0 with xenstored running?)", vm.name), e)
    })?;
    let found = records::find_domain(&mut xs, &vm.name, cached_domid, names)
        .map_err(|e| Error::caused(format!("VM {}: looking up its domain in xenstore", vm.name), e))?;
    let Some(domain) = found else {
        return Ok(Located::NotRunning(format!("xenstore has no domain named {}", vm.name)));
    };
    let domid = domain.domid;
    let shown = config.xen_run_dir.join(format!("{SOCKET_PREFIX}{domid}"));
    let path = root.path(&shown);
    let stale = || {
        let dir = std::fs::read_dir(root.path(&config.xen_run_dir)).ok()?;
        let socks = dir
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(SOCKET_PREFIX))
            .map(|e| e.path());
        qemu::stale_age(socks)
    };
    let Some(instance) = qemu::instance_of(&path) else {
        // libxl records a device model before it starts it.
        let dm = xs.read_opt(xs::Tx::NONE, &format!("/libxl/{domid}/dm-version")).ok().flatten();
        return Ok(match dm {
            Some(_) => Located::NotReady {
                why: format!("domain {domid} has no QMP socket at {} yet", path.display()),
                stale: stale(),
            },
            None => Located::NotRunning(format!("domain {domid} has no QEMU device model (PV?)")),
        });
    };
    let lock_path = lock::path(root, &config.xen_lib_dir, domid, &domain.uuid, lock::Kind::Qmp)?;
    let qmp_lock =
        lock::XenLock::acquire(&lock_path, deadline).map_err(|e| Error::caused(format!("VM {}", vm.name), e))?;
    let (qemu, instance) = match qemu::dial(root, &path, instance, deadline) {
        Ok(Dialled::Up(q, instance)) => (*q, instance),
        Ok(Dialled::Refused(why)) => return Ok(Located::NotReady { why, stale: stale() }),
        Err(e) => return Err(Error::caused(format!("VM {}: QMP {}", vm.name, path.display()), e)),
    };
    let libxl = LibxlRecords::new(domain, xs, qmp_lock, root.clone(), config.xen_lib_dir.clone(), *deadline);
    Ok(Located::Running(Opened { link: Box::new(XenVm { qemu, libxl }), socket: shown, instance, domid: Some(domid) }))
}

/// A Xen domain's device model, whose USB records libxl keeps in xenstore
/// (`crate::xen`). The hooks keep them exactly as libxl does:
///
/// - new controller: its full records (`records::write_ctrl`) in one
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
pub(super) struct LibxlRecords {
    domid: u32,
    uuid: String,
    xs: xs::Client,
    root: crate::root::Root,
    lib_dir: std::path::PathBuf,
    deadline: crate::deadline::Deadline,
    /// libxl's qmp-socket-lock, held for as long as the socket is open:
    /// `XenVm` declares its QMP link before its records, so the socket is
    /// closed before this is released.
    _qmp_lock: Option<lock::XenLock>,
    /// What `before` changed, for `after` to undo: (node, old value).
    undo: Option<(String, Vec<u8>)>,
    /// The mark `before` wrote beside libxl's records (`records::mark_dir`), for
    /// `after` to remove once QEMU answered and any undo is done.
    mark: Option<String>,
    /// Found by `amend`: controllers of ours an interrupted run left unfinished.
    unfinished: Vec<Controller>,
    /// A dry run: `amend` says what it would repair and writes nothing.
    dry_run: bool,
}

impl LibxlRecords {
    fn new(
        domain: records::Domain,
        xs: xs::Client,
        qmp_lock: lock::XenLock,
        root: crate::root::Root,
        lib_dir: std::path::PathBuf,
        deadline: crate::deadline::Deadline,
    ) -> LibxlRecords {
        LibxlRecords {
            domid: domain.domid,
            uuid: domain.uuid,
            xs,
            root,
            lib_dir,
            deadline,
            _qmp_lock: Some(qmp_lock),
            undo: None,
            mark: None,
            unfinished: Vec::new(),
            dry_run: false,
        }
    }

    fn userdata_lock(&self) -> Result<lock::XenLock> {
        let p = lock::path(&self.root, &self.lib_dir, self.domid, &self.uuid, lock::Kind::DomainUserdata)?;
        lock::XenLock::acquire(&p, &self.deadline)
    }

    fn xs_err(&self, e: xs::XsError) -> crate::error::Error {
        crate::error::Error::caused(format!("Xen domain {}: libxl's records", self.domid), e)
    }

    /// libxl's records of this domain's USB controllers.
    fn read(&mut self) -> Result<Vec<records::VusbCtrl>> {
        let domid = self.domid;
        records::read_vusb(&mut self.xs, xs::Tx::NONE, domid).map_err(|e| self.xs_err(e))
    }

    /// Undo what `before` wrote when QEMU refused `op` or did not answer.
    fn undo_after(&mut self, op: &Op, outcome: std::result::Result<(), &QmpError>) -> Result<()> {
        let Some((node, old)) = self.undo.take() else { return Ok(()) };
        let Err(e) = outcome else { return Ok(()) };
        let tx = xs::Tx::NONE;
        match op {
            Op::AddController(_) | Op::FinishController(_) => {
                let _lock = self.userdata_lock()?;
                self.xs.rm(tx, &node).map_err(|e| self.xs_err(e))
            }
            // Gone from QEMU already: the entry stays empty.
            Op::DelDevice { .. } if e.refusal() == Some(Refusal::DeviceNotFound) => Ok(()),
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
        recs: &[records::VusbCtrl],
        pending: &mut Vec<String>,
    ) -> Result<()> {
        let domid = self.domid;
        let records::DeadMarks { controllers: ctrls, ports, freeing } =
            records::dead_marks(&mut self.xs, domid).map_err(|e| self.xs_err(e))?;
        let tx = xs::Tx::NONE;
        let mut unmark = Vec::new();
        for devid in ctrls {
            let id = format!("xenusb-{devid}");
            let spec = recs.iter().find(|b| b.devid == devid).and_then(records::controller_of);
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
                _ => unmark.push(records::ctrl_mark(domid, devid)),
            }
        }
        for (devid, port) in ports {
            let id = format!("xenusb-{devid}");
            let held = view.devices.iter().any(|d| d.controller == id && d.port == port);
            let node = records::port_path(domid, devid, port);
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
            unmark.push(records::port_mark(domid, devid, port));
        }
        for (devid, port, busid) in freeing {
            // A removal cut off: if QEMU kept the device, libxl's entry says so again;
            // if it went, the entry stays empty.
            let id = format!("xenusb-{devid}");
            let held = view.devices.iter().any(|d| d.controller == id && d.port == port);
            let node = records::port_path(domid, devid, port);
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
            unmark.push(records::freeing_mark(domid, devid, port));
        }
        if !self.dry_run && !unmark.is_empty() {
            self.unmark(&unmark).map_err(|e| self.xs_err(e))?;
        }
        Ok(())
    }

    /// Remove `marks`, and the domain's mark directory once it holds none.
    fn unmark(&mut self, marks: &[String]) -> xs::XsResult<()> {
        let tx = xs::Tx::NONE;
        for m in marks {
            self.xs.rm(tx, m)?;
        }
        let dir = records::mark_dir(self.domid);
        for sub in records::MARK_KINDS {
            match self.xs.directory(tx, &format!("{dir}/{sub}")) {
                Ok(left) if !left.is_empty() => return Ok(()),
                Err(e) if !e.is_enoent() => return Err(e),
                _ => {}
            }
        }
        self.xs.rm(tx, &dir)
    }

    fn add_device(&mut self, dev: &Attached) -> Result<()> {
        let Some(devid) = records::devid_of(&dev.controller) else { return Ok(()) };
        let node = records::port_path(self.domid, devid, dev.port);
        let busid = dev.port_path.clone();
        let mark = records::port_mark(self.domid, devid, dev.port);
        let writer = records::writer();
        let _lock = self.userdata_lock()?;
        let deadline = self.deadline;
        let res = self.xs.transaction(&deadline, |xs, tx| {
            match xs.read_opt(tx, &node)? {
                // A controller libxl has no record of (not libxl's records).
                None => Ok(false),
                Some(v) if v.is_empty() || v == busid => {
                    xs.write(tx, &node, busid.as_bytes())?;
                    xs.write(tx, &mark, writer.as_bytes())?;
                    Ok(true)
                }
                Some(v) => Err(xs::XsError::Xenstored {
                    errno: "EBUSY".into(),
                    what: format!("libxl records port {} of {} as used by {v}", dev.port, dev.controller),
                }),
            }
        });
        match res {
            Ok(true) => {
                log::debug!("xenstore: {node} = {busid:?}");
                self.undo = Some((node, Vec::new()));
                self.mark = Some(records::port_mark(self.domid, devid, dev.port));
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

impl LibxlRecords {
    // The hooks around each change, in the order `XenVm::send` calls them.

    fn before(&mut self, op: &Op) -> Result<()> {
        self.undo = None;
        self.mark = None;
        match op {
            Op::AddController(c) => {
                let _lock = self.userdata_lock()?;
                let (domid, deadline) = (self.domid, self.deadline);
                let devid = records::devid_of(&c.id).unwrap_or_default();
                let (mark, writer) = (records::ctrl_mark(domid, devid), records::writer());
                self.xs
                    .transaction(&deadline, |xs, tx| {
                        records::write_ctrl(xs, tx, domid, c)?;
                        xs.write(tx, &mark, writer.as_bytes())
                    })
                    .map_err(|e| self.xs_err(e))?;
                self.undo = Some((records::ctrl_dir(domid, devid), Vec::new()));
                self.mark = Some(mark);
                Ok(())
            }
            // The records are there; if QEMU refuses again, they go.
            Op::FinishController(c) => {
                let devid = records::devid_of(&c.id).unwrap_or_default();
                self.undo = Some((records::ctrl_dir(self.domid, devid), Vec::new()));
                self.mark = Some(records::ctrl_mark(self.domid, devid));
                Ok(())
            }
            Op::AddDevice { dev, .. } => self.add_device(dev),
            Op::DelDevice { place: Some((ctrl, port)), .. } => {
                let Some(devid) = records::devid_of(ctrl) else { return Ok(()) };
                let node = records::port_path(self.domid, devid, *port);
                let tx = xs::Tx::NONE;
                let old = match self.xs.read(tx, &node) {
                    Ok(v) => v,
                    Err(e) if e.is_enoent() => return Ok(()),
                    Err(e) => return Err(self.xs_err(e)),
                };
                // libxl__device_usbdev_remove_xenstore: a plain write, no lock.
                // Ours adds a mark naming what the entry held, in the same
                // transaction, so a cut-off device_del can be told and undone.
                let mark = records::freeing_mark(self.domid, devid, *port);
                let value = format!("{} {}", records::writer(), String::from_utf8_lossy(&old));
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
                let Some(devid) = records::devid_of(&c.id) else { return Vec::new() };
                let n = c.ports.max(c.usb3_ports);
                let ver = records::usb_ver(&c.driver).map(|v| v.to_string()).unwrap_or_default();
                vec![format!(
                    "write xenstore {} = {{type = \"devicemodel\", usb-ver = \"{ver}\", num-ports = \"{n}\", \
                     port/1..{n} = \"\"}} (under libxl's domain-userdata-lock)",
                    records::ctrl_dir(domid, devid)
                )]
            }
            Op::AddDevice { dev, .. } => match records::devid_of(&dev.controller) {
                Some(devid) => vec![format!(
                    "write xenstore {} = {:?} if libxl records {} (under libxl's domain-userdata-lock)",
                    records::port_path(domid, devid, dev.port),
                    dev.port_path,
                    dev.controller
                )],
                None => Vec::new(),
            },
            Op::DelDevice { place: Some((ctrl, port)), .. } => match records::devid_of(ctrl) {
                Some(devid) => vec![format!("write xenstore {} = \"\"", records::port_path(domid, devid, *port))],
                None => Vec::new(),
            },
            Op::DelDevice { place: None, .. } | Op::FinishController(_) => Vec::new(),
        }
    }

    fn amend(&mut self, view: &mut VmState) -> Result<Vec<String>> {
        let recs = self.read()?;
        let mut pending = records::fold_into(view, &recs);
        self.repair_interrupted(view, &recs, &mut pending)?;
        Ok(pending)
    }

    fn removed_by_hand(&mut self, d: &Attached) -> Result<bool> {
        let Some(devid) = records::devid_of(&d.controller) else { return Ok(false) };
        let node = records::port_path(self.domid, devid, d.port);
        match self.xs.read_opt(xs::Tx::NONE, &node) {
            Ok(v) => Ok(v.is_some_and(|v| v.is_empty())),
            Err(e) => Err(self.xs_err(e)),
        }
    }
}

/// Where libxl records a host device (`xl usbdev-attach`): the domain, and
/// the controller and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LibxlPlace {
    pub(super) domid: u32,
    pub(super) devid: u32,
    pub(super) port: u8,
}

/// Which of the Xen VMs `vms` (index into `config.vms`, cached domid) has a
/// domain in whose records libxl has `busid` on a port.
fn holder(
    env: &Env<'_>,
    vms: &[(usize, Option<u32>)],
    busid: &str,
    deadline: &Deadline,
) -> xs::XsResult<Option<OwnerRecord>> {
    let mut xs = xs::connect(env.root, deadline)?;
    for &(vm, cached) in vms {
        let Some(dom) = records::find_domain(&mut xs, &env.config.vms[vm].name, cached, env.names)? else { continue };
        let recs = records::read_vusb(&mut xs, xs::Tx::NONE, dom.domid)?;
        if let Some((devid, port)) = recs
            .iter()
            .filter(|c| c.is_devicemodel())
            .find_map(|c| c.ports.iter().position(|b| b == busid).map(|p| (c.devid, p as u8 + 1)))
        {
            return Ok(Some(OwnerRecord { vm, place: LibxlPlace { domid: dom.domid, devid, port } }));
        }
    }
    Ok(None)
}

/// Empty libxl's entry at `place` if it still names `busid` (QEMU no longer
/// has the device: the entry must not outlive it).
fn empty_entry(root: &Root, deadline: &Deadline, place: &LibxlPlace, busid: &str) -> Result<()> {
    let err = |e: xs::XsError| Error::caused(format!("Xen domain {}", place.domid), e);
    let mut xs = xs::connect(root, deadline).map_err(err)?;
    let node = records::port_path(place.domid, place.devid, place.port);
    let tx = xs::Tx::NONE;
    if xs.read_opt(tx, &node).map_err(err)?.as_deref() == Some(busid) {
        xs.write(tx, &node, b"").map_err(err)?;
        log::info!("emptied libxl's entry for {busid} ({node})");
    }
    Ok(())
}
