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
use crate::qmp::{Conn, Qmp, QmpError, QmpResult, Refusal};
use crate::state::{Attached, Controller, VmState};
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
}

impl OpError {
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            OpError::Qmp(e) => e.refusal(),
            OpError::Backend(_) => None,
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Qmp(e) => e.fmt(f),
            OpError::Backend(e) => e.fmt(f),
        }
    }
}

impl From<QmpError> for OpError {
    fn from(e: QmpError) -> Self {
        OpError::Qmp(e)
    }
}

pub struct Session<S = Conn> {
    /// The VM's name in the config.
    pub vm: String,
    client: Qmp<S>,
    /// The socket as the config knows it (not under --root): kept in state.
    pub socket: PathBuf,
    /// Identity of the QEMU behind the socket (`vm::instance_of`).
    pub instance: String,
    pub domid: Option<u32>,
    view: VmState,
    backend: Box<dyn Backend>,
    pub dry_run: bool,
}

impl<S: BufRead + Write> Session<S> {
    pub fn new(vm: &str, client: Qmp<S>, socket: PathBuf, instance: String, domid: Option<u32>) -> Self {
        let backend: Box<dyn Backend> = Box::new(crate::backend::PlainQemu);
        let view = VmState::default();
        Session { vm: vm.into(), client, socket, instance, domid, view, backend, dry_run: false }
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
                Ok(())
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
        let fresh = vm::enumerate(&mut self.client)?;
        let mut v = vm::merge(fresh, old);
        v.socket = self.socket.clone();
        v.instance = self.instance.clone();
        v.domid = self.domid;
        self.view = v;
        Ok(())
    }

    /// What QEMU holds right now, without touching the view.
    pub fn read_qemu(&mut self) -> QmpResult<VmState> {
        vm::enumerate(&mut self.client)
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
        let pci = self.client.execute("query-pci", None)?;
        Ok(!pci.as_array().is_some_and(|a| a.is_empty()))
    }

    pub fn add_controller(&mut self, c: &Controller) -> Result<(), OpError> {
        let args = crate::plan::controller_args(c);
        self.change(Op::AddController(c.clone()), args)?;
        self.view.controllers.push(c.clone());
        Ok(())
    }

    pub fn add_device(&mut self, dev: Attached, hostdevice: Option<&str>) -> Result<(), OpError> {
        let placement =
            crate::plan::Placement { new_controller: None, controller: dev.controller.clone(), port: dev.port };
        let args = crate::plan::device_args(&placement, dev.bus, dev.addr, hostdevice);
        let op = Op::AddDevice { dev: dev.clone(), hostdevice: hostdevice.map(str::to_string) };
        self.change(op, args)?;
        self.view.devices.push(dev);
        Ok(())
    }

    /// `device_del`; Ok(false) when QEMU did not have it (gone counts as done).
    pub fn del_device(&mut self, at: BusAddr) -> Result<bool, OpError> {
        let id = at.device_id();
        let found = match self.change(Op::DelDevice { id: id.clone(), at }, json!({ "id": id })) {
            Ok(()) => true,
            Err(e) if e.refusal() == Some(Refusal::DeviceNotFound) => false,
            Err(e) => return Err(e),
        };
        self.view.devices.retain(|d| d.id != id);
        Ok(found)
    }

    /// Send one change with the backend's hooks around it.
    fn change(&mut self, op: Op, args: Value) -> Result<(), OpError> {
        self.backend.before(&op).map_err(OpError::Backend)?;
        if self.dry_run {
            println!("would {op} in VM {}", self.vm);
            return self.backend.after(&op, Ok(())).map_err(OpError::Backend);
        }
        let command = if matches!(op, Op::DelDevice { .. }) { "device_del" } else { "device_add" };
        let res = self.client.execute(command, Some(args)).map(drop);
        let after = self.backend.after(&op, res.as_ref().map(|_| ()));
        res?;
        after.map_err(OpError::Backend)
    }
}
