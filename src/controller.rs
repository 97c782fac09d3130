//! Everything the tool knows about a kind of USB controller: its QEMU
//! driver(s), its ports, which speeds each port takes, the QMP arguments that
//! create it, and how to recognise and size it when read back from QEMU.
//! A new controller kind is one more variant here (and its tests).
//!
//! Facts (real QEMU 7.2, `-M pc`, hot-plug over QMP; see field notes):
//! - A bare `usb-ehci` takes high-speed devices only (a 12 Mb/s device fails
//!   with "failed to open host usb device"); SuperSpeed devices attach to it
//!   at high speed.
//! - The ich9 EHCI+UHCI companion set cannot be hot-plugged ("expects a
//!   pluggable device type") and `piix3-usb-uhci` has no `masterbus`, so a
//!   `usb-version = 2` VM gets a separate `piix3-usb-uhci` for full- and
//!   low-speed devices, counted against `max-controllers`.
//! - xHCI puts max(p2, p3) ports on its bus; bus port i is USB 2 root port i
//!   (if i <= p2) and USB 3 root port i (if i <= p3), so a USB 1/2 device
//!   needs i <= p2 and a SuperSpeed one i <= p3.
//! - UHCI ports take devices of every speed: QEMU runs a faster device there
//!   at full speed (seen on the e2e rig: a 480 Mb/s usb-storage attached to a
//!   hot-plugged piix3-usb-uhci).

use crate::config::UsbVersion;
use crate::state::Controller;
use crate::types::Speed;
use serde_json::{json, Value};
use std::ops::RangeInclusive;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerKind {
    /// piix3-usb-uhci: 2 ports.
    Uhci,
    /// usb-ehci: 6 high-speed ports.
    Ehci,
    /// nec-usb-xhci: p2 USB 2 ports, p3 USB 3 ports.
    Xhci,
}

impl ControllerKind {
    /// The driver the tool creates for this kind.
    pub fn driver(self) -> &'static str {
        match self {
            ControllerKind::Uhci => "piix3-usb-uhci",
            ControllerKind::Ehci => "usb-ehci",
            ControllerKind::Xhci => "nec-usb-xhci",
        }
    }

    /// The kind of a controller QEMU reports with this type (ours, libxl's,
    /// or one the VM was started with).
    pub fn recognise(driver: &str) -> Option<ControllerKind> {
        match driver {
            "nec-usb-xhci" | "qemu-xhci" => Some(ControllerKind::Xhci),
            "usb-ehci" | "ich9-usb-ehci1" | "ich9-usb-ehci2" => Some(ControllerKind::Ehci),
            "piix3-usb-uhci" | "piix4-usb-uhci" | "ich9-usb-uhci1" | "ich9-usb-uhci2" | "ich9-usb-uhci3"
            | "ich9-usb-uhci4" | "ich9-usb-uhci5" | "ich9-usb-uhci6" => Some(ControllerKind::Uhci),
            _ => None,
        }
    }

    /// The kind a VM of this `usb-version` creates for a device of `speed`,
    /// or None if it has none that takes it.
    pub fn for_vm(version: UsbVersion, speed: Speed) -> Option<ControllerKind> {
        match (version, speed) {
            (UsbVersion::V1, _) => Some(ControllerKind::Uhci),
            (UsbVersion::V2, Speed::Low | Speed::Full) => Some(ControllerKind::Uhci),
            (UsbVersion::V2, Speed::High | Speed::Super) => Some(ControllerKind::Ehci),
            (UsbVersion::V3, _) => Some(ControllerKind::Xhci),
        }
    }

    /// A new controller of this kind with QEMU id `id`; `ports` sizes xHCI.
    pub fn new_controller(self, id: String, ports: u8) -> Controller {
        let (ports, usb3_ports) = match self {
            ControllerKind::Uhci => (2, 0),
            ControllerKind::Ehci => (6, 0),
            ControllerKind::Xhci => (ports, ports),
        };
        Controller {
            id,
            driver: self.driver().into(),
            ports,
            usb3_ports,
            origin: crate::state::CtrlOrigin::Tool,
            bus: String::new(),
            companions: false,
        }
    }

    /// The ports of `c` (of this kind) that take a device of `speed`, or
    /// None if none does.
    pub fn ports_for(self, c: &Controller, speed: Speed) -> Option<RangeInclusive<u8>> {
        let all = 1..=c.ports;
        match (self, speed) {
            (ControllerKind::Xhci, Speed::Super) if c.usb3_ports > 0 => Some(1..=c.usb3_ports),
            (ControllerKind::Xhci | ControllerKind::Uhci, _) => Some(all),
            (ControllerKind::Ehci, Speed::High | Speed::Super) => Some(all),
            (ControllerKind::Ehci, Speed::Low | Speed::Full) if c.companions => Some(all),
            (ControllerKind::Ehci, Speed::Low | Speed::Full) => None,
        }
    }

    /// The fastest a device runs on this kind's ports.
    pub fn max_speed(self) -> Speed {
        match self {
            ControllerKind::Uhci => Speed::Full,
            ControllerKind::Ehci => Speed::High,
            ControllerKind::Xhci => Speed::Super,
        }
    }

    /// `device_add` arguments that create `c`.
    pub fn qmp_args(self, c: &Controller) -> Value {
        let mut a = json!({ "driver": c.driver, "id": c.id });
        if self == ControllerKind::Xhci {
            // Integers, not strings: QEMU >= 9.2 rejects "15".
            a["p2"] = json!(c.ports);
            a["p3"] = json!(c.usb3_ports);
        }
        a
    }

    /// Ports per range (USB 1/2, USB 3) of a controller of this kind read
    /// back from QEMU; `get` reads one QOM property of it.
    pub fn read_ports<E>(self, get: &mut dyn FnMut(&str) -> Result<Value, E>) -> Result<(u8, u8), E> {
        Ok(match self {
            ControllerKind::Xhci => {
                let n = |v: Value| v.as_u64().and_then(|n| u8::try_from(n).ok()).unwrap_or(0);
                (n(get("p2")?), n(get("p3")?))
            }
            ControllerKind::Ehci => (6, 0),
            ControllerKind::Uhci => (2, 0),
        })
    }
}

impl Controller {
    /// None for a driver this tool does not know (left alone).
    pub fn kind(&self) -> Option<ControllerKind> {
        ControllerKind::recognise(&self.driver)
    }

    /// The USB bus `device_add usb-host` names: QEMU calls a controller's
    /// bus `<id>.0`, or `usb-bus.N` when it was created without an id.
    pub fn bus_name(&self) -> String {
        if self.bus.is_empty() {
            format!("{}.0", self.id)
        } else {
            self.bus.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ControllerKind::*;

    #[test]
    fn every_version_takes_every_speed() {
        for v in [UsbVersion::V1, UsbVersion::V2, UsbVersion::V3] {
            for s in [Speed::Low, Speed::Full, Speed::High, Speed::Super] {
                let k = ControllerKind::for_vm(v, s).unwrap();
                let c = k.new_controller("xenusb-0".into(), 4);
                assert!(k.ports_for(&c, s).is_some(), "{v:?} {s:?} -> {k:?}");
            }
        }
        assert_eq!(ControllerKind::for_vm(UsbVersion::V2, Speed::Full), Some(Uhci));
        assert_eq!(ControllerKind::for_vm(UsbVersion::V2, Speed::High), Some(Ehci));
    }

    #[test]
    fn ehci_refuses_full_and_low_speed_unless_companions_serve_them() {
        let mut c = Ehci.new_controller("xenusb-0".into(), 0);
        assert_eq!(Ehci.ports_for(&c, Speed::Full), None);
        assert_eq!(Ehci.ports_for(&c, Speed::Low), None);
        assert_eq!(Ehci.ports_for(&c, Speed::High), Some(1..=6));
        c.companions = true;
        assert_eq!(Ehci.ports_for(&c, Speed::Full), Some(1..=6));
    }

    #[test]
    fn recognised_when_read_back() {
        for (d, k) in [("qemu-xhci", Xhci), ("ich9-usb-ehci1", Ehci), ("piix4-usb-uhci", Uhci)] {
            assert_eq!(ControllerKind::recognise(d), Some(k));
        }
        assert_eq!(ControllerKind::recognise("virtio-net-pci"), None);
        for k in [Uhci, Ehci, Xhci] {
            assert_eq!(ControllerKind::recognise(k.driver()), Some(k));
        }
        let mut get = |p: &str| Ok::<_, ()>(json!(if p == "p2" { 3 } else { 1 }));
        assert_eq!(Xhci.read_ports(&mut get).unwrap(), (3, 1));
        assert_eq!(Uhci.read_ports(&mut get).unwrap(), (2, 0));
    }

    #[test]
    fn qmp_args() {
        let x = Xhci.new_controller("xenusb-0".into(), 4);
        assert_eq!(Xhci.qmp_args(&x), json!({"driver": "nec-usb-xhci", "id": "xenusb-0", "p2": 4, "p3": 4}));
        let u = Uhci.new_controller("xenusb-1".into(), 4);
        assert_eq!(Uhci.qmp_args(&u), json!({"driver": "piix3-usb-uhci", "id": "xenusb-1"}));
    }
}
