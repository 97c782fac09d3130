//! What the host keeps whatever the routing rules say (`deny`, a disk the
//! host uses, devices its policy leaves unauthorized), and the VM a device
//! follows into when it re-enumerates under a new identity in the socket a
//! VM's device just left (`follow-seconds`). Black-box: the binary as udev
//! runs it, against a FakeQmp that records every command.

mod common;
use common::*;

const QMP: &str = "/run/qemu/vm.qmp";

fn adds(f: &FakeQmp) -> Vec<String> {
    f.device_ids().into_iter().filter(|id| id != "xenusb-0").collect()
}

/// `dev`'s sysfs directory, through its /sys/bus/usb/devices link.
fn sysdir(r: &TestRoot, dev: &UsbDev) -> std::path::PathBuf {
    r.p(&format!("/sys/bus/usb/devices/{}", dev.port_path))
}

/// Make `dev`'s one interface a mass-storage one (class 08).
fn mass_storage(r: &TestRoot, dev: &UsbDev) {
    let intf = sysdir(r, dev).join(format!("{}:1.0", dev.port_path));
    std::fs::write(intf.join("bInterfaceClass"), "08\n").unwrap();
}

#[test]
fn deny_class_keeps_a_stick_out_while_a_keyboard_on_the_same_hub_goes_in() {
    let (r, sys, _) = receiver_at_3_7("pol-deny", &config_qmp("win10", QMP, "hubs = [\"3-1\"]"));
    r.write_config(&format!("deny = [\"class:08\"]\n{}", config_qmp("win10", QMP, "hubs = [\"3-1\"]")));
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    let stick = UsbDev::new(3, 8, "3-1.3").ids("0781", "5567");
    sys.device(&stick);
    mass_storage(&r, &stick);
    for action in ["add", "bind"] {
        r.udev(&stick.udev_env(action)).ok();
    }
    assert!(adds(&f).is_empty(), "a denied stick went in: {:?}", f.commands());
    let kbd = UsbDev::new(3, 9, "3-1.4");
    sys.device(&kbd);
    r.udev(&kbd.udev_env("add")).ok();
    assert_eq!(adds(&f), ["xenusb-3-9"]);
    // By hand too: one line naming the entry.
    let e = r.run(&["attach", "--bus", "3", "--addr", "8"]).fails(1, &["3:8", "class:08"]);
    assert!(!e.contains("device_add"), "{e}");
    assert_eq!(adds(&f), ["xenusb-3-9"]);
}

#[test]
fn a_disk_the_host_has_mounted_is_never_attached() {
    let (r, sys, _) = receiver_at_3_7("pol-mounted", &config_qmp("win10", QMP, "hubs = [\"3-1\"]"));
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    let disk = UsbDev::new(3, 8, "3-1.3").ids("0781", "5567");
    sys.device(&disk);
    mass_storage(&r, &disk);
    let part = sysdir(&r, &disk).join("3-1.3:1.0/host6/target6:0:0/6:0:0:0/block/sdb/sdb1");
    std::fs::create_dir_all(&part).unwrap();
    std::fs::write(part.parent().unwrap().join("dev"), "8:16\n").unwrap();
    std::fs::write(part.join("dev"), "8:17\n").unwrap();
    std::fs::create_dir_all(r.p("/proc/self")).unwrap();
    std::fs::write(
        r.p("/proc/self/mountinfo"),
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n36 22 8:17 / /boot rw - ext4 /dev/sdb1 rw\n",
    )
    .unwrap();
    r.udev(&disk.udev_env("bind")).ok();
    assert!(adds(&f).is_empty(), "a mounted disk went in: {:?}", f.commands());
    r.run(&["attach", "--bus", "3", "--addr", "8"]).fails(1, &["3:8", "sdb1", "/boot"]);
    // Unmounted, it is a plain stick again.
    std::fs::write(r.p("/proc/self/mountinfo"), "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n").unwrap();
    r.udev(&disk.udev_env("bind")).ok();
    assert_eq!(adds(&f), ["xenusb-3-8"]);
}

#[test]
fn an_unauthorized_device_waits_for_the_change_that_authorizes_it() {
    let (r, _sys, dev) = receiver_at_3_7("pol-auth", &config_qmp("win10", QMP, "hubs = [\"3-1\"]"));
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    std::fs::write(sysdir(&r, &dev).join("authorized"), "0\n").unwrap();
    r.udev(&dev.udev_env("add")).ok();
    r.udev(&dev.udev_env("bind")).ok();
    assert!(adds(&f).is_empty(), "an unauthorized device went in: {:?}", f.commands());
    assert!(!r.state_has_device(3, 7));
    // The host's policy lets it in: the kernel says `change`.
    std::fs::write(sysdir(&r, &dev).join("authorized"), "1\n").unwrap();
    r.udev(&dev.udev_env("change")).ok();
    assert_eq!(adds(&f), ["xenusb-3-7"]);
    // A replayed change changes nothing.
    let before = f.command_names().len();
    r.udev(&dev.udev_env("change")).ok();
    assert!(!f.command_names()[before..].iter().any(|c| c == "device_add" || c == "device_del"), "{:?}", f.commands());
}

#[test]
fn a_device_that_comes_back_under_a_new_identity_follows_into_the_same_vm() {
    let cfg = config_qmp("win10", QMP, "devices = [\"0483:df11\"]");
    let (r, sys, _) = receiver_at_3_7("pol-follow", &cfg);
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    let dfu = UsbDev::new(3, 10, "3-1.5").ids("0483", "df11");
    sys.device(&dfu);
    r.udev(&dfu.udev_env("add")).ok();
    assert_eq!(adds(&f), ["xenusb-3-10"]);
    sys.remove(&dfu);
    r.udev(&dfu.udev_env("remove")).ok();
    assert!(adds(&f).is_empty());
    // The updater reboots it: same socket, new product id, no rule for it.
    let app = UsbDev::new(3, 11, "3-1.5").ids("0483", "5740");
    sys.device(&app);
    r.udev(&app.udev_env("add")).ok();
    assert_eq!(adds(&f), ["xenusb-3-11"], "it did not follow: {:?}", f.commands());
    let state = r.state_typed().unwrap();
    assert_eq!(state.vms["win10"].devices[0].origin, auto_usb_attach::state::Origin::Followed);
    // A sync leaves it where it followed.
    r.run(&["sync"]).ok();
    assert_eq!(adds(&f), ["xenusb-3-11"]);
    // Out of the window, a device no rule routes stays on the host.
    sys.remove(&app);
    r.udev(&app.udev_env("remove")).ok();
    let mut text = r.state_text().unwrap();
    let left = r.state_typed().unwrap().lineage[0].left;
    text = text.replace(&format!("\"left\": {left}"), &format!("\"left\": {}", left - 11));
    std::fs::write(r.state_path(), text).unwrap();
    let other = UsbDev::new(3, 12, "3-1.5").ids("0483", "3748");
    sys.device(&other);
    r.udev(&other.udev_env("add")).ok();
    assert!(adds(&f).is_empty(), "followed after the window: {:?}", f.commands());
}
