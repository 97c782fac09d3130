//! The config's `hook`: run once per outcome (attached, detached, refused,
//! waiting) with the outcome in `AUTO_USB_ATTACH_*`, directly (no shell),
//! bounded by the invocation's budget, never under `--dry-run`, and never
//! changing the exit code. The binary runs as udev runs it (no PATH) against
//! a FakeQmp; the hook is a shell script under the test root that appends
//! its arguments and environment to a file.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const QMP: &str = "/run/qemu/vm.qmp";
const VARS: &[&str] = &["EVENT", "VM", "PORT", "DEVICE", "SERIAL", "REASON"];

/// Writes an executable `<root>/hook` running `body` under /bin/sh.
fn hook_script(r: &TestRoot, body: &str) {
    let p = r.p("/hook");
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A hook that appends one record per run to `out`: its arguments, then each
/// documented variable (`-` when unset), then a line `--`.
fn recording_hook(r: &TestRoot) -> std::path::PathBuf {
    let out = r.p("/hook.out");
    let mut body = String::from("{\necho \"ARGS=$*\"\n");
    for v in VARS {
        body.push_str(&format!("echo \"{v}=${{AUTO_USB_ATTACH_{v}-\\-}}\"\n"));
    }
    body.push_str("echo \"PATH_SET=${PATH:+yes}\"\necho --\n} >> \"$1\"");
    hook_script(r, &body);
    out
}

/// The records the recording hook wrote, in order.
fn records(out: &std::path::Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.split("--\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| b.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
        .collect()
}

fn config(out: &std::path::Path, timeout: &str, extra: &str) -> String {
    format!(
        "timeout = {timeout}\nhook = [\"/hook\", \"{}\", \"two words\"]\n\n[[vm]]\nname = \"win10\"\nqmp = \"{QMP}\"\ndevices = [\"046d:c52b\"]\n{extra}\n",
        out.display()
    )
}

#[test]
fn the_hook_sees_each_outcome_with_the_documented_variables() {
    let (r, sys, dev) = receiver_at_3_7("hook-each", "");
    let out = recording_hook(&r);
    r.write_config(&config(&out, "5", ""));

    // VM not running (no socket): the device waits on the host.
    r.udev(&dev.udev_env("add")).ok();
    // Running: attached.
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    r.udev(&dev.udev_env("add")).ok();
    assert_eq!(f.device_ids(), ["xenusb-0", "xenusb-3-7"]);
    // Unplugged: detached.
    sys.remove(&dev);
    r.udev(&dev.udev_env("remove")).ok();
    // No room (max-controllers = 0 and a new VM with no controller): refused,
    // and the exit code is the failure's, as without a hook.
    drop(f);
    r.remove_state();
    let _f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    r.write_config(&config(&out, "5", "max-controllers = 0"));
    let again = UsbDev::new(3, 9, "3-1.2");
    sys.device(&again);
    let refused = r.udev(&again.udev_env("add"));
    refused.code(1);

    let recs = records(&out);
    let events: Vec<&str> = recs.iter().map(|r| r["EVENT"].as_str()).collect();
    assert_eq!(events, ["waiting", "attached", "detached", "refused"], "{recs:#?}");
    for rec in &recs {
        for v in VARS {
            assert!(rec.contains_key(*v), "{v} missing: {rec:?}");
        }
        assert_eq!(rec["ARGS"], format!("{} two words", out.display()), "argv passed as is, no shell");
        assert_eq!(rec["VM"], "win10");
        assert_eq!(rec["PORT"], "3-1.2");
        assert_eq!(rec["DEVICE"], "046d:c52b");
        assert_eq!(rec["SERIAL"], "0123456");
        assert_eq!(rec["PATH_SET"], "yes", "udev gives no PATH; the hook gets one");
        assert!(!rec["REASON"].is_empty() && rec["REASON"] != "-", "{rec:?}");
    }
    assert!(recs[0]["REASON"].contains("not running"), "{:?}", recs[0]);
    assert!(recs[2]["REASON"].contains("unplugged"), "{:?}", recs[2]);
    assert!(recs[3]["REASON"].contains("max-controllers = 0"), "{:?}", recs[3]);
    // One log line per outcome (the refusal is the error's line), as without a hook; the
    // hook's own run is said only at debug.
    assert_eq!(refused.stderr.matches("max-controllers = 0").count(), 1, "one line: {}", refused.stderr);
}

#[test]
fn a_failing_hook_is_logged_and_changes_nothing() {
    let (r, _sys, dev) = receiver_at_3_7("hook-fail", "");
    hook_script(&r, "echo \"boom: $AUTO_USB_ATTACH_EVENT\" >&2\nexit 3");
    r.write_config(&config(std::path::Path::new("/unused"), "5", ""));
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    let run = r.udev(&dev.udev_env("add"));
    run.ok();
    assert_eq!(f.device_ids(), ["xenusb-0", "xenusb-3-7"]);
    assert!(r.state_has_device(3, 7));
    assert!(
        run.stderr.contains("hook /hook for \"attached 3-1.2 (046d:c52b) to VM win10\" failed")
            && run.stderr.contains("boom: attached"),
        "{}",
        run.dump()
    );
    // A hook that cannot run at all: the same.
    std::fs::remove_file(r.p("/hook")).unwrap();
    let run = r.udev(&dev.udev_env("remove"));
    run.ok();
    assert!(run.stderr.contains("cannot run it"), "{}", run.dump());
}

#[test]
fn a_hook_that_hangs_does_not_hold_the_event_past_its_budget() {
    let (r, _sys, dev) = receiver_at_3_7("hook-hang", "");
    let pids = r.p("/hook.pids");
    // It hangs, and so does a child it leaves behind holding its stdout and stderr.
    hook_script(&r, &format!("sleep 30 &\necho $$ $! > {}\nwait", pids.display()));
    r.write_config(&config(std::path::Path::new("/unused"), "1.5", ""));
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    let start = Instant::now();
    let run = r.udev(&dev.udev_env("add"));
    // Until the tool's stdout and stderr close, as udev waits for them.
    let whole = start.elapsed();
    run.ok();
    assert_eq!(f.device_ids(), ["xenusb-0", "xenusb-3-7"], "the outcome stands");
    assert!(run.stderr.contains("killed: still running when the time budget ran out"), "{}", run.dump());
    assert!(whole < Duration::from_millis(1500 + 1000), "held for {whole:?} with a 1.5 s budget\n{}", run.dump());
    assert!(run.elapsed >= Duration::from_millis(1300), "the hook had the budget: {:?}", run.elapsed);
    // The hook and what it started are gone (or zombies waiting for init).
    let pids = std::fs::read_to_string(&pids).unwrap();
    for pid in pids.split_whitespace() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, s)| &s[..1]).unwrap_or("gone");
        assert!(matches!(state, "gone" | "Z" | "X"), "pid {pid} is still {state:?}");
    }
}

#[test]
fn no_hook_under_dry_run() {
    let (r, sys, dev) = receiver_at_3_7("hook-dry", "");
    let out = recording_hook(&r);
    r.write_config(&config(&out, "5", ""));
    let dry_udev = |d: &UsbDev| {
        let mut c = std::process::Command::new(BIN);
        c.env_clear().envs(d.udev_env("add"));
        c.arg("--root").arg(&r.path).args(["--config", "/etc/auto-usb-attach.toml", "udev", "--dry-run"]);
        run_cmd(c, r.root_str())
    };
    // Each command that can change things, dry, for each outcome it could
    // have: nothing to tell. The VM is not running: it would wait.
    dry_udev(&dev).ok();
    // Running: it would be attached, then detached.
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    let dry = dry_udev(&dev);
    dry.ok();
    assert!(dry.stdout.contains("device_add"), "the dry run planned the attach: {}", dry.dump());
    r.run(&["sync", "--dry-run"]).ok();
    r.run(&["attach", "3:7", "--vm", "win10", "--dry-run"]).ok();
    assert!(!out.exists(), "a dry run ran the hook: {:?}", records(&out));
    // For real, once: the hook runs.
    r.udev(&dev.udev_env("add")).ok();
    assert_eq!(records(&out).len(), 1, "the real run's hook");
    std::fs::remove_file(&out).unwrap();
    r.run(&["detach", "3:7", "--dry-run"]).ok();
    // By hand, to a VM that is not running: it would be refused.
    r.write_config(&format!("{}\n[[vm]]\nname = \"down\"\nqmp = \"/run/qemu/down.qmp\"\n", config(&out, "5", "")));
    let other = UsbDev::new(3, 9, "3-1.3").ids("1234", "5678");
    sys.device(&other);
    r.run(&["attach", "3:9", "--vm", "down", "--dry-run"]).fails(1, &["VM down is not running"]);
    assert!(!out.exists(), "a dry run ran the hook: {:?}", records(&out));
    assert_eq!(f.device_ids(), ["xenusb-0", "xenusb-3-7"]);
}

#[test]
fn what_the_host_holds_back_is_refused_or_waiting_for_the_hook_and_in_check() {
    let (r, sys, dev) = receiver_at_3_7("hook-held", "");
    let out = recording_hook(&r);
    r.write_config(&format!("deny = [\"class:08\"]\n{}", config(&out, "5", "hubs = [\"3-1\"]")));
    let _f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    let dir = |d: &UsbDev| r.p(&format!("/sys/bus/usb/devices/{}", d.port_path));
    // A stick the deny list keeps out: refused, with the entry.
    let stick = UsbDev::new(3, 8, "3-1.3").ids("0781", "5567");
    sys.device(&stick);
    std::fs::write(dir(&stick).join("3-1.3:1.0/bInterfaceClass"), "08\n").unwrap();
    r.udev(&stick.udev_env("bind")).ok();
    // The receiver, unauthorized by the host's policy: waiting; authorized: attached.
    std::fs::write(dir(&dev).join("authorized"), "0\n").unwrap();
    r.udev(&dev.udev_env("add")).ok();
    let check = r.run(&["check"]);
    std::fs::write(dir(&dev).join("authorized"), "1\n").unwrap();
    r.udev(&dev.udev_env("change")).ok();

    let recs = records(&out);
    let seen: Vec<(&str, &str)> = recs.iter().map(|r| (r["EVENT"].as_str(), r["DEVICE"].as_str())).collect();
    assert_eq!(seen, [("refused", "0781:5567"), ("waiting", "046d:c52b"), ("attached", "046d:c52b")], "{recs:#?}");
    assert!(recs[0]["REASON"].contains("class:08"), "{:?}", recs[0]);
    assert!(recs[1]["REASON"].contains("authorized = 0"), "{:?}", recs[1]);
    // check says both, with why, and neither is a problem.
    let held: Vec<&str> = check.stdout.lines().filter(|l| l.starts_with("held back: ")).collect();
    assert_eq!(held.len(), 2, "{}", check.stdout);
    assert!(held[0].contains("3:7 3-1.2 (046d:c52b): blocked by host policy"), "{}", check.stdout);
    assert!(held[1].contains("3:8 3-1.3 (0781:5567): denied by deny entry \"class:08\""), "{}", check.stdout);
    assert!(check.stdout.lines().last().unwrap().ends_with("2 held back"), "{}", check.stdout);
}
