//! Finding a VM's QEMU and reading what it really holds.
//!
//! A VM is either an explicit QMP socket (plain QEMU/KVM, never touching
//! xenstore) or a Xen domain name: xenstore gives its domid
//! (`/local/domain/<domid>/name`), libxl puts its device model's socket at
//! `<xen-run-dir>/qmp-libxl-<domid>`, and every connection to it is made
//! under libxl's qmp-socket-lock. The domid is cached in state.

use crate::config::{Config, VmConfig};
use crate::controller::ControllerKind;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::plan::{parse_controller_id, parse_device_id};
use crate::qmp::{self, Client, Qmp, QmpError, QmpResult};
use crate::root::Root;
use crate::state::{Attached, Controller, Origin, VmState};
use crate::{xen, xenlock, xenstore};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const XEN_SOCKET_PREFIX: &str = "qmp-libxl-";

/// What a session to a Xen domain carries besides QMP: the domain, a
/// xenstore connection, and libxl's QMP lock (held while the socket is open).
pub struct XenLink {
    pub domain: xen::Domain,
    pub xs: xenstore::Client,
    pub qmp_lock: xenlock::XenLock,
}

pub struct Running {
    pub client: Client,
    /// The socket as the config knows it (not under --root): kept in state.
    pub socket: PathBuf,
    pub instance: String,
    pub domid: Option<u32>,
    /// Declared after `client`: dropped after it, so the socket is closed
    /// before libxl's lock is released.
    pub xen: Option<XenLink>,
}

pub enum Located {
    Running(Box<Running>),
    /// Why it is not running, for the log / the error message.
    NotRunning(String),
    /// Its QEMU is starting: a socket that refuses connections, or (Xen >=
    /// 4.20) the short-lived unnamed probe QEMU libxl runs first on the
    /// same path. Worth retrying shortly.
    NotReady(String),
}

/// Identity of the QEMU that created the socket: a restarted VM's QEMU
/// creates a fresh socket file (new inode, new ctime).
pub fn instance_of(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    Some(format!("{}:{}.{:09}", m.ino(), m.ctime(), m.ctime_nsec()))
}

fn not_running(e: &QmpError) -> bool {
    // A socket file left behind by a dead QEMU refuses connections.
    matches!(e, QmpError::NotListening(_))
}

fn open(path: &Path, shown: PathBuf, domid: Option<u32>, deadline: &Deadline, cap: Duration) -> QmpResult<Running> {
    let instance = instance_of(path).unwrap_or_default();
    let client = qmp::connect(path, deadline, cap)?;
    log::debug!("{}: {}", path.display(), client.greeting);
    Ok(Running { client, socket: shown, instance, domid, xen: None })
}

/// Connect to `vm`'s QEMU. `cached_domid` is tried first for Xen names.
pub fn locate(
    root: &Root,
    config: &Config,
    vm: &VmConfig,
    cached_domid: Option<u32>,
    deadline: &Deadline,
) -> Result<Located> {
    let ctx = |e: QmpError, p: &Path| Error::new(format!("VM {}: QMP {}: {e}", vm.name, p.display()));
    if let Some(q) = &vm.qmp {
        let path = root.path(q);
        if !path.exists() {
            return Ok(Located::NotRunning(format!("no QMP socket at {}", path.display())));
        }
        return match open(&path, q.clone(), None, deadline, Duration::MAX) {
            Ok(r) => Ok(Located::Running(Box::new(r))),
            Err(e) if not_running(&e) => Ok(Located::NotReady(e.to_string())),
            Err(e) => Err(ctx(e, &path)),
        };
    }
    locate_xen(root, config, vm, cached_domid, deadline)
}

/// A Xen domain by name, through xenstore (never by asking sockets: a
/// socket is libxl's, and a busy one would cost us our budget): name ->
/// domid -> `<xen-run-dir>/qmp-libxl-<domid>`, connected to under libxl's
/// qmp-socket-lock for that domain (held until the session ends).
fn locate_xen(
    root: &Root,
    config: &Config,
    vm: &VmConfig,
    cached_domid: Option<u32>,
    deadline: &Deadline,
) -> Result<Located> {
    let mut xs = xenstore::connect(root, deadline).map_err(|e| {
        Error::new(format!("VM {}: cannot reach xenstored (is this a Xen dom0 with xenstored running?): {e}", vm.name))
    })?;
    let found = xen::find_domain(&mut xs, &vm.name, cached_domid)
        .map_err(|e| Error::new(format!("VM {}: looking up its domain in xenstore: {e}", vm.name)))?;
    let Some(domain) = found else {
        return Ok(Located::NotRunning(format!("xenstore has no domain named {}", vm.name)));
    };
    let domid = domain.domid;
    let shown = config.xen_run_dir.join(format!("{XEN_SOCKET_PREFIX}{domid}"));
    let path = root.path(&shown);
    if !path.exists() {
        // libxl records a device model before it starts it.
        let dm = xs.read_opt(xenstore::Tx::NONE, &format!("/libxl/{domid}/dm-version")).ok().flatten();
        return Ok(match dm {
            Some(_) => Located::NotReady(format!("domain {domid} has no QMP socket at {} yet", path.display())),
            None => Located::NotRunning(format!("domain {domid} has no QEMU device model (PV?)")),
        });
    }
    let lock_path = xenlock::path(root, &config.xen_lib_dir, domid, &domain.uuid, xenlock::Kind::Qmp)?;
    let qmp_lock =
        xenlock::XenLock::acquire(&lock_path, deadline).map_err(|e| Error::new(format!("VM {}: {e}", vm.name)))?;
    let mut r = match open(&path, shown, Some(domid), deadline, Duration::MAX) {
        Ok(r) => r,
        Err(e) if not_running(&e) => return Ok(Located::NotReady(e.to_string())),
        Err(e) => return Err(Error::new(format!("VM {}: QMP {}: {e}", vm.name, path.display()))),
    };
    r.xen = Some(XenLink { domain, xs, qmp_lock });
    Ok(Located::Running(Box::new(r)))
}

fn qom_get<S: BufRead + Write>(q: &mut Qmp<S>, path: &str, prop: &str) -> QmpResult<Value> {
    q.execute("qom-get", Some(json!({ "path": path, "property": prop })))
}

fn qom_list<S: BufRead + Write>(q: &mut Qmp<S>, path: &str) -> QmpResult<Vec<(String, String)>> {
    let v = q.execute("qom-list", Some(json!({ "path": path })))?;
    let items = v.as_array().ok_or_else(|| QmpError::Protocol(format!("qom-list {path}: not a list")))?;
    Ok(items
        .iter()
        .filter_map(|i| Some((i.get("name")?.as_str()?.to_string(), i.get("type")?.as_str()?.to_string())))
        .collect())
}

/// Ports per range of a controller QEMU holds, by its type.
fn layout<S: BufRead + Write>(q: &mut Qmp<S>, id: &str, ty: &str) -> QmpResult<Option<(u8, u8)>> {
    let Some(kind) = ControllerKind::recognise(ty) else { return Ok(None) };
    let path = format!("/machine/peripheral/{id}");
    kind.read_ports(&mut |prop| qom_get(q, &path, prop)).map(Some)
}

/// Rebuild our view of a VM from QEMU itself: `xenusb-<n>` controllers, the
/// `usb-host` devices with `xenusb-<bus>-<addr>` ids on them, and every other
/// port in use on those controllers. Origins are `Found` (the caller merges
/// what state knew).
pub fn enumerate<S: BufRead + Write>(q: &mut Qmp<S>) -> QmpResult<VmState> {
    let peripherals = qom_list(q, "/machine/peripheral")?;
    let child_type = |name: &str| {
        peripherals
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, t)| t.strip_prefix("child<")?.strip_suffix('>'))
            .map(str::to_string)
    };
    let mut view = VmState::default();
    for (name, ty) in &peripherals {
        let Some(ty) = ty.strip_prefix("child<").and_then(|t| t.strip_suffix('>')) else { continue };
        if parse_controller_id(name).is_none() {
            continue;
        }
        match layout(q, name, ty)? {
            Some((ports, usb3_ports)) => {
                view.controllers.push(Controller { id: name.clone(), driver: ty.to_string(), ports, usb3_ports })
            }
            None => log::warn!("{name} is a {ty}, not a USB controller this tool knows; leaving it alone"),
        }
    }
    for c in view.controllers.clone() {
        let bus = format!("/machine/peripheral/{0}/{0}.0", c.id);
        for (link, ty) in qom_list(q, &bus)? {
            if !(link.starts_with("child[") && ty.starts_with("link<")) {
                continue;
            }
            let path = qom_get(q, &bus, &link)?;
            let Some(path) = path.as_str() else { continue };
            let port = qom_get(q, path, "port")?;
            let Some(port) = port.as_str().and_then(|p| p.parse::<u8>().ok()) else {
                log::warn!("{path} on {} has port {port}; not a root port, ignoring", c.id);
                continue;
            };
            let id = path.strip_prefix("/machine/peripheral/").unwrap_or("");
            let ours = parse_device_id(id).filter(|_| child_type(id).as_deref() == Some("usb-host"));
            match ours {
                Some((bus_n, addr_n)) => view.devices.push(Attached {
                    id: id.to_string(),
                    bus: bus_n,
                    addr: addr_n,
                    controller: c.id.clone(),
                    port,
                    port_path: String::new(),
                    usb_id: String::new(),
                    serial: String::new(),
                    origin: Origin::Found,
                }),
                None => view.foreign_ports.push(format!("{}:{port}", c.id)),
            }
        }
    }
    Ok(view)
}

/// Merge what QEMU holds (`fresh`) with what state remembered about the same
/// QEMU: QEMU is the truth for what exists; state keeps who asked for it.
pub fn merge(fresh: VmState, old: &VmState) -> VmState {
    let mut out = fresh;
    for d in &mut out.devices {
        if let Some(o) = old.devices.iter().find(|o| o.id == d.id && o.bus == d.bus && o.addr == d.addr) {
            d.origin = o.origin;
            d.port_path = o.port_path.clone();
            d.usb_id = o.usb_id.clone();
            d.serial = o.serial.clone();
        }
    }
    out
}
