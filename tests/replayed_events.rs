//! A replayed `add` (`udevadm trigger`, a package's postinst) for a device
//! that is attached and unchanged changes nothing: the guest must not see
//! its device vanish and come back. The same device enumerated anew at the
//! same bus:addr (QEMU's usb-host lost what it had open) is replaced.

mod common;
use common::*;

const QMP: &str = "/run/qemu/vm.qmp";

fn changes(f: &FakeQmp) -> Vec<String> {
    f.command_names().into_iter().filter(|c| c == "device_add" || c == "device_del").collect()
}

#[test]
fn a_replayed_add_of_an_attached_device_sends_no_change() {
    let (r, _sys, dev) = receiver_at_3_7("replay", &config_qmp("win10", QMP, "hubs = [\"3-1\"]"));
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    r.udev(&dev.udev_env("add")).ok();
    r.udev(&dev.udev_env("bind")).ok();
    assert_eq!(f.device_ids(), vec!["xenusb-0", "xenusb-3-7"]);
    let before = changes(&f);
    for action in ["add", "bind", "add"] {
        let run = r.udev(&dev.udev_env(action));
        run.ok();
        assert_eq!(changes(&f), before, "a replayed {action} changed the VM:\n{}", run.dump());
    }
    assert_eq!(f.device_ids(), vec!["xenusb-0", "xenusb-3-7"]);
    assert!(r.state_has_device(3, 7));
}

#[test]
fn an_add_after_the_device_was_enumerated_anew_replaces_the_dead_usb_host() {
    let (r, _sys, dev) = receiver_at_3_7("replay-new", &config_qmp("win10", QMP, "hubs = [\"3-1\"]"));
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    r.udev(&dev.udev_env("add")).ok();
    let before = changes(&f).len();
    // Unplugged and plugged back while no remove reached us; the kernel gave it 3:7 again.
    f.lose_host_device("xenusb-3-7");
    r.udev(&dev.udev_env("add")).ok();
    assert_eq!(changes(&f)[before..], ["device_del", "device_add"], "{:?}", f.command_names());
    assert_eq!(f.device_ids(), vec!["xenusb-0", "xenusb-3-7"]);
    assert!(r.state_has_device(3, 7));
}
