//! `udev`: handle one udev event. `events` decides the steps; this file
//! only executes them under the state lock.

use crate::apply;
use crate::ctx::Ctx;
use crate::error::Result;
use crate::events;
use crate::host::{Action, UdevEvent};
use crate::plan;
use crate::state::{Origin, State};
use crate::step::Step;
use crate::types::BusAddr;
use crate::xenstore::{Tx, XsError};
use std::collections::HashMap;

pub fn udev(ctx: &Ctx, env: &HashMap<String, String>) -> Result<()> {
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
    let peek = ctx.peek_state();
    if routed.is_some() || peek.find(at.bus, at.addr).is_some() || peek.is_held_out(at.bus, at.addr) {
        let ours = ctx.with_state(|state| {
            // Ours by state's records; a routed device state has no record
            // of is looked up in QEMU by `on_remove`'s Detach and still goes
            // on to libxl's books below.
            let ours = state.find(at.bus, at.addr).is_some();
            let steps = events::on_remove(&ctx.config, state, at, routed);
            execute(ctx, state, steps)?;
            Ok(ours)
        })?;
        if ours {
            return Ok(());
        }
    }
    xl_unplugged(ctx, at, ev.port_path(), peek)
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
        execute(ctx, state, steps)
    })
}

/// A device we hold no record of was unplugged: if libxl records it in a
/// configured Xen domain (`xl usbdev-attach`), clean it out of QEMU and of
/// libxl's books together, as the original tool did. xenstore is asked
/// first, without our lock and for at most `timing::xl_lookup_cap()`; only a
/// domain that has it is then changed, under the lock (and libxl's).
fn xl_unplugged(ctx: &Ctx, at: BusAddr, busid: &str, peek: State) -> Result<()> {
    let xen_vms: Vec<_> = ctx.config.vms.iter().filter(|v| v.backend == crate::config::BackendKind::Xen).collect();
    if xen_vms.is_empty() || busid.is_empty() {
        return Ok(());
    }
    let Ok(cap) = ctx.deadline.capped("", crate::timing::xl_lookup_cap()) else { return Ok(()) };
    let probe = crate::deadline::Deadline::after(cap);
    let lookup = || -> std::result::Result<Option<(&crate::config::VmConfig, u32, u32, u8)>, XsError> {
        let mut xs = crate::xenstore::connect(&ctx.root, &probe)?;
        for vm in &xen_vms {
            let cached = peek.vms.get(&vm.name).and_then(|v| v.domid);
            let Some(dom) = crate::xen::find_domain(&mut xs, &vm.name, cached, &ctx.xen_names)? else { continue };
            let books = crate::xen::read_vusb(&mut xs, Tx::NONE, dom.domid)?;
            if let Some((devid, port)) = books
                .iter()
                .filter(|c| c.is_devicemodel())
                .find_map(|c| c.ports.iter().position(|b| b == busid).map(|i| (c.devid, i as u8 + 1)))
            {
                return Ok(Some((*vm, dom.domid, devid, port)));
            }
        }
        Ok(None)
    };
    let (vm, domid, devid, port) = match lookup() {
        Ok(Some(found)) => found,
        Ok(None) => return Ok(()),
        Err(e) => {
            log::debug!("{busid} ({at}) removed; not asking libxl's records ({e}); the next sync checks them");
            return Ok(());
        }
    };
    log::info!("{busid} ({at}) was unplugged; libxl records it on xenusb-{devid} port {port} of VM {}", vm.name);
    let xs_err = |e: XsError| crate::error::Error::new(format!("{at} removed: {e}"));
    ctx.with_state(|state| {
        if let Some(mut s) = ctx.connect_hinted(vm, Some(domid), true)? {
            s.refresh().map_err(|e| crate::ctx::qmp_err(vm, "reading devices (qom-list)", e))?;
            let res = apply::detach_on(&mut s, vm, at, true);
            state.vms.insert(vm.name.clone(), s.into_view());
            res?;
        }
        // QEMU no longer has it either way: libxl's entry must not outlive it.
        let mut xs = crate::xenstore::connect(&ctx.root, &ctx.deadline).map_err(xs_err)?;
        let node = crate::xen::port_path(domid, devid, port);
        if xs.read_opt(Tx::NONE, &node).map_err(xs_err)?.as_deref() == Some(busid) {
            xs.write(Tx::NONE, &node, b"").map_err(xs_err)?;
            log::info!("emptied libxl's entry for {busid} ({node})");
        }
        Ok(())
    })
}

fn execute(ctx: &Ctx, state: &mut State, steps: Vec<Step>) -> Result<()> {
    for step in steps {
        match step {
            Step::Note { level, text } => log::log!(level, "{text}"),
            Step::Release { at } => state.held_out.retain(|h| (h.bus, h.addr) != (at.bus, at.addr)),
            Step::Forget { vm, at, .. } => apply::drop_record(state, &vm, at),
            Step::Detach { vm, at, .. } => {
                apply::detach_from(ctx, state, &ctx.config.vms[vm], at, true)?;
            }
            Step::Attach { vm, dev, open_node } => {
                let node = open_node.then(|| ctx.node(&dev));
                apply::attach(ctx, state, &ctx.config.vms[vm], &dev, Origin::Rule, node.as_deref(), true)?;
            }
        }
    }
    Ok(())
}
