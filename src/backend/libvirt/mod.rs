//! libvirt-managed domains. libvirtd owns each domain's QMP monitor (a second
//! client is queued and never greeted), so devices go in and out through
//! libvirtd: live `<hostdev>`s naming the exact host bus and device, each
//! carrying this tool's user alias (`ua-aua-<bus>-<addr>`). `virsh dumpxml`
//! stays true, the persistent definition is never touched, and an admin's
//! own hostdevs (any other alias) are left alone.
//!
//! The XML both ways is pure (`xml`). A local `qemu:///system` is reached
//! directly, one connection on libvirtd's socket in libvirt's own RPC
//! protocol (`rpc`: the calls one session needs, each bounded by the
//! invocation's budget). Any other URI goes through a helper program,
//! `auto-usb-attach-libvirt` (`conn`, cargo feature `libvirt`: libvirt's C
//! library through the `virt` crate), that the tool runs for that domain's
//! session only (`helper`: every reply waited for within the budget). The
//! tool itself never loads libvirt.

#[cfg(feature = "libvirt")]
mod conn;
mod helper;
mod proto;
mod rpc;
mod xml;

use super::{Env, Finder, Link, Located, Op, OpError, Opened};
use super::{VmError, VmResult};
use crate::config::VmConfig;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::state::VmState;
use crate::types::BusAddr;
#[cfg(feature = "libvirt")]
pub use conn::serve;
use serde_json::Value;
use std::fmt;
use std::path::PathBuf;

use xml::{alias_of, hostdev_xml, view_of};

/// What went wrong talking to libvirtd, split where a caller acts differently.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LvError {
    /// libvirtd is not there (no socket, refused), or this build has no libvirt.
    Unreachable(String),
    /// No answer within the invocation's budget.
    Timeout,
    /// The device is not in the domain (a detach of what is not there).
    DeviceMissing(String),
    /// Every USB port of the domain is taken, or it has no USB bus.
    NoUsbPort(String),
    /// libvirt refused for another reason: its own message.
    Refused(String),
}

impl fmt::Display for LvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LvError::Unreachable(m) => write!(f, "cannot reach libvirtd: {m}"),
            LvError::Timeout => f.write_str("libvirtd did not answer within the budget"),
            LvError::DeviceMissing(m) | LvError::NoUsbPort(m) | LvError::Refused(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LvError {}

impl crate::error::Classify for LvError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            LvError::Unreachable(_) => ErrorKind::Unreachable,
            LvError::Timeout => ErrorKind::Timeout,
            LvError::DeviceMissing(_) | LvError::NoUsbPort(_) | LvError::Refused(_) => ErrorKind::Refused,
        }
    }
}

/// One running domain, through libvirtd. `Session` drives it; tests use a fake.
pub(super) trait DomainLink {
    /// The live domain XML (`virsh dumpxml`).
    fn live_xml(&mut self) -> Result<String, LvError>;
    /// Attach a device described by `xml`, live only.
    fn attach(&mut self, xml: &str) -> Result<(), LvError>;
    /// Detach a device described by `xml`, live only.
    fn detach(&mut self, xml: &str) -> Result<(), LvError>;
}

/// A running domain: its link, and its identity (uuid and run id: a restart
/// gives it a new id, as a restarted QEMU gives its socket a new inode).
pub(super) struct Domain {
    pub(super) link: Box<dyn DomainLink>,
    pub(super) instance: String,
}

/// A libvirt domain as a `Link`: devices go in and out as live hostdevs.
struct LibvirtVm {
    link: Box<dyn DomainLink>,
}

/// A libvirt failure where a read of the VM is expected.
fn lv_read(e: LvError) -> VmError {
    match e {
        LvError::Timeout => VmError::Timeout(e.to_string()),
        e => VmError::Io(e.to_string()),
    }
}

impl Link for LibvirtVm {
    fn id_for(&self, at: BusAddr) -> String {
        alias_of(at)
    }

    fn places_devices_itself(&self) -> bool {
        true
    }

    fn enumerate(&mut self) -> VmResult<VmState> {
        view_of(&self.link.live_xml().map_err(lv_read)?).map_err(VmError::Protocol)
    }

    fn holds(&mut self, id: &str) -> VmResult<bool> {
        Ok(self.enumerate()?.devices.iter().any(|d| d.id == id))
    }

    /// libvirt does not say whether the node is still open; the live XML at
    /// least says whether the hostdev is there.
    fn holds_device_open(&mut self, id: &str) -> VmResult<bool> {
        self.holds(id)
    }

    fn pci_room(&mut self) -> VmResult<crate::plan::PciRoom> {
        Err(VmError::Protocol("libvirt cannot hot-plug a USB controller".into()))
    }

    /// A live `<hostdev>` by host address with our alias.
    fn send(&mut self, op: &Op, _args: Value) -> std::result::Result<(), OpError> {
        let r = match op {
            Op::AddDevice { dev, .. } => self.link.attach(&hostdev_xml(dev.at())),
            Op::DelDevice { at, .. } => match self.link.detach(&hostdev_xml(*at)) {
                // Gone already: what QEMU's DeviceNotFound means on the QMP path.
                Err(LvError::DeviceMissing(m)) => {
                    return Err(OpError::Vm(VmError::Qemu { class: "DeviceNotFound".into(), desc: m }))
                }
                r => r,
            },
            Op::AddController(_) | Op::FinishController(_) => {
                return Err(OpError::Libvirt(LvError::Refused("libvirt cannot hot-plug a USB controller".into())))
            }
        };
        r.map_err(OpError::Libvirt)
    }

    fn describe(&self, vm: &str, op: &Op, _args: &Value) -> Vec<String> {
        let (verb, at) = match op {
            Op::AddDevice { dev, .. } => ("attach", dev.at()),
            Op::DelDevice { at, .. } => ("detach", *at),
            Op::AddController(_) | Op::FinishController(_) => return Vec::new(),
        };
        vec![format!("would {verb} (live) in libvirt domain of VM {vm}: {}", hostdev_xml(at))]
    }
}

/// libvirt-managed domains: found through libvirtd.
pub(super) struct Libvirt;

impl Finder for Libvirt {
    fn locate(&self, _: &Env<'_>, vm: &VmConfig, _: Option<u32>, deadline: &Deadline) -> Result<Located> {
        locate(vm, deadline)
    }
    /// libvirtd rewrites `<name>.pid` and `<name>.xml` there as a domain of
    /// the local system instance starts; another URI's start shows nowhere here.
    fn start_dir(&self, _: &crate::config::Config, vm: &VmConfig) -> Option<std::path::PathBuf> {
        let local = vm.libvirt.as_ref().is_some_and(|t| t.uri == crate::config::DEFAULT_LIBVIRT_URI);
        local.then(|| "/run/libvirt/qemu".into())
    }

    /// Finding the domain is connecting to libvirtd (the helper, each reply
    /// bounded by the deadline): asking twice would double every event's cost.
    fn probe(&self, _: &Env<'_>, _: &VmConfig, _: Option<u32>, _: &Deadline) -> Result<()> {
        Ok(())
    }
}

/// Connect to libvirtd at the VM's `uri` (directly when it is the local
/// daemon's, else through the libvirt helper) and find its running domain.
fn locate(vm: &VmConfig, deadline: &Deadline) -> Result<Located> {
    let Some(t) = &vm.libvirt else {
        return Err(Error::new(format!("VM {}: backend libvirt needs a domain", vm.name)));
    };
    let socket = PathBuf::from(format!("libvirt:{}#{}", t.uri, t.domain));
    let opened = match rpc::socket_for(&t.uri) {
        Some(sock) => rpc::open(&sock, &t.uri, &t.domain, deadline),
        None => helper::open(&t.uri, &t.domain, deadline),
    };
    match opened {
        Ok(Ok(d)) => {
            let link = Box::new(LibvirtVm { link: d.link });
            Ok(Located::Running(Opened { link, socket, instance: d.instance, domid: None }))
        }
        Ok(Err(why)) => Ok(Located::NotRunning(why)),
        Err(e) => Err(Error::caused(format!("VM {}: libvirt {}", vm.name, t.uri), e)),
    }
}
