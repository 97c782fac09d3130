//! One open conversation with one VM, and the only writer to it: every
//! change the program makes to a VM goes through `Session`, which keeps
//! that VM's `VmState` in step with what the VM holds. How the VM is reached
//! and what bookkeeping goes around each change is its backend's business
//! (`backend::Link`); the session is the same for every backend.
//!
//! `dry_run` prints what each change would do instead of doing it and
//! updates the view as if the VM had accepted it.

use crate::backend::{Link, Op, Opened};
pub(crate) use crate::backend::{OpError, RecordsReport, Refusal, VmError, VmResult};
use crate::state::{Attached, Controller, Origin, VmState};
use crate::types::BusAddr;
use serde_json::json;
use std::path::PathBuf;

pub(crate) struct Session {
    /// The VM's name in the config.
    pub(crate) vm: String,
    link: Box<dyn Link>,
    /// Where the VM is, as the config knows it (not under --root): kept in state.
    pub(crate) socket: PathBuf,
    /// Identity of this run of the VM (a restart gives a new one).
    pub(crate) instance: String,
    pub(crate) domid: Option<u32>,
    view: VmState,
    pub(crate) dry_run: bool,
    /// What the backend records that the VM does not hold yet (Xen: libxl
    /// is adding these controllers right now): the VM is not ready for us.
    pub(crate) pending: Vec<String>,
    /// Devices of ours (rule/manual) the previous view of this same run
    /// had, that the VM no longer holds and the backend says were removed
    /// by hand (Xen: `xl usbdev-detach` emptied libxl's entry).
    pub(crate) removed_by_hand: Vec<Attached>,
}

impl Session {
    pub(crate) fn new(vm: &str, opened: Opened, dry_run: bool) -> Self {
        let Opened { mut link, socket, instance, domid } = opened;
        link.set_dry_run(dry_run);
        Session {
            vm: vm.into(),
            link,
            socket,
            instance,
            domid,
            view: VmState::default(),
            dry_run,
            pending: Vec::new(),
            removed_by_hand: Vec::new(),
        }
    }

    /// The VM's owner places devices itself (libvirt): no planner, no new controller.
    pub(crate) fn places_devices_itself(&self) -> bool {
        self.link.places_devices_itself()
    }

    /// The id the device at `at` has in this VM (QEMU id, or libvirt alias).
    pub(crate) fn id_for(&self, at: BusAddr) -> String {
        self.link.id_for(at)
    }

    /// Whether its owner may still be setting it up right after a start
    /// (`sync` then waits until `pending` is empty).
    pub(crate) fn settles_after_start(&self) -> bool {
        self.link.settles_after_start()
    }

    /// Is `cached` (state's record of this VM) about the run we talk to?
    /// A restarted VM's QEMU makes a new socket: new inode/ctime.
    pub(crate) fn is_same_instance(&self, cached: &VmState) -> bool {
        !self.instance.is_empty() && cached.instance == self.instance && cached.socket == self.socket
    }

    /// `cached` if it is about this run (logged when it is not).
    pub(crate) fn known<'a>(&self, cached: Option<&'a VmState>) -> Option<&'a VmState> {
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

    /// Take state's record when it is about this run, else rebuild from the VM.
    pub(crate) fn adopt(&mut self, cached: Option<&VmState>) -> VmResult<()> {
        match self.known(cached) {
            Some(c) => {
                self.view = c.clone();
                self.pending = self.amend()?;
                if self.pending.is_empty() {
                    return Ok(());
                }
                // The backend records controllers our cached view lacks: ask the VM.
                let old = self.view.clone();
                self.reread(&old)
            }
            None => self.reread(&VmState::default()),
        }
    }

    /// Re-read the VM, keeping what the current view knew about who asked.
    pub(crate) fn refresh(&mut self) -> VmResult<()> {
        let old = self.view.clone();
        self.reread(&old)
    }

    /// Rebuild the view from the VM, keeping from `old` who asked for what.
    pub(crate) fn reread(&mut self, old: &VmState) -> VmResult<()> {
        let fresh = self.link.enumerate()?;
        let mut v = crate::backend::merge(fresh, old);
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
            if self.link.removed_by_hand(&d).map_err(|e| VmError::Io(format!("{e:#}")))? {
                self.removed_by_hand.push(d);
            }
        }
        Ok(())
    }

    /// Fold the backend's records into the view; finish first what an
    /// interrupted run of ours left half-created (then fold again).
    fn amend(&mut self) -> VmResult<Vec<String>> {
        let pending = self.link.amend(&mut self.view).map_err(|e| VmError::Io(format!("{e:#}")))?;
        let unfinished = self.link.take_unfinished();
        if unfinished.is_empty() {
            return Ok(pending);
        }
        // Finishing one is hot-plugging a controller too: not into a guest
        // in its firmware. They stay pending (the VM is not ready) till then.
        if let Some(why) = self.link.controller_wait()? {
            log::info!(
                "VM {}: waiting to finish {} (an interrupted run left it): {why}",
                self.vm,
                unfinished.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
            );
            let mut pending = pending;
            pending.extend(unfinished.into_iter().map(|c| c.id));
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
                Err(e) => log::warn!("VM {}: could not finish {} ({e:#}); its records are removed", self.vm, c.id),
            }
        }
        self.link.amend(&mut self.view).map_err(|e| VmError::Io(format!("{e:#}")))
    }

    /// What the backend's own records (Xen: libxl's) say beside `read`, a
    /// view just read from the VM, for `check`; their controllers are marked
    /// as theirs in `read`. None for a backend that keeps no records.
    pub(crate) fn records_report(&mut self, read: &mut VmState) -> Option<crate::error::Result<RecordsReport>> {
        self.link.records_report(read)
    }

    /// What the VM holds right now, without touching the view.
    pub(crate) fn read_vm(&mut self) -> VmResult<VmState> {
        self.link.enumerate()
    }

    pub(crate) fn view(&self) -> &VmState {
        &self.view
    }

    pub(crate) fn into_view(self) -> VmState {
        self.view
    }

    /// Whether the VM has a PCI bus (Xen >= 4.20 first runs a `-machine none`
    /// probe QEMU on the domain's socket: nowhere to put a controller).
    pub(crate) fn has_pci_bus(&mut self) -> VmResult<bool> {
        self.link.has_pci_bus()
    }

    /// Why no controller may be hot-plugged into the VM right now, if so
    /// (Xen: its guest is in its firmware).
    pub(crate) fn controller_wait(&mut self) -> VmResult<Option<String>> {
        self.link.controller_wait()
    }

    /// Where on the VM's PCI tree a new controller could go.
    pub(crate) fn pci_room(&mut self) -> VmResult<crate::plan::PciRoom> {
        self.link.pci_room()
    }

    /// Add controller `c`, on PCI bus `pci_bus` (None: the machine's root bus).
    pub(crate) fn add_controller(&mut self, c: &Controller, pci_bus: Option<&str>) -> Result<(), OpError> {
        let mut args = crate::plan::controller_args(c);
        if let Some(b) = pci_bus {
            args["bus"] = json!(b);
        }
        self.change(Op::AddController(c.clone()), args)?;
        self.view.controllers.push(c.clone());
        Ok(())
    }

    pub(crate) fn add_device(&mut self, dev: Attached, hostdevice: Option<&str>) -> Result<(), OpError> {
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

    /// Remove the device at `at`; Ok(false) when the VM did not have it
    /// (gone counts as done).
    pub(crate) fn del_device(&mut self, at: BusAddr) -> Result<bool, OpError> {
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

    /// Does the VM hold a device with id `id`? One cheap question, no
    /// enumeration: the per-event check when state has no record.
    pub(crate) fn holds(&mut self, id: &str) -> VmResult<bool> {
        self.link.holds(id)
    }

    /// Does the VM's usb-host `id` hold its host device open? False once
    /// the device it opened went away (unplugged, re-enumerated).
    pub(crate) fn holds_device_open(&mut self, id: &str) -> VmResult<bool> {
        self.link.holds_device_open(id)
    }

    /// Send one change through the backend (or, dry, print it).
    fn change(&mut self, op: Op, args: serde_json::Value) -> Result<(), OpError> {
        if self.dry_run {
            for line in self.link.describe(&self.vm, &op, &args) {
                println!("{line}");
            }
            return Ok(());
        }
        self.link.send(&op, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::{Arc, Mutex};

    /// A VM that records what it is sent: refuses device_adds of `refuse`
    /// (as QEMU does), vetoes those of `veto` (as a backend's records do),
    /// and holds nothing (a device_del is DeviceNotFound).
    struct Recorder {
        log: Arc<Mutex<Vec<String>>>,
        refuse: Option<&'static str>,
        veto: Option<&'static str>,
    }
    impl Link for Recorder {
        fn enumerate(&mut self) -> VmResult<VmState> {
            Ok(VmState::default())
        }
        fn holds(&mut self, _: &str) -> VmResult<bool> {
            Ok(false)
        }
        fn holds_device_open(&mut self, _: &str) -> VmResult<bool> {
            Ok(false)
        }
        fn pci_room(&mut self) -> VmResult<crate::plan::PciRoom> {
            Ok(Default::default())
        }
        fn send(&mut self, op: &Op, _: Value) -> Result<(), OpError> {
            self.log.lock().unwrap().push(format!("send {op}"));
            match op {
                Op::AddDevice { dev, .. } if Some(dev.id.as_str()) == self.veto => {
                    Err(OpError::Records(crate::error::Error::new(format!("vetoed {}", dev.id))))
                }
                Op::AddDevice { dev, .. } if Some(dev.id.as_str()) == self.refuse => {
                    Err(OpError::Vm(VmError::Qemu { class: "GenericError".into(), desc: "failed to open".into() }))
                }
                Op::DelDevice { id, .. } => Err(OpError::Vm(VmError::Qemu {
                    class: "DeviceNotFound".into(),
                    desc: format!("Device '{id}' not found"),
                })),
                _ => Ok(()),
            }
        }
        fn describe(&self, vm: &str, op: &Op, _: &Value) -> Vec<String> {
            self.log.lock().unwrap().push(format!("describe {op}"));
            vec![format!("would {op} in VM {vm}")]
        }
    }

    fn session(refuse: Option<&'static str>, veto: Option<&'static str>) -> (Session, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let link = Box::new(Recorder { log: log.clone(), refuse, veto });
        let opened = Opened { link, socket: "/run/q".into(), instance: "1:2".into(), domid: None };
        (Session::new("a", opened, false), log)
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
    fn the_view_follows_what_the_vm_accepted() {
        let (mut s, log) = session(Some("xenusb-1-3"), None);
        s.add_device(rec(1, 2), None).unwrap();
        assert!(s.add_device(rec(1, 3), Some("/dev/bus/usb/001/003")).is_err());
        assert!(!s.del_device(BusAddr::new(1, 9)).unwrap(), "DeviceNotFound counts as gone");
        assert_eq!(s.view().devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["xenusb-1-2"]);
        assert_eq!(log.lock().unwrap().len(), 3, "{:?}", log.lock().unwrap());
    }

    #[test]
    fn a_veto_changes_nothing_and_dry_run_sends_nothing() {
        let (mut s, log) = session(None, Some("xenusb-1-2"));
        let e = s.add_device(rec(1, 2), None).unwrap_err();
        assert!(e.is_records_veto(), "{e}");
        assert!(s.view().devices.is_empty());
        s.dry_run = true;
        log.lock().unwrap().clear();
        s.add_device(rec(1, 4), None).unwrap();
        assert_eq!(s.view().devices.len(), 1);
        // A dry run asks the backend what it would do; nothing is sent.
        assert_eq!(*log.lock().unwrap(), ["describe device_add xenusb-1-4 (usb-host 1:4) on xenusb-0 port 1"]);
    }
}
