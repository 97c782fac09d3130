//! The invocation's context shared by every command: the root every OS path
//! goes through, the config, the one deadline every wait draws on; plus the
//! two things every command does with it: hold the state under the lock
//! (`with_state`) and open a `Session` to a VM (`connect`).

pub(crate) use crate::backend::{Located, OwnerRecord};
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
    /// What serves an event queued for the lock's holder (`queue`): the
    /// udev command's handler, for every command that takes the lock.
    pub(crate) serve: Option<Serve>,
}

/// Handle queued udev event `ev` under the lock, on `state`.
pub(crate) type Serve = fn(&Ctx, &mut State, &crate::host::UdevEvent) -> Result<()>;

impl Ctx {
    pub(crate) fn state_dir(&self) -> PathBuf {
        self.root.path(&self.config.state_dir)
    }

    /// Run `f` on state under the lock and save whatever it changed, even
    /// when it fails half-way (a controller created before a failed
    /// device_add is real). Waits for the lock; serves the events queued
    /// meanwhile (`queue`) before letting it go.
    pub(crate) fn with_state<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let lock = LockGuard::acquire(&self.state_dir(), &self.deadline)?;
        self.locked(lock, None, f).map(|done| done.expect("no event to queue"))
    }

    /// `with_state` for udev event `ev` (`SEQNUM` `seq`): when another
    /// invocation holds the lock, the event is queued for it and this
    /// returns `Ok(None)` at once, so udev's worker is free again.
    pub(crate) fn with_state_or_queue<T>(
        &self,
        seq: u64,
        ev: &crate::host::UdevEvent,
        f: impl FnOnce(&mut State) -> Result<T>,
    ) -> Result<Option<T>> {
        let dir = crate::fsio::Dir::create(&self.state_dir())?;
        let d = match LockGuard::try_acquire(dir)? {
            Ok(lock) => return self.locked(lock, Some((seq, ev)), f),
            // A dry run changes nothing, not even the queue.
            Err(_) if self.dry_run => return self.with_state(f).map(Some),
            Err(d) => d,
        };
        if let Err(e) = crate::queue::push(&d, seq, ev) {
            log::warn!("cannot queue this event in {} ({e}); waiting for the lock instead", d.path().display());
            return self.with_state(f).map(Some);
        }
        // The holder may have looked at the queue before the entry was
        // there: try once more, and serve it ourselves if it let go since.
        match LockGuard::try_acquire(d)? {
            Ok(lock) => self.serve_and_release(lock),
            Err(_) => log::debug!("the state lock is held: event {seq} is queued for its holder"),
        }
        Ok(None)
    }

    /// Under `lock`: the queued events older than `own` (an event's
    /// SEQNUM), `f`, then the rest of the queue; state saved, the lock
    /// released, and the queue looked at once more. `Ok(None)`: the older
    /// entries did not all fit in the budget, so `own` was queued behind
    /// them instead of overtaking them.
    fn locked<T>(
        &self,
        lock: LockGuard,
        own: Option<(u64, &crate::host::UdevEvent)>,
        f: impl FnOnce(&mut State) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut state = State::load_from(lock.dir())?;
        let before = state.clone();
        let mut served = Vec::new();
        let mut out = None;
        let behind = match own {
            Some((seq, ev)) => {
                !self.serve(lock.dir(), &mut state, Some(seq), &mut served) && {
                    // Order within a device must hold: wait in line.
                    crate::queue::push(lock.dir(), seq, ev).is_ok()
                }
            }
            None => false,
        };
        if !behind {
            out = Some(f(&mut state));
            self.serve(lock.dir(), &mut state, None, &mut served);
        }
        let saved = self.save(&lock, &state, &before);
        if saved.is_ok() {
            // Served and saved: only now are the entries done (a holder
            // killed before this leaves them for the next one).
            for q in &served {
                crate::queue::done(lock.dir(), q);
            }
            if !self.dry_run {
                if let Err(e) = state.sync_marks(lock.dir()) {
                    log::warn!("cannot update {}*: {e:#}", lock.dir().shown(crate::state::MARK_PREFIX));
                }
            }
        }
        self.after_release(lock.release());
        match (out, saved) {
            (None, Ok(())) => Ok(None),
            (None, Err(e)) => Err(e),
            (Some(out), Ok(())) => out.map(Some),
            // Both outcomes in one line. The file keeps its last good
            // contents, which the next event reconciles with QEMU (a missing
            // record is looked up by id; a stale one is dropped when QEMU
            // lacks it).
            (Some(Ok(_)), Err(save)) => Err(Error::new(format!(
                "QEMU changed as asked, but {save:#}; the next event or sync rebuilds it from QEMU"
            ))),
            (Some(Err(e)), Err(save)) => Err(Error::new(format!("{e:#}; and {save:#}"))),
        }
    }

    /// Save `state` if it changed (a dry run leaves it as it found it).
    fn save(&self, lock: &LockGuard, state: &State, before: &State) -> Result<()> {
        if state != before && !self.dry_run {
            state.save_to(lock.dir())?;
        }
        Ok(())
    }

    /// Serve the queue under `lock`, save, release.
    fn serve_and_release(&self, lock: LockGuard) {
        if let Err(e) = self.locked(lock, None, |_| Ok(())) {
            log::error!("serving queued events: {e:#}");
        }
    }

    /// The lock was let go: an event queued while it was held and not
    /// served (it came after the last look) is served now, unless another
    /// invocation has the lock (it looks at the queue before letting go).
    fn after_release(&self, dir: crate::fsio::Dir) {
        if self.dry_run || self.serve.is_none() || crate::queue::list(&dir).is_empty() || self.out_of_budget() {
            return;
        }
        match LockGuard::try_acquire(dir) {
            Ok(Ok(lock)) => self.serve_and_release(lock),
            Ok(Err(_)) => {}
            Err(e) => log::warn!("{e:#}"),
        }
    }

    /// Serving stops with a quarter of the budget left: the holder's own
    /// save and exit must fit, and udev kills a RUN program that overruns.
    pub(crate) fn out_of_budget(&self) -> bool {
        self.deadline.remaining("").map_or(true, |left| left < self.config.timeout / 4)
    }

    /// Serve the queued events (older than `before`, if given) with the
    /// same handler the events run themselves (`serve`), oldest first,
    /// while the budget lasts; each is added to `served` once tried (its
    /// failure is logged: it is that event's, not ours). True when none
    /// was left for lack of budget.
    fn serve(
        &self,
        dir: &crate::fsio::Dir,
        state: &mut State,
        before: Option<u64>,
        served: &mut Vec<crate::queue::Queued>,
    ) -> bool {
        let Some(handler) = self.serve.filter(|_| !self.dry_run) else { return true };
        let queued: Vec<crate::queue::Queued> = crate::queue::list(dir)
            .into_iter()
            .filter(|q| before.is_none_or(|b| q.seqnum < b) && !served.contains(q))
            .collect();
        let n = queued.len();
        for (i, q) in queued.into_iter().enumerate() {
            if self.out_of_budget() {
                log::info!(
                    "leaving {} queued events for the next invocation or sync (this one's budget is spent)",
                    n - i
                );
                return false;
            }
            if let Some(ev) = crate::queue::read(dir, &q) {
                let seq = q.seqnum;
                log::debug!("serving queued event {seq} ({} {}:{})", ev.action.as_str(), ev.bus, ev.addr);
                if let Err(e) = handler(self, state, &ev) {
                    log::error!("queued event {seq} ({} {}:{}): {e:#}", ev.action.as_str(), ev.bus, ev.addr);
                }
            }
            served.push(q);
        }
        true
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

    /// The directories whose change means one of `vms` (index into
    /// `config.vms`) may have started: what the sync path unit watches.
    pub(crate) fn start_dirs(&self, vms: &[usize]) -> Vec<PathBuf> {
        crate::backend::start_dirs(&self.config, vms)
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
    /// Which configured VM's owner records `busid` (sysfs name) as put in
    /// by its own tool (Xen: `xl usbdev-attach`), if any. Optional work (the
    /// next sync does it too): asked for at most `timing::xl_lookup_cap()`,
    /// and an owner that is absent or hung means None (logged at debug
    /// level), never a failure.
    pub(crate) fn owner_record(&self, at: crate::types::BusAddr, busid: &str, peek: &State) -> Option<OwnerRecord> {
        if busid.is_empty() {
            return None;
        }
        let vms: Vec<(usize, Option<u32>)> =
            self.config.vms.iter().enumerate().map(|(i, v)| (i, peek.vms.get(&v.name).and_then(|s| s.domid))).collect();
        let probe = Deadline::after(self.deadline.capped("", crate::timing::xl_lookup_cap()).ok()?);
        match crate::backend::owner_record(&self.env(), &vms, busid, &probe) {
            Ok(found) => found,
            Err(e) => {
                log::debug!(
                    "{busid} ({at}) removed; not asking its VM owners' records ({e:#}); the next sync checks them"
                );
                None
            }
        }
    }

    /// Empty the owner's entry at `rec` if it still names `busid`.
    pub(crate) fn forget_owner_record(&self, rec: &OwnerRecord, busid: &str) -> Result<()> {
        crate::backend::forget_owner_record(&self.env(), rec, busid, &self.deadline)
    }
}

/// `VM name: what`, caused by `e` (a refusal, a timeout, ...).
pub(crate) fn vm_err<E>(vm: &VmConfig, what: &str, e: E) -> Error
where
    E: std::error::Error + crate::error::Classify + Send + Sync + 'static,
{
    Error::caused(format!("VM {}: {what}", vm.name), e)
}
