//! The command line as an admin meets it: device selectors, `--dry-run`
//! against a real `qemu-system-x86_64` (nothing changes, the output names
//! the QMP commands), `check` (report only, `--json`, without root), `list`
//! (hubs, numbers), help, completions (and where `make install` puts them),
//! and the "must be run as root" refusal. The man page against `--help`:
//! man_page.rs.

mod common;
use common::*;
use serde_json::Value;
use std::os::unix::process::CommandExt;

const QMP: &str = "/run/qemu/vm.qmp";

/// Sysfs: root hub usb3, a hub at 3-1 (3:2), 046d:c52b serial A at 3-1.2 (3:7, low
/// speed) and another 046d:c52b serial B at 3-1.3 (3:8); VM win10 on `QMP` wants
/// `rule` (a config `devices`/`hubs` line, or "").
fn rig(tag: &str, rule: &str) -> (TestRoot, FakeSysfs) {
    let root = TestRoot::new(tag);
    let sys = FakeSysfs::new(&root);
    sys.root_hub(3);
    sys.device(&UsbDev::new(3, 2, "3-1").hub());
    let mut a = UsbDev::new(3, 7, "3-1.2");
    a.serial = Some("A".into());
    a.speed = "1.5".into();
    sys.device(&a);
    let mut b = UsbDev::new(3, 8, "3-1.3");
    b.serial = Some("B".into());
    sys.device(&b);
    root.write_config(&config_qmp("win10", QMP, rule));
    (root, sys)
}

fn peripherals(q: &Qemu) -> Vec<(String, String)> {
    let mut p = q.qmp().peripherals();
    p.sort();
    p
}

/// As uid 65534 when the tests run as root (they usually do); as the
/// invoking user otherwise, who is not root either.
fn as_nobody(c: &mut std::process::Command) {
    if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap_or(1) == 0 {
        c.uid(65534).gid(65534);
    }
}

#[test]
fn selectors_resolve_against_the_host_and_refuse_ambiguity() {
    let (root, _sys) = rig("c-sel", "");
    let q = Qemu::start("win10", &root.p(QMP));
    // Each form names 3:7; the dry run shows which device it resolved to.
    for sel in ["3:7", "003:007", "3-1.2", "046d:c52b:A"] {
        let r = root.run(&["attach", sel, "--vm", "win10", "--dry-run"]);
        r.ok();
        assert!(r.stdout.contains("would device_add xenusb-3-7 (usb-host 3:7)"), "{sel}: {}", r.stdout);
    }
    let r = root.run(&["attach", "--bus", "3", "--addr", "8", "--vm", "win10", "--dry-run"]);
    r.ok();
    assert!(r.stdout.contains("xenusb-3-8"), "{}", r.stdout);
    root.run(&["attach", "046d:c52b", "--vm", "win10"])
        .fails(1, &["046d:c52b is ambiguous: 2 devices match", "3:7 at 3-1.2 (serial A)", "3:8 at 3-1.3 (serial B)"]);
    root.run(&["attach", "4:1", "--vm", "win10"]).fails(1, &["no host USB device matches 4:1"]);
    root.run(&["attach", "046d:c52b:Z"]).fails(1, &["no host USB device matches 046d:c52b:Z"]);
    root.run(&["attach", "3-1", "--vm", "win10"]).fails(1, &["3:2", "is a hub"]);
    for bad in
        [&["attach", "3:x"][..], &["attach"], &["attach", "--bus", "3"], &["detach", "3:7", "--id", "xenusb-3-7"]]
    {
        let r = root.run(bad);
        r.code(2);
        assert!(r.stderr.contains("error:"), "{bad:?}: {}", r.stderr);
    }
    let e = root.run(&["attach", "3:x"]).stderr;
    assert!(e.contains("BUS:ADDR (3:7), a port path (1-4.2) or VENDOR:PRODUCT[:SERIAL]"), "{e}");
    assert_eq!(peripherals(&q), vec![], "a dry run changed QEMU");
    assert_eq!(root.state_text(), None, "a dry run wrote state");
}

#[test]
fn dry_runs_name_the_qmp_commands_and_change_nothing() {
    let (root, sys) = rig("c-dry", "devices = [\"046d:c52b:A\"]");
    let q = Qemu::start("win10", &root.p(QMP));
    let dev = {
        let mut a = UsbDev::new(3, 7, "3-1.2");
        a.serial = Some("A".into());
        a.speed = "1.5".into();
        a
    };
    let _ = &sys;

    let r = root.run(&["sync", "--dry-run"]);
    r.ok();
    assert!(r.stdout.contains("would device_add xenusb-0 (nec-usb-xhci) in VM win10"), "{}", r.stdout);
    assert!(
        r.stdout.contains("would device_add xenusb-3-7 (usb-host 3:7) on xenusb-0 port 1 in VM win10"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(r#""execute":"device_add""#) && r.stdout.contains(r#""hostbus":3"#), "{}", r.stdout);
    // The log records real changes only.
    assert!(!r.stderr.contains("attached") && !r.stderr.contains("created"), "{}", r.stderr);

    // udev's add event, as udev runs it, plus --dry-run.
    let mut c = std::process::Command::new(BIN);
    c.env_clear().envs(dev.udev_env("add"));
    c.arg("--root").arg(&root.path).args(["--config", "/etc/auto-usb-attach.toml", "udev", "--dry-run"]);
    let r = run_cmd(c, root.root_str());
    r.ok();
    assert!(r.stdout.contains("would device_add xenusb-3-7"), "{}", r.stdout);

    assert_eq!(peripherals(&q), vec![], "a dry run changed QEMU");
    assert_eq!(root.state_text(), None, "a dry run wrote state");

    // Now for real (QEMU's usb-host cannot get a device on this machine, so
    // the device is placed as an earlier run would have left it), then a dry detach.
    q.holding(&[(1, 3, 7, "1.2")]);
    root.run(&["sync"]).ok();
    assert!(root.state_has_device(3, 7), "setup: {:?}", root.state_text());
    let before = root.state_text();
    let held = peripherals(&q);
    for sel in [&["detach", "046d:c52b:A", "--dry-run"][..], &["detach", "--id", "xenusb-3-7", "--dry-run"]] {
        let r = root.run(sel);
        r.ok();
        assert!(r.stdout.contains("would device_del xenusb-3-7 (3:7) in VM win10"), "{sel:?}: {}", r.stdout);
        assert!(!r.stderr.contains("detached"), "{}", r.stderr);
    }
    assert_eq!(peripherals(&q), held, "a dry detach changed QEMU");
    assert_eq!(root.state_text(), before, "a dry detach changed state (held-out?)");
}

#[test]
fn check_prints_only_its_report_as_text_or_json() {
    let (root, _sys) = rig("c-check", "devices = [\"046d:c52b:A\"]");
    // VM not running: its debug line ("not running") goes to the log, not the report.
    let r = root.run(&["-v", "check"]);
    r.code(1); // no udev rule or units installed under this root
    let report_line = |l: &str| {
        let l = l
            .strip_prefix("problem: ")
            .or(l.strip_prefix("warning: "))
            .or(l.strip_prefix("not checked: "))
            .or(l.strip_prefix("waiting: "))
            .unwrap_or(l);
        ["config: ", "state dir: ", "rules: ", "udev rule", "systemd unit", "VM win10: "]
            .iter()
            .any(|p| l.starts_with(p))
    };
    let lines: Vec<&str> = r.stdout.lines().collect();
    let (last, items) = lines.split_last().unwrap();
    assert!(items.iter().all(|l| report_line(l)), "not a report line in:\n{}", r.stdout);
    assert_eq!(*last, "2 problem(s), 1 waiting", "{}", r.stdout);
    assert!(r.stdout.contains("waiting: VM win10: VM down: 1 device will attach when it starts\n"), "{}", r.stdout);
    assert!(r.stdout.contains("VM win10: not running, backend qemu; would get: 3:7 3-1.2 (046d:c52b)"), "{}", r.stdout);
    assert!(r.stderr.contains("not running"), "the debug line went nowhere: {}", r.stderr);

    let r = root.run(&["check", "--json"]);
    r.code(1);
    let j = r.stdout_json();
    assert_eq!((j["problems"].as_u64(), j["ok"].as_bool()), (Some(2), Some(false)), "{j}");
    let items = j["items"].as_array().unwrap();
    let vm = items.iter().find(|i| i["subject"] == "VM win10").expect("VM item");
    assert_eq!(vm["kind"], "ok");
    assert!(items.iter().any(|i| i["kind"] == "problem" && i["subject"] == "udev rule"), "{j}");
}

#[test]
fn check_json_prints_one_document_even_when_the_config_is_broken() {
    let (root, _sys) = rig("c-check-broken", "");
    root.write_config("[[vm]]\nname = \"a\"\nusb-version = 7\n");
    let r = root.run(&["check", "--json"]);
    r.code(1);
    let j = r.stdout_json();
    assert_eq!((j["problems"].as_u64(), j["ok"].as_bool()), (Some(1), Some(false)), "{j}");
    let item = &j["items"][0];
    assert_eq!((item["kind"].as_str(), item["subject"].as_str()), (Some("problem"), Some("config")), "{j}");
    assert!(item["text"].as_str().unwrap().contains("usb-version"), "{j}");
    assert_eq!(item["error-kind"].as_str(), Some("config"), "{j}");
    assert_eq!(r.error_lines().len(), 1, "{}", r.stderr);
}

#[test]
fn check_without_root_completes_with_a_summary() {
    let (root, _sys) = rig("c-check-user", "");
    let q = Qemu::start("win10", &root.p(QMP));
    // Root's state dir, as in /run: the lock (and the QMP socket) are root's.
    std::fs::create_dir_all(root.state_dir()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut c = std::process::Command::new(BIN);
    c.env_clear().arg("--root").arg(&root.path).args(["check", "--json"]);
    as_nobody(&mut c);
    let r = run_cmd(c, root.root_str());
    r.code(1); // the rule and units are still missing: those are checked
    let j = r.stdout_json();
    assert_eq!(j["not-checked"].as_u64(), Some(1), "{j}");
    let vm = j["items"].as_array().unwrap().iter().find(|i| i["subject"] == "VM win10").cloned().unwrap();
    assert_eq!(vm["kind"], "not-checked", "{j}");
    assert!(vm["text"].as_str().unwrap().contains("not root"), "{j}");
    assert!(j["summary"].as_str().unwrap().contains("1 item(s) not checked (run as root"), "{j}");
    drop(q);
}

#[test]
fn changing_commands_without_root_say_so() {
    for args in
        [&["attach", "3:7"][..], &["detach", "--id", "xenusb-3-7"], &["sync"], &["udev"], &["sync", "--dry-run"]]
    {
        let mut c = std::process::Command::new(BIN);
        c.env_clear().args(args);
        as_nobody(&mut c);
        run_cmd(c, "/nonexistent-root").fails(1, &["error: must be run as root"]);
    }
}

#[test]
fn list_marks_hubs_and_gives_numbers() {
    let (root, _sys) = rig("c-list", "devices = [\"046d:c52b:A\"]");
    let r = root.run(&["list"]);
    r.ok();
    let line = |at: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{at} ")))
            .unwrap_or_else(|| panic!("{at}: {}", r.stdout))
            .to_string()
    };
    assert!(line("3:1").contains("[hub]") && line("3:2").contains("[hub] USB2.0 Hub"), "{}", r.stdout);
    assert!(line("3:7").contains("046d:c52b 3-1.2") && !line("3:7").contains("[hub]"), "{}", r.stdout);
    assert!(line("3:7").contains("(wanted by win10)"), "{}", r.stdout);
    let j = root.run(&["list", "--json"]).stdout_json();
    let by = |addr: u64| j.as_array().unwrap().iter().find(|d| d["addr"] == addr).cloned().unwrap();
    assert_eq!(
        (by(1)["hub"].clone(), by(2)["hub"].clone(), by(7)["hub"].clone()),
        (Value::Bool(true), Value::Bool(true), Value::Bool(false))
    );
    assert_eq!(by(2)["speed"], serde_json::json!(480));
    assert_eq!(by(7)["speed"], serde_json::json!(1.5));
    assert_eq!(by(8)["speed"], serde_json::json!(12));
    assert!(by(7)["bus"].is_u64() && by(7)["class"].is_u64(), "{j}");
}

#[test]
fn help_has_a_global_heading_no_root_and_real_alternatives() {
    let top = bin(&["--help"]);
    top.ok();
    assert!(top.stdout.contains("Global options:") && !top.stdout.contains("--root"), "{}", top.stdout);
    let d = bin(&["detach", "--help"]);
    assert!(d.stdout.contains("detach [OPTIONS] <DEVICE | --bus <N> --addr <N> | --id <ID>>"), "{}", d.stdout);
    assert!(d.stdout.contains("Host USB bus number") && d.stdout.contains("Global options:"), "{}", d.stdout);
    // Hidden, but still there (tests and the demo use it), and so is its env var.
    let root = TestRoot::new("c-root-env");
    let mut c = std::process::Command::new(BIN);
    c.env_clear().env("AUTO_USB_ATTACH_ROOT", &root.path).args(["list", "--json"]);
    let r = run_cmd(c, root.root_str());
    r.ok();
    assert_eq!(r.stdout_json(), serde_json::json!([]));
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in
        [("bash", "complete -F"), ("zsh", "#compdef auto-usb-attach"), ("fish", "complete -c auto-usb-attach")]
    {
        let r = bin(&["completions", shell]);
        r.ok();
        assert!(r.stdout.contains(marker), "{shell}: {}", &r.stdout[..r.stdout.len().min(300)]);
        for word in ["attach", "detach", "dry-run", "json"] {
            assert!(r.stdout.contains(word), "{shell} completion lacks {word}");
        }
    }
    bin(&["completions", "tcsh"]).code(2);
}

/// The binary with `args`, no --root, a clean environment.
fn bin(args: &[&str]) -> Run {
    let mut c = std::process::Command::new(BIN);
    c.env_clear().args(args);
    run_cmd(c, "/nonexistent-root")
}

#[test]
fn make_install_puts_completions_where_shells_look_and_uninstall_removes_them() {
    let stage = TestRoot::new("c-install");
    let make = |target: &str| {
        let out = std::process::Command::new("make")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["-s", target, "PREFIX=/usr", "BASHCOMPDIR=/usr/share/bash-completion/completions"])
            .arg(format!("DESTDIR={}", stage.root_str()))
            .arg(format!("BIN={BIN}"))
            .output()
            .expect("make runs");
        assert!(out.status.success(), "make {target}: {}", String::from_utf8_lossy(&out.stderr));
    };
    make("install");
    let files = [
        ("/usr/share/bash-completion/completions/auto-usb-attach", "complete -F"),
        ("/usr/share/zsh/site-functions/_auto-usb-attach", "#compdef auto-usb-attach"),
        ("/usr/share/fish/vendor_completions.d/auto-usb-attach.fish", "complete -c auto-usb-attach"),
    ];
    for (path, marker) in files {
        let text = std::fs::read_to_string(stage.p(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(text.contains(marker) && text.contains("dry-run"), "{path}");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(stage.p(path)).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o644, "{path}");
    }
    make("uninstall");
    for (path, _) in files {
        assert!(!stage.p(path).exists(), "{path} left after uninstall");
    }
}
