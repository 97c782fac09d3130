//! `check`: everything an admin wants to know before trusting the tool, one
//! line each: config and its permissions, rule overlaps, installed udev rule
//! and systemd units, each VM's QMP socket and what it holds, and which
//! present host devices each VM would get. Exit 1 if anything is wrong.

use crate::config::{Config, HubRule};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::host;
use crate::lock::LockGuard;
use crate::plan;
use crate::state::State;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const RULE_DIRS: &[&str] = &[
    "/etc/udev/rules.d",
    "/run/udev/rules.d",
    "/usr/local/lib/udev/rules.d",
    "/usr/lib/udev/rules.d",
    "/lib/udev/rules.d",
];
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];
pub const RULE_FILE: &str = "99-xen-usb.rules";
pub const UNITS: &[&str] = &["auto-usb-attach-sync.service", "auto-usb-attach-sync.path", "auto-usb-attach-sync.timer"];

/// Config and state dir must not be writable by anyone but root (or the
/// user running the tool): whoever can write them decides which host
/// devices a VM gets.
pub fn writable_by_others(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    let mode = m.mode() & 0o7777;
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != 0 && m.uid() != me {
        Some(format!("owned by uid {} (mode {mode:04o})", m.uid()))
    } else if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        Some(format!("writable by group or others (mode {mode:04o})"))
    } else {
        None
    }
}

/// Pairs of rules in different VMs that can match the same device. The
/// first VM in config order wins; worth a warning, not an error.
pub fn overlaps(c: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in c.vms.iter().enumerate() {
        for b in &c.vms[i + 1..] {
            for ha in &a.hubs {
                for hb in &b.hubs {
                    let nested = |x: &HubRule, y: &HubRule| match (x, y) {
                        (HubRule::Bus(p), HubRule::Bus(q)) => p == q,
                        (HubRule::Bus(p), HubRule::Port(q)) => q.split('-').next() == Some(&p.to_string()),
                        (HubRule::Port(p), HubRule::Port(q)) => HubRule::Port(p.clone()).covers(0, q),
                        (HubRule::Port(_), HubRule::Bus(_)) => false,
                    };
                    if nested(ha, hb) || nested(hb, ha) {
                        out.push(format!(
                            "hubs {ha} (VM {}) and {hb} (VM {}) overlap: devices there go to {}",
                            a.name, b.name, a.name
                        ));
                    }
                }
            }
            for da in &a.devices {
                for db in &b.devices {
                    let serials_meet = match (&da.serial, &db.serial) {
                        (Some(x), Some(y)) => x == y,
                        _ => true,
                    };
                    if da.vendor == db.vendor && da.product == db.product && serials_meet {
                        out.push(format!(
                            "devices {:04x}:{:04x} appear in VM {} and VM {}: they go to {}",
                            da.vendor, da.product, a.name, b.name, a.name
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The udev rule and systemd units: where each is installed, or a problem.
fn installed(root: &crate::root::Root, problems: &mut Vec<String>) {
    match RULE_DIRS.iter().map(|d| Path::new(d).join(RULE_FILE)).find(|p| root.path(p).exists()) {
        Some(p) => println!("udev rule: {}", p.display()),
        None => problems.push(format!("udev rule {RULE_FILE} is not installed (looked in {})", RULE_DIRS.join(", "))),
    }
    let mut missing = Vec::new();
    for unit in UNITS {
        match UNIT_DIRS.iter().map(|d| Path::new(d).join(unit)).find(|p| root.path(p).exists()) {
            Some(p) => println!("systemd unit: {}", p.display()),
            None => missing.push(*unit),
        }
    }
    if !missing.is_empty() {
        problems.push(format!(
            "systemd units not installed ({}): devices plugged before a VM starts or reboots wait for the next plug",
            missing.join(", ")
        ));
    }
}

pub fn check(ctx: &Ctx, config_shown: &Path) -> Result<()> {
    let mut problems: Vec<String> = Vec::new();
    let root = &ctx.root;
    println!("config {}: ok, {} VM(s)", config_shown.display(), ctx.config.vms.len());
    if let Some(why) = writable_by_others(&root.path(config_shown)) {
        problems.push(format!("config {} is {why}", config_shown.display()));
    }
    let state_dir = root.path(&ctx.config.state_dir);
    if let Some(why) = writable_by_others(&state_dir) {
        problems.push(format!("state dir {} is {why}", ctx.config.state_dir.display()));
    }
    for w in overlaps(&ctx.config) {
        println!("warning: {w}");
    }
    installed(root, &mut problems);

    let host = host::scan(root)?;
    // QMP serves one client at a time: don't race our own udev events.
    let _lock = LockGuard::acquire(&state_dir, &ctx.deadline)?;
    let state = State::load(&state_dir).unwrap_or_default();
    for (i, vm) in ctx.config.vms.iter().enumerate() {
        let wanted: Vec<String> = host
            .iter()
            .filter(|d| plan::route(&ctx.config, d) == Some(i))
            .map(|d| format!("{}:{} {} ({})", d.bus, d.addr, d.port_path, d.id_string()))
            .collect();
        let would = if wanted.is_empty() { "no present device".into() } else { wanted.join(", ") };
        match ctx.connect(&state, vm, true) {
            Ok(Some(mut r)) => match r.read_qemu() {
                Ok(v) => {
                    // A Xen domain: libxl's books beside QEMU's view.
                    match r.records() {
                        Some(Ok(books)) => {
                            println!("VM {}: libxl records {}", vm.name, crate::xen::describe(&books));
                            for d in crate::xen::disagreements(&v, &books) {
                                problems.push(format!("VM {}: libxl and QEMU disagree: {d}", vm.name));
                            }
                        }
                        Some(Err(e)) => problems.push(e.to_string()),
                        None => {}
                    }
                    let ctrls: Vec<String> = v.controllers.iter().map(|c| format!("{} ({})", c.id, c.driver)).collect();
                    let devs: Vec<String> =
                        v.devices.iter().map(|d| format!("{} on {} port {}", d.id, d.controller, d.port)).collect();
                    println!(
                        "VM {}: running, QMP {} answers; controllers: {}; devices: {}; would get: {would}",
                        vm.name,
                        r.socket.display(),
                        if ctrls.is_empty() { "none".into() } else { ctrls.join(", ") },
                        if devs.is_empty() { "none".into() } else { devs.join(", ") },
                    );
                }
                Err(e) => problems.push(format!("VM {}: QMP {}: {e}", vm.name, r.socket.display())),
            },
            Ok(None) => println!("VM {}: not running; would get: {would}", vm.name),
            Err(e) => problems.push(e.to_string()),
        }
    }
    for p in &problems {
        println!("problem: {p}");
    }
    match problems.len() {
        0 => {
            println!("ok");
            Ok(())
        }
        n => Err(Error::new(format!("check found {n} problem(s)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    #[test]
    fn overlaps_are_found() {
        let c = parse_str(
            r#"
[[vm]]
name = "a"
hubs = ["1-4", "usb2"]
devices = ["046d:c52b:1"]
[[vm]]
name = "b"
hubs = ["1-4.2", "2-1", "1-40", "usb3"]
devices = ["046d:c52b", "1050:0407"]
"#,
            "t",
        )
        .unwrap();
        let o = overlaps(&c);
        assert_eq!(o.len(), 3, "{o:?}");
        assert!(o[0].starts_with("hubs 1-4 (VM a) and 1-4.2 (VM b)"), "{o:?}");
        assert!(o[1].starts_with("hubs usb2 (VM a) and 2-1 (VM b)"), "{o:?}");
        assert!(o[2].starts_with("devices 046d:c52b"), "{o:?}");
        assert!(overlaps(
            &parse_str("[[vm]]\nname = \"a\"\nhubs = [\"1-4\"]\n[[vm]]\nname = \"b\"\nhubs = [\"1-40\"]\n", "t")
                .unwrap()
        )
        .is_empty());
    }
}
