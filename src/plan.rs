//! Pure decisions: where a device goes (controller and port), whether a new
//! controller is needed, and the exact QMP arguments. No I/O here, so every
//! rule is unit-tested on small cases; `apply` executes the result through a `Session`.

use crate::config::{Config, VmConfig};
use crate::controller::ControllerKind;
use crate::host::HostDevice;
use crate::state::{Controller, VmState};
use crate::types::{BusAddr, Speed};
use serde_json::{json, Value};

/// Which configured VM (index into `config.vms`) gets this device, if any.
/// Root hubs and hubs are never passed (devices behind a hub are). A device
/// matching several VMs goes to the first in config order.
pub fn route(config: &Config, d: &HostDevice) -> Option<usize> {
    if d.is_root_hub() || d.is_hub() {
        return None;
    }
    config.vms.iter().position(|vm| wants(vm, d))
}

pub fn wants(vm: &VmConfig, d: &HostDevice) -> bool {
    vm.wants(d)
}

/// QEMU id of the usb-host device for host bus:addr (libxl's own scheme).
pub fn device_id(bus: u16, addr: u16) -> String {
    BusAddr::new(bus, addr).device_id()
}

pub fn parse_device_id(id: &str) -> Option<(u16, u16)> {
    BusAddr::from_device_id(id).map(|a| (a.bus, a.addr))
}

pub fn parse_controller_id(id: &str) -> Option<u32> {
    id.strip_prefix("xenusb-")?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Create this controller first.
    pub new_controller: Option<Controller>,
    pub controller: String,
    pub port: u8,
}

/// The ports of `c` that take a device of this speed (none for a kind this
/// tool does not know): `ControllerKind` holds the facts.
pub fn port_range(c: &Controller, speed: Speed) -> Option<std::ops::RangeInclusive<u8>> {
    c.kind()?.ports_for(c, speed)
}

/// The controller `vm` creates as `xenusb-<n>` for a device of `speed`.
pub fn new_controller(vm: &VmConfig, n: u32, speed: Speed) -> Option<Controller> {
    Some(ControllerKind::for_vm(vm.usb_version, speed)?.new_controller(format!("xenusb-{n}"), vm.ports))
}

pub fn is_taken(held: &VmState, controller: &str, port: u8) -> bool {
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
pub fn place(vm: &VmConfig, held: &VmState, speed: Speed) -> Result<Placement, String> {
    let mut ctrls: Vec<&Controller> = held.controllers.iter().collect();
    ctrls.sort_by_key(|c| parse_controller_id(&c.id).unwrap_or(u32::MAX));
    let preferred = ControllerKind::for_vm(vm.usb_version, speed);
    let free = |c: &Controller| port_range(c, speed).and_then(|mut r| r.find(|p| !is_taken(held, &c.id, *p)));
    let at = |c: &Controller, port| Placement { new_controller: None, controller: c.id.clone(), port };
    let first_choice = |c: &Controller| c.kind().is_some_and(|k| Some(k) == preferred || k.max_speed() >= speed);
    if let Some((c, port)) = ctrls.iter().filter(|c| first_choice(c)).find_map(|c| Some((*c, free(c)?))) {
        return Ok(at(c, port));
    }
    if ctrls.len() < vm.max_controllers as usize {
        let n = (0..).find(|n| !ctrls.iter().any(|c| parse_controller_id(&c.id) == Some(*n))).expect("a free index");
        if let Some(c) = new_controller(vm, n, speed) {
            if let Some(port) = port_range(&c, speed).map(|r| *r.start()) {
                return Ok(Placement { controller: c.id.clone(), new_controller: Some(c), port });
            }
        }
    }
    if let Some((c, port)) = ctrls.iter().find_map(|c| Some((*c, free(c)?))) {
        return Ok(at(c, port));
    }
    let range = if speed == Speed::Super { "USB 3" } else { "USB 1/2" };
    if ctrls.len() >= vm.max_controllers as usize {
        return Err(format!(
            "no free {range} port on VM {} and max-controllers = {} reached",
            vm.name, vm.max_controllers
        ));
    }
    Err(format!("VM {} (usb-version = {:?}) has no controller kind for a {speed} device", vm.name, vm.usb_version))
}

pub fn controller_args(c: &Controller) -> Value {
    match c.kind() {
        Some(k) => k.qmp_args(c),
        None => json!({ "driver": c.driver, "id": c.id }),
    }
}

/// `hostdevice`: QEMU opens the node itself, which works synchronously from
/// udev's add event (libusb has not heard of the device yet, so hostbus and
/// hostaddr alone fail then). hostbus/hostaddr are passed too so QOM shows
/// them, and alone they are what the bind-event fallback uses.
pub fn device_args(p: &Placement, bus: u16, addr: u16, hostdevice: Option<&str>) -> Value {
    let mut a = json!({
        "driver": "usb-host",
        "id": device_id(bus, addr),
        "bus": format!("{}.0", p.controller),
        "port": p.port.to_string(),
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

    fn dev(port_path: &str, vid: u16, pid: u16, class: u8, speed: &str) -> HostDevice {
        let bus = port_path.trim_start_matches("usb").split('-').next().unwrap().parse().unwrap();
        let mut d = HostDevice::fixture(bus, 5, port_path, vid, pid);
        (d.serial, d.class, d.speed) = (Some("S1".into()), class, speed.into());
        d
    }

    const CFG: &str = r#"
[[vm]]
name = "a"
hubs = ["1-4"]
devices = ["046d:c52b"]
[[vm]]
name = "b"
hubs = ["usb1", "2-1"]
devices = ["1050:0407:S1"]
"#;

    #[test]
    fn routing_first_match_wins_and_hubs_never_pass() {
        let c = parse_str(CFG, "t").unwrap();
        assert_eq!(route(&c, &dev("1-4.1", 1, 1, 0, "12")), Some(0));
        assert_eq!(route(&c, &dev("1-3", 1, 1, 0, "12")), Some(1)); // usb1 in b
        assert_eq!(route(&c, &dev("2-1", 0x046d, 0xc52b, 0, "12")), Some(0)); // id rule beats b's hub
        assert_eq!(route(&c, &dev("3-1", 0x1050, 0x0407, 0, "12")), Some(1)); // serial matches
        assert_eq!(route(&c, &dev("3-1", 9, 9, 0, "12")), None);
        assert_eq!(route(&c, &dev("1-4", 1, 1, 9, "480")), None); // a hub
        assert_eq!(route(&c, &dev("usb1", 0x1d6b, 2, 9, "480")), None); // root hub
    }

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
        let c0 = Controller { id: "xenusb-0".into(), driver: "nec-usb-xhci".into(), ports: 3, usb3_ports: 1 };
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
        let c2 = Controller { id: "xenusb-2".into(), driver: "usb-ehci".into(), ports: 6, usb3_ports: 0 };
        let h = held(std::slice::from_ref(&c2), &(1..=6).map(|p| ("xenusb-2", p)).collect::<Vec<_>>());
        let p = place(&v, &h, Speed::Super).unwrap();
        assert_eq!(
            p.new_controller.unwrap(),
            Controller { id: "xenusb-0".into(), driver: "usb-ehci".into(), ports: 6, usb3_ports: 0 }
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

    #[test]
    fn device_args_are_typed_as_qemu_wants() {
        let p = Placement { new_controller: None, controller: "xenusb-1".into(), port: 7 };
        assert_eq!(
            device_args(&p, 3, 7, Some("/dev/bus/usb/003/007")),
            json!({"driver": "usb-host", "id": "xenusb-3-7", "bus": "xenusb-1.0", "port": "7",
                   "hostbus": 3, "hostaddr": 7, "hostdevice": "/dev/bus/usb/003/007"})
        );
        assert!(device_args(&p, 3, 7, None).get("hostdevice").is_none());
        assert_eq!(parse_device_id("xenusb-3-7"), Some((3, 7)));
        assert_eq!(parse_device_id("xenusb-0"), None);
        assert_eq!(parse_controller_id("xenusb-12"), Some(12));
        assert_eq!(parse_controller_id("xenusb-3-7"), None);
    }
}
