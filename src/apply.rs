//! The one step executor (`Exec`): every command runs the steps its planner
//! decided here, through a `Session` per VM, keeping state in step.
//! Placement comes from `plan`; each change goes through the session (and
//! so through the VM's backend).

use crate::config::VmConfig;
use crate::ctx::{vm_err, Ctx};
use crate::error::{Error, Result};
use crate::host::HostDevice;
use crate::outcome::{Event, Outcome};
use crate::plan::{self, Placement};
use crate::session::Refusal;
use crate::session::Session;
use crate::state::{Attached, Origin, State};
use crate::step::Step;
use crate::types::BusAddr;

/// Drop the record of `at` in `vm` (without touching the VM).
fn drop_record(state: &mut State, vm: &str, at: BusAddr) {
    if let Some(v) = state.vms.get_mut(vm) {
        v.devices.retain(|d| d.at() != at);
    }
}

/// `dev`'s outcome in `vm`.
pub(crate) fn outcome_of(event: Event, vm: &VmConfig, dev: &HostDevice, reason: impl Into<String>) -> Outcome {
    Outcome {
        event,
        vm: vm.name.clone(),
        port: dev.port_path.clone(),
        device: dev.id_string(),
        serial: dev.serial.clone().unwrap_or_default(),
        reason: reason.into(),
    }
}

/// Say outcome `o` in its one log line at `level`, with its journal fields
/// (`MESSAGE_ID`, `VM`, `USB_PORT`, `USB_DEVICE`, `USB_SERIAL`), and keep it
/// for the config's `hook` (`cmd::run` runs it once the command is done). A
/// dry run changes nothing, so it has no outcome: its line goes out plain.
pub(crate) fn announce(ctx: &Ctx, level: log::Level, o: Outcome, text: impl std::fmt::Display) {
    if ctx.dry_run {
        log::log!(level, "{text}");
        return;
    }
    {
        let _fields = crate::log::scope(&o.journal_fields());
        log::log!(level, "{text}");
    }
    ctx.outcomes.borrow_mut().push(o);
}

/// How the steps' outcomes are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Driven by an event or `sync`: a VM that is not running or not ready
    /// is logged and left to the next trigger; routine outcomes are quiet.
    Triggered,
    /// Asked for by hand: a VM that is not running or not ready is an error.
    ByHand,
}

/// The one step executor: the udev event, `sync`, and `attach`/`detach` by
/// hand all run their planned steps here, so logging, dry runs, a VM that
/// is not running and a failure half-way are handled one way.
///
/// Sessions are opened when a step first needs its VM (`sync` hands in the
/// ones it opened to plan) and kept for the VM's later steps; `finish`
/// writes their views into state, failed or not (a controller created
/// before a failed device_add is real). A failed step is logged and
/// returned; the VM's later steps are skipped (its view is in doubt), the
/// other VMs' steps still run.
pub(crate) struct Exec<'c> {
    ctx: &'c Ctx,
    mode: Mode,
    sessions: Vec<(usize, Session)>,
    /// VMs a step failed on, and VMs not running or not ready (skipped).
    done_with: Vec<usize>,
}

impl<'c> Exec<'c> {
    pub(crate) fn new(ctx: &'c Ctx, mode: Mode) -> Self {
        Exec { ctx, mode, sessions: Vec::new(), done_with: Vec::new() }
    }

    /// With sessions already open and read (`sync`).
    pub(crate) fn with_sessions(ctx: &'c Ctx, sessions: Vec<(usize, Session)>) -> Self {
        Exec { ctx, mode: Mode::Triggered, sessions, done_with: Vec::new() }
    }

    fn quiet(&self) -> bool {
        self.mode == Mode::Triggered
    }

    /// Run `steps` in order; every failure is logged and returned.
    pub(crate) fn run(&mut self, state: &mut State, steps: &[Step]) -> Vec<Error> {
        let mut failures = Vec::new();
        for step in steps {
            let vm = match step {
                Step::Attach { vm, .. } | Step::Detach { vm, .. } => Some(*vm),
                Step::Note { .. }
                | Step::Release { .. }
                | Step::Forget { .. }
                | Step::Remember { .. }
                | Step::Followed { .. } => None,
            };
            if vm.is_some_and(|v| self.done_with.contains(&v)) {
                log::debug!("skipping \"{step}\": an earlier step on its VM did not go through");
                continue;
            }
            if let Err(e) = self.step(state, step) {
                // A device that did not go in: refused, and why. Its one log
                // line is the error's own, said once by whoever reports it
                // (`first_of`, then `cmd::run` with the outcome's fields).
                if let Step::Attach { vm, dev, .. } = step {
                    if !self.ctx.dry_run {
                        let o = outcome_of(Event::Refused, &self.ctx.config.vms[*vm], dev, format!("{e:#}"));
                        self.ctx.outcomes.borrow_mut().push(o);
                    }
                }
                failures.push(e);
                self.done_with.extend(vm);
            }
        }
        failures
    }

    fn step(&mut self, state: &mut State, step: &Step) -> Result<()> {
        let ctx = self.ctx;
        match step {
            Step::Note { level, text } => log::log!(*level, "{text}"),
            Step::Release { at } => state.held_out.retain(|h| (h.bus, h.addr) != (at.bus, at.addr)),
            Step::Forget { vm, at, .. } => drop_record(state, vm, *at),
            Step::Remember { lineage, follow } => {
                state.lineage.retain(|l| l.port_path != lineage.port_path && l.left + follow >= lineage.left);
                state.lineage.push(lineage.clone());
            }
            Step::Followed { port_path } => state.lineage.retain(|l| l.port_path != *port_path),
            Step::Detach { vm, at, why, .. } => {
                self.detach(state, *vm, *at, Some(why))?;
            }
            Step::Attach { vm, dev, open_node, origin } => {
                let node = open_node.then(|| ctx.node(dev));
                let cfg = &ctx.config.vms[*vm];
                let loud = !self.quiet();
                let Some(s) = self.session(state, *vm, loud)? else {
                    // Not running (or not up yet): `sync` attaches it when it is.
                    let o = outcome_of(Event::Waiting, cfg, dev, "VM not running");
                    let text = format!(
                        "VM {} is not running; {} ({}) stays on the host until it starts",
                        cfg.name,
                        dev.port_path,
                        dev.id_string()
                    );
                    announce(ctx, log::Level::Info, o, text);
                    return Ok(());
                };
                if !s.pending.is_empty() {
                    // libxl has written these controllers' records and not yet
                    // added them to QEMU: it is building the domain (or running
                    // `xl usbctrl-attach`). Creating or using controllers now
                    // could take an id libxl is about to use; the path unit's
                    // sync comes after.
                    let why = format!("libxl is still adding {} (domain starting?)", s.pending.join(", "));
                    self.done_with.push(*vm);
                    if self.quiet() {
                        let o = outcome_of(Event::Waiting, cfg, dev, format!("VM not ready: {why}"));
                        let text = format!("VM {} is not ready ({why}); leaving {} to sync", cfg.name, dev.at());
                        announce(ctx, log::Level::Info, o, text);
                        return Ok(());
                    }
                    return Err(Error::new(format!("VM {} is not ready: {why}", cfg.name)));
                }
                attach_on(ctx, s, cfg, dev, *origin, node.as_deref())?;
            }
        }
        Ok(())
    }

    /// The open session to configured VM `vm`, opened and read now if need
    /// be; None when it is not running (an error instead when `loud`).
    fn session(&mut self, state: &mut State, vm: usize, loud: bool) -> Result<Option<&mut Session>> {
        if let Some(i) = self.sessions.iter().position(|(v, _)| *v == vm) {
            return Ok(Some(&mut self.sessions[i].1));
        }
        let cfg = &self.ctx.config.vms[vm];
        let Some(mut s) = self.ctx.connect(state, cfg, !loud)? else {
            self.done_with.push(vm);
            return Ok(None);
        };
        s.adopt(state.vms.get(&cfg.name)).map_err(|e| vm_err(cfg, "reading devices (qom-list)", e))?;
        self.sessions.push((vm, s));
        Ok(self.sessions.last_mut().map(|(_, s)| s))
    }

    /// Remove the device at `at` from configured VM `vm` and its record
    /// (`why`, for the one log line that says it happened, and the outcome's
    /// reason). Gone already (VM not running, restarted, not there) counts as
    /// done; true if the VM had it.
    pub(crate) fn detach(&mut self, state: &mut State, vm: usize, at: BusAddr, why: Option<&str>) -> Result<bool> {
        let quiet = self.quiet();
        let ctx = self.ctx;
        let cfg = &ctx.config.vms[vm];
        // A VM that is not running holds nothing: done, by hand too.
        let Some(s) = self.session(state, vm, false)? else {
            drop_record(state, &cfg.name, at);
            return Ok(false);
        };
        let id = s.id_for(at);
        if !s.view().devices.iter().any(|d| d.id == id) {
            // Not in our records: ask the VM by id (one question) before any
            // removal, so the backend is never asked to undo what isn't there.
            if !s.holds(&id).map_err(|e| vm_err(cfg, &format!("looking up {id} (qom-get)"), e))? {
                if !quiet {
                    log::info!("{id} was not in VM {}", cfg.name);
                }
                return Ok(false);
            }
            log::info!("VM {}: QEMU holds {id}, which state had lost; removing it", cfg.name);
        }
        detach_on(ctx, s, cfg, at, quiet, why)
    }

    /// Write every session's view into state (what each VM holds now).
    pub(crate) fn finish(self, state: &mut State) {
        for (vm, s) in self.sessions {
            let name = &self.ctx.config.vms[vm].name;
            state.vms.insert(name.clone(), s.into_view());
        }
    }
}

/// Run `steps` with one `Exec` and save what the VMs hold: the first
/// failure is the error (with how many more failed).
pub(crate) fn execute(ctx: &Ctx, state: &mut State, steps: &[Step], mode: Mode) -> Result<()> {
    let mut x = Exec::new(ctx, mode);
    let failures = x.run(state, steps);
    x.finish(state);
    first_of(failures)
}

/// Ok, the one failure, or the first of several with their count.
/// The others are logged here, one line each; the one returned is logged
/// once by whoever reports it.
pub(crate) fn first_of(mut failures: Vec<Error>) -> Result<()> {
    for e in failures.iter().skip(1) {
        log::warn!("{e:#}");
    }
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        n => Err(Error::new(format!("{n} steps failed; first: {:#}", failures.remove(0)))),
    }
}

/// Attach through libvirtd, which picks the controller and port itself and
/// cannot hot-plug a controller: a domain with no free USB port gets the fix
/// in one line. The placement libvirt chose is read back for the record.
fn attach_libvirt(ctx: &Ctx, s: &mut Session, vm: &VmConfig, dev: &HostDevice, origin: Origin) -> Result<()> {
    let rec = Attached {
        id: s.id_for(dev.at()),
        bus: dev.bus,
        addr: dev.addr,
        controller: String::new(),
        port: 0,
        port_path: dev.port_path.clone(),
        usb_id: dev.id_string(),
        serial: dev.serial.clone().unwrap_or_default(),
        origin,
    };
    let domain = vm.libvirt.as_ref().map(|t| t.domain.as_str()).unwrap_or(&vm.name);
    match s.add_device(rec, None) {
        Ok(()) if s.dry_run => Ok(()),
        Ok(()) => {
            s.refresh().map_err(|e| vm_err(vm, "reading the live domain XML", e))?;
            let (controller, port) = s
                .view()
                .devices
                .iter()
                .find(|d| d.at() == dev.at())
                .map(|d| (d.controller.clone(), d.port))
                .unwrap_or_default();
            let p = Placement { new_controller: None, controller, bus: String::new(), port };
            log_attached(ctx, vm, dev, &s.id_for(dev.at()), &p, origin);
            Ok(())
        }
        Err(e) if e.no_usb_port().is_some() => Err(Error::new(format!(
            "cannot attach {} ({}): VM {}: {}: libvirt cannot hot-add a USB controller; add \
             <controller type='usb' model='qemu-xhci' ports='15'/> to domain {domain} (virsh edit), then restart it",
            dev.at(),
            dev.port_path,
            vm.name,
            e.no_usb_port().unwrap_or_default()
        ))),
        Err(e) => {
            let what = format!("libvirt attach {} ({} {})", s.id_for(dev.at()), dev.port_path, dev.id_string());
            Err(vm_err(vm, &what, e))
        }
    }
}

/// What one try at attaching did.
enum Tried {
    Done,
    /// QEMU showed our view was stale (re-read) or lacks `hostdevice`: again.
    Again,
    /// A controller is needed and the guest cannot take one now (in its
    /// firmware): nothing done, the device waits for the next sync.
    Waiting,
}

/// Attach over an open session, keeping its view in step with QEMU. At most
/// one re-read of QEMU when it shows our view was stale.
fn attach_on(
    ctx: &Ctx,
    s: &mut Session,
    vm: &VmConfig,
    dev: &HostDevice,
    origin: Origin,
    hostdevice: Option<&str>,
) -> Result<()> {
    if already_there(ctx, s, vm, dev, hostdevice.is_some())? {
        return Ok(());
    }
    if s.places_devices_itself() {
        return attach_libvirt(ctx, s, vm, dev, origin);
    }
    let mut retried = false;
    let mut hostdevice = hostdevice;
    loop {
        let p = plan::place(vm, s.view(), dev.speed_class())
            .map_err(|e| Error::new(format!("cannot attach {} ({}): {e}", dev.at(), dev.port_path)))?;
        match try_once(ctx, s, vm, dev, &p, origin, &mut hostdevice, &mut retried)? {
            Tried::Done | Tried::Waiting => return Ok(()),
            // A re-read found the id in QEMU after all (state had lost it).
            Tried::Again if already_there(ctx, s, vm, dev, false)? => return Ok(()),
            Tried::Again => {}
        }
    }
}

/// True if the session's view holds `dev`'s id for this very device (same
/// usb id, port path, serial). If it holds the id for another or an
/// unidentifiable device (rebuilt from QEMU after state was lost), that one
/// is a dead leftover of a previous device at the same bus:addr: removed, so
/// the caller attaches `dev` in its place.
///
/// `fresh`: an `add` event. The same device at the same bus:addr is then
/// either a replayed event (`udevadm trigger`: the guest must not see its
/// device vanish and come back, a disk being written would lose data) or
/// the kernel enumerated it anew after an unplug we never saw (QEMU's
/// usb-host lost the device it had opened). QEMU's `attached` tells which.
fn already_there(ctx: &Ctx, s: &mut Session, vm: &VmConfig, dev: &HostDevice, fresh: bool) -> Result<bool> {
    let id = s.id_for(dev.at());
    let Some(rec) = s.view().devices.iter().find(|d| d.id == id) else { return Ok(false) };
    if crate::events::same_device(rec, dev) {
        let open = !fresh || s.holds_device_open(&id).map_err(|e| vm_err(vm, &format!("reading {id} (qom-get)"), e))?;
        if open {
            log::info!("{} ({}) is already attached to VM {} as {id}", dev.port_path, dev.id_string(), vm.name);
            return Ok(true);
        }
        log::info!("VM {}: {id} lost the device it had open (enumerated anew at {}); replacing it", vm.name, dev.at());
        detach_on(ctx, s, vm, dev.at(), true, Some("it lost the device it had open"))?;
        return Ok(false);
    }
    let was = if rec.usb_id.is_empty() { "a device state has no record of".to_string() } else { rec.usb_id.clone() };
    log::info!("VM {}: {id} holds {was}, not {} at {}; replacing it", vm.name, dev.id_string(), dev.port_path);
    detach_on(ctx, s, vm, dev.at(), true, Some("another device took its bus:addr"))?;
    Ok(false)
}

#[allow(clippy::too_many_arguments)]
fn try_once(
    ctx: &Ctx,
    s: &mut Session,
    vm: &VmConfig,
    dev: &HostDevice,
    p: &Placement,
    origin: Origin,
    hostdevice: &mut Option<&str>,
    retried: &mut bool,
) -> Result<Tried> {
    let reread = |s: &mut Session| s.refresh().map_err(|e| vm_err(vm, "reading devices (qom-list)", e));
    if let Some(c) = &p.new_controller {
        if let Some(why) = s.controller_wait().map_err(|e| vm_err(vm, "query-pci/query-blockstats", e))? {
            let text = format!(
                "VM {}: waiting: {why}; not hot-plugging USB controller {} into a guest in its firmware; {} ({}) \
                 is left for the next sync (or add usbctrl = ['type=devicemodel,version=3,ports=15'] to the domain's \
                 xl config)",
                vm.name,
                c.id,
                dev.at(),
                dev.port_path
            );
            let o = outcome_of(Event::Waiting, vm, dev, format!("guest in its firmware: {why}"));
            announce(ctx, log::Level::Info, o, text);
            return Ok(Tried::Waiting);
        }
        let room = s.pci_room().map_err(|e| vm_err(vm, "reading its PCI slots (qom-list)", e))?;
        let has_usb = s.view().controllers.iter().any(|c| c.kind().is_some());
        let home = plan::controller_home(&vm.name, &room, c, has_usb)
            .map_err(|e| Error::new(format!("cannot attach {} ({}): {e}", dev.at(), dev.port_path)))?;
        match s.add_controller(c, home.as_deref()) {
            // A dry run printed what it would send; the log only records real changes.
            Ok(()) if s.dry_run => {}
            Ok(()) => log::info!(
                "VM {}: created USB controller {} ({}){}",
                vm.name,
                c.id,
                c.driver,
                home.as_deref().map(|b| format!(" on PCI bus {b}")).unwrap_or_default()
            ),
            Err(e) if !*retried && e.refusal() == Some(Refusal::StaleView) => {
                *retried = true;
                reread(s)?;
                return Ok(Tried::Again);
            }
            Err(e) => return Err(vm_err(vm, &format!("device_add {} ({})", c.id, c.driver), e)),
        }
    }
    let rec = Attached {
        id: dev.at().device_id(),
        bus: dev.bus,
        addr: dev.addr,
        controller: p.controller.clone(),
        port: p.port,
        port_path: dev.port_path.clone(),
        usb_id: dev.id_string(),
        serial: dev.serial.clone().unwrap_or_default(),
        origin,
    };
    match s.add_device(rec, *hostdevice) {
        Ok(()) => {
            if !s.dry_run {
                log_attached(ctx, vm, dev, &s.id_for(dev.at()), p, origin);
            }
            Ok(Tried::Done)
        }
        // QEMU before 5.1 has no hostdevice property: fall back to hostbus/hostaddr.
        Err(e) if hostdevice.is_some() && e.refusal() == Some(Refusal::NoHostdeviceProperty) => {
            log::warn!("VM {}: QEMU has no usb-host hostdevice property; using hostbus/hostaddr", vm.name);
            *hostdevice = None;
            Ok(Tried::Again)
        }
        // StaleView: QEMU says our view is old. Records veto: libxl's records say
        // the port was taken meanwhile (`xl usbdev-attach` records its port
        // before it waits for the QMP lock we hold). Either way: re-read both.
        Err(e) if !*retried && (e.refusal() == Some(Refusal::StaleView) || e.is_records_veto()) => {
            *retried = true;
            log::info!("VM {}: {e:#}; re-reading QEMU's devices", vm.name);
            reread(s)?;
            Ok(Tried::Again)
        }
        Err(e) => {
            let what = format!("device_add {} ({} {})", dev.at().device_id(), dev.port_path, dev.id_string());
            Err(vm_err(vm, &what, e))
        }
    }
}

fn log_attached(ctx: &Ctx, vm: &VmConfig, dev: &HostDevice, id: &str, p: &Placement, origin: Origin) {
    let why = match origin {
        Origin::Manual => "attached by hand",
        Origin::Followed => "it follows the VM's device that left this socket",
        _ => "a rule routes it",
    };
    let text = format!(
        "attached {} ({}{}) {} to VM {} as {} on {} port {} in {} ms",
        dev.port_path,
        dev.id_string(),
        dev.name.as_deref().map(|n| format!(" {n}")).unwrap_or_default(),
        dev.at(),
        vm.name,
        id,
        p.controller,
        p.port,
        ctx.deadline.elapsed().as_millis()
    );
    announce(ctx, log::Level::Info, outcome_of(Event::Attached, vm, dev, why), text);
}

/// `device_del` `at` over an open session; true if QEMU had it. One log
/// line when it happened, with `why` (the outcome's reason).
fn detach_on(ctx: &Ctx, s: &mut Session, vm: &VmConfig, at: BusAddr, quiet: bool, why: Option<&str>) -> Result<bool> {
    let id = s.id_for(at);
    // What the record knows of the device, for the outcome (taken before it goes).
    let rec = s.view().devices.iter().find(|d| d.id == id).cloned();
    let found = s.del_device(at).map_err(|e| vm_err(vm, &format!("device_del {id}"), e))?;
    match found {
        true if s.dry_run => {}
        true => {
            let (port, device, serial) = rec.map(|r| (r.port_path, r.usb_id, r.serial)).unwrap_or_default();
            let reason = why.unwrap_or_default().to_string();
            let o = Outcome { event: Event::Detached, vm: vm.name.clone(), port, device, serial, reason };
            let text = format!(
                "detached {id} ({at}) from VM {}{}",
                vm.name,
                why.map(|w| format!(": {w}")).unwrap_or_default()
            );
            announce(ctx, log::Level::Info, o, text);
        }
        false if !quiet => log::info!("{id} was not in VM {}", vm.name),
        false => {}
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Link, Op, OpError, Opened, VmError, VmResult};
    use crate::deadline::Deadline;
    use crate::state::VmState;
    use serde_json::Value;
    use std::sync::{Arc, Mutex};

    /// A VM whose every question is logged; `broken` fails them all.
    struct Asked(Arc<Mutex<Vec<String>>>, bool);
    impl Link for Asked {
        fn enumerate(&mut self) -> VmResult<VmState> {
            Ok(VmState::default())
        }
        fn holds(&mut self, id: &str) -> VmResult<bool> {
            self.0.lock().unwrap().push(format!("holds {id}"));
            if self.1 {
                return Err(VmError::Timeout("no answer".into()));
            }
            Ok(false)
        }
        fn holds_device_open(&mut self, _: &str) -> VmResult<bool> {
            Ok(false)
        }
        fn pci_room(&mut self) -> VmResult<crate::plan::PciRoom> {
            Ok(Default::default())
        }
        fn send(&mut self, _: &Op, _: Value) -> std::result::Result<(), OpError> {
            Ok(())
        }
        fn describe(&self, _: &str, _: &Op, _: &Value) -> Vec<String> {
            Vec::new()
        }
    }

    fn session(name: &str, log: &Arc<Mutex<Vec<String>>>, broken: bool) -> Session {
        let link = Box::new(Asked(log.clone(), broken));
        Session::new(name, Opened { link, socket: "/q".into(), instance: "i".into(), domid: None }, false)
    }

    #[test]
    fn a_failed_step_skips_its_vms_later_steps_and_the_others_still_run() {
        let config = crate::config::parse_str(
            "[[vm]]\nname = \"a\"\nqmp = \"/a\"\n[[vm]]\nname = \"b\"\nqmp = \"/b\"\n",
            "test",
        )
        .unwrap();
        let ctx = Ctx {
            root: crate::root::Root::new("/nonexistent"),
            config,
            deadline: Deadline::after(std::time::Duration::from_secs(5)),
            dry_run: false,
            xen_names: Default::default(),
            outcomes: Default::default(),
            serve: None,
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let sessions = vec![(0, session("a", &log, true)), (1, session("b", &log, false))];
        let detach =
            |vm, addr| Step::Detach { vm, id: BusAddr::new(1, addr).device_id(), at: BusAddr::new(1, addr), why: "t" };
        let steps = [detach(0, 2), detach(0, 3), detach(1, 4)];
        let mut x = Exec::with_sessions(&ctx, sessions);
        let mut state = State::default();
        let failures = x.run(&mut state, &steps);
        x.finish(&mut state);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].to_string().contains("VM a"), "{}", failures[0]);
        assert_eq!(*log.lock().unwrap(), ["holds xenusb-1-2", "holds xenusb-1-4"]);
        assert_eq!(state.vms.len(), 2, "both views are saved, the failed VM's too");
    }

    #[test]
    fn outcomes_are_kept_for_the_hook_with_the_log_field_names_except_in_a_dry_run() {
        use crate::log::field;
        let config = crate::config::parse_str("[[vm]]\nname = \"a\"\nqmp = \"/a\"\n", "test").unwrap();
        let mut ctx = Ctx {
            root: crate::root::Root::new("/nonexistent"),
            config,
            deadline: Deadline::after(std::time::Duration::from_secs(5)),
            dry_run: false,
            xen_names: Default::default(),
            outcomes: Default::default(),
            serve: None,
        };
        let mut dev = HostDevice::fixture(1, 2, "1-4", 0x046d, 0xc52b);
        dev.serial = Some("s1".into());
        let o = outcome_of(Event::Attached, &ctx.config.vms[0], &dev, "a rule routes it");
        let names: Vec<&str> = o.journal_fields().iter().map(|(k, _)| *k).collect();
        assert_eq!(names, [field::MESSAGE_ID, field::VM, field::USB_PORT, field::USB_DEVICE, field::USB_SERIAL]);
        announce(&ctx, log::Level::Info, o.clone(), "attached");
        assert_eq!(ctx.outcomes.borrow().as_slice(), std::slice::from_ref(&o));
        ctx.dry_run = true;
        announce(&ctx, log::Level::Info, o, "attached");
        assert_eq!(ctx.outcomes.borrow().len(), 1, "a dry run has no outcome");
    }
}
