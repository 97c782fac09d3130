//! `udev`: handle one udev event. `events` decides the steps; this file
//! only executes them under the state lock.

use crate::apply::{self, Mode};
use crate::ctx::Ctx;
use crate::error::Result;
use crate::events;
use crate::host::{Action, UdevEvent};
use crate::plan;
use crate::state::State;
use crate::step::Step;
use crate::types::BusAddr;
use std::collections::HashMap;

pub(super) fn udev(ctx: &Ctx, env: &HashMap<String, String>) -> Result<()> {
    let Some(ev) = UdevEvent::from_env(env)? else {
        log::debug!("ignoring event ACTION={:?}", env.get("ACTION"));
        return Ok(());
    };
    match ev.action {
        Action::Add | Action::Bind => add(ctx, &ev),
        Action::Remove => remove(ctx, &ev),
    }
}

/// An unplug. Most are nobody's business: neither in state, nor kept out,
/// nor routed by a rule. Those take no lock and touch no VM; only libxl's
/// records are asked (bounded, and never fatal) whether `xl usbdev-attach`
/// put the device in a domain.
fn remove(ctx: &Ctx, ev: &UdevEvent) -> Result<()> {
    let at = BusAddr::new(ev.bus, ev.addr);
    // The event's own ids (sysfs is gone): where the rules route it.
    let routed = ev.device(&ctx.root).ok().and_then(|d| plan::route(&ctx.config, &d));
    // A routed unplug is ours to handle: state is read once, under the lock.
    // Any other is peeked at without the lock first; most end there.
    if routed.is_none() {
        let peek = ctx.peek_state();
        if peek.find(at.bus, at.addr).is_none() && !peek.is_held_out(at.bus, at.addr) {
            return xl_unplugged(ctx, at, ev.port_path(), &peek);
        }
    }
    let left = ctx.with_state(|state| {
        // Ours by state's records; a routed device state has no record
        // of is looked up in QEMU by `on_remove`'s Detach and still goes
        // on to libxl's records below.
        let ours = state.find(at.bus, at.addr).is_some();
        let steps = events::on_remove(&ctx.config, state, at, routed);
        apply::execute(ctx, state, &steps, Mode::Triggered)?;
        Ok((!ours).then(|| state.clone()))
    })?;
    match left {
        Some(state) => xl_unplugged(ctx, at, ev.port_path(), &state),
        None => Ok(()),
    }
}

fn add(ctx: &Ctx, ev: &UdevEvent) -> Result<()> {
    let dev = ev.device(&ctx.root)?;
    // Decided before taking the lock: most devices are nobody's business.
    let Some(vm) = plan::route(&ctx.config, &dev) else {
        log::debug!("{} ({}) at {}: no rule wants it", dev.port_path, dev.id_string(), dev.at());
        return Ok(());
    };
    ctx.with_state(|state| {
        let steps = events::on_add(&ctx.config, state, &dev, ev.action, vm);
        apply::execute(ctx, state, &steps, Mode::Triggered)
    })
}

/// A device we hold no record of was unplugged: if libxl records it in a
/// configured Xen domain (`xl usbdev-attach`), clean it out of QEMU and of
/// libxl's records together, as the original tool did. libxl's records are
/// asked first, without our lock and bounded (`Ctx::libxl_holder`); only a
/// domain that has it is then changed, under the lock (and libxl's).
fn xl_unplugged(ctx: &Ctx, at: BusAddr, busid: &str, peek: &State) -> Result<()> {
    let Some(place) = ctx.libxl_holder(at, busid, peek) else { return Ok(()) };
    let vm = &ctx.config.vms[place.vm];
    log::info!(
        "{busid} ({at}) was unplugged; libxl records it on xenusb-{} port {} of VM {}",
        place.devid,
        place.port,
        vm.name
    );
    let why = "unplugged; libxl records it (xl usbdev-attach)";
    let step = Step::Detach { vm: place.vm, id: at.device_id(), at, why };
    ctx.with_state(|state| {
        apply::execute(ctx, state, &[step], Mode::Triggered)?;
        // QEMU no longer has it either way: libxl's entry must not outlive it.
        ctx.empty_libxl_entry(&place, busid)
    })
}
