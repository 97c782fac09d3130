//! `udev`: handle one udev event. `events` decides the steps; this file
//! only executes them under the state lock.

use crate::apply::{self, Mode};
use crate::ctx::Ctx;
use crate::error::Result;
use crate::events;
use crate::events::Routing;
use crate::host::{Action, HostDevice, UdevEvent};
use crate::outcome::Event;
use crate::state::{Origin, State};
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
    match ev.action {
        Action::Add | Action::Bind | Action::Change => add(ctx, &ev, seq),
        Action::Remove => remove(ctx, &ev, seq),
    }
}

/// Run `f` under the state lock; or, while another invocation holds it,
/// queue the event for that one (`queue`) and return at once.
fn locked(ctx: &Ctx, ev: &UdevEvent, seq: Option<u64>, f: impl FnOnce(&mut State) -> Result<()>) -> Result<()> {
    match seq {
        Some(seq) => ctx.with_state_or_queue(seq, ev, f).map(drop),
        None => ctx.with_state(f),
    }
}

/// Handle `ev`, an event queued for the lock's holder (`queue`), under the
/// lock: what its own invocation would have done there. What it did before
/// the lock (routing, the host's holds and their lines) is decided again.
pub(super) fn serve(ctx: &Ctx, state: &mut State, ev: &UdevEvent) -> Result<()> {
    if ev.action == Action::Remove {
        let routed = ev.device(&ctx.root).ok().and_then(|d| events::route(&ctx.config, &d));
        if let Some(vm) = routed {
            ctx.probe(&ctx.config.vms[vm], None)?;
        }
        // libxl's records of a device only `xl usbdev-attach` put in a
        // domain are left to the next sync (they are asked without the lock).
        return remove_locked(ctx, state, ev, routed).map(drop);
    }
    if !ev.sysfs_dir(&ctx.root).exists() {
        log::debug!(
            "{} ({}:{}) left before its queued {} was served",
            ev.port_path(),
            ev.bus,
            ev.addr,
            ev.action.as_str()
        );
        return Ok(());
    }
    let dev = ev.device(&ctx.root)?;
    let routed = match events::routing(&ctx.config, &dev) {
        Routing::To(vm) => Some(vm),
        // Said when the event came.
        Routing::Held { .. } => return Ok(()),
        Routing::Nobody => None,
    };
    if let Some(vm) = routed {
        ctx.probe(&ctx.config.vms[vm], None)?;
    }
    add_locked(ctx, state, &dev, ev.action, routed)
}

/// An unplug. Most are nobody's business: neither in state, nor kept out,
/// nor routed by a rule. Those take no lock and touch no VM; only libxl's
/// records are asked (bounded, and never fatal) whether `xl usbdev-attach`
/// put the device in a domain.
fn remove(ctx: &Ctx, ev: &UdevEvent, seq: Option<u64>) -> Result<()> {
    let at = BusAddr::new(ev.bus, ev.addr);
    // The event's own ids (sysfs is gone): where the rules route it.
    let routed = ev.device(&ctx.root).ok().and_then(|d| events::route(&ctx.config, &d));
    // A routed unplug is ours to handle: state is read once, under the lock.
    // Any other is peeked at without the lock first; most end there.
    let owner = match routed {
        Some(vm) => Some(vm),
        None => {
            let peek = ctx.peek_state();
            match peek.find(at.bus, at.addr) {
                Some((name, _)) => ctx.config.vms.iter().position(|v| v.name == name),
                None if peek.is_held_out(at.bus, at.addr) => None,
                None => return owner_unplugged(ctx, at, ev.port_path(), &peek),
            }
        }
    };
    // The VM's owner must answer before we hold the lock that every other
    // VM's events wait on.
    if let Some(vm) = owner {
        ctx.probe(&ctx.config.vms[vm], None)?;
    }
    // A routed device state has no record of is looked up in QEMU by
    // `on_remove`'s Detach and still goes on to libxl's records below.
    let mut left = None;
    locked(ctx, ev, seq, |state| {
        if !remove_locked(ctx, state, ev, routed)? {
            left = Some(state.clone());
        }
        Ok(())
    })?;
    match left {
        Some(state) => owner_unplugged(ctx, at, ev.port_path(), &state),
        None => Ok(()),
    }
}

/// The unplug under the lock; true if state had the device (ours).
fn remove_locked(ctx: &Ctx, state: &mut State, ev: &UdevEvent, routed: Option<usize>) -> Result<bool> {
    let at = BusAddr::new(ev.bus, ev.addr);
    let ours = state.find(at.bus, at.addr).is_some();
    let steps = events::on_remove(&ctx.config, state, at, routed, unix_now());
    apply::execute(ctx, state, &steps, Mode::Triggered)?;
    Ok(ours)
}

fn add(ctx: &Ctx, ev: &UdevEvent, seq: Option<u64>) -> Result<()> {
    let dev = ev.device(&ctx.root)?;
    let shown = format!("{} ({}) at {}", dev.port_path, dev.id_string(), dev.at());
    // Decided before taking the lock: most devices are nobody's business.
    let routed = match events::routing(&ctx.config, &dev) {
        Routing::To(vm) => Some(vm),
        Routing::Held { vm, why } => {
            held(ctx, &dev, vm, &why, format!("{shown}: not attaching it to VM {}: {why}", ctx.config.vms[vm].name));
            return Ok(());
        }
        // No rule wants it; a VM whose device just left this socket may
        // (`follow-seconds`): state is peeked only when following is on.
        Routing::Nobody => {
            let now = unix_now();
            let peek = (!ctx.config.follow.is_zero()).then(|| ctx.peek_state());
            let Some((vm, _)) = peek.as_ref().and_then(|s| events::follow(&ctx.config, s, &dev, now)) else {
                log::debug!("{shown}: no rule wants it");
                return Ok(());
            };
            if let Some(why) = events::held_back(&ctx.config, &dev) {
                held(ctx, &dev, vm, &why, format!("{shown}: not following it into a VM: {why}"));
                return Ok(());
            }
            None
        }
    };
    // The VM's owner must answer before we hold the lock that every other
    // VM's events wait on (a followed device's VM is asked under it: rare).
    if let Some(vm) = routed {
        ctx.probe(&ctx.config.vms[vm], None)?;
    }
    locked(ctx, ev, seq, |state| add_locked(ctx, state, &dev, ev.action, routed))
}

/// The add, bind or change of `dev` under the lock: to VM `routed`, or
/// (None) following a device that just left its socket, if one did.
fn add_locked(ctx: &Ctx, state: &mut State, dev: &HostDevice, action: Action, routed: Option<usize>) -> Result<()> {
    let mut steps = Vec::new();
    let (vm, origin) = match routed {
        Some(vm) => (vm, Origin::Rule),
        // Asked again under the lock: the peek may be old.
        None => match events::follow(&ctx.config, state, dev, unix_now()) {
            // The host's hold was said before the lock.
            Some(_) if events::held_back(&ctx.config, dev).is_some() => return Ok(()),
            Some((vm, l)) => {
                let shown = format!("{} ({}) at {}", dev.port_path, dev.id_string(), dev.at());
                let text = format!("following {} on {} into VM {}: {shown}", l.usb_id, l.port_path, l.vm);
                steps.push(Step::Note { level: log::Level::Info, text });
                steps.push(Step::Followed { port_path: l.port_path.clone() });
                (vm, Origin::Followed)
            }
            None => return Ok(()),
        },
    };
    steps.extend(events::on_add(&ctx.config, state, dev, action, vm, origin));
    apply::execute(ctx, state, &steps, Mode::Triggered)
}

/// A device VM `vm` wants (by a rule, or following) that the host keeps
/// (`events::held_back`, `why`): its one line `text`, and its outcome: refused
/// (`deny`, the host's own use of it) or waiting (its policy may authorize
/// it: the `change` event then attaches it). A device whose classes are not
/// known yet is judged at `bind`, in a moment: no outcome yet.
fn held(ctx: &Ctx, dev: &HostDevice, vm: usize, why: &str, text: String) {
    let event = if dev.in_use.is_some() || ctx.config.deny.iter().any(|r| events::denies(r, dev)) {
        Some(Event::Refused)
    } else if !dev.authorized {
        Some(Event::Waiting)
    } else {
        None
    };
    match event {
        Some(e) => apply::announce(ctx, log::Level::Info, apply::outcome_of(e, &ctx.config.vms[vm], dev, why), text),
        None => log::info!("{text}"),
    }
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
fn owner_unplugged(ctx: &Ctx, at: BusAddr, busid: &str, peek: &State) -> Result<()> {
    let Some(rec) = ctx.owner_record(at, busid, peek) else { return Ok(()) };
    log::info!("{busid} ({at}) was unplugged; {rec} of VM {}", ctx.config.vms[rec.vm].name);
    let step = Step::Detach { vm: rec.vm, id: at.device_id(), at, why: rec.why() };
    ctx.with_state(|state| {
        apply::execute(ctx, state, &[step], Mode::Triggered)?;
        // The VM no longer has it either way: the owner's entry must not outlive it.
        ctx.forget_owner_record(&rec, busid)
    })
}
