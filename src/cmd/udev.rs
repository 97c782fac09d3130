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
            ctx.with_state(|state| {
                let steps = events::on_remove(&ctx.config, state, at);
                execute(ctx, state, steps)
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
