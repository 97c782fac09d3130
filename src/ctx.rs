//! The invocation's context shared by every command: the root every OS path
//! goes through, the config, the one deadline every wait draws on; plus the
//! two things every command does with it: hold the state under the lock
//! (`with_state`) and open a `Session` to a VM (`connect`).

use crate::backend::{Backend, PlainQemu, Xen};
use crate::config::{Config, VmConfig};
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::lock::LockGuard;
use crate::qmp::QmpError;
use crate::root::Root;
use crate::session::Session;
use crate::state::State;
use crate::vm::{self, Located, Running};
use std::path::PathBuf;

pub struct Ctx {
    pub root: Root,
    pub config: Config,
    pub deadline: Deadline,
    /// Sessions log each change instead of sending it.
    pub dry_run: bool,
    /// Xen domains' names as read so far in this invocation.
    pub xen_names: crate::xen::Names,
}

impl Ctx {
    pub fn state_dir(&self) -> PathBuf {
        self.root.path(&self.config.state_dir)
    }

    /// Run `f` on state under the lock and save whatever it changed, even
    /// when it fails half-way (a controller created before a failed
    /// device_add is real).
    pub fn with_state<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let dir = self.state_dir();
        let _lock = LockGuard::acquire(&dir, &self.deadline)?;
        let mut state = State::load(&dir)?;
        let before = state.clone();
        let out = f(&mut state);
        // A dry run reads and plans but leaves state as it found it.
        if state != before && !self.dry_run {
            if let Err(save) = state.save(&dir) {
                // Both outcomes in one line. The file keeps its last good
                // contents, which the next event reconciles with QEMU (a
                // missing record is looked up by id; a stale one is dropped
                // when QEMU lacks it).
                return Err(match out {
                    Ok(_) => Error::new(format!(
                        "QEMU changed as asked, but {save}; the next event or sync rebuilds it from QEMU"
                    )),
                    Err(e) => Error::new(format!("{e}; and {save}")),
                });
            }
        }
        out
    }

    /// The device node QEMU opens itself (`hostdevice`), under the root.
    pub fn node(&self, dev: &crate::host::HostDevice) -> String {
        self.root.path(dev.devname()).display().to_string()
    }

    /// State as last saved, read without the lock (it is replaced
    /// atomically); empty when missing or unreadable.
    pub fn peek_state(&self) -> State {
        State::peek(&self.state_dir())
    }

    /// Connect to `vm`; `None` when it is not running (logged when `quiet`,
    /// an error otherwise). The session's view is not loaded yet.
    pub fn connect(&self, state: &State, vm: &VmConfig, quiet: bool) -> Result<Option<Session>> {
        self.connect_hinted(vm, state.vms.get(&vm.name).and_then(|v| v.domid), quiet)
    }

    /// `connect`, trying Xen domain `domid` first.
    pub fn connect_hinted(&self, vm: &VmConfig, domid: Option<u32>, quiet: bool) -> Result<Option<Session>> {
        match vm::locate(&self.root, &self.config, vm, domid, &self.deadline, &self.xen_names)? {
            Located::Running(r) => Ok(Some(self.session(vm, *r))),
            Located::Libvirt { opened, shown } => {
                let mut s = Session::libvirt(&vm.name, opened.link, shown, opened.instance);
                s.dry_run = self.dry_run;
                Ok(Some(s))
            }
            Located::NotRunning(why) | Located::NotReady(why) if quiet => {
                // Routine for the timer's syncs: debug, not 720 lines a day.
                log::debug!("VM {} is not running ({why}); nothing to do", vm.name);
                Ok(None)
            }
            Located::NotRunning(why) | Located::NotReady(why) => {
                Err(Error::new(format!("VM {} is not running: {why}", vm.name)))
            }
        }
    }

    /// A session over `r`: the Xen backend when `r` came through xenstore
    /// (a `qmp = ...` VM never does), else plain QEMU.
    pub fn session(&self, vm: &VmConfig, r: Running) -> Session {
        let Running { client, socket, instance, domid, xen } = r;
        let backend: Box<dyn Backend> = match xen {
            Some(link) => {
                let mut x = Xen::new(link, self.root.clone(), self.config.xen_lib_dir.clone(), self.deadline);
                x.dry_run = self.dry_run;
                Box::new(x)
            }
            None => Box::new(PlainQemu),
        };
        let mut s = Session::new(&vm.name, client, socket, instance, domid).with_backend(backend);
        s.dry_run = self.dry_run;
        s
    }
}

/// `VM name: what: cause`.
pub fn vm_err(vm: &VmConfig, what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(format!("VM {}: {what}: {e}", vm.name))
}

/// `vm_err` for a QMP failure.
pub fn qmp_err(vm: &VmConfig, what: &str, e: QmpError) -> Error {
    vm_err(vm, what, e)
}
