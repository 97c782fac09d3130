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
use std::collections::HashMap;

pub fn udev(ctx: &Ctx, env: &HashMap<String, String>) -> Result<()> {
    let Some(ev) = UdevEvent::from_env(env)? else {
        log::debug!("ignoring event ACTION={:?}", env.get("ACTION"));
        return Ok(());
    };
    match ev.action {
        Action::Add | Action::Bind => add(ctx, &ev),
        Action::Remove => {
            let at = BusAddr::new(ev.bus, ev.addr);
            // The event's own ids (sysfs is gone): where the rules route it.
            let routed = ev.device(&ctx.root).ok().and_then(|d| plan::route(&ctx.config, &d));
            ctx.with_state(|state| {
                // Ours by state's records; a routed device state has no
                // record of is looked up in QEMU by `on_remove`'s Detach and
                // still goes on to libxl's books below.
                let ours = state.find(at.bus, at.addr).is_some();
                let steps = events::on_remove(&ctx.config, state, at, routed);
                execute(ctx, state, steps)?;
                if ours {
                    return Ok(());
                }
                xl_unplugged(ctx, state, at, ev.port_path())
            })
        }
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
        execute(ctx, state, steps)
    })
}

/// A device we hold no record of was unplugged: if libxl records it in a
/// configured Xen domain (`xl usbdev-attach`), clean it out of QEMU and of
/// libxl's books together, as the original tool did. Only xenstore is read
/// unless a domain has it (then that one domain's QEMU, under libxl's lock).
fn xl_unplugged(ctx: &Ctx, state: &mut State, at: BusAddr, busid: &str) -> Result<()> {
    let xen_vms: Vec<_> = ctx.config.vms.iter().filter(|v| v.backend == crate::config::BackendKind::Xen).collect();
    if xen_vms.is_empty() || busid.is_empty() {
        return Ok(());
    }
    let xs_err = |e: crate::xenstore::XsError| crate::error::Error::new(format!("{at} removed: {e}"));
    let mut xs = crate::xenstore::connect(&ctx.root, &ctx.deadline).map_err(xs_err)?;
    for vm in xen_vms {
        let cached = state.vms.get(&vm.name).and_then(|v| v.domid);
        let Some(dom) = crate::xen::find_domain(&mut xs, &vm.name, cached).map_err(xs_err)? else { continue };
        let books = crate::xen::read_vusb(&mut xs, crate::xenstore::Tx::NONE, dom.domid).map_err(xs_err)?;
        let Some((devid, port)) = books
            .iter()
            .filter(|c| c.is_devicemodel())
            .find_map(|c| c.ports.iter().position(|b| b == busid).map(|i| (c.devid, i as u8 + 1)))
        else {
            continue;
        };
        log::info!("{busid} ({at}) was unplugged; libxl records it on xenusb-{devid} port {port} of VM {}", vm.name);
        if let Some(mut s) = ctx.connect_hinted(vm, Some(dom.domid), true)? {
            s.refresh().map_err(|e| crate::ctx::qmp_err(vm, "reading devices (qom-list)", e))?;
            let res = apply::detach_on(&mut s, vm, at, true);
            state.vms.insert(vm.name.clone(), s.into_view());
            res?;
        }
        // QEMU no longer has it either way: libxl's entry must not outlive it.
        let node = crate::xen::port_path(dom.domid, devid, port);
        if xs.read_opt(crate::xenstore::Tx::NONE, &node).map_err(xs_err)?.as_deref() == Some(busid) {
            xs.write(crate::xenstore::Tx::NONE, &node, b"").map_err(xs_err)?;
            log::info!("emptied libxl's entry for {busid} ({node})");
        }
        return Ok(());
    }
    Ok(())
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
