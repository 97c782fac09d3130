//! The commands: thin code that applies `plan`'s decisions over QMP and keeps
//! state in step. Every path goes through `Ctx::root`; every wait draws on
//! `Ctx::deadline`.

use crate::cli::{Cli, Command, DetachTarget};
use crate::config::{self, Config, VmConfig};
use crate::deadline::Deadline;
use crate::error::{Context, Error, Result};
use crate::host::{self, Action, HostDevice, UdevEvent};
use crate::lock::LockGuard;
use crate::plan;
use crate::qmp::QmpError;
use crate::root::Root;
use crate::state::{Attached, HeldOut, Origin, State, VmState};
use crate::vm::{self, Located, Running};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;

pub struct Ctx {
    pub root: Root,
    pub config: Config,
    pub deadline: Deadline,
}

impl Ctx {
    fn state_dir(&self) -> PathBuf {
        self.root.path(&self.config.state_dir)
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let root = Root::new(cli.root.clone().unwrap_or_else(|| "/".into()));
    crate::log::init(&root, cli.verbose);
    let config_path = root.path(&cli.config);
    let config = match config::load(&config_path, &cli.config) {
        Ok(c) => c,
        // Listing the host side needs no config.
        Err(e) if matches!(cli.command, Command::List { .. }) && !config_path.exists() => {
            log::debug!("{e}");
            config::parse_str("", "(none)")?
        }
        Err(e) => return Err(e),
    };
    if let Some(f) = &config.log_file {
        crate::log::add_file(root.path(f));
    }
    // Whoever can write the config or state decides what VMs get: refuse to
    // act on them (check reports it; list only reads).
    if !matches!(cli.command, Command::List { .. } | Command::Check) {
        for (what, shown) in [("config", &cli.config), ("state dir", &config.state_dir)] {
            if let Some(why) = crate::check::writable_by_others(&root.path(shown)) {
                crate::bail!("refusing to run: {what} {} is {why}", shown.display());
            }
        }
    }
    let ctx = Ctx { deadline: Deadline::after(config.timeout), root, config };
    match cli.command {
        Command::Udev => udev(&ctx, &std::env::vars().collect()),
        Command::Attach { dev, vm } => attach_by_hand(&ctx, dev.bus, dev.addr, vm.as_deref()),
        Command::Detach { target, vm } => detach_by_hand(&ctx, &target, vm.as_deref()),
        Command::List { json } => list(&ctx, json),
        Command::Sync { vm } => sync(&ctx, vm.as_deref()),
        Command::Check => crate::check::check(&ctx, &cli.config),
    }
}

/// Run `f` on state under the lock and save whatever it changed, even when
/// it fails half-way (a controller created before a failed device_add is real).
fn with_state<T>(ctx: &Ctx, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
    let dir = ctx.state_dir();
    let _lock = LockGuard::acquire(&dir, &ctx.deadline)?;
    let mut state = State::load(&dir)?;
    let before = state.clone();
    let out = f(&mut state);
    if state != before {
        state.save(&dir)?;
    }
    out
}

pub fn udev(ctx: &Ctx, env: &HashMap<String, String>) -> Result<()> {
    let Some(ev) = UdevEvent::from_env(env)? else {
        log::debug!("ignoring event ACTION={:?}", env.get("ACTION"));
        return Ok(());
    };
    match ev.action {
        Action::Add | Action::Bind => udev_add(ctx, &ev),
        Action::Remove => udev_remove(ctx, &ev),
    }
}

fn udev_add(ctx: &Ctx, ev: &UdevEvent) -> Result<()> {
    let dev = ev.device(&ctx.root)?;
    let Some(i) = plan::route(&ctx.config, &dev) else {
        log::debug!("{} ({}) at {}:{}: no rule wants it", dev.port_path, dev.id_string(), dev.bus, dev.addr);
        return Ok(());
    };
    let vm = &ctx.config.vms[i];
    with_state(ctx, |state| {
        if state.is_held_out(dev.bus, dev.addr) {
            log::info!("{} ({}) was detached by hand; leaving it out until replugged", dev.port_path, dev.id_string());
            return Ok(());
        }
        if let Some((owner, _)) = state.find(dev.bus, dev.addr) {
            if ev.action == Action::Bind {
                // The add event already attached it: nothing to do, no QMP.
                log::debug!("{}:{} already attached to {owner}", dev.bus, dev.addr);
                return Ok(());
            }
            // A new device at a bus:addr we still hold means we missed a
            // remove: the record (and QEMU's device) are stale.
            let owner = owner.to_string();
            log::info!("{}:{} reused by a new device; dropping the stale attachment in {owner}", dev.bus, dev.addr);
            if let Ok(ovm) = ctx.config.vm(&owner) {
                detach_from(ctx, state, ovm, dev.bus, dev.addr, true)?;
            } else {
                drop_record(state, &owner, dev.bus, dev.addr);
            }
        }
        // On add QEMU must open the node itself (the add-time race); on bind
        // libusb knows the device, and hostbus/hostaddr alone suits any QEMU.
        let hostdevice = (ev.action == Action::Add).then(|| ctx.root.path(dev.devname()).display().to_string());
        attach(ctx, state, vm, &dev, Origin::Rule, hostdevice.as_deref(), true)
    })
}

fn udev_remove(ctx: &Ctx, ev: &UdevEvent) -> Result<()> {
    with_state(ctx, |state| {
        // Unplugging ends an admin's "keep it out".
        state.held_out.retain(|h| (h.bus, h.addr) != (ev.bus, ev.addr));
        let Some((owner, _)) = state.find(ev.bus, ev.addr) else {
            log::debug!("{}:{} removed; not ours", ev.bus, ev.addr);
            return Ok(());
        };
        let owner = owner.to_string();
        match ctx.config.vm(&owner) {
            Ok(vm) => detach_from(ctx, state, vm, ev.bus, ev.addr, true).map(drop),
            Err(_) => {
                log::warn!(
                    "{}:{} was attached to {owner}, which is no longer configured; forgetting it",
                    ev.bus,
                    ev.addr
                );
                drop_record(state, &owner, ev.bus, ev.addr);
                Ok(())
            }
        }
    })
}

fn drop_record(state: &mut State, vm: &str, bus: u16, addr: u16) {
    if let Some(v) = state.vms.get_mut(vm) {
        v.devices.retain(|d| (d.bus, d.addr) != (bus, addr));
    }
}

/// Connect to `vm`; `None` when it is not running (logged when `quiet`,
/// an error otherwise).
pub(crate) fn connect(ctx: &Ctx, state: &State, vm: &VmConfig, quiet: bool) -> Result<Option<Box<Running>>> {
    connect_hinted(ctx, vm, state.vms.get(&vm.name).and_then(|v| v.domid), &[], quiet)
}

/// `connect`, trying Xen domain `domid` first.
fn connect_hinted(
    ctx: &Ctx,
    vm: &VmConfig,
    domid: Option<u32>,
    held: &[String],
    quiet: bool,
) -> Result<Option<Box<Running>>> {
    match vm::locate(&ctx.root, &ctx.config, vm, domid, held, &ctx.deadline)? {
        Located::Running(r) => Ok(Some(r)),
        Located::NotRunning(why) | Located::NotReady(why) if quiet => {
            log::info!("VM {} is not running ({why}); nothing to do", vm.name);
            Ok(None)
        }
        Located::NotRunning(why) | Located::NotReady(why) => {
            Err(Error::new(format!("VM {} is not running: {why}", vm.name)))
        }
    }
}

/// What the QEMU behind `r` holds: state's cache when it is the same QEMU
/// instance, else rebuilt from QEMU (VM restarted, state lost).
/// What state knew about the QEMU behind `r`, if it is the same QEMU
/// instance (a restarted VM's QEMU makes a new socket: new inode/ctime).
fn known<'a>(state: &'a State, vm: &VmConfig, r: &Running) -> Option<&'a VmState> {
    let cached = state.vms.get(&vm.name);
    let same = cached.filter(|c| !r.instance.is_empty() && c.instance == r.instance && c.socket == r.socket);
    if cached.is_some() && same.is_none() {
        log::info!("VM {}: a different QEMU is behind {} now (restarted?); rebuilding from QEMU", vm.name, r.socket);
    }
    same
}

/// What the QEMU behind `r` holds: state's cache when it is the same QEMU
/// instance, else rebuilt from QEMU (VM restarted, state lost).
pub(crate) fn view(state: &State, vm: &VmConfig, r: &mut Running) -> Result<VmState> {
    match known(state, vm, r) {
        Some(c) => Ok(c.clone()),
        None => rebuild(vm, r, &VmState::default()),
    }
}

fn rebuild(vm: &VmConfig, r: &mut Running, old: &VmState) -> Result<VmState> {
    let fresh = vm::enumerate(&mut r.client).map_err(|e| qmp_err(vm, "reading devices (qom-list)", e))?;
    let mut v = vm::merge(fresh, old);
    v.socket = r.socket.clone();
    v.instance = r.instance.clone();
    v.domid = r.domid;
    Ok(v)
}

fn qmp_err(vm: &VmConfig, what: &str, e: QmpError) -> Error {
    Error::new(format!("VM {}: {what}: {e}", vm.name))
}

/// QEMU's answers that mean our picture of its ports/controllers was wrong.
fn view_was_stale(e: &QmpError) -> bool {
    let d = e.desc();
    e.class() == Some("GenericError")
        && (d.contains("(in use?)")
            || d.contains("Duplicate device ID")
            || (d.starts_with("Bus '") && d.ends_with("not found")))
}

/// Attach `dev` to `vm`, recording it in `state`.
fn attach(
    ctx: &Ctx,
    state: &mut State,
    vm: &VmConfig,
    dev: &HostDevice,
    origin: Origin,
    hostdevice: Option<&str>,
    quiet: bool,
) -> Result<()> {
    let Some(mut r) = connect(ctx, state, vm, quiet)? else { return Ok(()) };
    let mut held = view(state, vm, &mut r)?;
    let needs_controller = plan::place(vm, &held, dev.is_superspeed()).is_ok_and(|p| p.new_controller.is_some());
    if needs_controller && !held.devices.iter().any(|d| (d.bus, d.addr) == (dev.bus, dev.addr)) {
        // Let go of the socket while libxl may still be adding its own controllers.
        let (socket, domid) = (r.socket.clone(), r.domid);
        let mut conn = Some(r);
        if settle_xen(ctx, vm, &socket, || drop(conn.take())) {
            // Straight back to the domain just found, not a rescan of every socket.
            let Some(again) = connect_hinted(ctx, vm, domid, &[], quiet)? else { return Ok(()) };
            r = again;
            held = rebuild(vm, &mut r, &held)?;
        } else {
            r = conn.take().expect("kept when not settling");
        }
    }
    let result = attach_on(ctx, &mut r, &mut held, vm, dev, origin, hostdevice);
    // Saved even on failure: a controller created before a failed device_add is real.
    state.vms.insert(vm.name.clone(), held);
    result
}

/// Attach over an open connection, keeping `held` in step with QEMU.
pub(crate) fn attach_on(
    ctx: &Ctx,
    r: &mut Running,
    held: &mut VmState,
    vm: &VmConfig,
    dev: &HostDevice,
    origin: Origin,
    hostdevice: Option<&str>,
) -> Result<()> {
    let id = plan::device_id(dev.bus, dev.addr);
    if held.devices.iter().any(|d| d.id == id) {
        log::info!("{} ({}) is already attached to VM {} as {id}", dev.port_path, dev.id_string(), vm.name);
        return Ok(());
    }
    let mut retried = false;
    let mut hostdevice = hostdevice;
    loop {
        let p = plan::place(vm, held, dev.is_superspeed())
            .map_err(|e| Error::new(format!("cannot attach {}:{} ({}): {e}", dev.bus, dev.addr, dev.port_path)))?;
        if let Some(c) = &p.new_controller {
            match r.client.execute("device_add", Some(plan::controller_args(c))) {
                Ok(_) => {
                    log::info!("VM {}: created USB controller {} ({})", vm.name, c.id, c.driver);
                    held.controllers.push(c.clone());
                }
                Err(e) if !retried && view_was_stale(&e) => {
                    retried = true;
                    *held = rebuild(vm, r, held)?;
                    continue;
                }
                Err(e) => return Err(qmp_err(vm, &format!("device_add {} ({})", c.id, c.driver), e)),
            }
        }
        match r.client.execute("device_add", Some(plan::device_args(&p, dev.bus, dev.addr, hostdevice))) {
            Ok(_) => {
                held.devices.push(Attached {
                    id: id.clone(),
                    bus: dev.bus,
                    addr: dev.addr,
                    controller: p.controller.clone(),
                    port: p.port,
                    port_path: dev.port_path.clone(),
                    usb_id: dev.id_string(),
                    origin,
                });
                log::info!(
                    "attached {} ({}{}) {}:{} to VM {} as {id} on {} port {} in {} ms",
                    dev.port_path,
                    dev.id_string(),
                    dev.name.as_deref().map(|n| format!(" {n}")).unwrap_or_default(),
                    dev.bus,
                    dev.addr,
                    vm.name,
                    p.controller,
                    p.port,
                    ctx.deadline.elapsed().as_millis()
                );
                return Ok(());
            }
            // QEMU before 5.1 has no hostdevice property: fall back to hostbus/hostaddr.
            Err(e) if hostdevice.is_some() && e.desc().contains("hostdevice") && e.desc().contains("not found") => {
                log::warn!("VM {}: QEMU has no usb-host hostdevice property; using hostbus/hostaddr", vm.name);
                hostdevice = None;
            }
            Err(e) if !retried && view_was_stale(&e) => {
                retried = true;
                log::info!("VM {}: {e}; re-reading QEMU's devices", vm.name);
                *held = rebuild(vm, r, held)?;
                if held.devices.iter().any(|d| d.id == id) {
                    log::info!("{id} is already in VM {}", vm.name);
                    return Ok(());
                }
            }
            Err(e) => return Err(qmp_err(vm, &format!("device_add {id} ({} {})", dev.port_path, dev.id_string()), e)),
        }
    }
}

/// `device_del` bus:addr from `vm` and drop the record. Gone already (VM not
/// running, restarted, DeviceNotFound) counts as done.
fn detach_from(ctx: &Ctx, state: &mut State, vm: &VmConfig, bus: u16, addr: u16, quiet: bool) -> Result<bool> {
    let id = plan::device_id(bus, addr);
    let Some(mut r) = connect(ctx, state, vm, true)? else {
        drop_record(state, &vm.name, bus, addr);
        return Ok(false);
    };
    let mut held = view(state, vm, &mut r)?;
    let found = match r.client.execute("device_del", Some(json!({ "id": id }))) {
        Ok(_) => {
            log::info!("detached {id} ({bus}:{addr}) from VM {}", vm.name);
            true
        }
        Err(e) if e.class() == Some("DeviceNotFound") => {
            if !quiet {
                log::info!("{id} was not in VM {}", vm.name);
            }
            false
        }
        Err(e) => {
            state.vms.insert(vm.name.clone(), held);
            return Err(qmp_err(vm, &format!("device_del {id}"), e));
        }
    };
    held.devices.retain(|d| d.id != id);
    state.vms.insert(vm.name.clone(), held);
    Ok(found)
}

fn attach_by_hand(ctx: &Ctx, bus: u16, addr: u16, vm_name: Option<&str>) -> Result<()> {
    let dev = host::find(&ctx.root, bus, addr)?;
    if dev.is_root_hub() || dev.is_hub() {
        crate::bail!(
            "{bus}:{addr} ({}) is a hub; hubs are never passed (plug devices behind it instead)",
            dev.port_path
        );
    }
    let vm = match vm_name {
        Some(n) => ctx.config.vm(n)?,
        None => match (plan::route(&ctx.config, &dev), ctx.config.vms.as_slice()) {
            (Some(i), _) => &ctx.config.vms[i],
            (None, [only]) => only,
            (None, []) => crate::bail!("no VM is configured in the config file"),
            (None, _) => crate::bail!("{bus}:{addr} matches no VM's rules; name one with --vm"),
        },
    };
    let hostdevice = ctx.root.path(dev.devname()).display().to_string();
    with_state(ctx, |state| {
        if let Some((owner, _)) = state.find(bus, addr) {
            if owner != vm.name {
                crate::bail!("{bus}:{addr} is attached to VM {owner}; detach it first");
            }
        }
        state.held_out.retain(|h| (h.bus, h.addr) != (bus, addr));
        attach(ctx, state, vm, &dev, Origin::Manual, Some(&hostdevice), false)
    })
    .with_context(|| format!("attach {bus}:{addr}"))
}

fn detach_by_hand(ctx: &Ctx, t: &DetachTarget, vm_name: Option<&str>) -> Result<()> {
    let (bus, addr) = match (&t.id, t.bus, t.addr) {
        (Some(id), _, _) => plan::parse_device_id(id)
            .ok_or_else(|| Error::new(format!("--id {id:?} is not a device id like xenusb-3-7")))?,
        (None, Some(b), Some(a)) => (b, a),
        _ => crate::bail!("give --bus and --addr, or --id"),
    };
    if let Some(n) = vm_name {
        ctx.config.vm(n)?;
    }
    with_state(ctx, |state| {
        let candidates: Vec<&VmConfig> = match (vm_name, state.find(bus, addr)) {
            (Some(n), _) => vec![ctx.config.vm(n)?],
            (None, Some((owner, _))) => vec![ctx.config.vm(owner)?],
            // Not in state (lost?): ask every configured VM.
            (None, None) => ctx.config.vms.iter().collect(),
        };
        let mut done_in = None;
        for vm in candidates {
            if detach_from(ctx, state, vm, bus, addr, false)? {
                done_in = Some(vm.name.clone());
                break;
            }
        }
        match done_in {
            None => log::info!("{} is not attached to any VM", plan::device_id(bus, addr)),
            Some(vm) => {
                // A rule would put it straight back on the next event or sync:
                // remember the admin's choice until it is unplugged.
                if let Ok(dev) = host::find(&ctx.root, bus, addr) {
                    if plan::route(&ctx.config, &dev).is_some() && !state.is_held_out(bus, addr) {
                        state.held_out.push(HeldOut { bus, addr, vm });
                    }
                }
            }
        }
        Ok(())
    })
}

fn list(ctx: &Ctx, as_json: bool) -> Result<()> {
    let devices = host::scan(&ctx.root)?;
    // Read-only: no lock (state is replaced atomically), works without root.
    let state =
        State::parse_str(&std::fs::read_to_string(ctx.state_dir().join(crate::state::FILE)).unwrap_or_default())
            .unwrap_or_default();
    let mut rows = Vec::new();
    for d in &devices {
        let at = state.find(d.bus, d.addr);
        let route = plan::route(&ctx.config, d).map(|i| ctx.config.vms[i].name.clone());
        rows.push((Some(d), at, route));
    }
    for (vm, v) in &state.vms {
        for a in &v.devices {
            if !devices.iter().any(|d| (d.bus, d.addr) == (a.bus, a.addr)) {
                rows.push((None, Some((vm.as_str(), a)), None));
            }
        }
    }
    if as_json {
        let arr: Vec<_> = rows
            .iter()
            .map(|(d, at, route)| {
                let mut o = match d {
                    Some(d) => serde_json::to_value(d).expect("serialises"),
                    None => {
                        let a = at.expect("gone devices are attached").1;
                        json!({ "bus": a.bus, "addr": a.addr, "port-path": a.port_path, "gone-from-host": true })
                    }
                };
                o["wanted-by"] = json!(route);
                o["held-out"] = json!(d.is_some_and(|d| state.is_held_out(d.bus, d.addr)));
                o["attached"] = match at {
                    Some((vm, a)) => {
                        json!({ "vm": vm, "id": a.id, "controller": a.controller, "port": a.port, "origin": a.origin })
                    }
                    None => json!(null),
                };
                o
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&arr).expect("serialises"));
        return Ok(());
    }
    println!("{:<8} {:<9} {:<10} {:>6}  {:<28} ATTACHED", "BUS:ADDR", "ID", "PORT", "SPEED", "NAME");
    for (d, at, route) in rows {
        let attached = match at {
            Some((vm, a)) => format!("{vm} {} port {} ({})", a.controller, a.port, a.id),
            None if d.is_some_and(|d| state.is_held_out(d.bus, d.addr)) => "- (detached by hand)".into(),
            None => match route {
                Some(vm) => format!("- (wanted by {vm})"),
                None => "-".into(),
            },
        };
        match d {
            Some(d) => {
                let name: String =
                    d.name.as_deref().or(d.manufacturer.as_deref()).unwrap_or("").chars().take(28).collect();
                println!(
                    "{:03}:{:03}  {:<9} {:<10} {:>6}  {:<28} {attached}",
                    d.bus,
                    d.addr,
                    d.id_string(),
                    d.port_path,
                    d.speed,
                    name
                );
            }
            None => {
                let a = at.expect("gone devices are attached").1;
                println!(
                    "{:03}:{:03}  {:<9} {:<10} {:>6}  {:<28} {attached}",
                    a.bus, a.addr, a.usb_id, a.port_path, "", "(gone from host)"
                );
            }
        }
    }
    Ok(())
}

/// How long `sync` waits between tries for a QEMU that is still starting.
const SYNC_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// libxl adds the controllers a domain's config asks for (`xenusb-N`) over
/// QMP right after its QEMU starts; creating ours first would make libxl's
/// device_add fail ("Duplicate device ID") and the domain with it. So before
/// creating a controller in a Xen VM whose socket is brand new (sync right
/// after the path unit fires, or a plug during domain start), wait this long.
const XEN_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Waits until a Xen VM's socket is XEN_SETTLE old, calling `before_wait`
/// first (to let go of the QMP socket); true if it waited.
fn settle_xen(ctx: &Ctx, vm: &VmConfig, socket: &str, before_wait: impl FnOnce()) -> bool {
    if vm.qmp.is_some() {
        return false;
    }
    let age = std::fs::metadata(ctx.root.path(socket))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or(XEN_SETTLE);
    let Some(wait) = XEN_SETTLE.checked_sub(age) else { return false };
    let wait = ctx.deadline.capped("", wait).unwrap_or_default();
    before_wait();
    log::info!(
        "VM {}: its QEMU started {} ms ago; letting libxl add its own controllers first",
        vm.name,
        age.as_millis()
    );
    std::thread::sleep(wait);
    true
}

/// Before `sync` takes the lock: wait (within most of the budget) for VMs
/// whose QEMU is still starting, so that udev events are never kept waiting
/// on our lock while we sleep. Past that the next trigger (or the timer)
/// finishes the job.
fn wait_until_ready(ctx: &Ctx, targets: &[usize]) -> Result<()> {
    let dir = ctx.state_dir();
    let cached = |name: &str| {
        let text = std::fs::read_to_string(dir.join(crate::state::FILE)).unwrap_or_default();
        State::parse_str(&text).ok().and_then(|s| s.vms.get(name).and_then(|v| v.domid))
    };
    for &i in targets {
        let vm = &ctx.config.vms[i];
        loop {
            match vm::locate(&ctx.root, &ctx.config, vm, cached(&vm.name), &[], &ctx.deadline)? {
                Located::Running(r) => {
                    // Drop the connection first: libxl needs the socket meanwhile.
                    let socket = r.socket.clone();
                    settle_xen(ctx, vm, &socket, || drop(r));
                    break;
                }
                Located::NotRunning(_) => break,
                Located::NotReady(why) => {
                    if ctx.deadline.remaining("")? < ctx.config.timeout / 3 {
                        log::info!("VM {} is not ready ({why}); leaving it for the next trigger", vm.name);
                        break;
                    }
                    log::debug!("VM {} not ready ({why}); retrying", vm.name);
                    std::thread::sleep(SYNC_RETRY);
                }
            }
        }
    }
    Ok(())
}

fn sync(ctx: &Ctx, only: Option<&str>) -> Result<()> {
    if let Some(n) = only {
        ctx.config.vm(n)?;
    }
    let targets: Vec<usize> =
        (0..ctx.config.vms.len()).filter(|i| only.is_none_or(|n| ctx.config.vms[*i].name == n)).collect();
    wait_until_ready(ctx, &targets)?;
    with_state(ctx, |state| {
        let host = host::scan(&ctx.root)?;
        // "Keep it out until unplugged": unplugged now, so the intent ends.
        state.held_out.retain(|h| host.iter().any(|d| (d.bus, d.addr) == (h.bus, h.addr)));
        let mut conns: Vec<(usize, Box<Running>, VmState)> = Vec::new();
        for &i in &targets {
            let vm = &ctx.config.vms[i];
            // Sessions this sync already holds would look busy to a Xen name scan.
            let held: Vec<String> = conns.iter().map(|(_, r, _)| r.socket.clone()).collect();
            let domid = state.vms.get(&vm.name).and_then(|v| v.domid);
            match connect_hinted(ctx, vm, domid, &held, true)? {
                Some(mut r) => {
                    // Xen >= 4.20 first runs a probe QEMU (-machine none) on the
                    // domain's socket: no PCI bus, nowhere to put a controller.
                    let pci = r.client.execute("query-pci", None).map_err(|e| qmp_err(vm, "query-pci", e))?;
                    if pci.as_array().is_some_and(|a| a.is_empty()) {
                        log::info!(
                            "VM {}: QEMU has no PCI bus yet (a probe QEMU?); leaving it for the next trigger",
                            vm.name
                        );
                        continue;
                    }
                    // sync always reads QEMU; state only lends who asked for what.
                    let old = known(state, vm, &r).cloned().unwrap_or_default();
                    let v = rebuild(vm, &mut r, &old)?;
                    conns.push((i, r, v));
                }
                None => {
                    // Its QEMU is gone, and with it everything we had added.
                    if let Some(v) = state.vms.get_mut(&vm.name) {
                        v.controllers.clear();
                        v.devices.clear();
                        v.foreign_ports.clear();
                    }
                }
            }
        }
        let elsewhere: Vec<(u16, u16)> = state
            .vms
            .iter()
            .filter(|(name, _)| !targets.iter().any(|i| ctx.config.vms[*i].name == **name))
            .flat_map(|(_, v)| v.devices.iter().map(|d| (d.bus, d.addr)))
            .collect();
        let views: Vec<(usize, &VmState)> = conns.iter().map(|(i, _, v)| (*i, v)).collect();
        let steps = crate::sync::plan(&ctx.config, &views, &elsewhere, &host, &state.held_out);
        let mut failures = Vec::new();
        for step in &steps {
            let (i, res) = match step {
                crate::sync::Step::Detach { vm, id, bus, addr, why } => {
                    let (_, r, v) = conns.iter_mut().find(|(i, _, _)| i == vm).expect("planned for a connected VM");
                    let cfg = &ctx.config.vms[*vm];
                    log::info!("VM {}: detaching {id}: {why}", cfg.name);
                    let res = match r.client.execute("device_del", Some(json!({ "id": id }))) {
                        Ok(_) => Ok(()),
                        Err(e) if e.class() == Some("DeviceNotFound") => Ok(()),
                        Err(e) => Err(qmp_err(cfg, &format!("device_del {id}"), e)),
                    };
                    if res.is_ok() {
                        v.devices.retain(|d| (d.bus, d.addr) != (*bus, *addr));
                        log::info!("detached {id} ({bus}:{addr}) from VM {}", cfg.name);
                    }
                    (*vm, res)
                }
                crate::sync::Step::Attach { vm, dev } => {
                    let (_, r, v) = conns.iter_mut().find(|(i, _, _)| i == vm).expect("planned for a connected VM");
                    let hostdevice = ctx.root.path(dev.devname()).display().to_string();
                    (*vm, attach_on(ctx, r, v, &ctx.config.vms[*vm], dev, Origin::Rule, Some(&hostdevice)))
                }
            };
            if let Err(e) = res {
                log::warn!("{e}");
                failures.push((i, e));
            }
        }
        for (i, _, v) in conns {
            let name = &ctx.config.vms[i].name;
            if !steps.iter().any(|s| matches!(s, crate::sync::Step::Attach { vm, .. } | crate::sync::Step::Detach { vm, .. } if *vm == i)) {
                log::info!("VM {name}: in sync ({} device(s) attached); nothing to do", v.devices.len());
            }
            state.vms.insert(name.clone(), v);
        }
        match failures.len() {
            0 => Ok(()),
            1 => Err(failures.remove(0).1),
            n => Err(Error::new(format!("{n} steps failed; first: {}", failures.remove(0).1))),
        }
    })
}
