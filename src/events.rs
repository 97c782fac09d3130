//! Pure policy for one udev event: which VM the config sends a device to
//! (`routing`, and why the host keeps one a rule wants: `held_back`); what
//! the event needs before the state lock (`triage`); and under it, from the
//! config, state and the device, the steps that handle it (`under_lock`).
//! No I/O; `cmd::udev` does what these decide. `sync`, `check`, `list` and the
//! manual commands route by the same rules; the rule for a record whose
//! bus:addr now holds another device (`stale`) lives here and `sync` uses
//! it too. Where in the VM a device goes is `plan`'s.

use crate::config::{Config, DenyRule, HubRule, VmConfig};
use crate::host::{Action, HostDevice};
use crate::outcome::Event;
use crate::state::{Attached, Origin, State};
use crate::step::Step;
use crate::types::BusAddr;
use log::Level;

/// Where the rules send a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Routing {
    /// To configured VM `.0` (index into `config.vms`).
    To(usize),
    /// A rule of VM `vm` wants it, but it stays on the host: `why`.
    Held { vm: usize, why: String },
    /// No rule wants it (hubs never).
    Nobody,
}

/// Which configured VM gets this device, if any. Root hubs and hubs are
/// never passed (devices behind a hub are). A device matching several VMs
/// goes to the first in config order. A device `held_back` goes nowhere.
pub(crate) fn route(config: &Config, d: &HostDevice) -> Option<usize> {
    match routing(config, d) {
        Routing::To(vm) => Some(vm),
        Routing::Held { .. } | Routing::Nobody => None,
    }
}

/// `route`, saying why a device a rule wants stays on the host.
pub(crate) fn routing(config: &Config, d: &HostDevice) -> Routing {
    if d.is_root_hub() || d.is_hub() {
        return Routing::Nobody;
    }
    let Some(vm) = config.vms.iter().position(|vm| wants(vm, d)) else { return Routing::Nobody };
    match held_back(config, d) {
        Some(why) => Routing::Held { vm, why },
        None => Routing::To(vm),
    }
}

/// Why `d` stays on the host whatever the routing rules say: a `deny`
/// entry, the host's own use of it (a mounted disk, swap, RAID, LVM), or
/// the host's policy (`authorized` = 0, unless `pass-unauthorized`).
pub(crate) fn held_back(config: &Config, d: &HostDevice) -> Option<String> {
    if let Some(rule) = config.deny.iter().find(|r| denies(r, d)) {
        return Some(format!("denied by deny entry {rule:?}", rule = rule.to_string()));
    }
    if let Some(why) = &d.in_use {
        return Some(format!("the host uses it: {why}"));
    }
    if !d.authorized && !config.pass_unauthorized {
        return Some("blocked by host policy (authorized = 0); it goes in once authorized".into());
    }
    // A device whose classes are its interfaces' (class 00) is not
    // configured yet at `add`: a class entry cannot be judged until `bind`.
    let class_rules = config.deny.iter().any(|r| matches!(r, DenyRule::Class(_)));
    if class_rules && d.class == 0 && d.interface_classes.is_empty() {
        return Some("its interfaces are not known yet and deny has class entries; judged at bind".into());
    }
    None
}

pub(crate) fn denies(rule: &DenyRule, d: &HostDevice) -> bool {
    match rule {
        DenyRule::Device(r) => r.covers(d.vendor, d.product, d.serial.as_deref()),
        DenyRule::Port(h) => covers_socket(h, d),
        DenyRule::Class(c) => d.class == *c || d.interface_classes.contains(c),
    }
}

/// Does hub entry `h` cover `d`'s port? A port covers its socket's other
/// half too (`HostDevice::peer_port_path`): "1-4" takes the SuperSpeed
/// stick that enumerates as "2-4".
fn covers_socket(h: &HubRule, d: &HostDevice) -> bool {
    let peer = d.peer_port_path.as_deref().and_then(|p| Some((p.split_once('-')?.0.parse::<u16>().ok()?, p)));
    h.covers(d.bus, &d.port_path) || peer.is_some_and(|(bus, p)| matches!(h, HubRule::Port(_)) && h.covers(bus, p))
}

/// Does any of `vm`'s rules match `d`? Every rule kind is asked here.
pub(crate) fn wants(vm: &VmConfig, d: &HostDevice) -> bool {
    vm.hubs.iter().any(|h| covers_socket(h, d))
        || vm.devices.iter().any(|r| r.covers(d.vendor, d.product, d.serial.as_deref()))
}

/// What a udev event is about, as the host shows it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seen<'d> {
    /// An add, bind or change of a device read from sysfs.
    Present(&'d HostDevice, Action),
    /// The removal of whatever was at `at`; `ids`: the device as the event
    /// names it (sysfs is gone), when it does.
    Gone { at: BusAddr, ids: Option<&'d HostDevice> },
}

/// What an event needs before the state lock: most need nothing at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Triage {
    /// Nobody's business: one debug line; no lock, no VM.
    Ignore(String),
    /// State as last saved (read without the lock) decides: ask again with it.
    Peek,
    /// VM `vm` wants the device but the host keeps it (`why`): its one
    /// line `text`, and its outcome: refused (`deny`, the host's own use of
    /// it) or waiting (its policy may authorize it: the `change` event then
    /// attaches it). None: its classes are not known yet; `bind` judges it.
    Held { vm: usize, why: String, text: String, outcome: Option<Event> },
    /// Ask `probe`'s owner whether it answers (before holding the lock that
    /// every other VM's events wait on), then handle the event under the lock.
    Lock { probe: Option<usize> },
    /// An unplug of a device state has no record of and no rule routes:
    /// only a VM owner's own records (`xl usbdev-attach`) may have it.
    AskOwners,
}

/// What `seen` needs before the lock, from the config, the device and
/// (once `Triage::Peek` asked for it) `peek`, state as last saved. `now`:
/// seconds since the epoch.
pub(crate) fn triage(config: &Config, seen: Seen<'_>, peek: Option<&State>, now: u64) -> Triage {
    match seen {
        Seen::Present(dev, _) => {
            // Only the lines that say it: most events take the lock or end silently.
            let shown = || format!("{} ({}) at {}", dev.port_path, dev.id_string(), dev.at());
            let vm = match routing(config, dev) {
                Routing::To(vm) => return Triage::Lock { probe: Some(vm) },
                Routing::Held { vm, why } => {
                    let lead = format!("{}: not attaching it to VM {}", shown(), config.vms[vm].name);
                    return held(config, dev, vm, why, lead);
                }
                // No rule wants it; a VM whose device just left this socket
                // may (`follow-seconds`): state is peeked only when following is on.
                Routing::Nobody if config.follow.is_zero() => None,
                Routing::Nobody => match peek {
                    None => return Triage::Peek,
                    Some(peek) => follow(config, peek, dev, now).map(|(vm, _)| vm),
                },
            };
            match vm.map(|vm| (vm, held_back(config, dev))) {
                None => Triage::Ignore(format!("{}: no rule wants it", shown())),
                Some((vm, Some(why))) => held(config, dev, vm, why, format!("{}: not following it into a VM", shown())),
                // Its VM is asked under the lock (rare), with the lineage as it is then.
                Some((_, None)) => Triage::Lock { probe: None },
            }
        }
        // A routed unplug is ours to handle: state is read once, under the
        // lock. Any other is peeked at without the lock first; most end there.
        Seen::Gone { at, ids } => match (ids.and_then(|d| route(config, d)), peek) {
            (Some(vm), _) => Triage::Lock { probe: Some(vm) },
            (None, None) => Triage::Peek,
            (None, Some(peek)) => match peek.find(at.bus, at.addr) {
                Some((name, _)) => Triage::Lock { probe: config.vms.iter().position(|v| v.name == name) },
                None if peek.is_held_out(at.bus, at.addr) => Triage::Lock { probe: None },
                None => Triage::AskOwners,
            },
        },
    }
}

/// `Triage::Held` for `dev`, which VM `vm` wants and the host keeps (`why`):
/// its line is `lead: why`.
fn held(config: &Config, dev: &HostDevice, vm: usize, why: String, lead: String) -> Triage {
    let text = format!("{lead}: {why}");
    let outcome = if dev.in_use.is_some() || config.deny.iter().any(|r| denies(r, dev)) {
        Some(Event::Refused)
    } else if !dev.authorized {
        Some(Event::Waiting)
    } else {
        None
    };
    Triage::Held { vm, why, text, outcome }
}

/// The steps for `seen` under the lock, on `state` as it is now: to the VM
/// the rules route it to, or following a device that just left its socket
/// (asked again: the peek may be old); a device the host keeps was said
/// before the lock and gets none. `now`: seconds since the epoch.
pub(crate) fn under_lock(config: &Config, state: &State, seen: Seen<'_>, now: u64) -> Vec<Step> {
    let (dev, action) = match seen {
        Seen::Gone { at, ids } => return on_remove(config, state, at, ids.and_then(|d| route(config, d)), now),
        Seen::Present(dev, action) => (dev, action),
    };
    match routing(config, dev) {
        Routing::To(vm) => on_add(config, state, dev, action, vm, Origin::Rule),
        Routing::Held { .. } => Vec::new(),
        Routing::Nobody => match follow(config, state, dev, now) {
            Some(_) if held_back(config, dev).is_some() => Vec::new(),
            Some((vm, l)) => {
                let shown = format!("{} ({}) at {}", dev.port_path, dev.id_string(), dev.at());
                let text = format!("following {} on {} into VM {}: {shown}", l.usb_id, l.port_path, l.vm);
                let mut steps =
                    vec![Step::Note { level: Level::Info, text }, Step::Followed { port_path: l.port_path.clone() }];
                steps.extend(on_add(config, state, dev, action, vm, Origin::Followed));
                steps
            }
            None => Vec::new(),
        },
    }
}

/// Why `rec` (a record at `now`'s bus:addr) no longer describes the device
/// there, if it doesn't.
pub(crate) fn stale(rec: &Attached, now: &HostDevice) -> Option<&'static str> {
    let differs = (!rec.usb_id.is_empty() && rec.usb_id != now.id_string())
        || (!rec.port_path.is_empty() && rec.port_path != now.port_path)
        // Records written before serials were kept have none: not a difference.
        || (!rec.serial.is_empty() && Some(rec.serial.as_str()) != now.serial.as_deref());
    differs.then_some("another device now has its bus:addr")
}

/// Is `rec` (what QEMU or state holds under `now`'s id) provably `now`:
/// same usb id, port path and serial? A record rebuilt from QEMU knows none
/// of these, so it is not: "already attached" must never hide a different
/// device that got the same bus:addr.
pub(crate) fn same_device(rec: &Attached, now: &HostDevice) -> bool {
    !rec.usb_id.is_empty() && !rec.port_path.is_empty() && stale(rec, now).is_none()
}

fn note(level: Level, text: String) -> Vec<Step> {
    vec![Step::Note { level, text }]
}

/// Steps for an add or bind of `dev`, which goes to VM `vm`: by a rule, or
/// (`origin` Followed) after a device that left its socket.
fn on_add(config: &Config, state: &State, dev: &HostDevice, action: Action, vm: usize, origin: Origin) -> Vec<Step> {
    let at = dev.at();
    if state.is_held_out(dev.bus, dev.addr) {
        let text =
            format!("{} ({}) was detached by hand; leaving it out until replugged", dev.port_path, dev.id_string());
        return note(Level::Info, text);
    }
    let mut steps = Vec::new();
    if let Some((owner, rec)) = state.find(dev.bus, dev.addr) {
        if action != Action::Add {
            // The add event already attached it: nothing to do, no QMP.
            return note(Level::Debug, format!("{at} already attached to {owner}"));
        }
        // The same device in the VM the config routes it to is left to
        // `Attach`: an `add` for it is either replayed (`udevadm trigger`)
        // or the kernel enumerated it anew at the same bus:addr, and only
        // QEMU can tell which (its usb-host still holds the device or not).
        let moved = (owner != config.vms[vm].name).then_some("the config routes it to another VM now");
        if let Some(why) = stale(rec, dev).or(moved) {
            let text = format!("{at} reused by a new device; dropping the stale attachment in {owner}");
            steps.push(Step::Note { level: Level::Info, text });
            steps.push(match config.vms.iter().position(|v| v.name == owner) {
                Some(o) => Step::Detach { vm: o, id: rec.id.clone(), at, why },
                None => Step::Forget { vm: owner.to_string(), at, why },
            });
        }
    }
    steps.push(Step::Attach { vm, dev: dev.clone(), open_node: action == Action::Add, origin });
    steps
}

/// The VM a device no rule routes follows into, if a VM's device left the
/// same socket (its port, or the port's peer) within `follow-seconds`
/// before `now` (seconds since the epoch): the lineage entry.
fn follow<'s>(
    config: &Config,
    state: &'s State,
    dev: &HostDevice,
    now: u64,
) -> Option<(usize, &'s crate::state::Lineage)> {
    let window = config.follow.as_secs();
    if window == 0 || dev.is_hub() || dev.is_root_hub() {
        return None;
    }
    let l = state.lineage.iter().find(|l| {
        (l.port_path == dev.port_path || dev.peer_port_path.as_deref() == Some(l.port_path.as_str()))
            && now.saturating_sub(l.left) <= window
    })?;
    Some((config.vms.iter().position(|v| v.name == l.vm)?, l))
}

/// Steps for the removal of whatever was at `at`. `routed`: the VM the
/// config routes the removed device to, if any (from the event's ids).
/// `now`: seconds since the epoch (a VM's device leaving is remembered for
/// `follow-seconds`).
fn on_remove(config: &Config, state: &State, at: BusAddr, routed: Option<usize>, now: u64) -> Vec<Step> {
    // Unplugging ends an admin's "keep it out".
    let mut steps = vec![Step::Release { at }];
    match state.find(at.bus, at.addr) {
        // State may have lost it (ENOSPC, moved aside, killed before the
        // save): the VM its rules route it to is asked (`Lookup`: one qom-get
        // by the deterministic id, device_del only if QEMU has it).
        None => match routed {
            Some(vm) => {
                steps.push(Step::Detach { vm, id: at.device_id(), at, why: "unplugged; not in state, asking QEMU" })
            }
            None => steps.push(Step::Note { level: Level::Debug, text: format!("{at} removed; not ours") }),
        },
        Some((owner, rec)) => match config.vms.iter().position(|v| v.name == owner) {
            Some(vm) => {
                steps.push(Step::Detach { vm, id: rec.id.clone(), at, why: "unplugged" });
                if !config.follow.is_zero() && !rec.port_path.is_empty() {
                    let lineage = crate::state::Lineage {
                        port_path: rec.port_path.clone(),
                        vm: owner.to_string(),
                        usb_id: rec.usb_id.clone(),
                        left: now,
                    };
                    steps.push(Step::Remember { lineage, follow: config.follow.as_secs() });
                }
            }
            None => {
                let text = format!("{at} was attached to {owner}, which is no longer configured; forgetting it");
                steps.push(Step::Note { level: Level::Warn, text });
                steps.push(Step::Forget { vm: owner.to_string(), at, why: "VM no longer configured" });
            }
        },
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use crate::state::{Origin, VmState};

    fn rec(d: &HostDevice) -> Attached {
        Attached {
            id: d.at().device_id(),
            bus: d.bus,
            addr: d.addr,
            controller: "xenusb-0".into(),
            port: 1,
            port_path: d.port_path.clone(),
            usb_id: d.id_string(),
            serial: d.serial.clone().unwrap_or_default(),
            origin: Origin::Rule,
        }
    }

    fn state_with(vm: &str, d: &HostDevice) -> State {
        let mut s = State::default();
        s.vms.insert(vm.into(), VmState { devices: vec![rec(d)], ..Default::default() });
        s
    }

    fn dev(port_path: &str, vid: u16, pid: u16, class: u8, speed: &str) -> HostDevice {
        let bus = port_path.trim_start_matches("usb").split('-').next().unwrap().parse().unwrap();
        let mut d = HostDevice::fixture(bus, 5, port_path, vid, pid);
        (d.serial, d.class, d.speed) = (Some("S1".into()), class, speed.into());
        d
    }

    #[test]
    fn deny_the_hosts_use_and_its_policy_beat_every_rule() {
        let c =
            parse_str("deny = [\"class:08\", \"1050:0407\", \"1-4.3\"]\n[[vm]]\nname = \"a\"\nhubs = [\"1-4\"]\n", "t")
                .unwrap();
        let mut kbd = dev("1-4.1", 0x046d, 0xc52b, 0, "12");
        kbd.interface_classes = vec![3];
        assert_eq!(routing(&c, &kbd), Routing::To(0));
        let mut stick = dev("1-4.2", 0x0781, 0x5567, 0, "480");
        stick.interface_classes = vec![8];
        assert!(matches!(routing(&c, &stick), Routing::Held { vm: 0, why } if why.contains("class:08")));
        // At `add` its interfaces may not be there yet: judged at bind.
        stick.interface_classes.clear();
        assert!(matches!(routing(&c, &stick), Routing::Held { why, .. } if why.contains("judged at bind")));
        kbd.interface_classes = vec![3];
        let key = dev("1-4.1", 0x1050, 0x0407, 3, "12");
        assert!(matches!(routing(&c, &key), Routing::Held { why, .. } if why.contains("1050:0407")));
        let mut behind = dev("1-4.3.1", 0x046d, 0xc52b, 3, "12");
        assert!(matches!(routing(&c, &behind), Routing::Held { why, .. } if why.contains("1-4.3")));
        // The port entry covers its socket's other half too.
        behind.port_path = "2-4.3".into();
        behind.bus = 2;
        behind.peer_port_path = Some("1-4.3".into());
        assert!(matches!(routing(&c, &behind), Routing::Held { .. }));
        let plain = parse_str("[[vm]]\nname = \"a\"\nhubs = [\"1-4\"]\n", "t").unwrap();
        let mut disk = dev("1-4.2", 0x0781, 0x5567, 0, "480");
        disk.in_use = Some("its disk sdb1 is mounted on /boot".into());
        assert!(matches!(routing(&plain, &disk), Routing::Held { why, .. } if why.contains("/boot")));
        let mut guarded = dev("1-4.1", 0x046d, 0xc52b, 3, "12");
        guarded.authorized = false;
        assert!(matches!(routing(&plain, &guarded), Routing::Held { why, .. } if why.contains("host policy")));
        let pass = parse_str("pass-unauthorized = true\n[[vm]]\nname = \"a\"\nhubs = [\"1-4\"]\n", "t").unwrap();
        assert_eq!(routing(&pass, &guarded), Routing::To(0));
        assert_eq!(route(&plain, &guarded), None);
    }

    const CFG: &str = r#"
[[vm]]
name = "a"
hubs = ["1-4"]
devices = ["046d:c52b"]
[[vm]]
name = "b"
hubs = ["usb1", "2-1"]
devices = ["1050:0407:S1"]
"#;

    #[test]
    fn a_port_rule_covers_both_halves_of_a_socket_but_a_bus_rule_only_its_bus() {
        let c = parse_str("[[vm]]\nname = \"a\"\nhubs = [\"1-4\"]\n[[vm]]\nname = \"b\"\nhubs = [\"usb1\"]\n", "t")
            .unwrap();
        let mut stick = dev("2-4", 1, 1, 0, "5000");
        assert_eq!(route(&c, &stick), None);
        stick.peer_port_path = Some("1-4".into());
        assert_eq!(route(&c, &stick), Some(0));
        // Behind a USB 3 hub with both halves: 2-4.3's peer is 1-4.3, below 1-4.
        let mut deep = dev("2-4.3", 1, 1, 0, "5000");
        deep.peer_port_path = Some("1-4.3".into());
        assert_eq!(route(&c, &deep), Some(0));
        // "usb1" names a bus, not a socket: its peer bus is not taken along.
        let mut other = dev("2-6", 1, 1, 0, "5000");
        other.peer_port_path = Some("1-6".into());
        assert_eq!(route(&c, &other), None);
    }

    #[test]
    fn routing_first_match_wins_and_hubs_never_pass() {
        let c = parse_str(CFG, "t").unwrap();
        assert_eq!(route(&c, &dev("1-4.1", 1, 1, 0, "12")), Some(0));
        assert_eq!(route(&c, &dev("1-3", 1, 1, 0, "12")), Some(1)); // usb1 in b
        assert_eq!(route(&c, &dev("2-1", 0x046d, 0xc52b, 0, "12")), Some(0)); // id rule beats b's hub
        assert_eq!(route(&c, &dev("3-1", 0x1050, 0x0407, 0, "12")), Some(1)); // serial matches
        assert_eq!(route(&c, &dev("3-1", 9, 9, 0, "12")), None);
        assert_eq!(route(&c, &dev("1-4", 1, 1, 9, "480")), None); // a hub
        assert_eq!(route(&c, &dev("usb1", 0x1d6b, 2, 9, "480")), None); // root hub
    }

    #[test]
    fn stale_rule() {
        let d = HostDevice::fixture(1, 2, "1-1", 1, 1);
        let r = rec(&d);
        assert_eq!(stale(&r, &d), None);
        assert!(stale(&r, &HostDevice::fixture(1, 2, "1-1", 7, 7)).is_some());
        assert!(stale(&r, &HostDevice::fixture(1, 2, "1-3", 1, 1)).is_some());
        assert!(same_device(&r, &d));
        let mut other_serial = d.clone();
        other_serial.serial = Some("other".into());
        let mut with_serial = r.clone();
        with_serial.serial = "mine".into();
        assert!(!same_device(&with_serial, &other_serial));
        let mut found = r.clone();
        (found.usb_id, found.port_path) = (String::new(), String::new());
        assert!(!same_device(&found, &d), "a record rebuilt from QEMU proves nothing");
    }

    #[test]
    fn add_of_a_reused_bus_addr_detaches_first_and_bind_does_nothing() {
        let c = parse_str("[[vm]]\nname = \"a\"\nhubs = [\"usb1\"]\n", "t").unwrap();
        let d = HostDevice::fixture(1, 2, "1-1", 1, 1);
        let s = state_with("a", &d);
        let other = HostDevice::fixture(1, 2, "1-1", 7, 7);
        let steps = on_add(&c, &s, &other, Action::Add, 0, Origin::Rule);
        assert!(matches!(&steps[1], Step::Detach { vm: 0, .. }), "{steps:?}");
        assert!(matches!(&steps[2], Step::Attach { vm: 0, open_node: true, .. }), "{steps:?}");
        // The same device again (a replayed add): no detach here, Attach asks QEMU.
        let steps = on_add(&c, &s, &d, Action::Add, 0, Origin::Rule);
        assert!(matches!(steps.as_slice(), [Step::Attach { vm: 0, open_node: true, .. }]), "{steps:?}");
        let steps = on_add(&c, &s, &d, Action::Bind, 0, Origin::Rule);
        assert!(matches!(steps.as_slice(), [Step::Note { .. }]), "{steps:?}");
        let gone = state_with("old", &d);
        let steps = on_add(&c, &gone, &d, Action::Add, 0, Origin::Rule);
        assert!(matches!(&steps[1], Step::Forget { .. }), "{steps:?}");
    }

    #[test]
    fn a_device_follows_into_the_vm_whose_device_just_left_its_socket() {
        let c = parse_str("[[vm]]\nname = \"a\"\ndevices = [\"0483:df11\"]\n", "t").unwrap();
        let mut s = State::default();
        let left = |port: &str, at: u64| crate::state::Lineage {
            port_path: port.into(),
            vm: "a".into(),
            usb_id: "0483:df11".into(),
            left: at,
        };
        s.lineage.push(left("1-4", 100));
        let mut new = HostDevice::fixture(1, 9, "1-4", 0x0483, 0x5740);
        assert_eq!(follow(&c, &s, &new, 110).map(|(vm, l)| (vm, l.port_path.as_str())), Some((0, "1-4")));
        assert!(follow(&c, &s, &new, 111).is_none(), "past the 10 s window");
        // Its peer: a SuperSpeed identity in the same socket.
        let mut ss = HostDevice::fixture(2, 3, "2-4", 0x0483, 0x5741);
        ss.peer_port_path = Some("1-4".into());
        assert!(follow(&c, &s, &ss, 105).is_some());
        // Another port, a hub, or following turned off: nothing.
        assert!(follow(&c, &s, &HostDevice::fixture(1, 9, "1-5", 1, 1), 105).is_none());
        new.class = 9;
        assert!(follow(&c, &s, &new, 105).is_none(), "hubs never follow");
        let off = parse_str("follow-seconds = 0\n[[vm]]\nname = \"a\"\n", "t").unwrap();
        new.class = 0;
        assert!(follow(&off, &s, &new, 105).is_none());
    }

    #[test]
    fn remove_releases_and_detaches_ours_only() {
        let c = parse_str("[[vm]]\nname = \"a\"\nhubs = [\"usb1\"]\n", "t").unwrap();
        let d = HostDevice::fixture(1, 2, "1-1", 1, 1);
        let steps = on_remove(&c, &state_with("a", &d), d.at(), None, 100);
        assert!(
            matches!(&steps[..], [Step::Release { .. }, Step::Detach { vm: 0, .. }, Step::Remember { follow: 10, .. }]),
            "{steps:?}"
        );
        let off = parse_str("follow-seconds = 0\n[[vm]]\nname = \"a\"\nhubs = [\"usb1\"]\n", "t").unwrap();
        let steps = on_remove(&off, &state_with("a", &d), d.at(), None, 100);
        assert!(matches!(&steps[..], [Step::Release { .. }, Step::Detach { vm: 0, .. }]), "{steps:?}");
        let steps = on_remove(&c, &State::default(), d.at(), None, 100);
        assert!(matches!(&steps[..], [Step::Release { .. }, Step::Note { .. }]), "{steps:?}");
        // Not in state but routed to a VM: that VM's QEMU is asked.
        let steps = on_remove(&c, &State::default(), d.at(), Some(0), 100);
        assert!(matches!(&steps[..], [Step::Release { .. }, Step::Detach { vm: 0, .. }]), "{steps:?}");
    }

    #[test]
    fn triage_takes_the_lock_only_for_what_may_be_ours_and_peeks_only_when_it_must() {
        let c = parse_str("deny = [\"1-4.3\"]\n[[vm]]\nname = \"a\"\nhubs = [\"1-4\"]\n", "t").unwrap();
        let kbd = HostDevice::fixture(1, 5, "1-4.1", 1, 1);
        let add = Seen::Present(&kbd, Action::Add);
        assert_eq!(triage(&c, add, None, 100), Triage::Lock { probe: Some(0) });
        // Denied: said at once, refused, no lock.
        let denied = HostDevice::fixture(1, 6, "1-4.3", 1, 1);
        assert!(matches!(
            triage(&c, Seen::Present(&denied, Action::Add), None, 100),
            Triage::Held { vm: 0, outcome: Some(Event::Refused), text, .. } if text.ends_with("denied by deny entry \"1-4.3\"")
        ));
        // Not authorized: waiting (its `change` attaches it).
        let mut blocked = kbd.clone();
        blocked.authorized = false;
        assert!(matches!(
            triage(&c, Seen::Present(&blocked, Action::Add), None, 100),
            Triage::Held { outcome: Some(Event::Waiting), .. }
        ));
        // No rule wants it: state is peeked only when following may take it.
        let other = HostDevice::fixture(1, 7, "1-5", 1, 1);
        assert_eq!(triage(&c, Seen::Present(&other, Action::Add), None, 100), Triage::Peek);
        assert!(matches!(
            triage(&c, Seen::Present(&other, Action::Add), Some(&State::default()), 100),
            Triage::Ignore(_)
        ));
        let off = parse_str("follow-seconds = 0\n[[vm]]\nname = \"a\"\nhubs = [\"1-4\"]\n", "t").unwrap();
        assert!(matches!(triage(&off, Seen::Present(&other, Action::Add), None, 100), Triage::Ignore(_)));
        // Unplugs: a routed one takes the lock unpeeked; any other is ours
        // only if state has it (or holds it out); else only an owner's records may.
        assert_eq!(
            triage(&c, Seen::Gone { at: kbd.at(), ids: Some(&kbd) }, None, 100),
            Triage::Lock { probe: Some(0) }
        );
        let gone = Seen::Gone { at: other.at(), ids: None };
        assert_eq!(triage(&c, gone, None, 100), Triage::Peek);
        assert_eq!(triage(&c, gone, Some(&State::default()), 100), Triage::AskOwners);
        assert_eq!(triage(&c, gone, Some(&state_with("a", &other)), 100), Triage::Lock { probe: Some(0) });
        // A record of a VM no longer configured: the lock, no owner to ask first.
        assert_eq!(triage(&c, gone, Some(&state_with("gone", &other)), 100), Triage::Lock { probe: None });
    }
}
