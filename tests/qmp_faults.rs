//! The tool against a QMP peer that misbehaves (FakeQmp, which otherwise answers
//! byte-for-byte like QEMU 7.2): garbage, a dropped connection, a hang, events
//! before replies, QMP error replies. Every failure must be exit 1 with one
//! `error: ` line, never a panic or a hang, and must leave state.json valid.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

const QMP: &str = "/run/qemu/vm.qmp";
/// Config timeout (s) for the fault tests; hangs must end within a few of these.
const BUDGET: u64 = 2;

struct Rig {
    root: TestRoot,
    dev: UsbDev,
}

fn rig(tag: &str) -> Rig {
    let root = TestRoot::new(tag);
    let sys = FakeSysfs::new(&root);
    sys.root_hub(3);
    let dev = UsbDev::new(3, 7, "3-1.2");
    sys.device(&dev);
    sys.device(&UsbDev::new(3, 8, "3-1.3").ids("1050", "0407"));
    root.write_config(&format!("timeout = {BUDGET}\n\n[[vm]]\nname = \"win10\"\nqmp = \"{QMP}\"\n"));
    Rig { root, dev }
}

impl Rig {
    fn fake(&self, opts: FakeOptions) -> FakeQmp {
        FakeQmp::start(&self.root.p(QMP), opts)
    }

    fn attach(&self) -> Run {
        self.root.run(&["attach", "--bus", "3", "--addr", "7", "--vm", "win10"])
    }

    /// A successful attach of 3:7 through a well-behaved fake, so that state.json
    /// exists; returns the state text. The fake is gone afterwards.
    fn attached_state(&self) -> String {
        let f = self.fake(FakeOptions::default());
        self.attach().ok();
        assert!(self.root.state_has_device(3, 7), "setup: attach did not record 3:7:\n{:?}", self.root.state_text());
        drop(f);
        self.root.state_text().unwrap()
    }
}

fn with_fault(m: Matcher, f: Fault) -> FakeOptions {
    FakeOptions { fault: Some((m, f)), ..FakeOptions::default() }
}

/// Generous: "within its budget" without timing anything tightly.
fn assert_within_budget(r: &Run) {
    assert!(
        r.elapsed < Duration::from_secs(4 * BUDGET),
        "took {:?} with timeout = {BUDGET} s:\n{}",
        r.elapsed,
        r.stderr
    );
}

#[test]
fn happy_path_against_fake_qemu() {
    // Baseline so that the fault tests below fail for their fault only.
    let r = rig("f-ok");
    let f = r.fake(FakeOptions::default());
    r.attach().ok();
    let names = f.command_names();
    assert_eq!(names.first().map(String::as_str), Some("qmp_capabilities"), "{names:?}");
    let adds: Vec<_> = f.commands().into_iter().filter(|c| c["execute"] == "device_add").collect();
    assert_eq!(adds.len(), 2, "controller + device: {adds:?}");
    assert_eq!(adds[0]["arguments"]["driver"], "nec-usb-xhci");
    assert_eq!(adds[0]["arguments"]["id"], "xenusb-0");
    assert_eq!(adds[0]["arguments"]["p2"], json!(15), "p2 must be a JSON integer");
    assert_eq!(adds[0]["arguments"]["p3"], json!(15), "p3 must be a JSON integer");
    let a = &adds[1]["arguments"];
    assert_eq!(a["driver"], "usb-host");
    assert_eq!(a["id"], "xenusb-3-7");
    assert_eq!(a["bus"], "xenusb-0.0");
    assert_eq!(a["hostbus"], json!(3), "hostbus must be a JSON integer");
    assert_eq!(a["hostaddr"], json!(7), "hostaddr must be a JSON integer");
    assert!(a["port"].is_string(), "port must be a string: {a}");
    assert_eq!(f.device_ids(), vec!["xenusb-0", "xenusb-3-7"]);
    let devs = r.root.state_devices();
    assert_eq!(devs.len(), 1, "{devs:?}");
    assert_eq!(devs[0].0, "win10");
    assert_eq!(devs[0].1["id"], "xenusb-3-7");
    assert_eq!(devs[0].1["controller"], "xenusb-0");
    r.root.assert_state_clean();
    let _ = r.dev;
}

#[test]
fn garbage_reply_fails_naming_qmp_and_leaves_state_alone() {
    let r = rig("f-garbage");
    let before = r.attached_state();
    let f = r.fake(with_fault(on_cmd("qmp_capabilities"), Fault::Garbage));
    f.preload_xhci("xenusb-0", 15);
    f.preload_usb_host("xenusb-0", 1, 3, 7);
    let run = r.root.run(&["detach", "--bus", "3", "--addr", "7"]);
    run.fails(1, &["QMP"]);
    assert!(f.connections() >= 1, "the tool never connected");
    assert_eq!(r.root.state_text().unwrap(), before, "state.json changed although nothing happened in QEMU");
    r.root.assert_state_clean();
}

#[test]
fn garbage_greeting_fails_naming_qmp() {
    // A peer that is not QEMU at all (some other daemon listening on the path).
    let r = rig("f-garbage-greet");
    let path = r.root.p(QMP);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n");
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            let mut b = [0u8; 256];
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
        }
    });
    r.attach().fails(1, &["QMP"]);
    assert!(!r.root.state_has_device(3, 7));
    r.root.assert_state_clean();
    t.join().unwrap();
}

#[test]
fn garbage_after_a_real_change_keeps_state_valid() {
    // The controller is created, then the device_add reply is garbage.
    let r = rig("f-garbage-mid");
    let f = r.fake(with_fault(on_device_add("usb-host"), Fault::Garbage));
    r.attach().fails(1, &["QMP"]);
    assert!(f.device_ids().contains(&"xenusb-0".to_string()));
    assert!(!r.root.state_has_device(3, 7), "a device whose device_add got no valid reply is recorded");
    r.root.assert_state_clean();
}

#[test]
fn connection_dropped_mid_reply_is_an_error_not_a_panic() {
    for (tag, m, fault) in [
        ("f-drop-caps", on_cmd("qmp_capabilities"), Fault::DropMidReply),
        ("f-drop-add", on_device_add("usb-host"), Fault::DropMidReply),
        ("f-close-ctrl", on_device_add("nec-usb-xhci"), Fault::Close),
        ("f-close-list", on_cmd("qom-list"), Fault::Close),
    ] {
        let r = rig(tag);
        let _f = r.fake(with_fault(m, fault));
        let run = r.attach();
        run.no_panic();
        run.fails(1, &["closed"]);
        assert!(!r.root.state_has_device(3, 7), "{tag}: recorded a device whose device_add reply never came");
        r.root.assert_state_clean();
    }
}

#[test]
fn hang_after_command_times_out_within_budget() {
    for (tag, m) in [("f-hang-caps", on_cmd("qmp_capabilities")), ("f-hang-add", on_device_add("usb-host"))] {
        let r = rig(tag);
        let _f = r.fake(with_fault(m, Fault::Hang));
        let run = r.attach();
        run.fails(1, &["timed out"]);
        assert_within_budget(&run);
        assert!(!r.root.state_has_device(3, 7), "{tag}");
        r.root.assert_state_clean();
    }
}

#[test]
fn no_greeting_is_reported_as_busy_within_budget() {
    let r = rig("f-nogreet");
    let f = r.fake(FakeOptions { greeting: false, ..FakeOptions::default() });
    let run = r.attach();
    run.fails(1, &["busy"]);
    assert_within_budget(&run);
    assert!(f.commands().is_empty(), "sent commands without a greeting: {:?}", f.commands());
}

#[test]
fn hang_on_udev_remove_times_out_and_keeps_the_record() {
    let r = rig("f-hang-del");
    r.attached_state();
    let _f = {
        let f = r.fake(with_fault(on_cmd("device_del"), Fault::Hang));
        f.preload_xhci("xenusb-0", 15);
        f.preload_usb_host("xenusb-0", 1, 3, 7);
        f
    };
    FakeSysfs::new(&r.root).remove(&r.dev);
    let run = r.root.udev(&r.dev.udev_env("remove"));
    run.fails(1, &["timed out"]);
    assert_within_budget(&run);
    // QEMU may still hold it (no reply): the record must stay so a later remove/sync can finish the job.
    assert!(r.root.state_has_device(3, 7), "record dropped although device_del never completed");
    r.root.assert_state_clean();
}

#[test]
fn events_interleaved_before_every_reply_still_succeed() {
    let r = rig("f-events");
    let f = r.fake(FakeOptions { events_before_reply: 3, ..FakeOptions::default() });
    r.attach().ok();
    assert_eq!(f.device_ids(), vec!["xenusb-0", "xenusb-3-7"]);
    assert!(r.root.state_has_device(3, 7));
    // and detach, whose reply is followed by DEVICE_DELETED (plus the noise)
    r.root.run(&["detach", "--bus", "3", "--addr", "7"]).ok();
    assert_eq!(f.device_ids(), vec!["xenusb-0"]);
    assert!(!r.root.state_has_device(3, 7));
}

#[test]
fn qmp_error_reply_keeps_class_and_desc() {
    for (tag, class, desc) in [
        ("f-err-generic", "GenericError", "injected by test: host device 3:7 refused"),
        ("f-err-kvm", "KVMMissingCap", "injected by test: no such capability"),
    ] {
        let r = rig(tag);
        let _f = r.fake(with_fault(on_device_add("usb-host"), Fault::Error { class: class.into(), desc: desc.into() }));
        let line = r.attach().fails(1, &[class, desc]);
        assert!(line.contains("win10") || line.contains("3:7") || line.contains("xenusb-3-7"), "names nothing: {line}");
        assert!(!r.root.state_has_device(3, 7));
        r.root.assert_state_clean();
    }
}

#[test]
fn device_del_error_fails_and_keeps_the_record() {
    let r = rig("f-del-err");
    r.attached_state();
    let f = r.fake(with_fault(
        on_cmd("device_del"),
        Fault::Error { class: "GenericError".into(), desc: "injected by test: bus is busy".into() },
    ));
    f.preload_xhci("xenusb-0", 15);
    f.preload_usb_host("xenusb-0", 1, 3, 7);
    r.root
        .run(&["detach", "--bus", "3", "--addr", "7"])
        .fails(1, &["GenericError", "injected by test: bus is busy", "xenusb-3-7"]);
    assert!(r.root.state_has_device(3, 7), "record dropped although QEMU still has the device");
}

#[test]
fn device_not_found_on_detach_counts_as_done() {
    let r = rig("f-del-gone");
    r.attached_state();
    // Same QEMU model (controller + device present at enumeration), but device_del
    // answers DeviceNotFound, as when the guest or someone else removed it first.
    let f = r.fake(with_fault(
        on_cmd("device_del"),
        Fault::Error { class: "DeviceNotFound".into(), desc: "Device 'xenusb-3-7' not found".into() },
    ));
    f.preload_xhci("xenusb-0", 15);
    f.preload_usb_host("xenusb-0", 1, 3, 7);
    r.root.run(&["detach", "--bus", "3", "--addr", "7"]).ok();
    assert!(f.command_names().contains(&"device_del".to_string()));
    assert!(!r.root.state_has_device(3, 7), "record kept after DeviceNotFound");
}
