//! One open conversation with one VM's QEMU, and the only writer to it:
//! every `device_add`/`device_del` in the program goes through `Session`,
//! which keeps that VM's `VmState` in step with QEMU and calls the VM's
//! `Backend` around each change.
//!
//! Generic over the QMP stream (like `qmp::Qmp`) so it runs on in-memory
//! streams in unit tests. `dry_run` logs each change instead of sending it
//! and updates the view as if QEMU had accepted it.

use crate::backend::{Backend, Op};
use crate::error::Error;
use crate::libvirt::{DomainLink, LvError};
pub use crate::qmp::Refusal;
use crate::qmp::{Conn, Qmp, QmpError, QmpResult};
use crate::state::{Attached, Controller, Origin, VmState};
use crate::types::BusAddr;
use crate::vm;
use serde_json::{json, Value};
use std::fmt;
use std::io::{BufRead, Write};
use std::path::PathBuf;

/// A change that did not happen: QEMU refused it, or the backend vetoed it.
#[derive(Debug)]
pub enum OpError {
    Qmp(QmpError),
    Backend(Error),
    /// libvirtd refused or did not answer (a libvirt domain).
    Libvirt(LvError),
}

impl OpError {
    /// libvirt's words when the domain has no free USB port (or no USB bus).
    pub fn no_usb_port(&self) -> Option<&str> {
        match self {
            OpError::Libvirt(LvError::NoUsbPort(m)) => Some(m),
            _ => None,
        }
    }

    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            OpError::Qmp(e) => e.refusal(),
            OpError::Backend(_) | OpError::Libvirt(_) => None,
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Qmp(e) => e.fmt(f),
            OpError::Backend(e) => e.fmt(f),
            OpError::Libvirt(e) => e.fmt(f),
        }
    }
}

impl From<QmpError> for OpError {
    fn from(e: QmpError) -> Self {
        OpError::Qmp(e)
    }
}

/// The backend's records beside QEMU's view (`Session::records_report`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsReport {
    /// One line: what the records hold.
    pub described: String,
    /// Whether they record a USB controller of the VM's (libxl's `usbctrl`).
    pub has_controller: bool,
    /// Where they and QEMU disagree, one line each.
    pub disagreements: Vec<String>,
}

/// How a session reaches its VM: QEMU's QMP socket, or libvirtd for a
/// domain whose monitor libvirt owns.
enum Link<S> {
    Qmp(Qmp<S>),
    Libvirt(Box<dyn DomainLink>),
}

/// A libvirt failure where a QMP one is expected (reading the VM).
fn lv_read(e: LvError) -> QmpError {
    match e {
        LvError::Timeout => QmpError::Timeout(e.to_string()),
        e => QmpError::Io(e.to_string()),
    }
}

pub struct Session<S = Conn> {
    /// The VM's name in the config.
    pub vm: String,
    link: Link<S>,
    /// The socket as the config knows it (not under --root): kept in state.
    pub socket: PathBuf,
    /// Identity of the QEMU behind the socket (`vm::instance_of`).
    pub instance: String,
    pub domid: Option<u32>,
    view: VmState,
    /// Declared after `client`, so dropped after it: a Xen backend holds
    /// libxl's QMP lock, which must outlive the socket.
    backend: Box<dyn Backend>,
    pub dry_run: bool,
    /// What the backend records that QEMU does not hold yet (Xen: libxl is
    /// adding these controllers right now): the VM is not ready for us.
    pub pending: Vec<String>,
    /// Devices of ours (rule/manual) the previous view of this same QEMU
    /// had, that QEMU no longer holds and the backend says were removed by
    /// hand (Xen: `xl usbdev-detach` emptied libxl's entry).
    pub removed_by_hand: Vec<Attached>,
}

impl<S: BufRead + Write> Session<S> {
    pub fn new(vm: &str, client: Qmp<S>, socket: PathBuf, instance: String, domid: Option<u32>) -> Self {
        let backend: Box<dyn Backend> = Box::new(crate::backend::PlainQemu);
        let view = VmState::default();
        Session {
            vm: vm.into(),
            link: Link::Qmp(client),
            socket,
            instance,
            domid,
            view,
            backend,
            dry_run: false,
            pending: Vec::new(),
            removed_by_hand: Vec::new(),
        }
    }

    /// A session to a libvirt domain (`socket`: how state names it, `instance`:
    /// its uuid and run id).
    pub fn libvirt(vm: &str, link: Box<dyn DomainLink>, socket: PathBuf, instance: String) -> Self {
        Session {
            vm: vm.into(),
            link: Link::Libvirt(link),
            socket,
            instance,
            domid: None,
            view: VmState::default(),
            backend: Box::new(crate::backend::PlainQemu),
            dry_run: false,
            pending: Vec::new(),
            removed_by_hand: Vec::new(),
        }
    }

    /// libvirt places a device itself (it has no hot-plug of controllers).
    pub fn is_libvirt(&self) -> bool {
        matches!(self.link, Link::Libvirt(_))
    }

    /// The id the device at `at` has in this VM (QEMU id, or libvirt alias).
    pub fn id_for(&self, at: BusAddr) -> String {
        match self.link {
            Link::Qmp(_) => at.device_id(),
            Link::Libvirt(_) => crate::libvirt::alias_of(at),
        }
    }

    fn enumerate(&mut self) -> QmpResult<VmState> {
        match &mut self.link {
            Link::Qmp(q) => vm::enumerate(q),
            Link::Libvirt(l) => crate::libvirt::view_of(&l.live_xml().map_err(lv_read)?).map_err(QmpError::Protocol),
        }
    }

    pub fn with_backend(mut self, backend: Box<dyn Backend>) -> Self {
        self.backend = backend;
        self
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Is `cached` (state's record of this VM) about the QEMU we talk to?
    /// A restarted VM's QEMU makes a new socket: new inode/ctime.
    pub fn is_same_instance(&self, cached: &VmState) -> bool {
        !self.instance.is_empty() && cached.instance == self.instance && cached.socket == self.socket
    }

    /// `cached` if it is about this QEMU (logged when it is not).
    pub fn known<'a>(&self, cached: Option<&'a VmState>) -> Option<&'a VmState> {
        let same = cached.filter(|c| self.is_same_instance(c));
        if cached.is_some() && same.is_none() {
            log::info!(
                "VM {}: a different QEMU is behind {} now (restarted?); rebuilding from QEMU",
                self.vm,
                self.socket.display()
            );
        }
        same
    }

    /// Take state's record when it is about this QEMU, else rebuild from QEMU.
    pub fn adopt(&mut self, cached: Option<&VmState>) -> QmpResult<()> {
        match self.known(cached) {
            Some(c) => {
                self.view = c.clone();
                self.pending = self.amend()?;
                if self.pending.is_empty() {
                    return Ok(());
                }
                // The backend records controllers our cached view lacks: ask QEMU.
                let old = self.view.clone();
                self.reread(&old)
            }
            None => self.reread(&VmState::default()),
        }
    }

    /// Re-read QEMU, keeping what the current view knew about who asked.
    pub fn refresh(&mut self) -> QmpResult<()> {
        let old = self.view.clone();
        self.reread(&old)
    }

    /// Rebuild the view from QEMU, keeping from `old` who asked for what.
    pub fn reread(&mut self, old: &VmState) -> QmpResult<()> {
        let fresh = self.enumerate()?;
        let mut v = vm::merge(fresh, old);
        v.socket = self.socket.clone();
        v.instance = self.instance.clone();
        v.domid = self.domid;
        self.view = v;
        self.pending = self.amend()?;
        self.removed_by_hand.clear();
        let gone: Vec<Attached> = old
            .devices
            .iter()
            .filter(|d| matches!(d.origin, Origin::Rule | Origin::Manual))
            .filter(|d| !self.view.devices.iter().any(|n| n.id == d.id))
            .cloned()
            .collect();
        for d in gone {
            if self.backend.removed_by_hand(&d).map_err(|e| QmpError::Io(e.to_string()))? {
                self.removed_by_hand.push(d);
            }
        }
        Ok(())
    }

    /// Fold the backend's records into the view; finish first what an
    /// interrupted run of ours left half-created (then fold again).
    fn amend(&mut self) -> QmpResult<Vec<String>> {
        let pending = self.backend.amend(&mut self.view).map_err(|e| QmpError::Io(e.to_string()))?;
        let unfinished = self.backend.take_unfinished();
        if unfinished.is_empty() {
            return Ok(pending);
        }
        for c in unfinished {
            let args = crate::plan::controller_args(&c);
            match self.change(Op::FinishController(c.clone()), args) {
                Ok(()) => {
                    log::info!(
                        "VM {}: finished creating {} ({}), which an interrupted run left",
                        self.vm,
                        c.id,
                        c.driver
                    );
                    self.view.controllers.push(c);
                }
                Err(e) => log::warn!("VM {}: could not finish {} ({e}); its records are removed", self.vm, c.id),
            }
        }
        self.backend.amend(&mut self.view).map_err(|e| QmpError::Io(e.to_string()))
    }

    /// What the backend's own records (Xen: libxl's) say beside `qemu`, a
    /// view just read from QEMU, for `check`; their controllers are marked
    /// as theirs in `qemu`. None for a backend that keeps no records.
    pub fn records_report(&mut self, qemu: &mut VmState) -> Option<crate::error::Result<RecordsReport>> {
        let books = match self.backend.records()? {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        for c in &mut qemu.controllers {
            if books.iter().any(|b| b.is_devicemodel() && b.qemu_id() == c.id) {
                c.origin = crate::state::CtrlOrigin::Libxl;
            }
        }
        Some(Ok(RecordsReport {
            described: crate::xen::describe(&books),
            has_controller: books.iter().any(|c| c.is_devicemodel()),
            disagreements: crate::xen::disagreements(qemu, &books),
        }))
    }

    /// What QEMU holds right now, without touching the view.
    pub fn read_qemu(&mut self) -> QmpResult<VmState> {
        self.enumerate()
    }

    pub fn view(&self) -> &VmState {
        &self.view
    }

    pub fn into_view(self) -> VmState {
        self.view
    }

    /// Whether QEMU has a PCI bus (Xen >= 4.20 first runs a `-machine none`
    /// probe QEMU on the domain's socket: nowhere to put a controller).
    pub fn has_pci_bus(&mut self) -> QmpResult<bool> {
        let Link::Qmp(q) = &mut self.link else { return Ok(true) };
        let pci = q.execute("query-pci", None)?;
        Ok(!pci.as_array().is_some_and(|a| a.is_empty()))
    }

    /// Whether the guest can take a hot-plugged controller now (issue 19):
    /// `crate::firmware`, two queries on this session. A libvirt domain gets
    /// no controller from us: never asked.
    pub fn firmware_phase(&mut self) -> QmpResult<crate::firmware::Phase> {
        match &mut self.link {
            Link::Qmp(q) => crate::firmware::guest_can_take_controller(q),
            Link::Libvirt(_) => Ok(crate::firmware::Phase::PastFirmware),
        }
    }

    /// Where on QEMU's PCI tree a new controller could go.
    pub fn pci_room(&mut self) -> QmpResult<crate::plan::PciRoom> {
        match &mut self.link {
            Link::Qmp(q) => vm::pci_room(q),
            Link::Libvirt(_) => Err(QmpError::Protocol("libvirt cannot hot-plug a USB controller".into())),
        }
    }

    /// `device_add` controller `c`, on PCI bus `pci_bus` (None: the machine's root bus).
    pub fn add_controller(&mut self, c: &Controller, pci_bus: Option<&str>) -> Result<(), OpError> {
        let mut args = crate::plan::controller_args(c);
        if let Some(b) = pci_bus {
            args["bus"] = json!(b);
        }
        self.change(Op::AddController(c.clone()), args)?;
        self.view.controllers.push(c.clone());
        Ok(())
    }

    pub fn add_device(&mut self, dev: Attached, hostdevice: Option<&str>) -> Result<(), OpError> {
        let bus = self
            .view
            .controllers
            .iter()
            .find(|c| c.id == dev.controller)
            .map(Controller::bus_name)
            .unwrap_or_else(|| format!("{}.0", dev.controller));
        let args = crate::plan::device_args(&bus, dev.port, dev.bus, dev.addr, hostdevice);
        let op = Op::AddDevice { dev: dev.clone(), hostdevice: hostdevice.map(str::to_string) };
        self.change(op, args)?;
        self.view.devices.push(dev);
        Ok(())
    }

    /// `device_del`; Ok(false) when QEMU did not have it (gone counts as done).
    pub fn del_device(&mut self, at: BusAddr) -> Result<bool, OpError> {
        let id = self.id_for(at);
        let place = self.view.devices.iter().find(|d| d.id == id).map(|d| (d.controller.clone(), d.port));
        let found = match self.change(Op::DelDevice { id: id.clone(), at, place }, json!({ "id": id })) {
            Ok(()) => true,
            Err(e) if e.refusal() == Some(Refusal::DeviceNotFound) => false,
            Err(e) => return Err(e),
        };
        self.view.devices.retain(|d| d.id != id);
        Ok(found)
    }

    fn command(op: &Op) -> &'static str {
        if matches!(op, Op::DelDevice { .. }) {
            "device_del"
        } else {
            "device_add"
        }
    }

    /// Send one change with the backend's hooks around it.
    /// Does QEMU hold a device with id `id`? One `qom-get` (of its `type`),
    /// no enumeration: the per-event check when state has no record.
    pub fn holds(&mut self, id: &str) -> QmpResult<bool> {
        let path = format!("/machine/peripheral/{id}");
        let q = match &mut self.link {
            Link::Qmp(q) => q,
            Link::Libvirt(_) => return Ok(self.enumerate()?.devices.iter().any(|d| d.id == id)),
        };
        match q.execute("qom-get", Some(json!({ "path": path, "property": "type" }))) {
            Ok(_) => Ok(true),
            Err(e) if e.refusal() == Some(Refusal::DeviceNotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One change through libvirtd: a live `<hostdev>` by host address with our alias.
    fn lv_change(l: &mut dyn DomainLink, op: &Op) -> Result<(), OpError> {
        let r = match op {
            Op::AddDevice { dev, .. } => l.attach(&crate::libvirt::hostdev_xml(dev.at())),
            Op::DelDevice { at, .. } => match l.detach(&crate::libvirt::hostdev_xml(*at)) {
                // Gone already: what QEMU's DeviceNotFound means on the QMP path.
                Err(LvError::DeviceMissing(m)) => {
                    return Err(OpError::Qmp(QmpError::Qemu { class: "DeviceNotFound".into(), desc: m }))
                }
                r => r,
            },
            Op::AddController(_) | Op::FinishController(_) => {
                return Err(OpError::Libvirt(LvError::Refused("libvirt cannot hot-plug a USB controller".into())))
            }
        };
        r.map_err(OpError::Libvirt)
    }

    /// Does QEMU's usb-host `id` hold its host device open (`attached`)?
    /// False once the device it opened went away (unplugged, re-enumerated).
    pub fn holds_device_open(&mut self, id: &str) -> QmpResult<bool> {
        let path = format!("/machine/peripheral/{id}");
        // libvirt does not say whether the node is still open; the live XML
        // at least says whether the hostdev is there (virsh detach-device?).
        let q = match &mut self.link {
            Link::Qmp(q) => q,
            Link::Libvirt(_) => return Ok(self.enumerate()?.devices.iter().any(|d| d.id == id)),
        };
        let v = q.execute("qom-get", Some(json!({ "path": path, "property": "attached" })))?;
        Ok(v.as_bool().unwrap_or(false))
    }

    fn change(&mut self, op: Op, args: Value) -> Result<(), OpError> {
        if self.dry_run {
            // The backend's hooks write (xenstore for Xen): a dry run only
            // says what would be sent, with QEMU's arguments.
            if let Link::Libvirt(_) = self.link {
                let (verb, at) = match &op {
                    Op::AddDevice { dev, .. } => ("attach", dev.at()),
                    Op::DelDevice { at, .. } => ("detach", *at),
                    Op::AddController(_) | Op::FinishController(_) => return Ok(()),
                };
                println!(
                    "would {verb} (live) in libvirt domain of VM {}: {}",
                    self.vm,
                    crate::libvirt::hostdev_xml(at)
                );
                return Ok(());
            }
            for line in self.backend.describe(&op) {
                println!("would {line} ({} bookkeeping) in VM {}", self.backend.name(), self.vm);
            }
            println!("would {op} in VM {}: {}", self.vm, json!({ "execute": Self::command(&op), "arguments": args }));
            return Ok(());
        }
        self.backend.before(&op).map_err(OpError::Backend)?;
        let q = match &mut self.link {
            Link::Qmp(q) => q,
            Link::Libvirt(l) => return Self::lv_change(l.as_mut(), &op),
        };
        let res = q.execute(Self::command(&op), Some(args)).map(drop);
        let after = self.backend.after(&op, res.as_ref().map(|_| ()));
        res?;
        after.map_err(OpError::Backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;
    use std::io::{Cursor, Read};
    use std::sync::{Arc, Mutex};

    /// Scripted QEMU replies in, what we sent out.
    struct Mem(Cursor<Vec<u8>>, Vec<u8>);
    impl Read for Mem {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(b)
        }
    }
    impl BufRead for Mem {
        fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
            self.0.fill_buf()
        }
        fn consume(&mut self, n: usize) {
            self.0.consume(n)
        }
    }
    impl Write for Mem {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.1.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Records each hook call; vetoes device_adds of `veto`.
    struct Recorder(Arc<Mutex<Vec<String>>>, Option<&'static str>);
    impl Backend for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn before(&mut self, op: &Op) -> Result<()> {
            self.0.lock().unwrap().push(format!("before {op}"));
            match (op, self.1) {
                (Op::AddDevice { dev, .. }, Some(v)) if dev.id == v => crate::bail!("vetoed {v}"),
                _ => Ok(()),
            }
        }
        fn after(&mut self, op: &Op, outcome: std::result::Result<(), &QmpError>) -> Result<()> {
            self.0.lock().unwrap().push(format!("after {op}: {}", if outcome.is_ok() { "ok" } else { "failed" }));
            Ok(())
        }
        fn describe(&self, op: &Op) -> Vec<String> {
            self.0.lock().unwrap().push(format!("describe {op}"));
            Vec::new()
        }
    }

    fn session(replies: &str, veto: Option<&'static str>) -> (Session<Mem>, Arc<Mutex<Vec<String>>>) {
        let greeting = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n{\"return\": {}, \"id\": \"aua-1\"}\r\n";
        let q = Qmp::handshake(Mem(Cursor::new(format!("{greeting}{replies}").into_bytes()), Vec::new())).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let s = Session::new("a", q, "/run/q".into(), "1:2".into(), None)
            .with_backend(Box::new(Recorder(log.clone(), veto)));
        (s, log)
    }

    fn rec(bus: u16, addr: u16) -> Attached {
        Attached {
            id: BusAddr::new(bus, addr).device_id(),
            bus,
            addr,
            controller: "xenusb-0".into(),
            port: 1,
            port_path: "1-1".into(),
            usb_id: "0001:0001".into(),
            serial: String::new(),
            origin: Origin::Rule,
        }
    }

    #[test]
    fn hooks_run_around_each_change_and_the_view_follows_qemu() {
        let (mut s, log) = session(
            concat!(
                "{\"return\": {}, \"id\": \"aua-2\"}\r\n",
                "{\"id\": \"aua-3\", \"error\": {\"class\": \"GenericError\", \"desc\": \"failed to open host usb device 1:3\"}}\r\n",
                "{\"id\": \"aua-4\", \"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'xenusb-1-9' not found\"}}\r\n",
            ),
            None,
        );
        s.add_device(rec(1, 2), None).unwrap();
        assert!(s.add_device(rec(1, 3), Some("/dev/bus/usb/001/003")).is_err());
        assert!(!s.del_device(BusAddr::new(1, 9)).unwrap());
        assert_eq!(s.view().devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["xenusb-1-2"]);
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 6, "{log:?}");
        assert!(log[0].starts_with("before device_add xenusb-1-2") && log[1].ends_with(": ok"), "{log:?}");
        assert!(log[3].ends_with(": failed") && log[5].ends_with(": failed"), "{log:?}");
    }

    #[test]
    fn a_veto_sends_nothing_and_dry_run_sends_nothing() {
        let (mut s, log) = session("", Some("xenusb-1-2"));
        let e = s.add_device(rec(1, 2), None).unwrap_err();
        assert!(matches!(e, OpError::Backend(_)), "{e}");
        s.dry_run = true;
        log.lock().unwrap().clear();
        s.add_device(rec(1, 4), None).unwrap();
        assert_eq!(log.lock().unwrap().len(), 1, "dry run ran the backend's hooks: {:?}", log.lock().unwrap());
        assert_eq!(s.view().devices.len(), 1);
        // A dry run asks the backend what it would write; its hooks (which write) never run.
        assert_eq!(*log.lock().unwrap(), ["describe device_add xenusb-1-4 (usb-host 1:4) on xenusb-0 port 1"]);
        let Link::Qmp(q) = s.link else { unreachable!() };
        let sent = String::from_utf8(q.into_inner().1).unwrap();
        assert_eq!(sent.lines().count(), 1, "only qmp_capabilities was sent: {sent}");
    }
}
