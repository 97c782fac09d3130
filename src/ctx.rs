//! The invocation's context shared by every command: the root every OS path
//! goes through, the config, the one deadline every wait draws on; plus the
//! two things every command does with it: hold the state under the lock
//! (`with_state`) and open a `Session` to a VM (`connect`).

use crate::backend::{Backend, PlainQemu, Xen};
use crate::config::{Config, VmConfig};
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::lock::LockGuard;
use crate::root::Root;
use crate::session::Session;
use crate::state::State;
pub use crate::vm::Located;
use crate::vm::{self, Running};
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

    /// Where `vm` is and whether it runs, within `deadline` (`connect` opens a session).
    pub fn locate(&self, vm: &VmConfig, domid: Option<u32>, deadline: &Deadline) -> Result<Located> {
        vm::locate(&self.root, &self.config, vm, domid, deadline, &self.xen_names)
    }

    /// When a VM is "not ready" (its socket refuses connections, or holds no
    /// QEMU by that name yet): the age of the youngest socket it could be
    /// waiting for, if even that is older than `timing::stale_socket()`. Such a
    /// socket was left by a QEMU that died, not made by one still starting.
    pub fn stale_socket_age(&self, vm: &VmConfig) -> Option<std::time::Duration> {
        let age = |p: &std::path::Path| std::fs::symlink_metadata(p).ok()?.modified().ok()?.elapsed().ok();
        let youngest = match &vm.qmp {
            Some(q) => age(&self.root.path(q))?,
            None => std::fs::read_dir(self.root.path(&self.config.xen_run_dir))
                .ok()?
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(vm::XEN_SOCKET_PREFIX))
                .filter_map(|e| age(&e.path()))
                .min()?,
        };
        (youngest >= crate::timing::stale_socket()).then_some(youngest)
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

pub use crate::backend::LibxlPlace;

impl Ctx {
    /// Which configured Xen VM's domain libxl records `busid` (sysfs name) in,
    /// if any. Optional work (the next sync does it too): asked for at most
    /// `timing::xl_lookup_cap()`, and a xenstored that is absent or hung means
    /// None (logged at debug level), never a failure.
    pub fn libxl_holder(&self, at: crate::types::BusAddr, busid: &str, peek: &State) -> Option<LibxlPlace> {
        let vms: Vec<(usize, &str, Option<u32>)> = self
            .config
            .vms
            .iter()
            .enumerate()
            .filter(|(_, v)| v.backend == crate::config::BackendKind::Xen)
            .map(|(i, v)| (i, v.name.as_str(), peek.vms.get(&v.name).and_then(|s| s.domid)))
            .collect();
        if busid.is_empty() || vms.is_empty() {
            return None;
        }
        let probe = Deadline::after(self.deadline.capped("", crate::timing::xl_lookup_cap()).ok()?);
        match crate::backend::libxl_holder(&self.root, &probe, &vms, busid, &self.xen_names) {
            Ok(found) => found,
            Err(e) => {
                log::debug!("{busid} ({at}) removed; not asking libxl's records ({e}); the next sync checks them");
                None
            }
        }
    }

    /// Empty libxl's entry at `place` if it still names `busid`.
    pub fn empty_libxl_entry(&self, place: &LibxlPlace, busid: &str) -> Result<()> {
        crate::backend::empty_libxl_entry(&self.root, &self.deadline, place, busid)
    }
}

/// `VM name: what: cause`.
pub fn vm_err(vm: &VmConfig, what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(format!("VM {}: {what}: {e}", vm.name))
}

/// `vm_err` for a QMP failure.
pub fn qmp_err(vm: &VmConfig, what: &str, e: impl std::fmt::Display) -> Error {
    vm_err(vm, what, e)
}
