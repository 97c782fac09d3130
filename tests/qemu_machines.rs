//! Plain QEMU VMs as their users start them, on a real `qemu-system-x86_64`:
//! q35 with its own xHCI, q35 with only a free root port, q35 with neither,
//! `pc` with `-usb`, `pc` with its own xHCI. The tool must use the VM's own
//! controller first, put a controller it needs where the machine takes
//! hot-plug, and refuse in one line, changing nothing, where there is none.
//!
//! This machine has no USB devices, so QEMU refuses every `usb-host` at
//! realize ("failed to open ..."): that refusal proves the device_add reached
//! the usb-host stage on the bus the tool chose (a wrong bus is refused
//! earlier, "Bus 'pcie.0' does not support hotplugging"). `--dry-run` shows
//! which bus and port were chosen. The e2e rig proves real attaches.

mod common;
use common::*;
use serde_json::{json, Value};

const QMP: &str = "/run/qemu/vm.qmp";
const USB_HOST_ERRORS: &[&str] = &["failed to find host usb device", "failed to open"];

struct Vm {
    root: TestRoot,
    _sys: FakeSysfs,
    q: Qemu,
}

/// A Logitech receiver (046d:c52b, full speed) at host 3:7 (3-1.2), VM k3 on its own socket,
/// started as `machine`.
fn vm(tag: &str, machine: &[&str]) -> Vm {
    let (root, sys, _dev) = receiver_at_3_7(tag, &config_qmp("k3", QMP, ""));
    let q = Qemu::start_with("k3", &root.p(QMP), machine);
    Vm { root, _sys: sys, q }
}

impl Vm {
    fn attach(&self, extra: &[&str]) -> Run {
        let mut args = vec!["attach", "--bus", "3", "--addr", "7", "--vm", "k3"];
        args.extend_from_slice(extra);
        self.root.run(&args)
    }

    /// The `device_add` arguments a dry run would send for `driver`.
    fn planned(&self, driver: &str) -> Option<Value> {
        let r = self.attach(&["--dry-run"]);
        r.ok();
        r.stdout.lines().filter(|l| l.starts_with("would device_add")).find_map(|l| {
            let j: Value = serde_json::from_str(&l[l.find('{')?..]).ok()?;
            (j["arguments"]["driver"] == driver).then(|| j["arguments"].clone())
        })
    }

    fn peripherals(&self) -> Vec<(String, String)> {
        self.q.qmp().peripherals()
    }

    fn qom(&self, path: &str, prop: &str) -> Value {
        self.q.qmp().cmd("qom-get", json!({"path": path, "property": prop}))
    }
}

/// The attach reached QEMU's usb-host realize, for our device.
fn usb_host_refused(r: &Run) {
    let line = r.error_contains_any(USB_HOST_ERRORS);
    assert!(line.contains("xenusb-3-7"), "names no device: {line}");
    assert!(!line.contains("hotplugging") && !line.contains("Bus '"), "sent to the wrong bus: {line}");
}

#[test]
fn q35_with_its_own_xhci_uses_it_and_adds_no_controller() {
    // As virt-manager starts one: qemu-xhci (4 + 4 ports) with a tablet QEMU put on port 1.
    let v = vm("m-q35-xhci", &["-M", "q35", "-device", "qemu-xhci,id=xhci", "-device", "usb-tablet"]);
    let args = v.planned("usb-host").expect("a usb-host is planned");
    assert_eq!((args["bus"].as_str(), args["port"].as_str()), (Some("xhci.0"), Some("2")), "{args}");
    assert!(v.planned("nec-usb-xhci").is_none(), "a dry run planned a controller beside the VM's own");
    usb_host_refused(&v.attach(&[]));
    assert_eq!(v.peripherals(), vec![("xhci".to_string(), "child<qemu-xhci>".to_string())]);
    v.root.assert_state_clean();
    // check names the backend and the VM's own controller with its free ports.
    let r = v.root.run(&["check"]);
    assert!(
        r.stdout.contains("VM k3: running, backend qemu")
            && r.stdout.contains("xhci (qemu-xhci, the VM's own): 3 of 4 ports free"),
        "{}",
        r.stdout
    );
}

#[test]
fn q35_with_a_free_root_port_gets_the_controller_there() {
    let v = vm(
        "m-q35-rp",
        &[
            "-M",
            "q35",
            // Taken by a device, and hot-plug off: neither may be used.
            "-device",
            "pcie-root-port,id=rp0,chassis=1,slot=1",
            "-device",
            "virtio-rng-pci,bus=rp0",
            "-device",
            "pcie-root-port,id=rp2,chassis=2,slot=2,hotplug=off",
            "-device",
            "pcie-root-port,id=rp1,chassis=3,slot=3",
        ],
    );
    usb_host_refused(&v.attach(&[]));
    let ctrl = v.peripherals().into_iter().find(|(_, t)| t.contains("xhci")).expect("a controller was added");
    assert_eq!(ctrl.0, "xenusb-0");
    assert_eq!(v.qom("/machine/peripheral/xenusb-0", "parent_bus"), json!("/machine/peripheral/rp1/rp1"));
    // The next device reuses it.
    usb_host_refused(&v.attach(&[]));
    assert_eq!(v.peripherals().iter().filter(|(_, t)| t.contains("xhci")).count(), 1);
}

#[test]
fn q35_with_neither_is_refused_in_one_line_and_nothing_changes() {
    let v = vm("m-q35-none", &["-M", "q35", "-device", "pcie-root-port,id=rp0,chassis=1,slot=1,hotplug=off"]);
    let line = v
        .attach(&[])
        .fails(1, &["VM k3 (q35) has no USB controller and no free hot-pluggable PCIe root port", "-device qemu-xhci"]);
    assert!(!line.contains("hotplugging"), "QEMU was asked: {line}");
    assert_eq!(v.peripherals(), vec![("rp0".to_string(), "child<pcie-root-port>".to_string())]);
    let st = v.root.state();
    assert!(st.as_ref().is_none_or(|s| !s.to_string().contains("xenusb")), "recorded something: {st:?}");
}

#[test]
fn pc_with_usb_puts_a_full_speed_device_on_the_builtin_uhci() {
    let v = vm("m-pc-usb", &["-M", "pc", "-usb"]);
    let args = v.planned("usb-host").expect("a usb-host is planned");
    assert_eq!((args["bus"].as_str(), args["port"].as_str()), (Some("usb-bus.0"), Some("1")), "{args}");
    usb_host_refused(&v.attach(&[]));
    assert!(v.peripherals().is_empty(), "{:?}", v.peripherals());
}

#[test]
fn pc_with_its_own_xhci_adds_no_second_controller() {
    let v = vm("m-pc-xhci", &["-M", "pc", "-device", "qemu-xhci,id=usb,p2=2,p3=2"]);
    let args = v.planned("usb-host").expect("a usb-host is planned");
    assert_eq!((args["bus"].as_str(), args["port"].as_str()), (Some("usb.0"), Some("1")), "{args}");
    usb_host_refused(&v.attach(&[]));
    assert_eq!(v.peripherals(), vec![("usb".to_string(), "child<qemu-xhci>".to_string())]);
}

#[test]
fn q35_with_usb_puts_a_full_speed_device_on_the_ehci_its_uhci_companions_serve() {
    // `-M q35 -usb`: ich9-usb-ehci1 (bus usb-bus.0) with three UHCI companions (masterbus).
    let v = vm("m-q35-usb", &["-M", "q35", "-usb"]);
    let args = v.planned("usb-host").expect("a usb-host is planned");
    assert_eq!((args["bus"].as_str(), args["port"].as_str()), (Some("usb-bus.0"), Some("1")), "{args}");
    assert!(v.planned("nec-usb-xhci").is_none(), "a controller was planned beside the EHCI and its companions");
    usb_host_refused(&v.attach(&[]));
    assert!(v.peripherals().is_empty(), "{:?}", v.peripherals());
}

#[test]
fn a_controller_started_without_an_id_is_used_by_its_bus() {
    // `-device qemu-xhci` with no id: /machine/peripheral-anon, bus usb-bus.0; a keyboard QEMU put on port 1.
    let v = vm("m-anon-xhci", &["-M", "pc", "-device", "qemu-xhci", "-device", "usb-kbd"]);
    let args = v.planned("usb-host").expect("a usb-host is planned");
    assert_eq!((args["bus"].as_str(), args["port"].as_str()), (Some("usb-bus.0"), Some("2")), "{args}");
    usb_host_refused(&v.attach(&[]));
    assert!(v.peripherals().is_empty(), "{:?}", v.peripherals());
}
