//! `attach` and `detach` by hand. A hand detach of a device a rule wants
//! is remembered (`held_out`) until the device is unplugged, so the next
//! event or sync does not put it straight back.

use crate::apply::{self, Exec, Mode};
use crate::cli::{DetachTarget, DeviceArgs};
use crate::config::VmConfig;
use crate::ctx::Ctx;
use crate::error::{Context, Error, Result};
use crate::events;
use crate::host;
use crate::selector::Selector;
use crate::state::{HeldOut, Origin};
use crate::step::Step;
use crate::types::BusAddr;

pub(super) fn attach(ctx: &Ctx, args: &DeviceArgs, vm_name: Option<&str>) -> Result<()> {
    let sel = args.selector().ok_or_else(|| Error::new("name a device, or give --bus and --addr"))?;
    let host = host::scan(&ctx.root)?;
    let dev = sel.resolve(&host)?.clone();
    let (bus, addr) = (dev.bus, dev.addr);
    if dev.is_root_hub() || dev.is_hub() {
        crate::bail!(
            "{bus}:{addr} ({}) is a hub; hubs are never passed (plug devices behind it instead)",
            dev.port_path
        );
    }
    // `deny`, the host's own use of it and its policy beat a hand attach too.
    if let Some(why) = events::held_back(&ctx.config, &dev) {
        crate::bail!("{bus}:{addr} ({} {}) stays on the host: {why}", dev.port_path, dev.id_string());
    }
    let vm = match vm_name {
        Some(n) => ctx.config.vm(n)?,
        None => match (events::route(&ctx.config, &dev), ctx.config.vms.as_slice()) {
            (Some(i), _) => &ctx.config.vms[i],
            (None, [only]) => only,
            (None, []) => crate::bail!("no VM is configured in the config file"),
            (None, _) => crate::bail!("{bus}:{addr} matches no VM's rules; name one with --vm"),
        },
    };
    let index = ctx.config.index_of(&vm.name);
    let step = Step::Attach { vm: index, dev, open_node: true, origin: Origin::Manual };
    ctx.with_state(|state| {
        if let Some((owner, _)) = state.find(bus, addr) {
            if owner != vm.name {
                crate::bail!("{bus}:{addr} is attached to VM {owner}; detach it first");
            }
        }
        state.held_out.retain(|h| (h.bus, h.addr) != (bus, addr));
        apply::execute(ctx, state, &[step], Mode::ByHand)
    })
    .with_context(|| format!("attach {bus}:{addr}"))
}

pub(super) fn detach(ctx: &Ctx, t: &DetachTarget, vm_name: Option<&str>) -> Result<()> {
    let at = match (&t.id, &t.device, t.bus, t.addr) {
        (Some(id), _, _, _) => BusAddr::from_device_id(id)
            .or_else(|| BusAddr::from_libvirt_alias(id))
            .ok_or_else(|| Error::new(format!("--id {id:?} is not a device id like xenusb-3-7 or ua-aua-3-7")))?,
        // A bus:addr needs no host device (it may be gone already).
        (None, Some(Selector::BusAddr(at)), _, _) => *at,
        (None, Some(sel), _, _) => sel.resolve(&host::scan(&ctx.root)?)?.at(),
        (None, None, Some(b), Some(a)) => BusAddr::new(b, a),
        _ => crate::bail!("name a device, or give --bus and --addr, or --id"),
    };
    if let Some(n) = vm_name {
        ctx.config.vm(n)?;
    }
    ctx.with_state(|state| {
        let recorded = state.find(at.bus, at.addr).is_some();
        let candidates: Vec<&VmConfig> = match (vm_name, state.find(at.bus, at.addr)) {
            (Some(n), _) => vec![ctx.config.vm(n)?],
            (None, Some((owner, _))) => vec![ctx.config.vm(owner)?],
            // Not in state (lost?): ask every configured VM.
            (None, None) => ctx.config.vms.iter().collect(),
        };
        let asked_all = vm_name.is_none() && !recorded;
        let mut done_in = None;
        let mut unasked = Vec::new();
        let mut x = Exec::new(ctx, Mode::ByHand);
        let mut failed = None;
        for vm in candidates {
            match x.detach(state, ctx.config.index_of(&vm.name), at, Some("by hand")) {
                Ok(true) => {
                    done_in = Some(vm.name.clone());
                    break;
                }
                Ok(false) => {}
                // Looking everywhere: a VM that cannot be asked (its backend
                // down) is said, and the others are still asked.
                Err(e) if asked_all => unasked.push(format!("{e:#}")),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        x.finish(state);
        if let Some(e) = failed {
            return Err(e);
        }
        match done_in {
            // A stale record (its QEMU restarted or gone) was dropped: done.
            None if recorded => log::info!("{} was no longer attached; record dropped", at.device_id()),
            None if unasked.is_empty() => crate::bail!("{at} ({}) is not attached to any VM", at.device_id()),
            None => crate::bail!(
                "{at} ({}) is not attached to any VM that could be asked ({})",
                at.device_id(),
                unasked.join("; ")
            ),
            Some(vm) => {
                // A rule would put it straight back on the next event or sync:
                // remember the admin's choice until it is unplugged.
                if let Ok(dev) = host::find(&ctx.root, at.bus, at.addr) {
                    if events::route(&ctx.config, &dev).is_some() && !state.is_held_out(at.bus, at.addr) {
                        state.held_out.push(HeldOut { bus: at.bus, addr: at.addr, vm });
                    }
                }
            }
        }
        Ok(())
    })
}
