//! The one way to a VM: every backend (plain QEMU, Xen, libvirt) is a folder
//! here behind the `Link` trait, and `locate` is the one place that picks
//! one (`match vm.backend`). Commands, `apply` and `session` see only this
//! file's items: the wire clients (`wire`: QMP, xenstore) and each backend's
//! own modules are private, so the compiler keeps the rest of the program
//! from reaching past the interface.
//!
//! Adding a backend: a folder beside `qemu.rs`/`xen`/`libvirt` with a type
//! that implements `Link` and a `locate`, and one arm in `locate` below.

mod firmware;
mod libvirt;
mod qemu;
mod wire;
mod xen;

use crate::config::{Config, VmConfig};
use crate::deadline::Deadline;
use crate::error::Result;
use crate::root::Root;
use crate::state::{Attached, Controller, VmState};
use crate::types::BusAddr;
use serde_json::Value;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// What reading a VM or sending it a change can fail with: the VM's own
/// refusal (`Refusal` tells the kinds a caller acts on), a timeout, or a
/// broken conversation. Every backend reports in these terms.
pub(crate) use wire::qmp::{QmpError as VmError, QmpResult as VmResult, Refusal};
pub(crate) use xen::Names;

#[cfg(feature = "libvirt")]
pub use libvirt::serve as libvirt_serve;

/// The raw QMP client, for the integration tests' own conversations with a
/// real QEMU (`tests/common`). Not for the program: `tests/architecture.rs`
/// fails if anything under `src/` names it.
#[doc(hidden)]
pub mod testing {
    pub use super::wire::qmp::{connect, Client, Qmp, QmpError};
}

/// One change to a VM, as the session is about to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
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

/// A change that did not happen: the VM refused it or did not answer, or
/// the backend's own bookkeeping vetoed it.
#[derive(Debug)]
pub(crate) enum OpError {
    Vm(VmError),
    /// The backend's records said no (Xen: libxl records the port as used).
    Records(crate::error::Error),
    /// libvirtd refused or did not answer (a libvirt domain).
    Libvirt(libvirt::LvError),
}

impl OpError {
    /// libvirt's words when the domain has no free USB port (or no USB bus).
    pub(crate) fn no_usb_port(&self) -> Option<&str> {
        match self {
            OpError::Libvirt(libvirt::LvError::NoUsbPort(m)) => Some(m),
            _ => None,
        }
    }

    pub(crate) fn refusal(&self) -> Option<Refusal> {
        match self {
            OpError::Vm(e) => e.refusal(),
            OpError::Records(_) | OpError::Libvirt(_) => None,
        }
    }

    /// The backend's records vetoed it: worth one re-read and retry.
    pub(crate) fn is_records_veto(&self) -> bool {
        matches!(self, OpError::Records(_))
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Vm(e) => e.fmt(f),
            OpError::Records(e) => e.fmt(f),
            OpError::Libvirt(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for OpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpError::Records(e) => std::error::Error::source(e),
            OpError::Vm(_) | OpError::Libvirt(_) => None,
        }
    }
}

impl crate::error::Classify for OpError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            OpError::Vm(e) => e.kind(),
            OpError::Records(e) => e.kind(),
            OpError::Libvirt(e) => e.kind(),
        }
    }
}

impl From<VmError> for OpError {
    fn from(e: VmError) -> Self {
        OpError::Vm(e)
    }
}

/// The backend's records beside the VM's view (`Link::records_report`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordsReport {
    /// One line: what the records hold.
    pub(crate) described: String,
    /// Whether they record a USB controller of the VM's (libxl's `usbctrl`).
    pub(crate) has_controller: bool,
    /// Where they and the VM disagree, one line each.
    pub(crate) disagreements: Vec<String>,
}

/// One running VM, reached through its owner. `Session` is its only user:
/// it keeps the view and calls these in order. Every call is bounded by the
/// deadline the link was opened with.
pub(crate) trait Link {
    /// The id the device at `at` has in this VM (QEMU id, libvirt alias).
    fn id_for(&self, at: BusAddr) -> String {
        at.device_id()
    }
    /// The VM's owner picks controller and port itself (libvirt): the
    /// placement planner is not asked, and no controller is ever created.
    fn places_devices_itself(&self) -> bool {
        false
    }
    /// Every USB controller and device the VM holds (origins `Found`).
    fn enumerate(&mut self) -> VmResult<VmState>;
    /// Does the VM hold a device with id `id`? (One cheap question.)
    fn holds(&mut self, id: &str) -> VmResult<bool>;
    /// Does its usb-host `id` still hold its host device open?
    fn holds_device_open(&mut self, id: &str) -> VmResult<bool>;
    /// Whether the VM has a PCI bus at all (Xen >= 4.20 first runs a
    /// `-machine none` probe QEMU on the domain's socket).
    fn has_pci_bus(&mut self) -> VmResult<bool> {
        Ok(true)
    }
    /// Where on the VM's PCI tree a new controller could go.
    fn pci_room(&mut self) -> VmResult<crate::plan::PciRoom>;
    /// Why a controller hot-plugged right now could harm the guest, if it
    /// could (Xen: the guest is in its firmware): then none is added now.
    fn controller_wait(&mut self) -> VmResult<Option<String>> {
        Ok(None)
    }
    /// Send `op` (`args`: QEMU's `device_add`/`device_del` arguments), with
    /// whatever bookkeeping the backend keeps around it.
    fn send(&mut self, op: &Op, args: Value) -> std::result::Result<(), OpError>;
    /// For `--dry-run`: the lines saying what `send` would do, doing nothing.
    fn describe(&self, vm: &str, op: &Op, args: &Value) -> Vec<String>;
    /// Fold the backend's own records into a view just read (Xen: libxl's
    /// ports and controllers). Returns what the records hold that the VM
    /// does not yet (Xen: controllers libxl is adding): not ready.
    fn amend(&mut self, _view: &mut VmState) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Controllers an interrupted run left recorded but not in the VM, found
    /// by the last `amend`: the session finishes them (`Op::FinishController`).
    fn take_unfinished(&mut self) -> Vec<Controller> {
        Vec::new()
    }
    /// `d`, ours, is gone from the same VM: did someone remove it by hand
    /// (Xen: `xl usbdev-detach` leaves libxl's entry empty)?
    fn removed_by_hand(&mut self, _d: &Attached) -> Result<bool> {
        Ok(false)
    }
    /// The backend's own records beside `view` (just read from the VM), for
    /// `check`; controllers they own are marked in `view`. None: it keeps none.
    fn records_report(&mut self, _view: &mut VmState) -> Option<Result<RecordsReport>> {
        None
    }
    /// A dry run: the backend's own bookkeeping (e.g. repairs of what an
    /// interrupted run left) says what it would write and writes nothing.
    fn set_dry_run(&mut self, _on: bool) {}
    /// The VM is still being set up by its owner right after it started
    /// (Xen: libxl adds its controllers after QEMU is up): `sync` waits.
    fn settles_after_start(&self) -> bool {
        false
    }
}

/// A running VM as `locate` found it.
pub(crate) struct Opened {
    pub(crate) link: Box<dyn Link>,
    /// How state names where the VM is (its QMP socket as the config knows
    /// it, or `libvirt:<uri>#<domain>`).
    pub(crate) socket: PathBuf,
    /// Identity of this run of the VM: a restart gives a new one.
    pub(crate) instance: String,
    pub(crate) domid: Option<u32>,
}

pub(crate) enum Located {
    Running(Opened),
    /// Why it is not running, for the log / the error message.
    NotRunning(String),
    /// It is starting: a socket that refuses connections, or (Xen >= 4.20)
    /// libxl's short-lived probe QEMU. Worth retrying shortly, unless
    /// `stale`: the socket is that old, left by a QEMU that died.
    NotReady {
        why: String,
        stale: Option<Duration>,
    },
}

/// Where VMs are looked for: every OS path's root, the config, the Xen
/// domain names read so far in this invocation.
pub(crate) struct Env<'a> {
    pub(crate) root: &'a Root,
    pub(crate) config: &'a Config,
    pub(crate) names: &'a Names,
}

/// What each backend provides besides its `Link`: finding its VMs.
trait Finder {
    /// Find `vm` and connect to it through its owner, within `deadline`.
    /// `cached_domid`: state's domid for a Xen VM, tried first.
    fn locate(&self, env: &Env<'_>, vm: &VmConfig, cached_domid: Option<u32>, deadline: &Deadline) -> Result<Located>;
    /// Whether the VM's owner answers, asking only what finding the VM
    /// takes and connecting to nothing (Xen: xenstored finds the domain).
    /// Whether the VM runs is not asked: Ok either way.
    fn probe(&self, env: &Env<'_>, vm: &VmConfig, cached_domid: Option<u32>, deadline: &Deadline) -> Result<()>;
    /// Of `vms` (this backend's: index into `config.vms`, cached domid),
    /// the one whose owner records host device `busid` (sysfs name) as put
    /// in by the owner's own tool, and where. None for a backend whose
    /// owner keeps no such record that outlives the device (all but Xen).
    fn owner_record(
        &self,
        _env: &Env<'_>,
        _vms: &[(usize, Option<u32>)],
        _busid: &str,
        _deadline: &Deadline,
    ) -> Result<Option<OwnerRecord>> {
        Ok(None)
    }
    /// The directory that changes when `vm` starts (its owner makes its
    /// socket or run files there): what the sync path unit watches for it.
    /// None when nothing on this host shows its start.
    fn start_dir(&self, config: &crate::config::Config, vm: &VmConfig) -> Option<std::path::PathBuf>;
    /// Empty the owner's entry at `rec` if it still names `busid`.
    fn forget_owner_record(
        &self,
        _env: &Env<'_>,
        _rec: &OwnerRecord,
        _busid: &str,
        _deadline: &Deadline,
    ) -> Result<()> {
        Ok(())
    }
}

/// Where a VM's owner records a host device its own tool put in the VM
/// (Xen: `xl usbdev-attach` writes libxl's entry): which configured VM
/// (`vm`, index into `config.vms`), and the owner's place for it, shown as
/// the owner names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnerRecord {
    pub(crate) vm: usize,
    place: xen::LibxlPlace,
}

impl OwnerRecord {
    /// Why the device is taken out of the VM, for its outcome.
    pub(crate) fn why(&self) -> &'static str {
        "unplugged; libxl records it (xl usbdev-attach)"
    }
}

impl fmt::Display for OwnerRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "libxl records it on xenusb-{} port {}", self.place.devid, self.place.port)
    }
}

/// The backend of `vm`: this `match` is the one place that knows which
/// backends exist.
fn finder(vm: &VmConfig) -> &'static dyn Finder {
    use crate::config::BackendKind;
    match vm.backend {
        BackendKind::Qemu => &qemu::Plain,
        BackendKind::Xen => &xen::Xen,
        BackendKind::Libvirt => &libvirt::Libvirt,
    }
}

/// Find `vm` and connect to it through its owner, within `deadline`.
pub(crate) fn locate(env: &Env<'_>, vm: &VmConfig, cached_domid: Option<u32>, deadline: &Deadline) -> Result<Located> {
    finder(vm).locate(env, vm, cached_domid, deadline)
}

/// Does `vm`'s owner answer? (`Finder::probe`)
pub(crate) fn probe(env: &Env<'_>, vm: &VmConfig, cached_domid: Option<u32>, deadline: &Deadline) -> Result<()> {
    finder(vm).probe(env, vm, cached_domid, deadline)
}

/// The directories whose change means one of `vms` (index into
/// `config.vms`) may have started (`Finder::start_dir`), each once.
pub(crate) fn start_dirs(config: &crate::config::Config, vms: &[usize]) -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    for &i in vms {
        let vm = &config.vms[i];
        if let Some(d) = finder(vm).start_dir(config, vm).filter(|d| !dirs.contains(d)) {
            dirs.push(d);
        }
    }
    dirs
}

/// Which of `vms` (index into `config.vms`, cached domid) has an owner that
/// records host device `busid` (sysfs name) as put in by its own tool
/// (`Finder::owner_record`): each backend is asked once, for all its VMs,
/// within `deadline`.
pub(crate) fn owner_record(
    env: &Env<'_>,
    vms: &[(usize, Option<u32>)],
    busid: &str,
    deadline: &Deadline,
) -> Result<Option<OwnerRecord>> {
    let mut kinds: Vec<crate::config::BackendKind> = Vec::new();
    for &(i, _) in vms {
        let kind = env.config.vms[i].backend;
        if kinds.contains(&kind) {
            continue;
        }
        kinds.push(kind);
        let mine: Vec<(usize, Option<u32>)> =
            vms.iter().copied().filter(|&(j, _)| env.config.vms[j].backend == kind).collect();
        if let Some(rec) = finder(&env.config.vms[i]).owner_record(env, &mine, busid, deadline)? {
            return Ok(Some(rec));
        }
    }
    Ok(None)
}

/// Empty the owner's entry at `rec` if it still names `busid`.
pub(crate) fn forget_owner_record(env: &Env<'_>, rec: &OwnerRecord, busid: &str, deadline: &Deadline) -> Result<()> {
    finder(&env.config.vms[rec.vm]).forget_owner_record(env, rec, busid, deadline)
}

/// Merge what the VM holds (`fresh`) with what state remembered about the
/// same run of it: the VM is the truth for what exists; state keeps who
/// asked for it.
pub(crate) fn merge(fresh: VmState, old: &VmState) -> VmState {
    let mut out = fresh;
    for d in &mut out.devices {
        if let Some(o) = old.devices.iter().find(|o| o.id == d.id && o.bus == d.bus && o.addr == d.addr) {
            d.origin = o.origin;
            d.port_path = o.port_path.clone();
            d.usb_id = o.usb_id.clone();
            d.serial = o.serial.clone();
        }
    }
    out
}
