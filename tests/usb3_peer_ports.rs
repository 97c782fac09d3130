//! One physical socket, two buses: a SuperSpeed device in the socket whose
//! USB 2 half a `hubs` entry names ("1-4") enumerates on the USB 3 bus
//! ("2-4"); the kernel links the two ports as peers (`port/peer`), and the
//! rule covers both.

mod common;
use common::*;

const QMP: &str = "/run/qemu/vm.qmp";

#[test]
fn a_superspeed_stick_in_the_socket_of_a_usb2_hubs_entry_is_attached() {
    let (r, sys, _recv) = receiver_at_3_7("socket-peer", &config_qmp("win10", QMP, "hubs = [\"1-4\"]"));
    sys.root_hub(2);
    let mut stick = UsbDev::new(2, 3, "2-4");
    (stick.vendor, stick.product, stick.speed) = ("0781".into(), "5583".into(), "5000".into());
    sys.device(&stick);
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    // Without the peer link the kernel gives, the rule cannot know it is the same socket.
    r.udev(&stick.udev_env("add")).ok();
    assert!(f.device_ids().is_empty(), "{:?}", f.device_ids());
    sys.peer(&stick, "usb1-port4");
    r.udev(&stick.udev_env("add")).ok();
    assert_eq!(f.device_ids(), vec!["xenusb-0", "xenusb-2-3"]);
    // list --json says which socket half it is.
    let list = r.run(&["list", "--json"]).stdout_json();
    let row = list.as_array().unwrap().iter().find(|x| x["port-path"] == "2-4").cloned().unwrap();
    assert_eq!(row["peer-port-path"], "1-4", "{row}");
    assert_eq!(row["wanted-by"], "win10", "{row}");
}
