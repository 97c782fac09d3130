//! Executing attach and detach steps through a `Session`, keeping state in
//! step: placement comes from `plan`, each change goes through the session
//! (and so through the VM's backend). Shared by the udev, manual and sync
//! commands.

use crate::config::VmConfig;
use crate::ctx::{qmp_err, vm_err, Ctx};
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::host::HostDevice;
use crate::plan::{self, Placement};
use crate::session::Refusal;
use crate::session::Session;
use crate::state::{Attached, Origin, State};
use crate::types::BusAddr;

/// Drop the record of `at` in `vm` (without touching QEMU).
pub fn drop_record(state: &mut State, vm: &str, at: BusAddr) {
    if let Some(v) = state.vms.get_mut(vm) {
        v.devices.retain(|d| d.at() != at);
    }
}

/// Connect to `vm` and attach `dev`, recording it in `state`. A VM that is
/// not running is fine when `quiet` (logged), an error otherwise.
pub fn attach(
    ctx: &Ctx,
    state: &mut State,
    vm: &VmConfig,
    dev: &HostDevice,
    origin: Origin,
    hostdevice: Option<&str>,
    quiet: bool,
) -> Result<()> {
    let Some(mut s) = ctx.connect(state, vm, quiet)? else { return Ok(()) };
    s.adopt(state.vms.get(&vm.name)).map_err(|e| qmp_err(vm, "reading devices (qom-list)", e))?;
    if !s.pending.is_empty() {
        // libxl has written these controllers' records and not yet added
        // them to QEMU: it is building the domain (or running `xl
        // usbctrl-attach`). Creating or using controllers now could take an
        // id libxl is about to use; the path unit's sync comes after.
        let why = format!("libxl is still adding {} (domain starting?)", s.pending.join(", "));
        drop(s);
        if quiet {
            log::info!("VM {} is not ready ({why}); leaving {} to sync", vm.name, dev.at());
            return Ok(());
        }
        return Err(Error::new(format!("VM {} is not ready: {why}", vm.name)));
    }
    let result = attach_on(&mut s, vm, dev, origin, hostdevice, &ctx.deadline);
    // Saved even on failure: a controller created before a failed device_add is real.
    state.vms.insert(vm.name.clone(), s.into_view());
    result
}

/// Attach through libvirtd, which picks the controller and port itself and
/// cannot hot-plug a controller: a domain with no free USB port gets the fix
/// in one line. The placement libvirt chose is read back for the record.
fn attach_libvirt(s: &mut Session, vm: &VmConfig, dev: &HostDevice, origin: Origin, deadline: &Deadline) -> Result<()> {
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
            s.refresh().map_err(|e| qmp_err(vm, "reading the live domain XML", e))?;
            let (controller, port) = s
                .view()
                .devices
                .iter()
                .find(|d| d.at() == dev.at())
                .map(|d| (d.controller.clone(), d.port))
                .unwrap_or_default();
            let p = Placement { new_controller: None, controller, bus: String::new(), port };
            log_attached(vm, dev, &s.id_for(dev.at()), &p, deadline);
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
    /// A controller is needed and the guest is in its firmware: nothing done,
    /// the device waits for the next sync (path unit, timer).
    Waiting,
}

/// Attach over an open session, keeping its view in step with QEMU. At most
/// one re-read of QEMU when it shows our view was stale.
pub fn attach_on(
    s: &mut Session,
    vm: &VmConfig,
    dev: &HostDevice,
    origin: Origin,
    hostdevice: Option<&str>,
    deadline: &Deadline,
) -> Result<()> {
    if already_there(s, vm, dev, hostdevice.is_some())? {
        return Ok(());
    }
    if s.is_libvirt() {
        return attach_libvirt(s, vm, dev, origin, deadline);
    }
    let mut retried = false;
    let mut hostdevice = hostdevice;
    loop {
        let p = plan::place(vm, s.view(), dev.speed_class())
            .map_err(|e| Error::new(format!("cannot attach {} ({}): {e}", dev.at(), dev.port_path)))?;
        match try_once(s, vm, dev, &p, origin, &mut hostdevice, &mut retried, deadline)? {
            Tried::Done | Tried::Waiting => return Ok(()),
            // A re-read found the id in QEMU after all (state had lost it).
            Tried::Again if already_there(s, vm, dev, false)? => return Ok(()),
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
fn already_there(s: &mut Session, vm: &VmConfig, dev: &HostDevice, fresh: bool) -> Result<bool> {
    let id = s.id_for(dev.at());
    let Some(rec) = s.view().devices.iter().find(|d| d.id == id) else { return Ok(false) };
    if crate::events::same_device(rec, dev) {
        let open =
            !fresh || s.holds_device_open(&id).map_err(|e| qmp_err(vm, &format!("reading {id} (qom-get)"), e))?;
        if open {
            log::info!("{} ({}) is already attached to VM {} as {id}", dev.port_path, dev.id_string(), vm.name);
            return Ok(true);
        }
        log::info!("VM {}: {id} lost the device it had open (enumerated anew at {}); replacing it", vm.name, dev.at());
        detach_on(s, vm, dev.at(), true)?;
        return Ok(false);
    }
    let was = if rec.usb_id.is_empty() { "a device state has no record of".to_string() } else { rec.usb_id.clone() };
    log::info!("VM {}: {id} holds {was}, not {} at {}; replacing it", vm.name, dev.id_string(), dev.port_path);
    detach_on(s, vm, dev.at(), true)?;
    Ok(false)
}

#[allow(clippy::too_many_arguments)]
fn try_once(
    s: &mut Session,
    vm: &VmConfig,
    dev: &HostDevice,
    p: &Placement,
    origin: Origin,
    hostdevice: &mut Option<&str>,
    retried: &mut bool,
    deadline: &Deadline,
) -> Result<Tried> {
    let reread = |s: &mut Session| s.refresh().map_err(|e| qmp_err(vm, "reading devices (qom-list)", e));
    if let Some(c) = &p.new_controller {
        // Never hot-plug a controller into a Xen guest still in its firmware
        // (issue 19): its own usbctrl, or before firmware, or after it.
        if s.domid.is_some() {
            let phase = s.firmware_phase().map_err(|e| qmp_err(vm, "query-pci/query-blockstats", e))?;
            if let crate::firmware::Phase::InFirmware(why) = phase {
                log::info!(
                    "VM {}: waiting: {why}; not hot-plugging USB controller {} into a guest in its firmware; \
                     {} ({}) is left for the next sync (or add usbctrl = ['type=devicemodel,version=3,ports=15'] to the domain's xl config)",
                    vm.name,
                    c.id,
                    dev.at(),
                    dev.port_path
                );
                return Ok(Tried::Waiting);
            }
            log::debug!("VM {}: {phase:?}: adding controller {}", vm.name, c.id);
        }
        let room = s.pci_room().map_err(|e| qmp_err(vm, "reading its PCI slots (qom-list)", e))?;
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
                log_attached(vm, dev, &s.id_for(dev.at()), p, deadline);
            }
            Ok(Tried::Done)
        }
        // QEMU before 5.1 has no hostdevice property: fall back to hostbus/hostaddr.
        Err(e) if hostdevice.is_some() && e.refusal() == Some(Refusal::NoHostdeviceProperty) => {
            log::warn!("VM {}: QEMU has no usb-host hostdevice property; using hostbus/hostaddr", vm.name);
            *hostdevice = None;
            Ok(Tried::Again)
        }
        // StaleView: QEMU says our view is old. Backend: libxl's books say
        // the port was taken meanwhile (`xl usbdev-attach` records its port
        // before it waits for the QMP lock we hold). Either way: re-read both.
        Err(e)
            if !*retried
                && (e.refusal() == Some(Refusal::StaleView) || matches!(e, crate::session::OpError::Backend(_))) =>
        {
            *retried = true;
            log::info!("VM {}: {e}; re-reading QEMU's devices", vm.name);
            reread(s)?;
            Ok(Tried::Again)
        }
        Err(e) => {
            let what = format!("device_add {} ({} {})", dev.at().device_id(), dev.port_path, dev.id_string());
            Err(vm_err(vm, &what, e))
        }
    }
}

fn log_attached(vm: &VmConfig, dev: &HostDevice, id: &str, p: &Placement, deadline: &Deadline) {
    log::info!(
        "attached {} ({}{}) {} to VM {} as {} on {} port {} in {} ms",
        dev.port_path,
        dev.id_string(),
        dev.name.as_deref().map(|n| format!(" {n}")).unwrap_or_default(),
        dev.at(),
        vm.name,
        id,
        p.controller,
        p.port,
        deadline.elapsed().as_millis()
    );
}

/// `device_del` `at` from `vm` and drop the record. Gone already (VM not
/// running, restarted, DeviceNotFound) counts as done; true if QEMU had it.
pub fn detach_from(ctx: &Ctx, state: &mut State, vm: &VmConfig, at: BusAddr, quiet: bool) -> Result<bool> {
    let Some(mut s) = ctx.connect(state, vm, true)? else {
        drop_record(state, &vm.name, at);
        return Ok(false);
    };
    s.adopt(state.vms.get(&vm.name)).map_err(|e| qmp_err(vm, "reading devices (qom-list)", e))?;
    let id = s.id_for(at);
    if !s.view().devices.iter().any(|d| d.id == id) {
        // Not in our records: ask QEMU by id (one qom-get) before any
        // device_del, so the backend is never asked to undo what isn't there.
        if !s.holds(&id).map_err(|e| qmp_err(vm, &format!("looking up {id} (qom-get)"), e))? {
            if !quiet {
                log::info!("{id} was not in VM {}", vm.name);
            }
            state.vms.insert(vm.name.clone(), s.into_view());
            return Ok(false);
        }
        log::info!("VM {}: QEMU holds {id}, which state had lost; removing it", vm.name);
    }
    let res = detach_on(&mut s, vm, at, quiet);
    state.vms.insert(vm.name.clone(), s.into_view());
    res
}

/// `device_del` `at` over an open session; true if QEMU had it.
pub fn detach_on(s: &mut Session, vm: &VmConfig, at: BusAddr, quiet: bool) -> Result<bool> {
    let id = s.id_for(at);
    let found = s.del_device(at).map_err(|e| vm_err(vm, &format!("device_del {id}"), e))?;
    match found {
        true if s.dry_run => {}
        true => log::info!("detached {id} ({at}) from VM {}", vm.name),
        false if !quiet => log::info!("{id} was not in VM {}", vm.name),
        false => {}
    }
    Ok(found)
}
