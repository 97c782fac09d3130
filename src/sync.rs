//! Convergence: from what QEMU really holds and what the host really has,
//! the steps that make every VM hold exactly what the config routes to it.
//!
//! Pure (`plan`) so the cases that break peer tools (cold start, VM restart,
//! unplug while nothing ran, a new device at an old bus:addr, two VMs with
//! overlapping rules, explicit choices by hand) are unit-tested; `cmd::sync`
//! applies the steps over QMP, detaches first, then attaches.

use crate::config::Config;
use crate::events;
use crate::host::HostDevice;
use crate::state::{HeldOut, Origin, VmState};
use crate::types::BusAddr;

pub(crate) use crate::step::Step;

/// `views`: (index into config.vms, what that VM's QEMU holds, with origins
/// merged from state). `elsewhere`: bus:addr held by VMs not in `views`
/// (not running, or not being synced), which must not be attached twice.
pub(crate) fn plan(
    config: &Config,
    views: &[(usize, &VmState)],
    elsewhere: &[(u16, u16)],
    host: &[HostDevice],
    held_out: &[HeldOut],
) -> Vec<Step> {
    let host_at = |bus: u16, addr: u16| host.iter().find(|h| (h.bus, h.addr) == (bus, addr));
    let mut steps = Vec::new();
    let mut kept: Vec<(u16, u16)> = elsewhere.to_vec();
    for (vm, view) in views {
        for d in &view.devices {
            let why = match host_at(d.bus, d.addr) {
                None => Some("its host device is gone"),
                // Attached for a rule the config no longer has (or that now
                // routes it to another VM). Hand-attached devices stay.
                Some(h) => crate::events::stale(d, h)
                    .or_else(|| {
                        (d.origin == Origin::Rule && events::route(config, h) != Some(*vm))
                            .then_some("no rule routes it to this VM any more")
                    })
                    .or_else(|| {
                        (d.origin == Origin::Followed && events::held_back(config, h).is_some())
                            .then_some("the host keeps it now (deny, its own use, or its policy)")
                    }),
            };
            match why {
                Some(why) => {
                    steps.push(Step::Detach { vm: *vm, id: d.id.clone(), at: BusAddr::new(d.bus, d.addr), why })
                }
                None => kept.push((d.bus, d.addr)),
            }
        }
    }
    for h in host {
        let Some(vm) = events::route(config, h) else { continue };
        if !views.iter().any(|(v, _)| *v == vm)
            || kept.contains(&(h.bus, h.addr))
            || held_out.iter().any(|o| (o.bus, o.addr) == (h.bus, h.addr))
        {
            continue;
        }
        steps.push(Step::Attach { vm, dev: h.clone(), open_node: true, origin: Origin::Rule });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;
    use crate::state::Attached;

    const CFG: &str = r#"
[[vm]]
name = "a"
hubs = ["1-1"]
devices = ["1050:0407"]
[[vm]]
name = "b"
hubs = ["usb1"]
"#;

    fn dev(bus: u16, addr: u16, port_path: &str, usb_id: (u16, u16)) -> HostDevice {
        HostDevice::fixture(bus, addr, port_path, usb_id.0, usb_id.1)
    }

    fn rec(h: &HostDevice, origin: Origin) -> Attached {
        Attached {
            id: h.at().device_id(),
            bus: h.bus,
            addr: h.addr,
            controller: "xenusb-0".into(),
            port: 1,
            port_path: h.port_path.clone(),
            usb_id: h.id_string(),
            serial: h.serial.clone().unwrap_or_default(),
            origin,
        }
    }

    fn view(devs: Vec<Attached>) -> VmState {
        VmState { devices: devs, ..Default::default() }
    }

    fn attaches(steps: &[Step]) -> Vec<(usize, u16, u16)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Attach { vm, dev, .. } => Some((*vm, dev.bus, dev.addr)),
                _ => None,
            })
            .collect()
    }

    fn detaches(steps: &[Step]) -> Vec<(usize, String, &'static str)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Detach { vm, id, why, .. } => Some((*vm, id.clone(), *why)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn cold_start_attaches_everything_routed() {
        let c = parse_str(CFG, "t").unwrap();
        let host = vec![
            dev(1, 2, "1-1", (1, 1)),
            dev(1, 3, "1-2", (1, 1)),
            dev(2, 2, "2-1", (0x1050, 0x0407)),
            dev(2, 3, "2-2", (9, 9)),
        ];
        let empty = VmState::default();
        let s = plan(&c, &[(0, &empty), (1, &empty)], &[], &host, &[]);
        assert_eq!(attaches(&s), vec![(0, 1, 2), (1, 1, 3), (0, 2, 2)]);
        assert!(detaches(&s).is_empty());
    }

    #[test]
    fn in_sync_is_a_no_op() {
        let c = parse_str(CFG, "t").unwrap();
        let k = dev(1, 2, "1-1", (1, 1));
        let v = view(vec![rec(&k, Origin::Rule)]);
        assert!(plan(&c, &[(0, &v)], &[], &[k], &[]).is_empty());
    }

    #[test]
    fn vm_restarted_with_empty_qemu_reattaches() {
        // After a restart the view comes from the new, empty QEMU.
        let c = parse_str(CFG, "t").unwrap();
        let k = dev(1, 2, "1-1", (1, 1));
        let s = plan(&c, &[(0, &VmState::default())], &[], &[k], &[]);
        assert_eq!(attaches(&s), vec![(0, 1, 2)]);
    }

    #[test]
    fn unplugged_while_nothing_ran_is_detached() {
        let c = parse_str(CFG, "t").unwrap();
        let gone = dev(1, 2, "1-1", (1, 1));
        let v = view(vec![rec(&gone, Origin::Rule), rec(&dev(1, 9, "1-5", (5, 5)), Origin::Manual)]);
        let s = plan(&c, &[(0, &v)], &[], &[], &[]);
        assert_eq!(
            detaches(&s),
            vec![
                (0, "xenusb-1-2".into(), "its host device is gone"),
                (0, "xenusb-1-9".into(), "its host device is gone")
            ]
        );
    }

    #[test]
    fn replaced_device_at_same_bus_addr_is_detached_then_attached() {
        let c = parse_str(CFG, "t").unwrap();
        let old = dev(1, 2, "1-1", (1, 1));
        let new = dev(1, 2, "1-1", (7, 7));
        let v = view(vec![rec(&old, Origin::Rule)]);
        let s = plan(&c, &[(0, &v)], &[], &[new], &[]);
        assert_eq!(detaches(&s), vec![(0, "xenusb-1-2".into(), "another device now has its bus:addr")]);
        assert_eq!(attaches(&s), vec![(0, 1, 2)]);
    }

    #[test]
    fn overlapping_rules_first_vm_wins_and_moves() {
        // 1-1 matches a (hub) and b (usb1): a wins. It sits in b by rule: move it.
        let c = parse_str(CFG, "t").unwrap();
        let k = dev(1, 2, "1-1", (1, 1));
        let in_b = view(vec![rec(&k, Origin::Rule)]);
        let empty = VmState::default();
        let s = plan(&c, &[(0, &empty), (1, &in_b)], &[], std::slice::from_ref(&k), &[]);
        assert_eq!(detaches(&s), vec![(1, "xenusb-1-2".into(), "no rule routes it to this VM any more")]);
        assert_eq!(attaches(&s), vec![(0, 1, 2)]);
        // Syncing only a while b (not synced) holds it: never attach twice.
        let s = plan(&c, &[(0, &empty)], &[(1, 2)], &[k], &[]);
        assert!(s.is_empty(), "{s:?}");
    }

    #[test]
    fn hand_attached_stays_while_plugged() {
        let c = parse_str(CFG, "t").unwrap();
        let stranger = dev(3, 4, "3-1", (9, 9)); // no rule wants it
        let v = view(vec![rec(&stranger, Origin::Manual)]);
        assert!(plan(&c, &[(0, &v)], &[], std::slice::from_ref(&stranger), &[]).is_empty());
        // a device found in QEMU (state lost) is left alone as well
        let v = view(vec![rec(&stranger, Origin::Found)]);
        assert!(plan(&c, &[(0, &v)], &[], &[stranger], &[]).is_empty());
    }

    #[test]
    fn hand_detached_stays_out() {
        let c = parse_str(CFG, "t").unwrap();
        let k = dev(1, 2, "1-1", (1, 1));
        let held = [HeldOut { bus: 1, addr: 2, vm: "a".into() }];
        assert!(plan(&c, &[(0, &VmState::default())], &[], &[k], &held).is_empty());
    }

    #[test]
    fn hubs_and_unsynced_vms_are_skipped() {
        let c = parse_str(CFG, "t").unwrap();
        let mut hub = dev(1, 2, "1-1", (1, 1));
        hub.class = 9;
        let k = dev(1, 3, "1-2", (1, 1)); // routed to b, which is not being synced
        assert!(plan(&c, &[(0, &VmState::default())], &[], &[hub, k], &[]).is_empty());
    }
}
