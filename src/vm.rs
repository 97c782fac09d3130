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
use crate::state::{Attached, Controller, CtrlOrigin, Origin, VmState};
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
    /// A running libvirt domain, reached through libvirtd; `shown` is how
    /// state names it (`libvirt:<uri>#<domain>`).
    Libvirt {
        opened: crate::libvirt::Opened,
        shown: PathBuf,
    },
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
    names: &xen::Names,
) -> Result<Located> {
    let ctx = |e: QmpError, p: &Path| Error::new(format!("VM {}: QMP {}: {e}", vm.name, p.display()));
    if let Some(t) = &vm.libvirt {
        let shown = PathBuf::from(format!("libvirt:{}#{}", t.uri, t.domain));
        return match crate::libvirt::open(&t.uri, &t.domain, deadline) {
            Ok(Ok(opened)) => Ok(Located::Libvirt { opened, shown }),
            Ok(Err(why)) => Ok(Located::NotRunning(why)),
            Err(e) => Err(Error::new(format!("VM {}: libvirt {}: {e}", vm.name, t.uri))),
        };
    }
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
    locate_xen(root, config, vm, cached_domid, deadline, names)
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
    names: &xen::Names,
) -> Result<Located> {
    let mut xs = xenstore::connect(root, deadline).map_err(|e| {
        Error::new(format!("VM {}: cannot reach xenstored (is this a Xen dom0 with xenstored running?): {e}", vm.name))
    })?;
    let found = xen::find_domain(&mut xs, &vm.name, cached_domid, names)
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

/// Where QEMU keeps the devices a VM's USB controllers can be: created with
/// an id, created without one (`-device qemu-xhci`), and built into the
/// machine (`-usb` puts a `piix3-usb-uhci` in `/machine/unattached`).
const CONTAINERS: [&str; 3] = ["/machine/peripheral", "/machine/peripheral-anon", "/machine/unattached"];

/// `qom-list`, with a container QEMU has not made (`-M none`) as empty.
fn qom_list_opt<S: BufRead + Write>(q: &mut Qmp<S>, path: &str) -> QmpResult<Vec<(String, String)>> {
    match qom_list(q, path) {
        Err(e) if e.refusal() == Some(crate::qmp::Refusal::DeviceNotFound) => Ok(Vec::new()),
        r => r,
    }
}

/// `child<T>` -> `T`.
fn child_type(ty: &str) -> Option<&str> {
    ty.strip_prefix("child<")?.strip_suffix('>')
}

/// Every USB controller QEMU holds, with the QOM path of its USB bus: ours
/// (`xenusb-N`: the tool's, or libxl's on Xen, which the backend marks) and
/// the VM's own. A controller with no USB bus of its own (a UHCI wired to an
/// EHCI as its companion) has no ports of its own and is skipped; the EHCI
/// it is wired to then takes full- and low-speed devices too.
fn controllers<S: BufRead + Write>(q: &mut Qmp<S>) -> QmpResult<Vec<(Controller, String)>> {
    let mut out: Vec<(Controller, String)> = Vec::new();
    // Buses that UHCI companions are wired to (their `masterbus`).
    let mut masters: Vec<String> = Vec::new();
    for container in CONTAINERS {
        for (name, ty) in qom_list_opt(q, container)? {
            let Some(ty) = child_type(&ty) else { continue };
            let named = container == CONTAINERS[0];
            let Some(kind) = ControllerKind::recognise(ty) else {
                if named && parse_controller_id(&name).is_some() {
                    log::warn!("{name} is a {ty}, not a USB controller this tool knows; leaving it alone");
                }
                continue;
            };
            let path = format!("{container}/{name}");
            let Some(bus) = qom_list(q, &path)?.into_iter().find(|(_, t)| t == "child<usb-bus>").map(|(n, _)| n) else {
                if kind == ControllerKind::Uhci {
                    if let Some(m) = qom_get(q, &path, "masterbus")?.as_str().filter(|m| !m.is_empty()) {
                        masters.push(m.to_string());
                    }
                }
                continue;
            };
            let (ports, usb3_ports) = kind.read_ports(&mut |prop| qom_get(q, &path, prop))?;
            let ours = named && parse_controller_id(&name).is_some();
            let id = if named { name.clone() } else { path.clone() };
            let bus_field = if named && bus == format!("{name}.0") { String::new() } else { bus.clone() };
            let origin = if ours { CtrlOrigin::Tool } else { CtrlOrigin::Vm };
            let c =
                Controller { id, driver: ty.to_string(), ports, usb3_ports, origin, bus: bus_field, companions: false };
            out.push((c, format!("{path}/{bus}")));
        }
    }
    for (c, _) in &mut out {
        c.companions = c.kind() == Some(ControllerKind::Ehci) && masters.contains(&c.bus_name());
    }
    Ok(out)
}

/// Rebuild our view of a VM from QEMU itself: every USB controller (ours
/// and the VM's own), the `usb-host` devices with `xenusb-<bus>-<addr>` ids
/// on them, and every other port in use on them. Origins are `Found` (the
/// caller merges what state knew).
///
/// A device the VM was started with and given no `port` (QEMU picks one)
/// reads back with an empty `port`: QEMU gave such devices the lowest free
/// ports as it started, so that many of the lowest ports without an
/// explicit device are counted as used. A guess that hot-plugging by hand
/// made wrong costs one refused `device_add` ("in use?"), after which the
/// caller re-reads and places again.
pub fn enumerate<S: BufRead + Write>(q: &mut Qmp<S>) -> QmpResult<VmState> {
    let mut view = VmState::default();
    for (c, bus) in controllers(q)? {
        let mut auto_placed = 0usize;
        let mut used: Vec<u8> = Vec::new();
        for (link, ty) in qom_list(q, &bus)? {
            if !(link.starts_with("child[") && ty.starts_with("link<")) {
                continue;
            }
            let path = qom_get(q, &bus, &link)?;
            let Some(path) = path.as_str() else { continue };
            let port = qom_get(q, path, "port")?;
            let port = port.as_str().unwrap_or("");
            if port.is_empty() {
                auto_placed += 1;
                continue;
            }
            let Ok(port) = port.parse::<u8>() else {
                log::debug!("{path} on {} has port {port}: behind a hub, not a root port", c.id);
                continue;
            };
            used.push(port);
            let id = path.strip_prefix("/machine/peripheral/").unwrap_or("");
            let ours = parse_device_id(id).filter(|_| ty == "link<usb-host>");
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
        let all = c.ports.max(c.usb3_ports);
        for port in (1..=all).filter(|p| !used.contains(p)).take(auto_placed) {
            view.foreign_ports.push(format!("{}:{port}", c.id));
        }
        view.controllers.push(c);
    }
    Ok(view)
}

/// PCIe ports a device can be hot-plugged into, and PCI bridges, by QEMU type.
const PCIE_PORTS: [&str; 3] = ["pcie-root-port", "ioh3420", "xio3130-downstream"];
const PCI_BRIDGES: [&str; 2] = ["pcie-pci-bridge", "pci-bridge"];
/// Device numbers a PCI bridge's bus offers (0..=31; SHPC's bridges keep none back).
const BRIDGE_SLOTS: usize = 32;

/// Where a new USB controller could go (`plan::controller_home` decides).
/// Read from QOM, not `query-pci`: before the guest's firmware numbers the
/// buses, `query-pci` shows no device behind any bridge.
pub fn pci_room<S: BufRead + Write>(q: &mut Qmp<S>) -> QmpResult<crate::plan::PciRoom> {
    let machine = qom_get(q, "/machine", "type")?.as_str().unwrap_or_default().to_string();
    let pci = q.execute("query-pci", None)?;
    let mut room =
        crate::plan::PciRoom { machine, has_pci: !pci.as_array().is_some_and(|a| a.is_empty()), ..Default::default() };
    if !room.is_pcie() {
        return Ok(room);
    }
    for container in &CONTAINERS[..2] {
        for (name, ty) in qom_list_opt(q, container)? {
            let Some(ty) = child_type(&ty) else { continue };
            let port = PCIE_PORTS.contains(&ty);
            if !port && !PCI_BRIDGES.contains(&ty) {
                continue;
            }
            let path = format!("{container}/{name}");
            let Some(bus) =
                qom_list(q, &path)?.into_iter().find(|(_, t)| t == "child<PCIE>" || t == "child<PCI>").map(|(n, _)| n)
            else {
                continue;
            };
            let held = qom_list(q, &format!("{path}/{bus}"))?.iter().filter(|(n, _)| n.starts_with("child[")).count();
            if port {
                // Older QEMU has no `hotplug` property: hot-plug was always on.
                let hotplug = match qom_get(q, &path, "hotplug") {
                    Ok(v) => v.as_bool().unwrap_or(true),
                    Err(e) if e.refusal().is_some() => true,
                    Err(e) => return Err(e),
                };
                if hotplug && held == 0 {
                    room.free_ports.push(bus);
                }
            } else if held < BRIDGE_SLOTS {
                room.bridges.push(bus);
            }
        }
    }
    Ok(room)
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
