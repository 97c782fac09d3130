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
//! A new backend is one more `impl Backend`; nothing else changes.

use crate::error::Result;
use crate::qmp::QmpError;
use crate::state::{Attached, Controller};
use crate::types::BusAddr;
use std::fmt;

/// One change to a VM, as the session is about to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    AddController(Controller),
    /// The record the device will have once added (controller, port, host
    /// bus:addr); `hostdevice` is the node QEMU opens, if any.
    AddDevice {
        dev: Attached,
        hostdevice: Option<String>,
    },
    DelDevice {
        id: String,
        at: BusAddr,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddController(c) => write!(f, "device_add {} ({})", c.id, c.driver),
            Op::AddDevice { dev, .. } => {
                write!(f, "device_add {} (usb-host {}) on {} port {}", dev.id, dev.at(), dev.controller, dev.port)
            }
            Op::DelDevice { id, at } => write!(f, "device_del {id} ({at})"),
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
}

/// A QEMU/KVM VM with its own QMP socket: QEMU is the only record.
#[derive(Debug, Default)]
pub struct PlainQemu;

impl Backend for PlainQemu {
    fn name(&self) -> &'static str {
        "qemu"
    }
}

/// A Xen domain's device model. libxl keeps USB records in xenstore beside
/// QEMU; the Xen backend's bookkeeping goes in these hooks.
#[derive(Debug)]
pub struct Xen {
    pub domid: Option<u32>,
}

impl Backend for Xen {
    fn name(&self) -> &'static str {
        "xen"
    }
}
