//! `sync`: make every running VM hold exactly what the config routes to it.
//! `crate::sync::plan` decides the steps from what QEMU really holds and
//! what the host really has; this file connects, executes and records.

use crate::apply::{self, Exec};
use crate::ctx::Located;
use crate::ctx::{vm_err, Ctx};
use crate::error::{Error, Result};
use crate::host;
use crate::session::Session;
use crate::state::{HeldOut, State, VmState};
use crate::step::Step;

pub(super) fn sync(ctx: &Ctx, only: Option<&str>) -> Result<()> {
    if let Some(n) = only {
        ctx.config.vm(n)?;
    }
    let targets: Vec<usize> = (0..ctx.config.vms.len())
        .filter(|i| only.is_none() || only == Some(ctx.config.vms[*i].name.as_str()))
        .collect();
    // A VM that starts while this runs may not be seen by it, and systemd
    // drops the path unit's trigger for it while this (its service) still
    // runs: so when a directory a VM starts in changed meanwhile, sync again
    // (at most twice more, within the budget).
    let dirs = ctx.start_dirs(&targets);
    let mut passes = 0;
    loop {
        let before = stamps(ctx, &dirs);
        let done = sync_once(ctx, &targets);
        passes += 1;
        let changed: Vec<String> = dirs
            .iter()
            .zip(before.iter().zip(stamps(ctx, &dirs)))
            .filter(|(_, (a, b))| *a != b)
            .map(|(d, _)| d.display().to_string())
            .collect();
        if changed.is_empty() {
            return done;
        }
        let changed = changed.join(", ");
        if passes == 3 || ctx.out_of_budget() {
            log::info!("{changed} changed while syncing; the next trigger syncs again");
            return done;
        }
        if let Err(e) = &done {
            log::warn!("{e:#}");
        }
        log::info!("{changed} changed while syncing (a VM starting?); syncing again");
    }
}

/// What a directory looks like now: its inode and modification time (an
/// entry made, removed or renamed in it changes them); None if missing.
fn stamps(ctx: &Ctx, dirs: &[std::path::PathBuf]) -> Vec<Option<(u64, i64, i64)>> {
    use std::os::unix::fs::MetadataExt;
    dirs.iter()
        .map(|d| std::fs::metadata(ctx.root.path(d)).ok().map(|m| (m.ino(), m.mtime(), m.mtime_nsec())))
        .collect()
}

/// One pass of `sync` over `targets`.
fn sync_once(ctx: &Ctx, targets: &[usize]) -> Result<()> {
    // A VM that cannot be reached (busy socket, QMP failure) is skipped with
    // a warning and the others are still synced: exit 0 then. Only when
    // every targeted VM was skipped is it a failure (exit 1).
    let total = targets.len();
    let mut skipped = wait_until_ready(ctx, targets)?;
    let targets: Vec<usize> = targets.iter().copied().filter(|i| !skipped.iter().any(|(s, _)| s == i)).collect();
    ctx.with_state(|state| {
        let host = host::scan(&ctx.root)?;
        // "Keep it out until unplugged": unplugged now, so the intent ends.
        state.held_out.retain(|h| host.iter().any(|d| (d.bus, d.addr) == (h.bus, h.addr)));
        let sessions = connect_all(ctx, state, &targets, &host, &mut skipped)?;
        let elsewhere: Vec<(u16, u16)> = state
            .vms
            .iter()
            .filter(|(name, _)| !targets.iter().any(|i| ctx.config.vms[*i].name == **name))
            .flat_map(|(_, v)| v.devices.iter().map(|d| (d.bus, d.addr)))
            .collect();
        let views: Vec<(usize, &VmState)> = sessions.iter().map(|(i, s)| (*i, s.view())).collect();
        let steps = crate::sync::plan(&ctx.config, &views, &elsewhere, &host, &state.held_out);
        for (i, s) in &sessions {
            let touched =
                steps.iter().any(|s| matches!(s, Step::Attach { vm, .. } | Step::Detach { vm, .. } if vm == i));
            if !touched {
                let name = &ctx.config.vms[*i].name;
                log::debug!("VM {name}: in sync ({} device(s) attached); nothing to do", s.view().devices.len());
            }
        }
        let mut x = Exec::with_sessions(ctx, sessions);
        let failures = x.run(state, &steps);
        x.finish(state);
        if total > 0 && skipped.len() == total {
            return Err(skipped.remove(0).1);
        }
        apply::first_of(failures)
    })
}

/// A session per running target VM, its view read from QEMU (sync always
/// reads QEMU; state only lends who asked for what). A VM that is not
/// running loses its records: its QEMU, and all we had added, are gone.
/// A VM that cannot be reached or read is skipped with a warning.
fn connect_all(
    ctx: &Ctx,
    state: &mut State,
    targets: &[usize],
    host: &[host::HostDevice],
    skipped: &mut Vec<(usize, Error)>,
) -> Result<Vec<(usize, Session)>> {
    let mut sessions: Vec<(usize, Session)> = Vec::new();
    for &i in targets {
        let vm = &ctx.config.vms[i];
        let domid = state.vms.get(&vm.name).and_then(|v| v.domid);
        let connected = match ctx.connect_hinted(vm, domid, true) {
            Ok(c) => c,
            // Busy or failing: this VM waits for the next sync; the others go on.
            Err(e) => {
                log::warn!("skipping VM {} this time: {e:#}", vm.name);
                skipped.push((i, e));
                continue;
            }
        };
        let Some(mut s) = connected else {
            if let Some(v) = state.vms.get_mut(&vm.name) {
                v.controllers.clear();
                v.devices.clear();
                v.foreign_ports.clear();
            }
            continue;
        };
        let ready = s.has_pci_bus().map_err(|e| vm_err(vm, "query-pci", e)).and_then(|pci| {
            if pci {
                let old = s.known(state.vms.get(&vm.name)).cloned().unwrap_or_default();
                s.reread(&old).map_err(|e| vm_err(vm, "reading devices (qom-list)", e))?;
            }
            Ok(pci)
        });
        match ready {
            Ok(true) => {}
            Ok(false) => {
                log::info!("VM {}: QEMU has no PCI bus yet (a probe QEMU?); leaving it for the next trigger", vm.name);
                continue;
            }
            // Busy or failing: this VM waits for the next sync; the others go on.
            Err(e) => {
                log::warn!("skipping VM {} this time: {e:#}", vm.name);
                skipped.push((i, e));
                continue;
            }
        }
        if !s.pending.is_empty() {
            log::info!(
                "VM {}: libxl is still adding {}; leaving it for the next trigger",
                vm.name,
                s.pending.join(", ")
            );
            continue;
        }
        // Ours, removed with `xl usbdev-detach`: detached by hand, kept out
        // until it is unplugged (as `detach` does).
        for d in std::mem::take(&mut s.removed_by_hand) {
            if host.iter().any(|h| (h.bus, h.addr) == (d.bus, d.addr)) && !state.is_held_out(d.bus, d.addr) {
                log::info!(
                    "VM {}: {} ({}) was detached outside this tool (xl usbdev-detach?); keeping it out until it is unplugged",
                    vm.name,
                    d.id,
                    d.at()
                );
                state.held_out.push(HeldOut { bus: d.bus, addr: d.addr, vm: vm.name.clone() });
            }
        }
        sessions.push((i, s));
    }
    Ok(sessions)
}

/// Before `sync` takes the lock: wait (within most of the budget) for VMs
/// whose QEMU is still starting, so that udev events are never kept waiting
/// on our lock while we sleep. Past that the next trigger (or the timer)
/// finishes the job. Returns the VMs to leave out this time: a busy QMP
/// socket (another client) or any other failure to reach a VM is logged as
/// a warning and skipped, and the other VMs are still synced; the timer's
/// next run retries. An explicit socket gets at most
/// `timing::scan_greeting_cap()` to greet, so one busy VM cannot eat the
/// others' budget.
fn wait_until_ready(ctx: &Ctx, targets: &[usize]) -> Result<Vec<(usize, Error)>> {
    let mut skipped = Vec::new();
    for &i in targets {
        let vm = &ctx.config.vms[i];
        loop {
            let cached = ctx.peek_state().vms.get(&vm.name).and_then(|v| v.domid);
            let left = ctx.deadline.remaining(&format!("waiting for VM {}", vm.name))?;
            let probe = match vm.qmp {
                Some(_) => crate::deadline::Deadline::after(left.min(crate::timing::scan_greeting_cap())),
                None => ctx.deadline,
            };
            // Ok(None): ready, or not running; Ok(Some(why)): not ready yet.
            let step = || -> Result<Option<String>> {
                Ok(match ctx.locate(vm, cached, &probe)? {
                    Located::Running(opened) => {
                        // Ready when the VM holds every controller its owner
                        // records (libxl writes them before its device_add).
                        // Dropping the session lets go of the socket and its locks.
                        let mut s = ctx.session(vm, opened);
                        if !s.settles_after_start() {
                            return Ok(None);
                        }
                        if !s.has_pci_bus().map_err(|e| vm_err(vm, "query-pci", e))? {
                            return Ok(None); // a probe QEMU: connect_all says so and leaves it
                        }
                        s.refresh().map_err(|e| vm_err(vm, "reading devices (qom-list)", e))?;
                        if !s.pending.is_empty() {
                            Some(format!("libxl is still adding {}", s.pending.join(", ")))
                        } else if s.view().controllers.iter().all(|c| c.kind().is_none()) {
                            // An attach would hot-plug a controller: wait here, holding
                            // no lock, while the guest cannot take one (its firmware).
                            s.controller_wait().map_err(|e| vm_err(vm, "query-pci/query-blockstats", e))?
                        } else {
                            None
                        }
                    }
                    Located::NotRunning(_) => None,
                    Located::NotReady { why, stale: Some(age) } => {
                        log::info!(
                            "VM {} is not running ({why}; its socket is {} s old: left by a QEMU that died)",
                            vm.name,
                            age.as_secs()
                        );
                        None
                    }
                    Located::NotReady { why, stale: None } => Some(why),
                })
            };
            let why = match step() {
                Ok(None) => break,
                Ok(Some(why)) => why,
                Err(e) => {
                    log::warn!("skipping VM {} this time: {e:#}", vm.name);
                    skipped.push((i, e));
                    break;
                }
            };
            if ctx.deadline.remaining("")? < ctx.config.timeout / 3 {
                log::info!("VM {} is not ready ({why}); leaving it for the next trigger", vm.name);
                break;
            }
            log::debug!("VM {} not ready ({why}); retrying", vm.name);
            std::thread::sleep(crate::timing::sync_retry());
        }
    }
    Ok(skipped)
}
