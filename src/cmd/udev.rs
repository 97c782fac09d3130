//! `udev`: handle one udev event. `events` decides what it needs before the
//! state lock (`triage`) and the steps under it (`under_lock`); this file
//! only does what they decide.

use crate::apply::{self, Mode};
use crate::ctx::Ctx;
use crate::error::Result;
use crate::events::{self, Seen, Triage};
use crate::host::{Action, HostDevice, UdevEvent};
use crate::state::State;
use crate::step::Step;
use crate::types::BusAddr;
use std::collections::HashMap;

pub(super) fn udev(ctx: &Ctx, env: &HashMap<String, String>) -> Result<()> {
    let Some(ev) = UdevEvent::from_env(env)? else {
        log::debug!("ignoring event ACTION={:?}", env.get("ACTION"));
        return Ok(());
    };
    // udev numbers its events; one without a number (run by hand) waits
    // for the lock instead of queueing.
    let seq = env.get("SEQNUM").and_then(|s| s.parse::<u64>().ok());
    let dev = read(ctx, &ev)?;
    let seen = seen(&ev, dev.as_ref());
    let now = unix_now();
    let mut peek = None;
    let triage = loop {
        match events::triage(&ctx.config, seen, peek.as_ref(), now) {
            Triage::Peek if peek.is_none() => peek = Some(ctx.peek_state()),
            t => break t,
        }
    };
    match triage {
        Triage::Ignore(text) => log::debug!("{text}"),
        Triage::Peek => log::debug!("{}: nothing decided ({ev:?})", ev.port_path()),
        Triage::Held { vm, why, text, outcome } => match (outcome, &dev) {
            (Some(e), Some(dev)) => {
                let o = apply::outcome_of(e, &ctx.config.vms[vm], dev, why);
                apply::announce(ctx, log::Level::Info, o, text);
            }
            _ => log::info!("{text}"),
        },
        Triage::AskOwners => return owner_unplugged(ctx, &ev, &peek.unwrap_or_default()),
        Triage::Lock { probe } => {
            // The VM's owner must answer before we hold the lock that every
            // other VM's events wait on.
            if let Some(vm) = probe {
                ctx.probe(&ctx.config.vms[vm], None)?;
            }
            // An unplug state had no record of (a routed one was looked up in
            // QEMU by its id) still goes on to the owners' records below.
            let mut unrecorded = None;
            let lock = |state: &mut State| {
                let gone = ev.action == Action::Remove && state.find(ev.bus, ev.addr).is_none();
                apply::execute(ctx, state, &events::under_lock(&ctx.config, state, seen, now), Mode::Triggered)?;
                unrecorded = gone.then(|| state.clone());
                Ok(())
            };
            match seq {
                Some(seq) => drop(ctx.with_state_or_queue(seq, &ev, lock)?),
                None => ctx.with_state(lock)?,
            }
            if let Some(state) = unrecorded {
                return owner_unplugged(ctx, &ev, &state);
            }
        }
    }
    Ok(())
}

/// The device the event is about: sysfs's (add, bind, change), or for an
/// unplug the event's own ids, if it has them (sysfs is gone).
fn read(ctx: &Ctx, ev: &UdevEvent) -> Result<Option<HostDevice>> {
    match ev.action {
        Action::Remove => Ok(ev.device(&ctx.root).ok()),
        Action::Add | Action::Bind | Action::Change => ev.device(&ctx.root).map(Some),
    }
}

fn seen<'d>(ev: &UdevEvent, dev: Option<&'d HostDevice>) -> Seen<'d> {
    match (ev.action, dev) {
        (Action::Remove, ids) | (_, ids @ None) => Seen::Gone { at: BusAddr::new(ev.bus, ev.addr), ids },
        (action, Some(dev)) => Seen::Present(dev, action),
    }
}

/// Handle `ev`, an event queued for the lock's holder (`queue`), under the
/// lock: what its own invocation would have done there. What it did before
/// the lock (the host's holds and their lines) was said when it came; the
/// owners' records of an unplug nobody recorded are left to the next sync
/// (they are asked without the lock).
pub(super) fn serve(ctx: &Ctx, state: &mut State, ev: &UdevEvent) -> Result<()> {
    if ev.action != Action::Remove && !ev.sysfs_dir(&ctx.root).exists() {
        log::debug!(
            "{} ({}:{}) left before its queued {} was served",
            ev.port_path(),
            ev.bus,
            ev.addr,
            ev.action.as_str()
        );
        return Ok(());
    }
    let dev = read(ctx, ev)?;
    let seen = seen(ev, dev.as_ref());
    let routed = match seen {
        Seen::Present(d, _) => events::route(&ctx.config, d),
        Seen::Gone { ids, .. } => ids.and_then(|d| events::route(&ctx.config, d)),
    };
    if let Some(vm) = routed {
        ctx.probe(&ctx.config.vms[vm], None)?;
    }
    apply::execute(ctx, state, &events::under_lock(&ctx.config, state, seen, unix_now()), Mode::Triggered)
}

/// Seconds since the epoch (lineage ages are whole seconds).
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A device we hold no record of was unplugged: if a configured VM's owner
/// records it as put in by its own tool (Xen: `xl usbdev-attach`, libxl's
/// entry), clean it out of the VM and of the owner's records together, as
/// the original tool did. The records are asked first, without our lock
/// and bounded (`Ctx::owner_record`); only a VM whose owner has it is then
/// changed, under the lock (and the owner's).
fn owner_unplugged(ctx: &Ctx, ev: &UdevEvent, peek: &State) -> Result<()> {
    let (at, busid) = (BusAddr::new(ev.bus, ev.addr), ev.port_path());
    let Some(rec) = ctx.owner_record(at, busid, peek) else { return Ok(()) };
    log::info!("{busid} ({at}) was unplugged; {rec} of VM {}", ctx.config.vms[rec.vm].name);
    let step = Step::Detach { vm: rec.vm, id: at.device_id(), at, why: rec.why() };
    ctx.with_state(|state| {
        apply::execute(ctx, state, &[step], Mode::Triggered)?;
        // The VM no longer has it either way: the owner's entry must not outlive it.
        ctx.forget_owner_record(&rec, busid)
    })
}
