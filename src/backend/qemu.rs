//! Plain QEMU/KVM: a VM with its own QMP socket (`qmp = ...` in the config),
//! where QEMU is the only record. Also what every QMP-speaking backend
//! shares: reading a VM's USB controllers, devices and PCI room from QOM,
//! and sending `device_add`/`device_del` (`Qemu`, which the Xen backend
//! wraps with libxl's bookkeeping).

use super::wire::qmp::{self, Qmp, QmpError, QmpResult, Refusal};
use super::{Env, Finder, Link, Located, Op, OpError, Opened};
use crate::config::VmConfig;
use crate::controller::ControllerKind;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::plan::{parse_controller_id, parse_device_id};
use crate::root::Root;
use crate::state::{Attached, Controller, CtrlOrigin, Origin, VmState};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One QEMU's QMP monitor, as a `Link`.
pub(super) struct Qemu {
    pub(super) q: qmp::Client,
    /// Every OS path's root (`pass_fd` looks under it).
    root: Root,
    /// Asked once, when a device is first added (a remove never needs it):
    /// does QEMU run as a user who may not open the host's USB device nodes
    /// (started by its user, or with `-runas`)? Then the tool opens the node
    /// (under this directory, /dev/bus/usb under the root) and passes it
    /// (`add-fd`, then `hostdevice=/dev/fdset/N`), whatever the event.
    pass_fd: std::cell::OnceCell<Option<PathBuf>>,
}

impl Qemu {
    fn pass_fd(&self) -> Option<&PathBuf> {
        self.pass_fd
            .get_or_init(|| {
                let uid = self.q.peer_pid().and_then(|pid| euid_of(&self.root, pid))?;
                log::debug!("QEMU runs as uid {uid}{}", if uid == 0 { "" } else { ": device nodes are passed to it" });
                (uid != 0).then(|| self.root.path("/dev/bus/usb"))
            })
            .as_ref()
    }

    pub(super) fn execute(&mut self, op: &Op, args: Value) -> QmpResult<()> {
        let dir = if matches!(op, Op::AddDevice { .. }) { self.pass_fd().cloned() } else { None };
        if let (Some(dir), Op::AddDevice { dev, hostdevice }) = (dir, op) {
            // Without a node (bind, change) QEMU would look for the device
            // with libusb, as its user: the node is passed all the same.
            let node = match hostdevice {
                Some(node) => node.clone(),
                None => dir.join(format!("{:03}/{:03}", dev.bus, dev.addr)).display().to_string(),
            };
            return self.add_passing(&node, args);
        }
        let command = if matches!(op, Op::DelDevice { .. }) { "device_del" } else { "device_add" };
        self.q.execute(command, Some(args)).map(drop)
    }

    /// `device_add` of a usb-host whose device node `node` the tool opens
    /// and hands to QEMU in an fd set of its own; the set is removed again
    /// either way (QEMU keeps its own duplicate while the device lives).
    fn add_passing(&mut self, node: &str, mut args: Value) -> QmpResult<()> {
        let file = open_node(node).map_err(|e| QmpError::Io(format!("cannot open {node} to pass it to QEMU: {e}")))?;
        let opaque = format!("auto-usb-attach {}", args.get("id").and_then(Value::as_str).unwrap_or(""));
        let set = self.q.execute_with_fd("add-fd", Some(json!({ "opaque": opaque })), file.as_fd())?;
        let Some(fdset) = set.get("fdset-id").and_then(Value::as_u64) else {
            return Err(QmpError::Protocol(format!("add-fd returned no fdset-id: {set}")));
        };
        args["hostdevice"] = json!(format!("/dev/fdset/{fdset}"));
        let added = self.q.execute("device_add", Some(args));
        if let Err(e) = self.q.execute("remove-fd", Some(json!({ "fdset-id": fdset }))) {
            log::warn!("remove-fd of fd set {fdset} ({node}): {e}");
        }
        added.map(drop)
    }

    /// The line a dry run prints for `op`.
    pub(super) fn describe_line(vm: &str, op: &Op, args: &Value) -> String {
        let command = if matches!(op, Op::DelDevice { .. }) { "device_del" } else { "device_add" };
        format!("would {op} in VM {vm}: {}", json!({ "execute": command, "arguments": args }))
    }

    fn qom_type(&mut self, id: &str, prop: &str) -> QmpResult<Value> {
        qom_get(&mut self.q, &format!("/machine/peripheral/{id}"), prop)
    }
}

impl Link for Qemu {
    fn enumerate(&mut self) -> QmpResult<VmState> {
        enumerate(&mut self.q)
    }

    /// One `qom-get` of its `type`: no enumeration.
    fn holds(&mut self, id: &str) -> QmpResult<bool> {
        match self.qom_type(id, "type") {
            Ok(_) => Ok(true),
            Err(e) if e.refusal() == Some(Refusal::DeviceNotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// usb-host's `attached`: false once the device it opened went away.
    fn holds_device_open(&mut self, id: &str) -> QmpResult<bool> {
        Ok(self.qom_type(id, "attached")?.as_bool().unwrap_or(false))
    }

    fn has_pci_bus(&mut self) -> QmpResult<bool> {
        let pci = self.q.execute("query-pci", None)?;
        Ok(!pci.as_array().is_some_and(|a| a.is_empty()))
    }

    fn pci_room(&mut self) -> QmpResult<crate::plan::PciRoom> {
        pci_room(&mut self.q)
    }

    fn send(&mut self, op: &Op, args: Value) -> std::result::Result<(), OpError> {
        Ok(self.execute(op, args)?)
    }

    fn describe(&self, vm: &str, op: &Op, args: &Value) -> Vec<String> {
        let mut line = Self::describe_line(vm, op, args);
        if matches!(op, Op::AddDevice { .. }) && self.pass_fd().is_some() {
            line.push_str(" (the node passed to QEMU with add-fd: QEMU runs unprivileged)");
        }
        vec![line]
    }
}

/// Identity of the QEMU that created the socket: a restarted VM's QEMU
/// creates a fresh socket file (new inode, new ctime).
pub(super) fn instance_of(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    Some(format!("{}:{}.{:09}", m.ino(), m.ctime(), m.ctime_nsec()))
}

/// A socket this old that refuses connections was left by a QEMU that died,
/// not made by one still starting (`timing::stale_socket()`).
pub(super) fn stale_age(paths: impl IntoIterator<Item = PathBuf>) -> Option<Duration> {
    let age = |p: &Path| std::fs::symlink_metadata(p).ok()?.modified().ok()?.elapsed().ok();
    let youngest = paths.into_iter().filter_map(|p| age(&p)).min()?;
    (youngest >= crate::timing::stale_socket()).then_some(youngest)
}

/// How a connection attempt ended.
pub(super) enum Dialled {
    Up(Box<Qemu>, String),
    /// A socket that refuses connections: QEMU is starting, or died.
    Refused(String),
}

/// Connect to the QMP socket at `path` (under the root), greeted and
/// negotiated; `instance` (`instance_of`) was read before connecting.
pub(super) fn dial(root: &Root, path: &Path, instance: String, deadline: &Deadline) -> QmpResult<Dialled> {
    match qmp::connect(path, deadline, Duration::MAX) {
        Ok(q) => {
            log::debug!("{}: {}", path.display(), q.greeting);
            Ok(Dialled::Up(Box::new(Qemu { q, root: root.clone(), pass_fd: std::cell::OnceCell::new() }), instance))
        }
        Err(e @ QmpError::NotListening(_)) => Ok(Dialled::Refused(e.to_string())),
        Err(e) => Err(e),
    }
}

/// Process `pid`'s effective uid (`/proc/<pid>/status`, under the root);
/// None when it cannot be read.
fn euid_of(root: &Root, pid: i32) -> Option<u32> {
    let status = crate::fsio::read_regular(&root.path(format!("/proc/{pid}/status")), 64 << 10).ok()?;
    parse_euid(&String::from_utf8_lossy(&status))
}

/// The effective uid in a `/proc/<pid>/status` text: `Uid:` real, effective, ...
fn parse_euid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Open a host USB device node read-write to pass it to QEMU: a character
/// device, never through a symlink.
fn open_node(node: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NOCTTY)
        .open(node)?;
    if !f.metadata()?.file_type().is_char_device() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a device node"));
    }
    Ok(f)
}

/// Plain QEMU VMs: found by their socket.
pub(super) struct Plain;

impl Finder for Plain {
    fn locate(&self, env: &Env<'_>, vm: &VmConfig, _: Option<u32>, deadline: &Deadline) -> Result<Located> {
        locate(env.root, vm, deadline)
    }
    /// QEMU makes its QMP socket as it starts (a socket directly in `/run`
    /// or `/tmp` is not watched: every service changes those).
    fn start_dir(&self, _: &crate::config::Config, vm: &VmConfig) -> Option<std::path::PathBuf> {
        vm.watched_qmp_dir().map(Into::into)
    }

    /// A socket path is all there is to find: nothing can hang.
    fn probe(&self, _: &Env<'_>, _: &VmConfig, _: Option<u32>, _: &Deadline) -> Result<()> {
        Ok(())
    }
}

/// A `qmp = ...` VM: its socket, connected to.
fn locate(root: &Root, vm: &VmConfig, deadline: &Deadline) -> Result<Located> {
    let Some(shown) = &vm.qmp else {
        return Err(Error::new(format!("VM {}: backend qemu needs a qmp socket", vm.name)));
    };
    let path = root.path(shown);
    let Some(instance) = instance_of(&path) else {
        let why = format!("no QMP socket at {}", path.display());
        // A directory made a moment ago: its QEMU is starting (the sync path
        // unit fired on the directory, and drops the socket's own change
        // while this sync runs).
        let made = path.parent().and_then(|d| std::fs::metadata(d).ok()?.created().ok()?.elapsed().ok());
        return Ok(match made.filter(|age| *age < crate::timing::fresh_socket_dir()) {
            Some(age) => Located::NotReady {
                why: format!("{why} yet; its directory was made {} ms ago", age.as_millis()),
                stale: None,
            },
            None => Located::NotRunning(why),
        });
    };
    match dial(root, &path, instance, deadline) {
        Ok(Dialled::Up(link, instance)) => {
            Ok(Located::Running(Opened { link, socket: shown.clone(), instance, domid: None }))
        }
        Ok(Dialled::Refused(why)) => Ok(Located::NotReady { why, stale: stale_age([path]) }),
        Err(e) => Err(Error::caused(format!("VM {}: QMP {}", vm.name, path.display()), e)),
    }
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

/// Devices that embed a USB controller as a QOM child rather than hold it
/// in a container (QEMU >= 9: `-M pc -usb`'s UHCI is the PIIX3's `uhci`).
const SOUTHBRIDGES: [&str; 2] = ["PIIX3", "PIIX4"];

/// `qom-list`, with a container QEMU has not made (`-M none`) as empty.
fn qom_list_opt<S: BufRead + Write>(q: &mut Qmp<S>, path: &str) -> QmpResult<Vec<(String, String)>> {
    match qom_list(q, path) {
        Err(e) if e.refusal() == Some(Refusal::DeviceNotFound) => Ok(Vec::new()),
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
    // (parent path, name, child type): the containers' children, and the
    // children of a southbridge that embeds its USB controller (QEMU 10's
    // `-M pc -usb`: /machine/unattached/device[N] is a PIIX3 holding `uhci`).
    let mut todo: Vec<(String, String, String, bool)> = Vec::new();
    for container in CONTAINERS {
        for (name, ty) in qom_list_opt(q, container)? {
            let named = container == CONTAINERS[0];
            todo.push((container.to_string(), name, ty, named));
        }
    }
    while let Some((parent, name, ty, named)) = todo.pop() {
        let Some(ty) = child_type(&ty) else { continue };
        let Some(kind) = ControllerKind::recognise(ty) else {
            if named && parse_controller_id(&name).is_some() {
                log::warn!("{name} is a {ty}, not a USB controller this tool knows; leaving it alone");
            }
            if SOUTHBRIDGES.contains(&ty) {
                let path = format!("{parent}/{name}");
                for (n, t) in qom_list_opt(q, &path)? {
                    todo.push((path.clone(), n, t, false));
                }
            }
            continue;
        };
        let path = format!("{parent}/{name}");
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
        let c = Controller { id, driver: ty.to_string(), ports, usb3_ports, origin, bus: bus_field, companions: false };
        out.push((c, format!("{path}/{bus}")));
    }
    // Containers in the order QEMU listed them, as before.
    out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
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
pub(super) fn enumerate<S: BufRead + Write>(q: &mut Qmp<S>) -> QmpResult<VmState> {
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
pub(super) fn pci_room<S: BufRead + Write>(q: &mut Qmp<S>) -> QmpResult<crate::plan::PciRoom> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_uid_is_the_second_of_procs_uid_line() {
        let status = "Name:\tqemu-system-x86\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t65534\t65534\t65534\nGid:\t100\t100\t100\t100\n";
        assert_eq!(parse_euid(status), Some(65534));
        assert_eq!(parse_euid("Uid:\t0\t0\t0\t0\n"), Some(0));
        assert_eq!(parse_euid("Name:\tx\n"), None);
        assert_eq!(parse_euid("Uid:\t0\n"), None);
    }
}
