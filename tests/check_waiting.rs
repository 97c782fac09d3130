//! "Why isn't my device in the VM?": `check` says what is waiting, in text
//! and in JSON, and waiting is no problem (the exit code stays 0).

mod common;
use common::*;

const WIN: &str = "/run/qemu/win10.qmp";
const LIN: &str = "/run/qemu/lin.qmp";

/// Sysfs: the receiver (046d:c52b) at 3-1.2 and 1234:5678 at 3-2; win10
/// (running, a FakeQmp) wants port 1-4 (empty), the receiver and a YubiKey
/// (absent); lin (not running) wants 1234:5678. The udev rule and the units
/// are installed, the path unit watching /run/qemu (both VMs' sockets), so
/// nothing else is reported.
fn rig(tag: &str) -> (TestRoot, FakeQmp) {
    let (r, sys, _recv) = receiver_at_3_7(tag, "");
    sys.device(&UsbDev::new(3, 9, "3-2").ids("1234", "5678"));
    r.write_config(&format!(
        "timeout = 5\n\n[[vm]]\nname = \"win10\"\nqmp = \"{WIN}\"\nhubs = [\"1-4\"]\ndevices = [\"046d:c52b\", \"1050:0407\"]\n\n\
         [[vm]]\nname = \"lin\"\nqmp = \"{LIN}\"\ndevices = [\"1234:5678\"]\n"
    ));
    let installed = std::iter::once("/etc/udev/rules.d/99-xen-usb.rules".to_string()).chain(
        ["auto-usb-attach-sync.service", "auto-usb-attach-sync.path", "auto-usb-attach-sync.timer"]
            .iter()
            .map(|u| format!("/etc/systemd/system/{u}")),
    );
    for f in installed {
        let p = r.p(&f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, if f.ends_with(".path") { "[Path]\nPathChanged=/run/qemu\n" } else { "" }).unwrap();
    }
    let f = FakeQmp::start(&r.p(WIN), FakeOptions::default());
    (r, f)
}

const WAITING: [(&str, &str); 3] = [
    ("VM win10", "hubs 1-4: waiting for device"),
    ("VM win10", "devices 1050:0407: waiting for device"),
    ("VM lin", "VM down: 1 device will attach when it starts"),
];

#[test]
fn check_lists_what_is_waiting_and_exits_0() {
    let (r, _f) = rig("chk-wait");
    let run = r.run(&["check"]);
    run.ok();
    let waiting: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("waiting: ")).collect();
    let want: Vec<String> = WAITING.iter().map(|(s, t)| format!("waiting: {s}: {t}")).collect();
    assert_eq!(waiting, want, "{}", run.stdout);
    assert_eq!(run.stdout.lines().last(), Some("ok, 3 waiting"), "{}", run.stdout);
    assert!(run.stdout.contains("VM win10: running"), "{}", run.stdout);
    assert!(run.stdout.contains("VM lin: not running"), "{}", run.stdout);
}

#[test]
fn check_json_lists_what_is_waiting_and_stays_ok() {
    let (r, _f) = rig("chk-wait-json");
    let run = r.run(&["check", "--json"]);
    run.ok();
    let j = run.stdout_json();
    assert_eq!(
        (j["ok"].as_bool(), j["problems"].as_u64(), j["waiting"].as_u64()),
        (Some(true), Some(0), Some(3)),
        "{j}"
    );
    let waiting: Vec<(String, String)> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "waiting")
        .map(|i| (i["subject"].as_str().unwrap().to_string(), i["text"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(String, String)> = WAITING.iter().map(|(s, t)| (s.to_string(), t.to_string())).collect();
    assert_eq!(waiting, want, "{j}");
}

/// The path unit as shipped watches Xen's and libvirt's run directories
/// only: `check` names each plain QEMU VM whose socket's directory it does
/// not watch (a device plugged before that VM starts waits for the timer),
/// as a warning, until a drop-in (`systemctl edit`) adds the directory.
#[test]
fn check_warns_of_a_plain_vm_socket_the_path_unit_does_not_watch() {
    let (r, _f) = rig("chk-unwatched");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/auto-usb-attach-sync.path")).unwrap();
    std::fs::write(r.p("/etc/systemd/system/auto-usb-attach-sync.path"), shipped).unwrap();
    let run = r.run(&["check"]);
    run.ok();
    let warned: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warned.len(), 2, "{}", run.stdout);
    for (vm, line) in ["win10", "lin"].iter().zip(&warned) {
        assert!(
            line.starts_with(&format!("warning: VM {vm}: its QMP socket's directory /run/qemu is not watched"))
                && line.contains("PathChanged=/run/qemu"),
            "{line}"
        );
    }
    assert_eq!(run.stdout.lines().last(), Some("ok, 2 warning(s), 3 waiting"), "{}", run.stdout);
    let drop_in = r.p("/etc/systemd/system/auto-usb-attach-sync.path.d/override.conf");
    std::fs::create_dir_all(drop_in.parent().unwrap()).unwrap();
    std::fs::write(&drop_in, "[Path]\nPathChanged=/run/qemu\n").unwrap();
    let run = r.run(&["check"]);
    run.ok();
    assert!(!run.stdout.contains("warning: "), "{}", run.stdout);
    assert_eq!(run.stdout.lines().last(), Some("ok, 3 waiting"), "{}", run.stdout);
    // Without the admin's drop-in, the generator's (what systemd runs at
    // boot and daemon-reload, into /run/systemd/generator) does the same.
    std::fs::remove_file(&drop_in).unwrap();
    let generated = r.p("/run/systemd/generator");
    std::fs::create_dir_all(&generated).unwrap();
    r.run(&["systemd-generator", generated.to_str().unwrap()]).ok();
    let run = r.run(&["check"]);
    run.ok();
    assert!(!run.stdout.contains("warning: "), "{}", run.stdout);
}
