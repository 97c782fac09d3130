//! What the pure planners (`events` for one udev event, `sync` for a whole
//! convergence) decide, as data; `apply::Exec` runs them, for every command.
//! `Display` says each step in one line (the logs).

use crate::host::HostDevice;
use crate::state::Origin;
use crate::types::BusAddr;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to change; say why at this log level.
    Note { level: log::Level, text: String },
    /// Forget an admin's "keep it out" for this bus:addr (it was unplugged).
    Release { at: BusAddr },
    /// device_del from the configured VM `vm` (index into `config.vms`).
    Detach { vm: usize, id: String, at: BusAddr, why: &'static str },
    /// Drop the record only: the VM holding it is no longer configured.
    Forget { vm: String, at: BusAddr, why: &'static str },
    /// Attach `dev` to configured VM `vm`; `open_node`: QEMU opens
    /// /dev/bus/usb/BBB/DDD itself (needed on udev's add event; on bind
    /// libusb knows the device and hostbus/hostaddr alone suit any QEMU).
    /// Remember that a VM's device left this port (`follow-seconds`); drop
    /// what expired before `lineage.left - follow`.
    Remember { lineage: crate::state::Lineage, follow: u64 },
    /// The port's lineage was followed (or is void): forget it.
    Followed { port_path: String },
    /// `origin`: who asked (a rule, or an admin by hand).
    Attach { vm: usize, dev: HostDevice, open_node: bool, origin: Origin },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Note { text, .. } => f.write_str(text),
            Step::Release { at } => write!(f, "stop keeping {at} out (unplugged)"),
            Step::Detach { vm, id, at, why } => write!(f, "detach {id} ({at}) from VM #{vm}: {why}"),
            Step::Forget { vm, at, why } => write!(f, "forget {at} in VM {vm}: {why}"),
            Step::Remember { lineage: l, .. } => {
                write!(f, "remember that {} left {} of VM {}", l.usb_id, l.port_path, l.vm)
            }
            Step::Followed { port_path } => write!(f, "forget the lineage of {port_path}"),
            Step::Attach { vm, dev, .. } => {
                write!(f, "attach {} ({}) {} to VM #{vm}", dev.port_path, dev.id_string(), dev.at())
            }
        }
    }
}
