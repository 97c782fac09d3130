//! The invocation's context shared by every command: the root every OS path
//! goes through, the config, the one deadline every wait draws on; plus the
//! two things every command does with it: hold the state under the lock
//! (`with_state`) and open a `Session` to a VM (`connect`).

pub(crate) use crate::backend::{LibxlPlace, Located};
use crate::config::{Config, VmConfig};
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::lock::LockGuard;
use crate::root::Root;
use crate::session::Session;
use crate::state::State;
use std::path::PathBuf;

pub(crate) struct Ctx {
    pub(crate) root: Root,
    pub(crate) config: Config,
    pub(crate) deadline: Deadline,
    /// Sessions log each change instead of sending it.
    pub(crate) dry_run: bool,
    /// Xen domains' names as read so far in this invocation.
    pub(crate) xen_names: crate::backend::Names,
    /// Each device's outcome so far (`apply::Exec` says them), for the
    /// config's `hook` once the command is done (`cmd::run`).
    pub(crate) outcomes: std::cell::RefCell<Vec<crate::outcome::Outcome>>,
}

impl Ctx {
    pub(crate) fn state_dir(&self) -> PathBuf {
        self.root.path(&self.config.state_dir)
    }

    /// Run `f` on state under the lock and save whatever it changed, even
    /// when it fails half-way (a controller created before a failed
    /// device_add is real).
    pub(crate) fn with_state<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let dir = self.state_dir();
        let lock = LockGuard::acquire(&dir, &self.deadline)?;
        let mut state = State::load_from(lock.dir())?;
        let before = state.clone();
        let out = f(&mut state);
        // A dry run reads and plans but leaves state as it found it.
        if state != before && !self.dry_run {
            if let Err(save) = state.save_to(lock.dir()) {
                // Both outcomes in one line. The file keeps its last good
                // contents, which the next event reconciles with QEMU (a
                // missing record is looked up by id; a stale one is dropped
                // when QEMU lacks it).
                return Err(match out {
                    Ok(_) => Error::new(format!(
                        "QEMU changed as asked, but {save:#}; the next event or sync rebuilds it from QEMU"
                    )),
                    Err(e) => Error::new(format!("{e:#}; and {save:#}")),
                });
            }
        }
        out
    }

    /// The device node QEMU opens itself (`hostdevice`), under the root.
    pub(crate) fn node(&self, dev: &crate::host::HostDevice) -> String {
        self.root.path(dev.devname()).display().to_string()
    }

    /// State as last saved, read without the lock (it is replaced
    /// atomically); empty when missing or unreadable.
    pub(crate) fn peek_state(&self) -> State {
        State::peek(&self.state_dir())
    }

    /// Connect to `vm`; `None` when it is not running (logged when `quiet`,
    /// an error otherwise). The session's view is not loaded yet.
    pub(crate) fn connect(&self, state: &State, vm: &VmConfig, quiet: bool) -> Result<Option<Session>> {
        self.connect_hinted(vm, state.vms.get(&vm.name).and_then(|v| v.domid), quiet)
    }

    /// Where `vm` is and whether it runs, within `deadline` (`connect` opens a session).
    pub(crate) fn locate(&self, vm: &VmConfig, domid: Option<u32>, deadline: &Deadline) -> Result<Located> {
        crate::backend::locate(&self.env(), vm, domid, deadline)
    }

    fn env(&self) -> crate::backend::Env<'_> {
        crate::backend::Env { root: &self.root, config: &self.config, names: &self.xen_names }
    }

    /// Before the state lock: does `vm`'s owner answer (Xen: xenstored finds
    /// the domain) within `timing::probe_cap()`? An error says it does not:
    /// the event gives up without ever holding the lock, so a hung owner keeps
    /// no other VM's events waiting. A VM that is not running is no error here.
    pub(crate) fn probe(&self, vm: &VmConfig, domid: Option<u32>) -> Result<()> {
        let cap = self.deadline.capped(&format!("asking VM {}'s owner", vm.name), crate::timing::probe_cap())?;
        crate::backend::probe(&self.env(), vm, domid, &Deadline::after(cap))
    }

    /// `connect`, trying Xen domain `domid` first.
    pub(crate) fn connect_hinted(&self, vm: &VmConfig, domid: Option<u32>, quiet: bool) -> Result<Option<Session>> {
        match self.locate(vm, domid, &self.deadline)? {
            Located::Running(opened) => Ok(Some(self.session(vm, opened))),
            Located::NotRunning(why) | Located::NotReady { why, .. } if quiet => {
                // Routine for the timer's syncs: debug, not 720 lines a day.
                log::debug!("VM {} is not running ({why}); nothing to do", vm.name);
                Ok(None)
            }
            Located::NotRunning(why) | Located::NotReady { why, .. } => {
                Err(Error::of(crate::error::ErrorKind::NotRunning, format!("VM {} is not running: {why}", vm.name)))
            }
        }
    }

    /// A session over a VM `locate` found running.
    pub(crate) fn session(&self, vm: &VmConfig, opened: crate::backend::Opened) -> Session {
        Session::new(&vm.name, opened, self.dry_run)
    }
}

impl Ctx {
    /// Which configured Xen VM's domain libxl records `busid` (sysfs name) in,
    /// if any. Optional work (the next sync does it too): asked for at most
    /// `timing::xl_lookup_cap()`, and a xenstored that is absent or hung means
    /// None (logged at debug level), never a failure.
    pub(crate) fn libxl_holder(&self, at: crate::types::BusAddr, busid: &str, peek: &State) -> Option<LibxlPlace> {
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
                log::debug!("{busid} ({at}) removed; not asking libxl's records ({e:#}); the next sync checks them");
                None
            }
        }
    }

    /// Empty libxl's entry at `place` if it still names `busid`.
    pub(crate) fn empty_libxl_entry(&self, place: &LibxlPlace, busid: &str) -> Result<()> {
        crate::backend::empty_libxl_entry(&self.root, &self.deadline, place, busid)
    }
}

/// `VM name: what`, caused by `e` (a refusal, a timeout, ...).
pub(crate) fn vm_err<E>(vm: &VmConfig, what: &str, e: E) -> Error
where
    E: std::error::Error + crate::error::Classify + Send + Sync + 'static,
{
    Error::caused(format!("VM {}: {what}", vm.name), e)
}
