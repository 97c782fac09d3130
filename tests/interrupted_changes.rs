//! A change to a Xen domain that is cut off half-way (QEMU does not answer
//! `device_add` within the budget, or the run is killed) after libxl's
//! records were written heals on the next run: the controller libxl records
//! is finished in QEMU (the domain is not "not ready" forever), and a port
//! entry naming a device QEMU never got is emptied (`xl usb-list` is true);
//! a commit of libxl's records that xenstored refuses (EAGAIN) is redone.
//! Stand-ins: FakeQmp (pinned to real QEMU's bytes) hangs the one command;
//! FakeXenstored (pinned to real xenstored's) keeps libxl's records.

mod common;
use common::*;
use serde_json::json;

const SOCK: &str = "/run/xen/qmp-libxl-7";

/// win10 = Xen domain 7, budget 1 s; the receiver (3:7, 3-1.2) routed there when `routed`.
fn rig(tag: &str, routed: bool) -> (TestRoot, FakeSysfs, UsbDev, FakeXenstored) {
    let rules = if routed { "hubs = [\"3-1\"]" } else { "" };
    let (r, sys, dev) = receiver_at_3_7(tag, &config_xen("win10", rules).replace("timeout = 5", "timeout = 1"));
    let xs = FakeXenstored::start(&r);
    xs.domain(7, "win10");
    (r, sys, dev, xs)
}

fn hanging_on(r: &TestRoot, driver: &'static str) -> FakeQmp {
    FakeQmp::start(
        &r.p(SOCK),
        FakeOptions { fault: Some((on_device_add(driver), Fault::Hang)), ..FakeOptions::default() },
    )
}

#[test]
fn a_controller_creation_cut_off_is_finished_by_the_next_sync() {
    let (r, _sys, _dev, xs) = rig("int-ctrl", true);
    let q = hanging_on(&r, "nec-usb-xhci");
    r.run(&["attach", "--bus", "3", "--addr", "7"]).fails(1, &["timed out"]);
    // libxl's records say xenusb-0 exists; QEMU never got it.
    assert_eq!(xs.get("/libxl/7/device/vusb/0/type").as_deref(), Some("devicemodel"), "{}", xs.dump("/"));
    assert!(!q.device_ids().contains(&"xenusb-0".to_string()));
    drop(q);
    // QEMU answers again (same domain, its QMP socket served anew).
    let q = FakeQmp::start(&r.p(SOCK), FakeOptions::default());
    let run = r.run(&["sync"]);
    run.ok();
    assert_eq!(q.device_ids(), vec!["xenusb-0", "xenusb-3-7"], "{}", run.dump());
    assert_eq!(xs.get("/libxl/7/device/vusb/0/port/1").as_deref(), Some("3-1.2"), "{}", xs.dump("/libxl"));
    assert!(xs.dump("/tool/auto-usb-attach/7").is_empty(), "marks left: {}", xs.dump("/tool"));
    assert!(run.stderr.contains("finished creating xenusb-0"), "{}", run.stderr);
}

#[test]
fn a_port_entry_whose_device_add_was_cut_off_is_emptied_by_the_next_sync() {
    let (r, _sys, _dev, xs) = rig("int-port", false);
    xs.usbctrl(7, 0, 3, 15);
    let q = hanging_on(&r, "usb-host");
    q.preload_xhci("xenusb-0", 15);
    r.run(&["attach", "--bus", "3", "--addr", "7", "--vm", "win10"]).fails(1, &["timed out"]);
    assert_eq!(xs.get("/libxl/7/device/vusb/0/port/1").as_deref(), Some("3-1.2"), "the phantom was not made");
    drop(q);
    let q = FakeQmp::start(&r.p(SOCK), FakeOptions::default());
    q.preload_xhci("xenusb-0", 15);
    let run = r.run(&["sync"]);
    run.ok();
    // Attached by hand only (no rule): nothing puts it back; libxl's entry is free again.
    assert_eq!(xs.get("/libxl/7/device/vusb/0/port/1").as_deref(), Some(""), "{}", run.dump());
    assert_eq!(q.device_ids(), vec!["xenusb-0"]);
    assert!(xs.dump("/tool/auto-usb-attach/7").is_empty(), "marks left: {}", xs.dump("/tool"));
    // And the port is usable: a new attach takes port 1.
    let q2 = q;
    let run = r.run(&["attach", "--bus", "3", "--addr", "7", "--vm", "win10"]);
    run.ok();
    assert_eq!(q2.device_ids(), vec!["xenusb-0", "xenusb-3-7"]);
    assert_eq!(xs.get("/libxl/7/device/vusb/0/port/1").as_deref(), Some("3-1.2"));
}

#[test]
fn a_detach_cut_off_after_the_entry_was_emptied_gets_the_entry_back_while_qemu_keeps_the_device() {
    let (r, _sys, _dev, xs) = rig("int-del", false);
    xs.usbctrl(7, 0, 3, 15);
    let q = FakeQmp::start(&r.p(SOCK), FakeOptions::default());
    q.preload_xhci("xenusb-0", 15);
    r.run(&["attach", "--bus", "3", "--addr", "7", "--vm", "win10"]).ok();
    assert_eq!(xs.get("/libxl/7/device/vusb/0/port/1").as_deref(), Some("3-1.2"));
    drop(q);
    // QEMU hangs on device_del: the entry was emptied first, as libxl does.
    let q = FakeQmp::start(
        &r.p(SOCK),
        FakeOptions { fault: Some((on_cmd("device_del"), Fault::Hang)), ..FakeOptions::default() },
    );
    q.preload_xhci("xenusb-0", 15);
    let mut props = serde_json::Map::new();
    for (k, v) in [("port", json!("1")), ("hostbus", json!(3)), ("hostaddr", json!(7)), ("attached", json!(true))] {
        props.insert(k.into(), v);
    }
    q.preload(FakeDev {
        id: "xenusb-3-7".into(),
        driver: "usb-host".into(),
        props: props.clone(),
        bus: Some("xenusb-0.0".into()),
    });
    r.run(&["detach", "--bus", "3", "--addr", "7"]).fails(1, &["timed out"]);
    assert_eq!(xs.get("/libxl/7/device/vusb/0/port/1").as_deref(), Some(""), "the cut-off detach did not empty it");
    drop(q);
    // QEMU still holds the device: the next run says so in libxl's records again.
    let q = FakeQmp::start(&r.p(SOCK), FakeOptions::default());
    q.preload_xhci("xenusb-0", 15);
    q.preload(FakeDev { id: "xenusb-3-7".into(), driver: "usb-host".into(), props, bus: Some("xenusb-0.0".into()) });
    let run = r.run(&["sync"]);
    run.ok();
    assert_eq!(xs.get("/libxl/7/device/vusb/0/port/1").as_deref(), Some("3-1.2"), "{}", run.dump());
    assert!(xs.dump("/tool/auto-usb-attach/7").is_empty(), "marks left: {}", xs.dump("/tool"));
}

#[test]
fn a_records_commit_refused_by_xenstored_is_redone() {
    // Another writer (xl, libxl) changed a node the tool's transaction read:
    // xenstored refuses the commit with EAGAIN and the tool starts over.
    let (r, _sys, _dev, xs) = rig("int-eagain", false);
    xs.usbctrl(7, 0, 3, 15);
    let q = FakeQmp::start(&r.p(SOCK), FakeOptions::default());
    q.preload_xhci("xenusb-0", 15);
    xs.eagain_next_commit();
    let run = r.run(&["attach", "--bus", "3", "--addr", "7", "--vm", "win10"]);
    run.ok();
    assert_eq!(q.device_ids(), vec!["xenusb-0", "xenusb-3-7"], "{}", run.dump());
    assert_eq!(xs.get("/libxl/7/device/vusb/0/port/1").as_deref(), Some("3-1.2"), "{}", xs.dump("/libxl"));
    assert!(xs.dump("/tool/auto-usb-attach/7").is_empty(), "marks left: {}", xs.dump("/tool"));
    let log = xs.log();
    let writes = log.iter().filter(|l| *l == "WRITE /libxl/7/device/vusb/0/port/1").count();
    assert_eq!(writes, 2, "the refused commit's write, then the redone one's: {log:#?}");
}
