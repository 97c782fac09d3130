//! Pure decisions: where in its VM a device goes (controller and port),
//! whether a new controller is needed, and the exact QMP arguments (which
//! VM it goes to is `events::routing`). No I/O here, so every
//! rule is unit-tested on small cases; `apply` executes the result through a `Session`.

use crate::config::VmConfig;
use crate::controller::ControllerKind;
use crate::state::{Controller, CtrlOrigin, VmState};
use crate::types::{BusAddr, Speed};
use serde_json::{json, Value};

/// QEMU id of the usb-host device for host bus:addr (libxl's own scheme).
pub(crate) fn device_id(bus: u16, addr: u16) -> String {
    BusAddr::new(bus, addr).device_id()
}

pub(crate) fn parse_device_id(id: &str) -> Option<(u16, u16)> {
    BusAddr::from_device_id(id).map(|a| (a.bus, a.addr))
}

pub(crate) fn parse_controller_id(id: &str) -> Option<u32> {
    id.strip_prefix("xenusb-")?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Create this controller first.
    pub(crate) new_controller: Option<Controller>,
    pub(crate) controller: String,
    /// The controller's USB bus, as `device_add` names it.
    pub(crate) bus: String,
    pub(crate) port: u8,
}

/// Where on a VM's PCI tree a new USB controller could be hot-plugged, as
/// read from QEMU (`Link::pci_room`) when one is needed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PciRoom {
    /// QEMU's machine type: `pc-q35-7.2-machine`, `pc-i440fx-7.2-machine`,
    /// `xenfv-4.2-machine`, `none-machine`.
    pub(crate) machine: String,
    /// Whether it has a PCI bus at all (Xen 4.20's probe QEMU has none).
    pub(crate) has_pci: bool,
    /// Empty PCIe root or downstream ports with hot-plug on: their buses.
    pub(crate) free_ports: Vec<String>,
    /// PCI bridges (`pcie-pci-bridge`, `pci-bridge`) with a free slot: their buses.
    pub(crate) bridges: Vec<String>,
}

impl PciRoom {
    /// q35's root bus (`pcie.0`) takes no hot-plug: a new controller needs a
    /// root port or a bridge there.
    pub(crate) fn is_pcie(&self) -> bool {
        self.machine.contains("q35")
    }

    /// `q35` or `pc` for messages.
    fn short(&self) -> &str {
        if self.is_pcie() {
            "q35"
        } else {
            self.machine.split('-').find(|w| *w != "pc").unwrap_or(&self.machine)
        }
    }
}

/// The PCI bus a new controller `c` goes on in VM `vm`: None for the
/// machine's root bus (`pc`, Xen's `xenfv`: hot-plug works there), else an
/// empty hot-pluggable PCIe port (xHCI is PCIe) or a PCI bridge with a free
/// slot (UHCI and EHCI are conventional PCI; xHCI works there too), or the
/// one line saying what the VM lacks and how to give it that.
///
/// A PCIe port holding a device is never used: QEMU accepts a second device
/// there, but behind a port the guest only scans device 0.
pub(crate) fn controller_home(
    vm: &str,
    room: &PciRoom,
    c: &Controller,
    has_usb: bool,
) -> Result<Option<String>, String> {
    if !room.has_pci {
        return Err(format!(
            "VM {vm} has no PCI bus (QEMU machine {}), so no USB controller can be added",
            room.machine
        ));
    }
    if !room.is_pcie() {
        return Ok(None);
    }
    let pcie = c.kind() == Some(ControllerKind::Xhci);
    if let Some(bus) = room.free_ports.iter().find(|_| pcie).or(room.bridges.first()) {
        return Ok(Some(bus.clone()));
    }
    let lacks = if has_usb { "no free USB port that fits" } else { "no USB controller" };
    let (place, fix) = if pcie {
        (
            "no free hot-pluggable PCIe root port",
            "start it with -device qemu-xhci,p2=15,p3=15 or with a free -device pcie-root-port,id=rp1,chassis=1,slot=1",
        )
    } else {
        (
            "no PCI bridge slot",
            "start it with -device pcie-pci-bridge (on a free pcie-root-port), or use usb-version = 3",
        )
    };
    Err(format!("VM {vm} ({}) has {lacks} and {place} for a new {}: {fix}", room.short(), c.driver))
}

/// The ports of `c` that take a device of this speed (none for a kind this
/// tool does not know): `ControllerKind` holds the facts.
pub(crate) fn port_range(c: &Controller, speed: Speed) -> Option<std::ops::RangeInclusive<u8>> {
    c.kind()?.ports_for(c, speed)
}

/// The controller `vm` creates as `xenusb-<n>` for a device of `speed`.
pub(crate) fn new_controller(vm: &VmConfig, n: u32, speed: Speed) -> Option<Controller> {
    Some(ControllerKind::for_vm(vm.usb_version, speed)?.new_controller(format!("xenusb-{n}"), vm.ports))
}

pub(crate) fn is_taken(held: &VmState, controller: &str, port: u8) -> bool {
    held.devices.iter().any(|d| d.controller == controller && d.port == port)
        || held.foreign_ports.iter().any(|f| *f == format!("{controller}:{port}"))
}

/// Where a device of `speed` goes, in this order:
/// 1. the first free port that takes it on an existing controller (in id
///    order) of the kind the VM uses for that speed, or of a kind that runs
///    it at full speed;
/// 2. a new controller of the VM's kind for that speed, within
///    `max-controllers`;
/// 3. a free port on a controller that would run it slower (a UHCI port for
///    a high-speed device in a `usb-version = 2` VM): slower beats refused.
///
/// Never trial and error: every failed device_add costs QEMU ~55 ms, and a
/// device no port takes is refused here, before any QMP call.
pub(crate) fn place(vm: &VmConfig, held: &VmState, speed: Speed) -> Result<Placement, String> {
    let mut ctrls: Vec<&Controller> = held.controllers.iter().collect();
    // The VM's own (and libxl's) first, then the tool's; each in id order.
    ctrls.sort_by_key(|c| (c.origin == CtrlOrigin::Tool, parse_controller_id(&c.id).unwrap_or(u32::MAX)));
    let preferred = ControllerKind::for_vm(vm.usb_version, speed);
    let free = |c: &Controller| port_range(c, speed).and_then(|mut r| r.find(|p| !is_taken(held, &c.id, *p)));
    let at =
        |c: &Controller, port| Placement { new_controller: None, controller: c.id.clone(), bus: c.bus_name(), port };
    let first_choice = |c: &Controller| c.kind().is_some_and(|k| Some(k) == preferred || k.max_speed() >= speed);
    if let Some((c, port)) = ctrls.iter().filter(|c| first_choice(c)).find_map(|c| Some((*c, free(c)?))) {
        return Ok(at(c, port));
    }
    // max-controllers counts what the tool adds, never the VM's own.
    let added = ctrls.iter().filter(|c| c.origin != CtrlOrigin::Vm).count();
    if added < vm.max_controllers as usize {
        let n = (0..).find(|n| !ctrls.iter().any(|c| parse_controller_id(&c.id) == Some(*n))).expect("a free index");
        if let Some(c) = new_controller(vm, n, speed) {
            if let Some(port) = port_range(&c, speed).map(|r| *r.start()) {
                return Ok(Placement { controller: c.id.clone(), bus: c.bus_name(), new_controller: Some(c), port });
            }
        }
    }
    if let Some((c, port)) = ctrls.iter().find_map(|c| Some((*c, free(c)?))) {
        return Ok(at(c, port));
    }
    let range = if speed == Speed::Super { "USB 3" } else { "USB 1/2" };
    if added >= vm.max_controllers as usize {
        return Err(format!(
            "no free {range} port on VM {} and max-controllers = {} reached",
            vm.name, vm.max_controllers
        ));
    }
    Err(format!("VM {} (usb-version = {:?}) has no controller kind for a {speed} device", vm.name, vm.usb_version))
}

/// Each controller of a VM's view, who made it and how many ports are free:
/// `xhci (qemu-xhci, the VM's own): 3 of 4 ports free`.
pub(crate) fn describe_controllers(held: &VmState) -> Vec<String> {
    held.controllers
        .iter()
        .map(|c| {
            let all = c.ports.max(c.usb3_ports);
            let free = (1..=all).filter(|p| !is_taken(held, &c.id, *p)).count();
            format!("{} ({}, {}): {free} of {all} ports free", c.id, c.driver, c.origin.as_str())
        })
        .collect()
}

pub(crate) fn controller_args(c: &Controller) -> Value {
    match c.kind() {
        Some(k) => k.qmp_args(c),
        None => json!({ "driver": c.driver, "id": c.id }),
    }
}

/// `hostdevice`: QEMU opens the node itself, which works synchronously from
/// udev's add event (libusb has not heard of the device yet, so hostbus and
/// hostaddr alone fail then). hostbus/hostaddr are passed too so QOM shows
/// them, and alone they are what the bind-event fallback uses.
pub(crate) fn device_args(usb_bus: &str, port: u8, bus: u16, addr: u16, hostdevice: Option<&str>) -> Value {
    let mut a = json!({
        "driver": "usb-host",
        "id": device_id(bus, addr),
        "bus": usb_bus,
        "port": port.to_string(),
        "hostbus": bus,
        "hostaddr": addr,
    });
    if let Some(h) = hostdevice {
        a["hostdevice"] = json!(h);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use crate::state::{Attached, Origin};

    fn vm(extra: &str) -> VmConfig {
        parse_str(&format!("[[vm]]\nname = \"a\"\n{extra}"), "t").unwrap().vms.remove(0)
    }

    fn held(ctrls: &[Controller], taken: &[(&str, u8)]) -> VmState {
        VmState {
            controllers: ctrls.to_vec(),
            devices: taken
                .iter()
                .enumerate()
                .map(|(i, (c, p))| Attached {
                    id: device_id(1, i as u16 + 1),
                    bus: 1,
                    addr: i as u16 + 1,
                    controller: c.to_string(),
                    port: *p,
                    port_path: String::new(),
                    usb_id: String::new(),
                    serial: String::new(),
                    origin: Origin::Rule,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn cold_start_creates_first_controller() {
        let v = vm("ports = 4");
        let p = place(&v, &VmState::default(), Speed::Full).unwrap();
        let c = p.new_controller.clone().unwrap();
        assert_eq!((c.id.as_str(), c.driver.as_str(), c.ports, c.usb3_ports), ("xenusb-0", "nec-usb-xhci", 4, 4));
        assert_eq!((p.controller.as_str(), p.port), ("xenusb-0", 1));
        assert_eq!(controller_args(&c), json!({"driver": "nec-usb-xhci", "id": "xenusb-0", "p2": 4, "p3": 4}));
    }

    #[test]
    fn speed_picks_the_range() {
        // p2 = 3 USB 2 ports, p3 = 1 USB 3 port: bus ports 1..=3, only 1 takes SuperSpeed
        let c0 = Controller {
            id: "xenusb-0".into(),
            driver: "nec-usb-xhci".into(),
            ports: 3,
            usb3_ports: 1,
            ..Default::default()
        };
        assert_eq!(port_range(&c0, Speed::Full), Some(1..=3));
        assert_eq!(port_range(&c0, Speed::Super), Some(1..=1));
        let v = vm("ports = 2");
        let h = held(std::slice::from_ref(&c0), &[("xenusb-0", 1)]);
        assert_eq!(place(&v, &h, Speed::Full).unwrap().port, 2);
        // the only SuperSpeed-capable port is taken: a new controller
        let p = place(&v, &h, Speed::Super).unwrap();
        assert_eq!((p.controller.as_str(), p.port, p.new_controller.is_some()), ("xenusb-1", 1, true));
        // a port holds one device, whatever its speed
        let h = held(std::slice::from_ref(&c0), &[("xenusb-0", 2)]);
        assert_eq!(place(&v, &h, Speed::Super).unwrap().port, 1);
        assert_eq!(place(&v, &h, Speed::Full).unwrap().port, 1);
    }

    #[test]
    fn foreign_ports_are_respected() {
        let v = vm("ports = 2");
        let mut h = held(&[new_controller(&v, 0, Speed::Full).unwrap()], &[]);
        h.foreign_ports.push("xenusb-0:1".into());
        assert_eq!(place(&v, &h, Speed::Full).unwrap().port, 2);
    }

    #[test]
    fn full_controller_and_cap() {
        let v = vm("ports = 1\nmax-controllers = 2");
        let c0 = new_controller(&v, 0, Speed::Full).unwrap();
        let h = held(std::slice::from_ref(&c0), &[("xenusb-0", 1)]);
        assert_eq!(place(&v, &h, Speed::Full).unwrap().new_controller.unwrap().id, "xenusb-1");
        let c1 = new_controller(&v, 1, Speed::Full).unwrap();
        let h = held(&[c0, c1], &[("xenusb-0", 1), ("xenusb-1", 1)]);
        let e = place(&v, &h, Speed::Full).unwrap_err();
        assert!(e.contains("max-controllers = 2"), "{e}");
    }

    #[test]
    fn controller_index_fills_gaps_and_existing_order() {
        let v = vm("usb-version = 2\nmax-controllers = 3");
        let c2 = Controller {
            id: "xenusb-2".into(),
            driver: "usb-ehci".into(),
            ports: 6,
            usb3_ports: 0,
            ..Default::default()
        };
        let h = held(std::slice::from_ref(&c2), &(1..=6).map(|p| ("xenusb-2", p)).collect::<Vec<_>>());
        let p = place(&v, &h, Speed::Super).unwrap();
        assert_eq!(
            p.new_controller.unwrap(),
            Controller {
                id: "xenusb-0".into(),
                driver: "usb-ehci".into(),
                ports: 6,
                usb3_ports: 0,
                ..Default::default()
            }
        );
        assert_eq!(
            controller_args(&new_controller(&v, 0, Speed::High).unwrap()),
            json!({"driver": "usb-ehci", "id": "xenusb-0"})
        );
        // ehci takes any speed on any of its ports
        let h = held(&[c2], &[("xenusb-2", 1)]);
        assert_eq!(place(&v, &h, Speed::Super).unwrap().port, 2);
    }

    #[test]
    fn usb2_vm_places_by_speed() {
        let v = vm("usb-version = 2\nmax-controllers = 2");
        // full speed: a piix3-usb-uhci, never the usb-ehci (whose ports refuse it)
        let p = place(&v, &VmState::default(), Speed::Full).unwrap();
        assert_eq!(p.new_controller.as_ref().unwrap().driver, "piix3-usb-uhci");
        let uhci = p.new_controller.unwrap();
        let h = held(std::slice::from_ref(&uhci), &[]);
        assert_eq!(place(&v, &h, Speed::Low).unwrap().controller, "xenusb-0");
        // high speed with only the uhci there: a new usb-ehci, not the slow port
        let p = place(&v, &h, Speed::High).unwrap();
        assert_eq!((p.controller.as_str(), p.new_controller.unwrap().driver.as_str()), ("xenusb-1", "usb-ehci"));
        // at the cap, an ehci full of devices: the uhci (slower beats refused)
        let ehci = new_controller(&v, 1, Speed::High).unwrap();
        let full: Vec<(&str, u8)> = (1..=6).map(|p| ("xenusb-1", p)).collect();
        let h = held(&[uhci.clone(), ehci.clone()], &full);
        assert_eq!(place(&v, &h, Speed::High).unwrap().controller, "xenusb-0");
        // and a full-speed device never lands on the ehci, even when only it has room
        let mut taken = vec![("xenusb-0", 1), ("xenusb-0", 2)];
        taken.push(("xenusb-1", 1));
        let e = place(&v, &held(&[uhci, ehci], &taken), Speed::Full).unwrap_err();
        assert!(e.contains("max-controllers = 2"), "{e}");
    }

    #[test]
    fn usb1_vm_takes_high_speed_on_its_uhci() {
        let v = vm("usb-version = 1\nmax-controllers = 2");
        let c = new_controller(&v, 0, Speed::Full).unwrap();
        let h = held(std::slice::from_ref(&c), &[]);
        let p = place(&v, &h, Speed::High).unwrap();
        assert_eq!((p.controller.as_str(), p.port, p.new_controller), ("xenusb-0", 1, None));
    }

    #[test]
    fn uhci_layout() {
        let c = new_controller(&vm("usb-version = 1"), 0, Speed::High).unwrap();
        assert_eq!((c.driver.as_str(), c.ports, c.usb3_ports), ("piix3-usb-uhci", 2, 0));
    }

    fn own(id: &str, driver: &str, ports: u8, usb3_ports: u8, bus: &str) -> Controller {
        Controller {
            id: id.into(),
            driver: driver.into(),
            ports,
            usb3_ports,
            origin: CtrlOrigin::Vm,
            bus: bus.into(),
            companions: false,
        }
    }

    #[test]
    fn the_vms_own_controller_comes_first() {
        let v = vm("ports = 4");
        // q35 as virt-manager starts it: qemu-xhci id=xhci, a tablet QEMU put on port 1.
        let xhci = own("xhci", "qemu-xhci", 4, 4, "");
        let mut h = held(&[new_controller(&v, 0, Speed::Full).unwrap(), xhci.clone()], &[]);
        h.foreign_ports.push("xhci:1".into());
        let p = place(&v, &h, Speed::Full).unwrap();
        assert_eq!((p.controller.as_str(), p.bus.as_str(), p.port, p.new_controller), ("xhci", "xhci.0", 2, None));
        assert_eq!(place(&v, &h, Speed::Super).unwrap().bus, "xhci.0");
        // Full: the tool's own next, never a new one.
        let full: Vec<(&str, u8)> = (1..=4).map(|p| ("xhci", p)).collect();
        let h = held(&[new_controller(&v, 0, Speed::Full).unwrap(), xhci], &full);
        let p = place(&v, &h, Speed::High).unwrap();
        assert_eq!((p.controller.as_str(), p.bus.as_str(), p.port), ("xenusb-0", "xenusb-0.0", 1));
    }

    #[test]
    fn an_anonymous_controller_is_named_by_its_bus_and_never_counts_against_the_cap() {
        // `-M pc -usb`: piix3-usb-uhci in /machine/unattached, bus usb-bus.0.
        let v = vm("max-controllers = 1");
        let uhci = own("/machine/unattached/device[18]", "piix3-usb-uhci", 2, 0, "usb-bus.0");
        let h = held(std::slice::from_ref(&uhci), &[]);
        let p = place(&v, &h, Speed::Full).unwrap();
        assert_eq!((p.bus.as_str(), p.port, p.new_controller), ("usb-bus.0", 1, None));
        // A high-speed stick would crawl at 12 Mb/s there: the VM gets an xHCI of the tool's.
        let p = place(&v, &h, Speed::High).unwrap();
        assert_eq!(p.new_controller.map(|c| c.driver), Some("nec-usb-xhci".to_string()));
        // Both ports used and the cap is 0 for the tool: slower is still no option, refused.
        let v0 = vm("max-controllers = 0");
        let h = held(&[uhci], &[("/machine/unattached/device[18]", 1), ("/machine/unattached/device[18]", 2)]);
        assert!(place(&v0, &h, Speed::Full).unwrap_err().contains("max-controllers = 0"));
    }

    fn room(machine: &str, ports: &[&str], bridges: &[&str]) -> PciRoom {
        PciRoom {
            machine: machine.into(),
            has_pci: true,
            free_ports: ports.iter().map(|s| s.to_string()).collect(),
            bridges: bridges.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_new_controller_goes_where_the_machine_takes_hot_plug() {
        let x = new_controller(&vm(""), 0, Speed::Full).unwrap();
        let u = new_controller(&vm("usb-version = 1"), 0, Speed::Full).unwrap();
        // pc and Xen's xenfv: the root bus.
        assert_eq!(controller_home("a", &room("pc-i440fx-7.2-machine", &[], &[]), &x, false), Ok(None));
        assert_eq!(controller_home("a", &room("xenfv-4.2-machine", &[], &[]), &u, false), Ok(None));
        // q35: a free root port for xHCI; a bridge for conventional PCI.
        let q = room("pc-q35-7.2-machine", &["rp1"], &["br1"]);
        assert_eq!(controller_home("a", &q, &x, false), Ok(Some("rp1".into())));
        assert_eq!(controller_home("a", &q, &u, false), Ok(Some("br1".into())));
        let e = controller_home("k3", &room("pc-q35-7.2-machine", &[], &[]), &x, false).unwrap_err();
        assert_eq!(
            e,
            "VM k3 (q35) has no USB controller and no free hot-pluggable PCIe root port for a new nec-usb-xhci: \
             start it with -device qemu-xhci,p2=15,p3=15 or with a free -device pcie-root-port,id=rp1,chassis=1,slot=1"
        );
        let e = controller_home("k3", &room("pc-q35-10.0-machine", &["rp1"], &[]), &u, true).unwrap_err();
        assert!(e.contains("no free USB port that fits and no PCI bridge slot"), "{e}");
        let none = PciRoom { machine: "none-machine".into(), ..Default::default() };
        assert!(controller_home("a", &none, &x, false).unwrap_err().contains("has no PCI bus"));
    }

    #[test]
    fn device_args_are_typed_as_qemu_wants() {
        assert_eq!(
            device_args("xenusb-1.0", 7, 3, 7, Some("/dev/bus/usb/003/007")),
            json!({"driver": "usb-host", "id": "xenusb-3-7", "bus": "xenusb-1.0", "port": "7",
                   "hostbus": 3, "hostaddr": 7, "hostdevice": "/dev/bus/usb/003/007"})
        );
        assert!(device_args("xenusb-1.0", 7, 3, 7, None).get("hostdevice").is_none());
        assert_eq!(parse_device_id("xenusb-3-7"), Some((3, 7)));
        assert_eq!(parse_device_id("xenusb-0"), None);
        assert_eq!(parse_controller_id("xenusb-12"), Some(12));
        assert_eq!(parse_controller_id("xenusb-3-7"), None);
    }
}
