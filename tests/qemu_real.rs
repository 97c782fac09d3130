//! The tool against a real `qemu-system-x86_64` 7.2 (`-M pc -nodefaults -S`).
//!
//! This machine has no USB devices, so QEMU can never complete a
//! `device_add usb-host` with hostbus/hostaddr (or hostdevice): successful
//! attaches are proven by the VM rig (tests/e2e). Here real QEMU proves
//! controller creation, enumeration (qom-list/qom-get), device_del, its error
//! replies, the one-client-at-a-time socket, restarts and Xen name lookup.
//! Devices "left by an earlier run" are placed over QMP by the test itself with
//! `hostport` set, which QEMU 7.2 accepts without the host device (it polls).

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const QMP: &str = "/run/qemu/vm.qmp";

/// QEMU's own words when usb-host cannot get the device (hostbus/hostaddr, or hostdevice).
const USB_HOST_ERRORS: &[&str] = &["failed to find host usb device", "failed to open"];

struct Rig {
    root: TestRoot,
    sys: FakeSysfs,
    dev: UsbDev,
}

/// Sysfs with root hub usb3 and 046d:c52b at 3-1.2 (bus 3 addr 7); config `config`.
fn rig(tag: &str, config: &str) -> Rig {
    let (root, sys, dev) = receiver_at_3_7(tag, config);
    Rig { root, sys, dev }
}

/// win10 on an explicit socket, no routing rules (nothing attaches by itself).
fn explicit(tag: &str) -> Rig {
    rig(tag, &config_qmp("win10", QMP, ""))
}

impl Rig {
    fn qemu(&self, name: &str, sock: &str) -> Qemu {
        Qemu::start(name, &self.root.p(sock))
    }

    fn attach(&self) -> Run {
        self.root.run(&["attach", "--bus", "3", "--addr", "7", "--vm", "win10"])
    }

    /// The tool reads QEMU and caches what it holds (sync rebuilds from QEMU).
    fn sync(&self) {
        self.root.run(&["sync", "--vm", "win10"]).ok();
    }

    fn list_json(&self) -> Vec<Value> {
        let r = self.root.run(&["list", "--json"]);
        r.ok();
        r.stdout_json().as_array().cloned().unwrap_or_else(|| panic!("list --json is not an array: {}", r.stdout))
    }
}

/// The attach error must be QEMU's usb-host refusal, for our device, on one line.
fn assert_usb_host_error(r: &Run) -> String {
    let line = r.error_contains_any(USB_HOST_ERRORS);
    assert!(line.contains("3:7") || line.contains("xenusb-3-7") || line.contains("003/007"), "names no device: {line}");
    assert!(!line.contains("Duplicate device ID"), "the tool re-created something QEMU already had: {line}");
    assert!(!line.contains("not found (in use?)") && !line.contains("Bus '"), "stale view of QEMU: {line}");
    line
}

fn qom_get(q: &mut Qmp, path: &str, prop: &str) -> Value {
    q.cmd("qom-get", json!({"path": path, "property": prop}))
}

/// Controllers and devices the state file says VM `vm` holds.
fn state_vm(root: &TestRoot, vm: &str) -> Option<Value> {
    root.state().and_then(|s| s["vms"].get(vm).cloned())
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array().map(|a| a.iter().map(|x| x["id"].as_str().unwrap_or("?").to_string()).collect()).unwrap_or_default()
}

#[test]
fn attach_creates_the_controller_then_reports_qemus_usb_host_error() {
    let r = explicit("q-attach");
    let q = r.qemu("win10", QMP);
    let run = r.attach();
    assert_usb_host_error(&run);

    let mut c = q.qmp();
    let periph = c.peripherals();
    assert_eq!(periph, vec![("xenusb-0".to_string(), "child<nec-usb-xhci>".to_string())], "QEMU's view");
    assert_eq!(qom_get(&mut c, "/machine/peripheral/xenusb-0", "p2"), json!(15));
    assert_eq!(qom_get(&mut c, "/machine/peripheral/xenusb-0", "p3"), json!(15));
    drop(c);

    // State: valid, the controller recorded (it is real), the device not.
    let vm = state_vm(&r.root, "win10").expect("state records the controller it created");
    assert_eq!(ids(&vm["controllers"]), vec!["xenusb-0"], "{vm}");
    assert!(!r.root.state_has_device(3, 7));
    r.root.assert_state_clean();

    // Again: the controller is reused, not re-added (no "Duplicate device ID").
    assert_usb_host_error(&r.attach());
    let mut c = q.qmp();
    assert_eq!(c.peripherals().len(), 1, "{:?}", c.peripherals());
    drop(c);
    assert!(!r.root.state_has_device(3, 7));
    r.root.assert_state_clean();
}

#[test]
fn list_json_shows_a_device_found_in_qemu_after_state_loss() {
    let r = explicit("q-list");
    let q = r.qemu("win10", QMP);
    let mut c = q.qmp();
    c.add_xhci("xenusb-0", 15);
    // A failed attempt first: QEMU still consumes child[0] on the bus, so the
    // device below is child[1] (enumeration must not assume dense indices).
    let failed = c
        .execute("device_add", json!({"driver": "usb-host", "id": "xenusb-3-9", "bus": "xenusb-0.0", "port": "2", "hostbus": 3, "hostaddr": 9}))
        .unwrap();
    assert_eq!(failed.unwrap_err()["desc"], "failed to find host usb device 3:9");
    c.place_usb_host("xenusb-0", 3, 3, 7, "1.2");
    let links = c.cmd("qom-list", json!({"path": "xenusb-0.0"}));
    assert!(links.as_array().unwrap().iter().any(|l| l["name"] == "child[1]"), "{links}");
    assert_eq!(qom_get(&mut c, "/machine/peripheral/xenusb-3-7", "attached"), json!(false));
    drop(c);

    let check = |rows: &[Value]| {
        let row = rows
            .iter()
            .find(|d| d["bus"] == json!(3) && d["addr"] == json!(7))
            .unwrap_or_else(|| panic!("3:7 not listed: {rows:?}"));
        let at = &row["attached"];
        assert_eq!(at["vm"], "win10", "{row}");
        assert_eq!(at["id"], "xenusb-3-7", "{row}");
        assert_eq!(at["controller"], "xenusb-0", "{row}");
        assert_eq!(at["port"], json!(3), "{row}");
    };

    r.root.remove_state();
    r.sync();
    check(&r.list_json());

    // Lose the state again: list alone shows the host side, a rebuild brings QEMU's view back.
    r.root.remove_state();
    let rows = r.list_json();
    assert!(rows.iter().any(|d| d["bus"] == json!(3) && d["addr"] == json!(7)), "host device missing: {rows:?}");
    r.sync();
    check(&r.list_json());
    // The rebuild did not touch QEMU.
    let mut c = q.qmp();
    assert!(c.has_peripheral("xenusb-3-7", "usb-host"));
    assert!(c.has_peripheral("xenusb-0", "nec-usb-xhci"));
}

#[test]
fn detach_removes_a_placed_device_from_qemu() {
    let r = explicit("q-detach");
    let q = r.qemu("win10", QMP);
    q.holding(&[(3, 3, 7, "1.2"), (4, 3, 8, "1.3")]);
    r.root.remove_state();

    r.root.run(&["detach", "--bus", "3", "--addr", "7"]).ok();
    let mut c = q.qmp();
    let p = c.peripherals();
    assert!(!p.iter().any(|(n, _)| n == "xenusb-3-7"), "still in QEMU: {p:?}");
    assert!(p.iter().any(|(n, _)| n == "xenusb-3-8"), "detached the wrong device: {p:?}");
    assert!(p.iter().any(|(n, _)| n == "xenusb-0"), "controller gone: {p:?}");
    drop(c);
    assert!(!r.root.state_has_device(3, 7));

    r.root.run(&["detach", "--id", "xenusb-3-8"]).ok();
    let mut c = q.qmp();
    let p = c.peripherals();
    assert_eq!(p, vec![("xenusb-0".to_string(), "child<nec-usb-xhci>".to_string())]);
    drop(c);
    assert!(!r.root.state_has_device(3, 8));
    r.root.assert_state_clean();
}

#[test]
fn detach_of_an_unknown_device_fails_and_changes_nothing() {
    let r = explicit("q-detach-unknown");
    let q = r.qemu("win10", QMP);
    q.holding(&[(3, 3, 7, "1.2")]);
    r.root.run(&["detach", "--bus", "3", "--addr", "9"]).fails(1, &["3:9 (xenusb-3-9) is not attached to any VM"]);
    r.root.run(&["detach", "--id", "xenusb-5-1"]).fails(1, &["5:1 (xenusb-5-1) is not attached to any VM"]);
    r.root.run(&["detach", "3:9"]).fails(1, &["is not attached to any VM"]);
    let mut c = q.qmp();
    let mut p = c.peripherals();
    p.sort();
    assert_eq!(
        p,
        vec![
            ("xenusb-0".to_string(), "child<nec-usb-xhci>".to_string()),
            ("xenusb-3-7".to_string(), "child<usb-host>".to_string())
        ]
    );
}

/// First QEMU holds controller + 3:7 and the tool has cached that; then the VM
/// is destroyed (SIGKILL, socket file left behind) and a fresh QEMU starts on the
/// same path. Returns the fresh one.
fn restarted(r: &Rig) -> Qemu {
    let q1 = r.qemu("win10", QMP);
    q1.holding(&[(3, 3, 7, "1.2")]);
    r.sync();
    assert!(r.root.state_has_device(3, 7), "setup: state did not cache 3:7 from the first QEMU");
    q1.kill();
    r.qemu("win10", QMP)
}

/// After the restart the state must describe the new QEMU, not the old one.
fn assert_state_matches(r: &Rig, q: &Qemu) {
    let mut c = q.qmp();
    let real: Vec<String> =
        c.peripherals().into_iter().filter(|(_, t)| t != "child<usb-host>").map(|(n, _)| n).collect();
    drop(c);
    if let Some(vm) = state_vm(&r.root, "win10") {
        let mut cached = ids(&vm["controllers"]);
        cached.sort();
        let mut real = real;
        real.sort();
        assert_eq!(cached, real, "state's controllers are not the new QEMU's: {vm}");
    }
}

#[test]
fn vm_restart_udev_remove_of_a_device_only_the_old_qemu_had() {
    let r = explicit("q-restart-rm");
    let q2 = restarted(&r);
    r.sys.remove(&r.dev);
    r.root.udev(&r.dev.udev_env("remove")).ok();
    assert!(!r.root.state_has_device(3, 7), "stale record kept:\n{:?}", r.root.state_text());
    let mut c = q2.qmp();
    assert_eq!(c.peripherals(), vec![], "the new QEMU was changed");
    drop(c);
    assert_state_matches(&r, &q2);
    r.root.assert_state_clean();
}

#[test]
fn vm_restart_detach_of_a_device_only_the_old_qemu_had() {
    let r = explicit("q-restart-detach");
    let q2 = restarted(&r);
    r.root.run(&["detach", "--bus", "3", "--addr", "7"]).ok();
    assert!(!r.root.state_has_device(3, 7), "stale record kept:\n{:?}", r.root.state_text());
    let mut c = q2.qmp();
    assert_eq!(c.peripherals(), vec![]);
    drop(c);
    assert_state_matches(&r, &q2);
}

#[test]
fn vm_restart_attach_recreates_the_controller_in_the_new_qemu() {
    let r = explicit("q-restart-attach");
    let q2 = restarted(&r);
    assert_usb_host_error(&r.attach());
    let mut c = q2.qmp();
    assert_eq!(c.peripherals(), vec![("xenusb-0".to_string(), "child<nec-usb-xhci>".to_string())]);
    drop(c);
    assert!(!r.root.state_has_device(3, 7), "stale record kept:\n{:?}", r.root.state_text());
    assert_state_matches(&r, &q2);
    r.root.assert_state_clean();
}

#[test]
fn vm_not_running_attach_fails_naming_the_vm_and_udev_add_is_quiet() {
    let r = rig("q-off", &config_qmp("win10", QMP, "devices = [\"046d:c52b\"]"));
    // No socket at all.
    r.attach().fails(1, &["win10", "not running"]);
    r.root.udev(&r.dev.udev_env("add")).ok();
    assert!(!r.root.state_has_device(3, 7));
    // A socket left behind by a killed QEMU (connect: ECONNREFUSED).
    let q = r.qemu("win10", QMP);
    q.kill();
    assert!(r.root.p(QMP).exists(), "setup: SIGKILL left no socket file");
    r.attach().fails(1, &["win10"]);
    r.root.udev(&r.dev.udev_env("add")).ok();
    assert!(!r.root.state_has_device(3, 7));
}

#[test]
fn xen_vm_not_running_attach_fails_naming_the_vm() {
    let r = rig("q-xen-off", &config_xen("win10", "devices = [\"046d:c52b\"]"));
    // No xenstored at all: one clear line.
    let run = r.attach();
    run.fails(1, &["win10", "cannot reach xenstored"]);
    assert_eq!(run.stderr.lines().filter(|l| l.starts_with("error:")).count(), 1, "{}", run.stderr);
    let xs = FakeXenstored::start(&r.root);
    xs.domain(7, "other");
    r.attach().fails(1, &["win10"]);
    r.root.udev(&r.dev.udev_env("add")).ok();
    // Only another domain running.
    let _other = r.qemu("other", "/run/xen/qmp-libxl-7");
    r.attach().fails(1, &["win10"]);
    r.root.udev(&r.dev.udev_env("add")).ok();
    let mut c = _other.qmp();
    assert_eq!(c.peripherals(), vec![], "touched another domain");
}

#[test]
fn busy_socket_fails_with_busy_within_the_budget() {
    let r = rig("q-held", &format!("timeout = 2\n\n[[vm]]\nname = \"win10\"\nqmp = \"{QMP}\"\n"));
    let q = r.qemu("win10", QMP);
    let holder = q.qmp(); // QEMU serves one client: this one
    let run = r.attach();
    run.fails(1, &["busy"]);
    assert!(run.elapsed < Duration::from_secs(8), "took {:?} with timeout = 2", run.elapsed);
    drop(holder);
    // Free again: now the tool reaches QEMU (and gets its usb-host error).
    assert_usb_host_error(&r.attach());
    let mut c = q.qmp();
    assert!(c.has_peripheral("xenusb-0", "nec-usb-xhci"));
}

#[test]
fn xen_name_lookup_acts_on_the_named_domain() {
    let r = rig("q-xen", &config_xen("win10", ""));
    let xs = FakeXenstored::start(&r.root);
    xs.domain(7, "other");
    xs.domain(9, "win10");
    let q7 = r.qemu("other", "/run/xen/qmp-libxl-7");
    let q9 = r.qemu("win10", "/run/xen/qmp-libxl-9");
    q7.age(60);
    q9.age(60);
    // The same id in both domains: only win10's may be touched.
    for q in [&q7, &q9] {
        let mut c = q.qmp();
        c.add_xhci("xenusb-0", 15);
        c.place_usb_host("xenusb-0", 4, 3, 8, "1.3");
    }
    assert_usb_host_error(&r.attach());
    let vm = state_vm(&r.root, "win10").expect("state for win10");
    assert_eq!(vm["domid"], json!(9), "{vm}");
    assert_eq!(vm["socket"], "/run/xen/qmp-libxl-9", "{vm}");

    r.root.run(&["detach", "--bus", "3", "--addr", "8"]).ok();
    let mut c9 = q9.qmp();
    assert!(!c9.has_peripheral("xenusb-3-8", "usb-host"), "not detached from domain 9");
    let mut c7 = q7.qmp();
    assert!(c7.has_peripheral("xenusb-3-8", "usb-host"), "detached from the wrong domain (7)");
    assert_eq!(c7.peripherals().len(), 2, "domain 7 changed: {:?}", c7.peripherals());
}

#[test]
fn xen_name_lookup_skips_newer_and_dead_domains() {
    // win10 is the oldest domid; a newer unrelated domain and a dead socket exist.
    let r = rig("q-xen-skip", &config_xen("win10", ""));
    let xs = FakeXenstored::start(&r.root);
    xs.domain(7, "win10");
    xs.domain(9, "other");
    let q7 = r.qemu("win10", "/run/xen/qmp-libxl-7");
    let q9 = r.qemu("other", "/run/xen/qmp-libxl-9");
    q7.age(60);
    q9.age(60);
    let q12 = r.qemu("gone", "/run/xen/qmp-libxl-12");
    q12.kill();
    assert_usb_host_error(&r.attach());
    let mut c7 = q7.qmp();
    assert!(c7.has_peripheral("xenusb-0", "nec-usb-xhci"), "no controller in win10 (domain 7)");
    let mut c9 = q9.qmp();
    assert_eq!(c9.peripherals(), vec![], "changed domain 9 (other)");
    let vm = state_vm(&r.root, "win10").expect("state for win10");
    assert_eq!(vm["domid"], json!(7), "{vm}");
}

#[test]
fn xen_name_lookup_gets_past_a_busy_unrelated_domain() {
    let r = rig("q-xen-held", &config_xen("win10", ""));
    let xs = FakeXenstored::start(&r.root);
    xs.domain(7, "win10");
    xs.domain(9, "other");
    let q7 = r.qemu("win10", "/run/xen/qmp-libxl-7");
    let q9 = r.qemu("other", "/run/xen/qmp-libxl-9");
    let _holder = q9.qmp(); // e.g. libxl talking to domain 9
    let run = r.attach();
    assert_usb_host_error(&run);
    // Found through xenstore: domain 9's socket is never knocked on.
    assert!(run.elapsed < Duration::from_secs(2), "took {:?}", run.elapsed);
    let mut c7 = q7.qmp();
    assert!(c7.has_peripheral("xenusb-0", "nec-usb-xhci"));
}

#[test]
fn corrupt_state_is_set_aside_and_rebuilt_from_qemu() {
    let r = explicit("q-corrupt");
    let q = r.qemu("win10", QMP);
    q.holding(&[(3, 3, 8, "1.3")]);
    std::fs::create_dir_all(r.root.state_dir()).unwrap();
    std::fs::write(r.root.state_path(), "{\"version\": 1, \"vms\": {\"win10\": {\"sock").unwrap();
    assert_usb_host_error(&r.attach());
    // QEMU's controller was found, not duplicated; the device placed earlier was learnt.
    let mut c = q.qmp();
    assert_eq!(c.peripherals().len(), 2, "{:?}", c.peripherals());
    drop(c);
    let vm = state_vm(&r.root, "win10").expect("state rebuilt");
    assert_eq!(ids(&vm["controllers"]), vec!["xenusb-0"], "{vm}");
    assert!(r.root.state_has_device(3, 8), "device in QEMU not learnt: {vm}");
    let bad = r.root.state_dir().join("state.json.bad");
    assert!(bad.exists(), "the corrupt state was not kept for inspection");
}

#[test]
fn vm_gone_remove_event_and_detach_drop_the_record() {
    // The VM was shut down (its QEMU and everything in it gone): unplug must not fail.
    let r = explicit("q-gone");
    let second = UsbDev::new(3, 8, "3-1.3").ids("1050", "0407");
    r.sys.device(&second); // else sync rightly detaches it: "its host device is gone"
    let q = r.qemu("win10", QMP);
    q.holding(&[(3, 3, 7, "1.2"), (4, 3, 8, "1.3")]);
    r.sync();
    assert!(r.root.state_has_device(3, 7) && r.root.state_has_device(3, 8), "setup");
    q.kill();
    r.sys.remove(&r.dev);
    r.root.udev(&r.dev.udev_env("remove")).ok();
    assert!(!r.root.state_has_device(3, 7), "{:?}", r.root.state_text());
    // Socket file gone too (clean shutdown): detach by hand is also a no-op.
    std::fs::remove_file(r.root.p(QMP)).unwrap();
    r.root.run(&["detach", "--bus", "3", "--addr", "8"]).ok();
    assert!(!r.root.state_has_device(3, 8), "{:?}", r.root.state_text());
    r.root.assert_state_clean();
}

#[test]
fn xen_reboot_gets_a_new_domid_and_the_tool_follows() {
    // xl reboot: domain 7 destroyed (stale socket left), win10 comes back as domain 8.
    let r = rig("q-xen-reboot", &config_xen("win10", ""));
    let xs = FakeXenstored::start(&r.root);
    xs.domain(7, "win10");
    let q7 = r.qemu("win10", "/run/xen/qmp-libxl-7");
    q7.age(600);
    q7.holding(&[(3, 3, 7, "1.2")]);
    r.sync();
    assert_eq!(state_vm(&r.root, "win10").expect("setup")["domid"], json!(7));
    q7.kill();
    xs.destroy(7);
    xs.domain(7, "other"); // the old domid reused by another domain: not win10's
    xs.domain(8, "win10");
    let q8 = r.qemu("win10", "/run/xen/qmp-libxl-8");
    q8.age(60); // up long enough that the tool need not wait for libxl's own controllers

    r.sys.remove(&r.dev);
    r.root.udev(&r.dev.udev_env("remove")).ok();
    assert!(!r.root.state_has_device(3, 7), "{:?}", r.root.state_text());
    r.sys.device(&r.dev);
    assert_usb_host_error(&r.attach());
    let mut c = q8.qmp();
    assert_eq!(c.peripherals(), vec![("xenusb-0".to_string(), "child<nec-usb-xhci>".to_string())]);
    drop(c);
    let vm = state_vm(&r.root, "win10").unwrap();
    assert_eq!(vm["domid"], json!(8), "{vm}");
    assert_eq!(vm["socket"], "/run/xen/qmp-libxl-8", "{vm}");
    assert_state_matches(&r, &q8);
}

#[test]
fn xen_bookkeeping_is_libxls_and_libxls_ports_are_respected() {
    let r = rig("q-xen-books", &config_xen("win10", "ports = 4"));
    let xs = FakeXenstored::start(&r.root);
    xs.domain(9, "win10");
    let q9 = r.qemu("win10", "/run/xen/qmp-libxl-9");
    // A controller the tool creates gets libxl's full records, before QEMU's
    // device_add; the device's port entry is written, then emptied again when
    // QEMU refuses the usb-host (no USB here).
    assert_usb_host_error(&r.attach());
    let mut c = q9.qmp();
    assert!(c.has_peripheral("xenusb-0", "nec-usb-xhci"));
    drop(c);
    let b = "/libxl/9/device/vusb/0";
    assert_eq!(xs.get(&format!("{b}/type")).as_deref(), Some("devicemodel"), "{}", xs.dump("/libxl/9"));
    assert_eq!(xs.get(&format!("{b}/usb-ver")).as_deref(), Some("3"));
    assert_eq!(xs.get(&format!("{b}/num-ports")).as_deref(), Some("4"));
    assert_eq!(xs.get(&format!("{b}/port/5")), None);
    for p in 1..=4 {
        assert_eq!(xs.get(&format!("{b}/port/{p}")).as_deref(), Some(""), "{}", xs.dump(b));
    }
    assert_eq!(xs.store.lock().unwrap().perms.get(b).map(String::as_str), Some("n0\0"));
    let log = xs.store.lock().unwrap().log.clone();
    let wrote = log.iter().position(|l| l == &format!("WRITE {b}/port/1")).expect("port entry written");
    assert!(log[wrote + 1..].iter().any(|l| l == &format!("WRITE {b}/port/1")), "not emptied on failure: {log:?}");
    // libxl's lock files are released (unlinked) before the tool exits.
    let left: Vec<_> = std::fs::read_dir(r.root.p("/var/lib/xen")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "lock files left: {left:?}");

    // A port libxl records as used (xl is attaching there) is never taken.
    xs.set(&format!("{b}/port/1"), "1-9");
    let run = r.attach();
    assert_usb_host_error(&run);
    let log = xs.store.lock().unwrap().log.clone();
    assert!(log.iter().any(|l| l == &format!("WRITE {b}/port/2")), "not placed on port 2: {log:?}");
    assert_eq!(xs.get(&format!("{b}/port/1")).as_deref(), Some("1-9"));
}

#[test]
fn xen_controller_libxl_is_still_adding_means_not_ready() {
    // libxl writes a controller's records before its device_add: records
    // without the controller in QEMU mean libxl is building the domain.
    let r = rig("q-xen-pending", &config_xen("win10", "devices = [\"046d:c52b\"]"));
    let xs = FakeXenstored::start(&r.root);
    xs.domain(9, "win10");
    xs.usbctrl(9, 0, 2, 6);
    let q9 = r.qemu("win10", "/run/xen/qmp-libxl-9");
    let run = r.attach();
    run.fails(1, &["win10", "not ready", "libxl is still adding xenusb-0"]);
    let mut c = q9.qmp();
    assert_eq!(c.peripherals(), vec![], "touched a domain libxl is building");
    // libxl's device_add lands: now the tool uses libxl's controller.
    c.cmd("device_add", json!({"driver": "usb-ehci", "id": "xenusb-0"}));
    drop(c);
    // (A full-speed device: not on an EHCI, so a new controller, whose
    // devid is the next free in both xenstore and QEMU.)
    assert_usb_host_error(&r.attach());
    let mut c = q9.qmp();
    assert!(c.has_peripheral("xenusb-1", "nec-usb-xhci"), "{:?}", c.peripherals());
    assert_eq!(xs.get("/libxl/9/device/vusb/1/usb-ver").as_deref(), Some("3"), "{}", xs.dump("/libxl/9"));
    assert_eq!(xs.get("/libxl/9/device/vusb/0/usb-ver").as_deref(), Some("2"));
}

#[test]
fn full_existing_controller_read_from_qemu_leads_to_a_second_one_within_the_cap() {
    // QEMU already has xenusb-0 (an EHCI, as libxl's usb-version 2 makes) with all 6
    // ports held. The tool must learn that from QEMU (no state) and use a new xenusb-1.
    let r = rig("q-full", &config_qmp("win10", QMP, "max-controllers = 2"));
    let q = r.qemu("win10", QMP);
    let mut c = q.qmp();
    c.cmd("device_add", json!({"driver": "usb-ehci", "id": "xenusb-0"}));
    for port in 1..=6u32 {
        c.place_usb_host("xenusb-0", port, 5, port, &format!("9.{port}"));
    }
    drop(c);
    assert_usb_host_error(&r.attach());
    let mut c = q.qmp();
    assert!(c.has_peripheral("xenusb-1", "nec-usb-xhci"), "{:?}", c.peripherals());
    assert_eq!(c.peripherals().len(), 8, "{:?}", c.peripherals());
    drop(c);

    // With the cap at one controller the tool refuses, naming the reason, and adds nothing.
    let r = rig("q-full-cap", &config_qmp("win10", QMP, "max-controllers = 1"));
    let q = r.qemu("win10", QMP);
    let mut c = q.qmp();
    c.cmd("device_add", json!({"driver": "usb-ehci", "id": "xenusb-0"}));
    for port in 1..=6u32 {
        c.place_usb_host("xenusb-0", port, 5, port, &format!("9.{port}"));
    }
    drop(c);
    r.attach().fails(1, &["max-controllers"]);
    let mut c = q.qmp();
    assert_eq!(c.peripherals().len(), 7, "{:?}", c.peripherals());
}

#[test]
fn fake_qmp_speaks_byte_for_byte_like_real_qemu() {
    // The fault tests trust FakeQmp; here it is checked against QEMU 7.2 itself for
    // every reply whose bytes are deterministic.
    let cmds = [
        r#"{"execute": "query-name", "id": 1}"#,
        r#"{"execute": "qmp_capabilities", "id": "x"}"#,
        r#"{"execute": "qmp_capabilities"}"#,
        r#"{"execute": "query-name", "id": {"a": [1]}}"#,
        r#"{"execute": "query-pci", "id": "pci"}"#,
        r#"{"execute": "device_add", "arguments": {"driver": "nec-usb-xhci", "id": "xenusb-0", "p2": 15, "p3": 15}, "id": 3}"#,
        r#"{"execute": "device_add", "arguments": {"driver": "nec-usb-xhci", "id": "xenusb-0", "p2": 15, "p3": 15}, "id": 4}"#,
        r#"{"execute": "qom-list", "arguments": {"path": "/machine/peripheral"}, "id": 5}"#,
        r#"{"execute": "device_add", "arguments": {"driver": "usb-host", "id": "xenusb-3-8", "bus": "xenusb-0.0", "port": "4", "hostbus": 3, "hostaddr": 8}, "id": 6}"#,
        r#"{"execute": "device_add", "arguments": {"driver": "usb-host", "id": "xenusb-3-9", "bus": "xenusb-1.0", "port": "4", "hostbus": 3, "hostaddr": 9, "hostport": "1.3"}, "id": 7}"#,
        r#"{"execute": "device_add", "arguments": {"driver": "usb-host", "id": "xenusb-3-7", "bus": "xenusb-0.0", "port": "16", "hostbus": 3, "hostaddr": 7, "hostport": "1.2"}, "id": 8}"#,
        r#"{"execute": "device_add", "arguments": {"driver": "usb-host", "id": "xenusb-3-7", "bus": "xenusb-0.0", "port": "3", "hostbus": 3, "hostaddr": 7, "hostport": "1.2"}, "id": 9}"#,
        r#"{"execute": "qom-list", "arguments": {"path": "xenusb-0.0"}, "id": 10}"#,
        r#"{"execute": "qom-get", "arguments": {"path": "xenusb-0.0", "property": "child[0]"}, "id": 11}"#,
        r#"{"execute": "qom-get", "arguments": {"path": "/machine/peripheral/xenusb-3-7", "property": "port"}, "id": 12}"#,
        r#"{"execute": "qom-get", "arguments": {"path": "/machine/peripheral/xenusb-3-7", "property": "hostaddr"}, "id": 13}"#,
        r#"{"execute": "qom-get", "arguments": {"path": "/machine/peripheral/xenusb-3-7", "property": "attached"}, "id": 14}"#,
        r#"{"execute": "qom-get", "arguments": {"path": "/machine/peripheral/xenusb-0", "property": "p2"}, "id": 15}"#,
        r#"{"execute": "qom-get", "arguments": {"path": "/machine/peripheral/xenusb-0", "property": "nope"}, "id": 16}"#,
        r#"{"execute": "qom-list", "arguments": {"path": "/nope"}, "id": 17}"#,
        r#"{"execute": "device_del", "arguments": {"id": "nope"}, "id": 18}"#,
        r#"{"execute": "device_del", "arguments": {"id": "xenusb-3-7"}, "id": 19}"#,
        r#"{"execute": "nonsense", "id": 20}"#,
        r#"{"execute": "query-status", "id": 21}"#,
        r#"{"execute": "qom-get", "arguments": {"path": "/machine", "property": "type"}, "id": 22}"#,
        r#"{"execute": "qom-list", "arguments": {"path": "/machine/peripheral-anon"}, "id": 23}"#,
        r#"{"execute": "qom-list", "arguments": {"path": "/machine/unattached"}, "id": 24}"#,
        r#"{"execute": "query-blockstats", "id": 25}"#,
    ];
    let root = TestRoot::new("q-wire");
    let q = Qemu::start("win10", &root.p("/run/real.qmp"));
    let real = raw_transcript(&q.sock, &cmds);
    let fake =
        FakeQmp::start(&root.p("/run/fake.qmp"), FakeOptions { host_has_devices: false, ..FakeOptions::default() });
    let faked = raw_transcript(&fake.path, &cmds);
    assert_eq!(real.len(), faked.len(), "real:\n{}\nfake:\n{}", real.concat(), faked.concat());
    for (i, (a, b)) in real.iter().zip(&faked).enumerate() {
        assert!(a.ends_with("\r\n") && b.ends_with("\r\n"), "line {i} not CRLF: {a:?} / {b:?}");
        if i == 0 {
            assert_eq!(a, b, "greeting");
            continue;
        }
        let cmd = cmds[i - 1];
        // query-status, query-pci: member order (the fake's serde_json map is sorted); qom-list:
        // real QEMU lists properties in hash-table order. Compare those as values/sets.
        if cmd.contains("query-status") || cmd.contains("query-pci") {
            let (va, vb): (Value, Value) = (serde_json::from_str(a).unwrap(), serde_json::from_str(b).unwrap());
            assert_eq!(va, vb, "{cmd}");
            continue;
        }
        if cmd.contains("qom-list") {
            let set = |l: &str| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                if let Some(arr) = v["return"].as_array_mut() {
                    arr.sort_by_key(|x| x.to_string());
                }
                v
            };
            assert_eq!(set(a), set(b), "reply to {cmd}");
            continue;
        }
        assert_eq!(a, b, "reply to {cmd}");
    }
}

#[test]
fn xen_xl_attached_device_is_left_alone_then_cleaned_out_of_both_on_unplug() {
    // `xl usbdev-attach` put 3:7 (sysfs 3-1.2) on libxl's controller: QEMU has it, libxl
    // records it. The tool has no record of it (state empty).
    let r = rig("q-xen-xl", &config_xen("win10", "hubs = [\"3-1\"]"));
    let xs = FakeXenstored::start(&r.root);
    xs.domain(9, "win10");
    xs.usbctrl(9, 0, 3, 15);
    xs.set("/libxl/9/device/vusb/0/port/1", "3-1.2");
    let q9 = r.qemu("win10", "/run/xen/qmp-libxl-9");
    q9.holding(&[(1, 3, 7, "1.2")]);
    // sync (routed, present) leaves xl's device where it is, and lists it as xl's.
    r.sync();
    let mut c = q9.qmp();
    assert!(c.has_peripheral("xenusb-3-7", "usb-host"), "xl's device was touched");
    drop(c);
    let vm = state_vm(&r.root, "win10").expect("state");
    assert_eq!(vm["devices"][0]["origin"], json!("xl"), "{vm}");
    // Unplugged: gone from QEMU and libxl's entry emptied, together.
    std::fs::remove_file(r.root.state_path()).unwrap(); // also without our record of it
    r.sys.remove(&r.dev);
    r.root.udev(&r.dev.udev_env("remove")).ok();
    let mut c = q9.qmp();
    assert!(!c.has_peripheral("xenusb-3-7", "usb-host"), "still in QEMU");
    assert_eq!(xs.get("/libxl/9/device/vusb/0/port/1").as_deref(), Some(""), "{}", xs.dump("/libxl/9"));
}

#[test]
fn xen_device_of_ours_removed_with_xl_usbdev_detach_is_held_out_until_unplugged() {
    let r = rig("q-xen-xldetach", &config_xen("win10", "hubs = [\"3-1\"]"));
    let xs = FakeXenstored::start(&r.root);
    xs.domain(9, "win10");
    xs.usbctrl(9, 0, 3, 15);
    let q9 = r.qemu("win10", "/run/xen/qmp-libxl-9");
    q9.holding(&[]);
    let _ = r.root.run(&["sync"]); // learns this QEMU (its usb-host attempt fails here: no USB)
                                   // Our record of 3:7 on xenusb-0 port 1, as after a successful attach; then `xl
                                   // usbdev-detach hvm 0 1` emptied libxl's entry and device_del'ed it from QEMU.
    let mut st = r.root.state().expect("state");
    st["vms"]["win10"]["devices"] = json!([{"id": "xenusb-3-7", "bus": 3, "addr": 7, "controller": "xenusb-0",
        "port": 1, "port-path": "3-1.2", "usb-id": "046d:c52b", "origin": "rule"}]);
    std::fs::write(r.root.state_path(), serde_json::to_string_pretty(&st).unwrap()).unwrap();
    let run = r.root.run(&["sync"]);
    run.ok();
    assert!(run.stderr.contains("detached outside this tool"), "{}", run.stderr);
    let st = r.root.state().unwrap();
    assert_eq!(st["held-out"], json!([{"bus": 3, "addr": 7, "vm": "win10"}]), "{st}");
    let mut c = q9.qmp();
    assert!(!c.has_peripheral("xenusb-3-7", "usb-host"), "sync put it back");
    drop(c);
    // Unplugged: the hold ends.
    r.sys.remove(&r.dev);
    r.root.udev(&r.dev.udev_env("remove")).ok();
    assert!(r.root.state().unwrap().get("held-out").is_none(), "{:?}", r.root.state_text());
}

#[test]
fn xen_dry_run_prints_libxls_records_and_writes_nothing() {
    let r = rig("q-xen-dry", &config_xen("win10", "ports = 4"));
    let xs = FakeXenstored::start(&r.root);
    xs.domain(9, "win10");
    let q9 = r.qemu("win10", "/run/xen/qmp-libxl-9");
    let before = xs.dump("/libxl/9");
    let run = r.root.run(&["attach", "--bus", "3", "--addr", "7", "--vm", "win10", "--dry-run"]);
    run.ok();
    let b = "/libxl/9/device/vusb/0";
    // The controller's full records, then the device's port entry, each before QEMU's device_add.
    let ctrl = run.stdout.find(&format!("write xenstore {b} = {{type = \"devicemodel\", usb-ver = \"3\""));
    let port = run.stdout.find(&format!("write xenstore {b}/port/1 = \"3-1.2\""));
    let add = run.stdout.find("would device_add xenusb-3-7");
    assert!(ctrl.is_some() && port.is_some() && add.is_some(), "{}", run.dump());
    assert!(ctrl < port && port < add, "order: {}", run.dump());
    assert_eq!(xs.dump("/libxl/9"), before, "a dry run wrote to xenstore");
    assert!(!xs.store.lock().unwrap().log.iter().any(|l| l.starts_with("WRITE") || l.starts_with("MKDIR")));
    let mut c = q9.qmp();
    assert!(c.peripherals().is_empty(), "a dry run changed QEMU");
}
