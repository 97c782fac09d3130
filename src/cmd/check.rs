//! `check`: everything an admin wants to know before trusting the tool, one
//! line each: config and its permissions, rule overlaps, installed udev rule
//! and systemd units, each VM's QMP socket and what it holds, and which
//! present host devices each VM would get. Exit 1 if anything is wrong.
//! The findings are collected as a `report::Report` and printed from it.

use crate::config::{Config, HubRule, VmConfig};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::host;
use crate::lock::LockGuard;
use crate::report::{Kind, Report};
use crate::state::State;
use crate::{events, plan};
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
    // The generator's drop-in (`auto-usb-attach-generator`).
    "/run/systemd/generator",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];
pub const RULE_FILE: &str = "99-xen-usb.rules";
pub const UNITS: &[&str] = &["auto-usb-attach-sync.service", "auto-usb-attach-sync.path", "auto-usb-attach-sync.timer"];

/// Pairs of rules in different VMs that can match the same device. The
/// first VM in config order wins; worth a warning, not an error.
pub(super) fn overlaps(c: &Config) -> Vec<String> {
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

/// What each VM's rules are waiting for: (VM index, text) for every `hubs`
/// and `devices` entry that no present device matches, asked as routing asks
/// (`events::wants`: peer ports included; hubs are never a match).
pub(super) fn waiting_rules(c: &Config, host: &[host::HostDevice]) -> Vec<(usize, String)> {
    let passable: Vec<&host::HostDevice> = host.iter().filter(|d| !d.is_root_hub() && !d.is_hub()).collect();
    let mut out = Vec::new();
    for (i, vm) in c.vms.iter().enumerate() {
        let only = |hubs, devices| VmConfig { hubs, devices, ..vm.clone() };
        let waits = |rule: &VmConfig| !passable.iter().any(|d| events::wants(rule, d));
        for h in &vm.hubs {
            if waits(&only(vec![h.clone()], Vec::new())) {
                out.push((i, format!("hubs {h}: waiting for device")));
            }
        }
        for d in &vm.devices {
            if waits(&only(Vec::new(), vec![d.clone()])) {
                let serial = d.serial.as_deref().map(|s| format!(":{s}")).unwrap_or_default();
                out.push((i, format!("devices {:04x}:{:04x}{serial}: waiting for device", d.vendor, d.product)));
            }
        }
    }
    out
}

/// Present devices a rule of a VM wants that the host keeps back (`deny`,
/// the host's own use of it, `authorized` = 0): (VM index, text with why).
pub(super) fn held_devices(c: &Config, host: &[host::HostDevice]) -> Vec<(usize, String)> {
    let held = |d: &host::HostDevice| match events::routing(c, d) {
        events::Routing::Held { vm, why } => {
            Some((vm, format!("{} {} ({}): {why}", d.at(), d.port_path, d.id_string())))
        }
        _ => None,
    };
    host.iter().filter_map(held).collect()
}

/// A VM that is not running, and how many present devices its rules route to it.
pub(super) fn vm_down(n: usize) -> String {
    format!("VM down: {n} device{} will attach when it starts", if n == 1 { "" } else { "s" })
}

/// The udev rule and systemd units: where each is installed, or a problem.
fn installed(root: &crate::root::Root, report: &mut Report) {
    match RULE_DIRS.iter().map(|d| Path::new(d).join(RULE_FILE)).find(|p| root.path(p).exists()) {
        Some(p) => report.push(Kind::Ok, "udev rule", p.display().to_string()),
        None => report.push(
            Kind::Problem,
            "udev rule",
            format!("{RULE_FILE} is not installed (looked in {})", RULE_DIRS.join(", ")),
        ),
    }
    let mut missing = Vec::new();
    for unit in UNITS {
        match UNIT_DIRS.iter().map(|d| Path::new(d).join(unit)).find(|p| root.path(p).exists()) {
            Some(p) => report.push(Kind::Ok, "systemd unit", p.display().to_string()),
            None => missing.push(*unit),
        }
    }
    if !missing.is_empty() {
        report.push(
            Kind::Problem,
            "systemd units",
            format!(
                "not installed ({}): devices plugged before a VM starts or reboots wait for the next plug",
                missing.join(", ")
            ),
        );
    }
}

/// The paths a path unit's `[Path]` section watches for changes
/// (`PathChanged=`, `PathModified=`), from its file's text and then its
/// drop-ins' in the order systemd reads them; an empty assignment clears
/// the list, as in systemd.
pub(super) fn watched_paths(texts: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for text in texts {
        let mut in_path = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_path = line == "[Path]";
                continue;
            }
            let Some((key, value)) = line.split_once('=') else { continue };
            if in_path && matches!(key.trim(), "PathChanged" | "PathModified") {
                match value.trim() {
                    "" => out.clear(),
                    // `%%` is systemd's escape for `%` (the generator writes it so).
                    v => out.push(v.trim_end_matches('/').replace("%%", "%")),
                }
            }
        }
    }
    out
}

/// The installed sync path unit's text and its drop-ins' (`<unit>.d/*.conf`
/// in every unit directory, a name in an earlier directory hiding the same
/// name in a later one, read in name order); None when it is not installed.
fn path_unit_texts(root: &crate::root::Root) -> Option<Vec<String>> {
    let unit = UNITS[1];
    let read = |p: &Path| {
        crate::fsio::read_regular(&root.path(p), 1 << 20).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let main = UNIT_DIRS.iter().find_map(|d| read(&Path::new(d).join(unit)))?;
    let mut drop_ins: Vec<(String, std::path::PathBuf)> = Vec::new();
    for d in UNIT_DIRS {
        let dir = Path::new(d).join(format!("{unit}.d"));
        let Ok(entries) = std::fs::read_dir(root.path(&dir)) else { continue };
        for name in entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()) {
            if name.ends_with(".conf") && !drop_ins.iter().any(|(n, _)| *n == name) {
                drop_ins.push((name.clone(), dir.join(&name)));
            }
        }
    }
    drop_ins.sort();
    Some(std::iter::once(main).chain(drop_ins.iter().filter_map(|(_, p)| read(p))).collect())
}

/// Plain QEMU VMs whose QMP socket's directory the path unit does not
/// watch: a device plugged before such a VM starts waits for the timer.
/// The generator's drop-in adds them all; one missing means the generator is
/// not installed or has not run since the config changed.
pub(super) fn unwatched_sockets(c: &Config, watched: &[String]) -> Vec<(usize, String)> {
    c.vms
        .iter()
        .enumerate()
        .filter_map(|(i, vm)| {
            let dir = vm.qmp_dir()?.to_string_lossy().trim_end_matches('/').to_string();
            let covered = watched.iter().any(|w| *w == dir || vm.qmp.as_deref() == Some(Path::new(w)));
            (!covered).then(|| {
                let dir = if dir.is_empty() { "/".to_string() } else { dir };
                if vm.watched_qmp_dir().is_none() {
                    let text = format!(
                        "its QMP socket is directly in {dir}, which {unit} does not watch (every service writes \
                         there): a device plugged before the VM starts waits for the timer's next sync (up to 2 \
                         min); give its socket a directory of its own, e.g. /run/qemu/",
                        unit = UNITS[1]
                    );
                    return (i, text);
                }
                let text = format!(
                    "its QMP socket's directory {dir} is not watched by {unit}: a device plugged before the VM \
                     starts waits for the timer's next sync (up to 2 min); `systemctl daemon-reload` runs \
                     {gen}, which adds it (or add [Path] PathChanged={dir} with `systemctl edit {unit}`)",
                    unit = UNITS[1],
                    gen = crate::cli::GENERATOR_NAME,
                );
                (i, text)
            })
        })
        .collect()
}

/// Prints the report (text or JSON) on stdout and nothing else; exit 1 if
/// anything is wrong. Without root the VMs cannot be looked at (the lock
/// and the QMP sockets are root's): they are reported as not checked.
pub(super) fn check(ctx: &Ctx, config_shown: &Path, as_json: bool) -> Result<()> {
    let report = gather(ctx, config_shown)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report.json()).expect("serialises"));
    } else {
        print!("{}", report.text());
    }
    match report.count(Kind::Problem) {
        0 => Ok(()),
        n => Err(Error::new(format!("check found {n} problem(s)"))),
    }
}

fn gather(ctx: &Ctx, config_shown: &Path) -> Result<Report> {
    let mut report = Report::default();
    let root = &ctx.root;
    let is_root = nix::unistd::geteuid().is_root();
    report.push(Kind::Ok, "config", format!("{}: {} VM(s)", config_shown.display(), ctx.config.vms.len()));
    // The same rule every changing command refuses to run on (parents included).
    if let Some(why) = crate::fsio::unsafe_path(&root.path(config_shown), false) {
        report.push(Kind::Problem, "config", format!("{} is {why}", config_shown.display()));
    }
    let state_dir = root.path(&ctx.config.state_dir);
    if let Some(why) = crate::fsio::unsafe_path(&state_dir, true) {
        report.push(Kind::Problem, "state dir", format!("{} is {why}", ctx.config.state_dir.display()));
    }
    for w in overlaps(&ctx.config) {
        report.push(Kind::Warning, "rules", w);
    }
    installed(root, &mut report);
    if let Some(texts) = path_unit_texts(root) {
        for (i, text) in unwatched_sockets(&ctx.config, &watched_paths(&texts)) {
            report.push(Kind::Warning, format!("VM {}", ctx.config.vms[i].name), text);
        }
    }

    let host = host::scan(root)?;
    let routed = |i: usize| host.iter().filter(move |d| events::route(&ctx.config, d) == Some(i));
    let wanted = |i: usize| -> String {
        let w: Vec<String> = routed(i).map(|d| format!("{} {} ({})", d.at(), d.port_path, d.id_string())).collect();
        if w.is_empty() {
            "no present device".into()
        } else {
            w.join(", ")
        }
    };
    // Waiting is not a problem: said after each VM's own line, exit code unchanged.
    // So is a device the host holds back, with why.
    let rule_waits = waiting_rules(&ctx.config, &host);
    let held = held_devices(&ctx.config, &host);
    let push_waits = |report: &mut Report, i: usize| {
        for (_, text) in rule_waits.iter().filter(|(v, _)| *v == i) {
            report.push(Kind::Waiting, format!("VM {}", ctx.config.vms[i].name), text.clone());
        }
        for (_, text) in held.iter().filter(|(v, _)| *v == i) {
            report.push(Kind::Held, format!("VM {}", ctx.config.vms[i].name), text.clone());
        }
    };
    // QMP serves one client at a time: don't race our own udev events.
    let lock = match LockGuard::acquire(&state_dir, &ctx.deadline) {
        Ok(l) => l,
        Err(e) if !is_root => {
            for (i, vm) in ctx.config.vms.iter().enumerate() {
                report.push(
                    Kind::NotChecked,
                    format!("VM {}", vm.name),
                    format!("not root, cannot take the state lock ({e:#}); would get: {}", wanted(i)),
                );
                push_waits(&mut report, i);
            }
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    let state = State::load(&state_dir).unwrap_or_default();
    for (i, vm) in ctx.config.vms.iter().enumerate() {
        let subject = format!("VM {}", vm.name);
        let would = wanted(i);
        match ctx.connect(&state, vm, true) {
            Ok(Some(mut r)) => match r.read_vm() {
                Ok(mut v) => {
                    // A Xen domain: libxl's records beside QEMU's view.
                    match r.records_report(&mut v) {
                        Some(Ok(recs)) => {
                            report.push(Kind::Ok, subject.clone(), format!("libxl records {}", recs.described));
                            if !recs.has_controller {
                                // A controller hot-plugged while the guest's firmware runs
                                // has made HVM guests reboot (seen on Xen 4.17 and 4.20);
                                // libxl adds its own while the domain is still paused.
                                report.push(
                                    Kind::Warning,
                                    subject.clone(),
                                    "has no USB controller of libxl's: the tool hot-plugs one when a device \
                                     first comes, which a guest still in its firmware may not survive; add \
                                     usbctrl = ['type=devicemodel,version=3,ports=15'] to the domain's xl config",
                                );
                            }
                            for d in recs.disagreements {
                                report.push(Kind::Problem, subject.clone(), format!("libxl and QEMU disagree: {d}"));
                            }
                        }
                        Some(Err(e)) => report.push_error(subject.clone(), &e),
                        None => {}
                    }
                    let ctrls = plan::describe_controllers(&v);
                    let devs: Vec<String> =
                        v.devices.iter().map(|d| format!("{} on {} port {}", d.id, d.controller, d.port)).collect();
                    report.push(
                        Kind::Ok,
                        subject,
                        format!(
                            "running, backend {}, {} answers; controllers: {}; devices: {}; would get: {would}",
                            vm.backend.as_str(),
                            r.socket.display(),
                            if ctrls.is_empty() { "none".into() } else { ctrls.join(", ") },
                            if devs.is_empty() { "none".into() } else { devs.join(", ") },
                        ),
                    );
                }
                Err(e) => {
                    report.push_error(subject, &crate::error::Error::caused(format!("QMP {}", r.socket.display()), e))
                }
            },
            Ok(None) => {
                report.push(
                    Kind::Ok,
                    subject.clone(),
                    format!("not running, backend {}; would get: {would}", vm.backend.as_str()),
                );
                report.push(Kind::Waiting, subject, vm_down(routed(i).count()));
            }
            Err(e) if !is_root && e.kind() == crate::error::ErrorKind::Denied => {
                report.push(Kind::NotChecked, subject, format!("not root: {e:#}; would get: {would}"))
            }
            Err(e) => report.push_error(subject, &e),
        }
        push_waits(&mut report, i);
    }
    drop(lock);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    #[test]
    fn a_plain_vm_whose_socket_directory_the_path_unit_does_not_watch_is_named() {
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/auto-usb-attach-sync.path")).unwrap();
        let c = parse_str(
            "[[vm]]\nname = \"lin\"\nqmp = \"/run/qemu/lin.qmp\"\nhubs = [\"usb3\"]\n\
             [[vm]]\nname = \"xen\"\nhubs = [\"usb4\"]\n\
             [[vm]]\nname = \"user\"\nqmp = \"/run/user/1000/vm/u.qmp\"\nhubs = [\"usb5\"]\n",
            "t",
        )
        .unwrap();
        let watched = watched_paths(std::slice::from_ref(&shipped));
        assert_eq!(watched, ["/run/xen", "/run/libvirt/qemu"]);
        let named: Vec<usize> = unwatched_sockets(&c, &watched).into_iter().map(|(i, _)| i).collect();
        assert_eq!(named, [0, 2], "the Xen VM has no qmp socket of its own");
        let (_, text) = &unwatched_sockets(&c, &watched)[0];
        assert!(text.contains("/run/qemu is not watched") && text.contains("PathChanged=/run/qemu"), "{text}");
        // `systemctl edit`'s drop-in adds a directory; a trailing slash is the same path.
        let edited = watched_paths(&[shipped.clone(), "[Path]\nPathChanged=/run/qemu/\n".into()]);
        let named: Vec<usize> = unwatched_sockets(&c, &edited).into_iter().map(|(i, _)| i).collect();
        assert_eq!(named, [2]);
        // An empty assignment resets the list; keys outside [Path] are not watches.
        let reset = watched_paths(&[shipped, "[Path]\nPathChanged=\n[Unit]\nPathChanged=/run/user/1000/vm\n".into()]);
        assert!(reset.is_empty(), "{reset:?}");
        // A socket directly in /run: no drop-in is offered (every service writes there).
        let c = parse_str("[[vm]]\nname = \"r\"\nqmp = \"/run/r.qmp\"\n", "t").unwrap();
        let (_, text) = &unwatched_sockets(&c, &[])[0];
        assert!(text.starts_with("its QMP socket is directly in /run,") && !text.contains("PathChanged"), "{text}");
    }

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

    #[test]
    fn rules_with_no_device_present_are_waiting() {
        let c = parse_str(
            r#"
[[vm]]
name = "a"
hubs = ["1-4", "1-5", "usb2"]
devices = ["046d:c52b", "1050:0407:77"]
[[vm]]
name = "b"
devices = ["1050:0407"]
"#,
            "t",
        )
        .unwrap();
        let mut hub = host::HostDevice::fixture(1, 2, "1-5", 0x05e3, 0x0608);
        hub.class = 9;
        let mut key = host::HostDevice::fixture(1, 3, "1-4.1", 0x1050, 0x0407);
        key.serial = Some("12".into());
        let host = [host::HostDevice::fixture(1, 1, "usb1", 0x1d6b, 2), hub, key];
        let w = waiting_rules(&c, &host);
        assert_eq!(
            w,
            [
                (0, "hubs 1-5: waiting for device".to_string()),
                (0, "hubs usb2: waiting for device".into()),
                (0, "devices 046d:c52b: waiting for device".into()),
                (0, "devices 1050:0407:77: waiting for device".into()),
            ],
            "a hub is no device; the key (serial 12) covers 1-4 and b's rule"
        );
        assert_eq!(vm_down(1), "VM down: 1 device will attach when it starts");
        assert!(held_devices(&c, &host).is_empty());
        let c = parse_str("deny = [\"class:08\"]\n[[vm]]\nname = \"a\"\nhubs = [\"1-4\"]\n", "t").unwrap();
        let mut stick = host::HostDevice::fixture(1, 4, "1-4.2", 0x0781, 0x5567);
        stick.interface_classes = vec![8];
        let mut key = host[2].clone();
        key.interface_classes = vec![3];
        assert_eq!(
            held_devices(&c, &[stick, key]),
            [(0, "1:4 1-4.2 (0781:5567): denied by deny entry \"class:08\"".to_string())]
        );
        assert_eq!(vm_down(0), "VM down: 0 devices will attach when it starts");
    }
}
