//! Every outcome's one log line carries structured journal fields: a fixed
//! `MESSAGE_ID` per kind (the man page lists them) and `VM`, `USB_PORT`,
//! `USB_DEVICE`, `USB_SERIAL`, so `journalctl MESSAGE_ID=...` finds them. A
//! datagram socket at `<root>/run/systemd/journal/socket` stands in for
//! journald and receives what the tool sends in journald's native protocol.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;

const QMP: &str = "/run/qemu/vm.qmp";
const ATTACHED: &str = "58cba8a9f0ea49cab35e675879f4744f";
const DETACHED: &str = "02d54bc6797c4af5b2689b70cddafeef";
const REFUSED: &str = "429059bfce4646269fa40e90e69077aa";
const WAITING: &str = "7614104391c94b738b7d9b4cd7eda863";

/// A fake journald: every datagram, parsed into fields (text form only: the
/// tool uses the binary form only for values with a newline).
struct Journal(UnixDatagram);

impl Journal {
    fn bind(r: &TestRoot) -> Journal {
        let p = r.p("/run/systemd/journal/socket");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let s = UnixDatagram::bind(&p).unwrap();
        s.set_nonblocking(true).unwrap();
        Journal(s)
    }

    fn take(&self) -> Vec<BTreeMap<String, String>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = self.0.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            out.push(text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect());
        }
        out
    }
}

/// The lines with `MESSAGE_ID` `id`.
fn with_id(lines: &[BTreeMap<String, String>], id: &str) -> Vec<BTreeMap<String, String>> {
    lines.iter().filter(|l| l.get("MESSAGE_ID").map(String::as_str) == Some(id)).cloned().collect()
}

#[test]
fn each_outcome_is_one_line_with_its_message_id_and_device_fields() {
    let (r, sys, dev) = receiver_at_3_7("jfields", &config_qmp("win10", QMP, "devices = [\"046d:c52b\"]"));
    let j = Journal::bind(&r);
    let device_fields = |l: &BTreeMap<String, String>| {
        assert_eq!(l["VM"], "win10", "{l:?}");
        assert_eq!(l["USB_PORT"], "3-1.2", "{l:?}");
        assert_eq!(l["USB_DEVICE"], "046d:c52b", "{l:?}");
        assert_eq!(l["USB_SERIAL"], "0123456", "{l:?}");
        assert_eq!(l["SYSLOG_IDENTIFIER"], "auto-usb-attach", "{l:?}");
    };

    r.udev(&dev.udev_env("add")).ok();
    let lines = j.take();
    let w = with_id(&lines, WAITING);
    assert_eq!(w.len(), 1, "{lines:#?}");
    device_fields(&w[0]);
    assert!(w[0]["MESSAGE"].contains("not running"), "{w:?}");
    assert_eq!(lines.iter().filter(|l| l.contains_key("MESSAGE_ID")).count(), 1, "{lines:#?}");

    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    r.udev(&dev.udev_env("add")).ok();
    let lines = j.take();
    let a = with_id(&lines, ATTACHED);
    assert_eq!(a.len(), 1, "{lines:#?}");
    device_fields(&a[0]);
    assert!(a[0]["MESSAGE"].starts_with("attached 3-1.2 (046d:c52b"), "{a:?}");
    assert_eq!(a[0]["PRIORITY"], "6");
    // The controller it created first is no outcome for a device.
    assert_eq!(lines.iter().filter(|l| l.contains_key("MESSAGE_ID")).count(), 1, "{lines:#?}");

    sys.remove(&dev);
    r.udev(&dev.udev_env("remove")).ok();
    let lines = j.take();
    let d = with_id(&lines, DETACHED);
    assert_eq!(d.len(), 1, "{lines:#?}");
    device_fields(&d[0]);

    drop(f);
    r.remove_state();
    let _f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    r.write_config(&config_qmp("win10", QMP, "devices = [\"046d:c52b\"]\nmax-controllers = 0"));
    sys.device(&dev);
    r.udev(&dev.udev_env("add")).code(1);
    let lines = j.take();
    let x = with_id(&lines, REFUSED);
    assert_eq!(x.len(), 1, "{lines:#?}");
    device_fields(&x[0]);
    assert_eq!(x[0]["PRIORITY"], "3", "the error's own line: the one line of this outcome");
    assert!(x[0]["MESSAGE"].contains("max-controllers = 0"), "{x:?}");
}
