//! `FakeSysfs`: a sysfs tree shaped like the kernel's, for `--root`.

use super::*;

/// PCI path of the fake host controller every bus hangs off.
pub const PCI: &str = "/devices/pci0000:00/0000:00:04.0";

#[derive(Debug, Clone)]
pub struct UsbDev {
    pub bus: u16,
    pub addr: u16,
    /// sysfs name: "3-1.2"; "usb3" for a root hub.
    pub port_path: String,
    pub vendor: String,
    pub product: String,
    /// bDeviceClass as the kernel writes it ("00", "09").
    pub class: String,
    pub speed: String,
    pub serial: Option<String>,
    pub manufacturer: String,
    pub name: String,
    pub bcd: String,
}

impl UsbDev {
    /// A full-speed device (a Logitech receiver) at bus:addr, sysfs name `port_path`.
    pub fn new(bus: u16, addr: u16, port_path: &str) -> UsbDev {
        UsbDev {
            bus,
            addr,
            port_path: port_path.into(),
            vendor: "046d".into(),
            product: "c52b".into(),
            class: "00".into(),
            speed: "12".into(),
            serial: Some("0123456".into()),
            manufacturer: "Logitech".into(),
            name: "USB Receiver".into(),
            bcd: "1201".into(),
        }
    }

    pub fn ids(mut self, vendor: &str, product: &str) -> UsbDev {
        self.vendor = vendor.into();
        self.product = product.into();
        self
    }

    pub fn hub(mut self) -> UsbDev {
        self.class = "09".into();
        self.vendor = "05e3".into();
        self.product = "0608".into();
        self.speed = "480".into();
        self.serial = None;
        self.name = "USB2.0 Hub".into();
        self.manufacturer = "GenesysLogic".into();
        self
    }

    /// sysfs directory components below the PCI device: ["usb3", "3-1", "3-1.2"].
    fn components(&self) -> Vec<String> {
        let mut v = vec![format!("usb{}", self.bus)];
        if self.port_path.starts_with("usb") {
            return v;
        }
        let (bus, path) = self.port_path.split_once('-').expect("port path like 3-1.2");
        let mut cur = format!("{bus}-");
        for (i, p) in path.split('.').enumerate() {
            if i > 0 {
                cur.push('.');
            }
            cur.push_str(p);
            v.push(cur.clone());
        }
        v
    }

    /// udev's DEVPATH: "/devices/pci0000:00/0000:00:04.0/usb3/3-1/3-1.2".
    pub fn devpath(&self) -> String {
        format!("{PCI}/{}", self.components().join("/"))
    }

    pub fn devname(&self) -> String {
        format!("/dev/bus/usb/{:03}/{:03}", self.bus, self.addr)
    }

    /// The kernel's PRODUCT: vid/pid/bcd in unpadded lowercase hex.
    pub fn product_env(&self) -> String {
        let t = |s: &str| {
            let t = s.trim_start_matches('0');
            if t.is_empty() {
                "0".to_string()
            } else {
                t.to_string()
            }
        };
        format!("{}/{}/{}", t(&self.vendor), t(&self.product), t(&self.bcd))
    }

    pub fn type_env(&self) -> String {
        format!("{}/0/0", u8::from_str_radix(&self.class, 16).unwrap())
    }

    /// The RUN environment udev gives for `action`, as seen on systemd-udevd 252.
    /// On `remove` udev has no ID_VENDOR_ID/ID_MODEL_ID/ID_SERIAL_SHORT (field notes).
    pub fn udev_env(&self, action: &str) -> Vec<(String, String)> {
        let mut e: Vec<(&str, String)> = vec![
            ("ACTION", action.into()),
            ("SUBSYSTEM", "usb".into()),
            ("DEVTYPE", "usb_device".into()),
            ("DEVPATH", self.devpath()),
            ("DEVNAME", self.devname()),
            ("BUSNUM", format!("{:03}", self.bus)),
            ("DEVNUM", format!("{:03}", self.addr)),
            ("PRODUCT", self.product_env()),
            ("TYPE", self.type_env()),
            ("MAJOR", "189".into()),
            ("MINOR", format!("{}", (self.bus as u32 - 1) * 128 + self.addr as u32 - 1)),
            ("SEQNUM", "4711".into()),
        ];
        if action != "remove" {
            e.push(("ID_VENDOR_ID", self.vendor.clone()));
            e.push(("ID_MODEL_ID", self.product.clone()));
            if let Some(s) = &self.serial {
                e.push(("ID_SERIAL_SHORT", s.clone()));
            }
        }
        e.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// The smallest `remove` environment udev gives for the device at `bus`:`addr`
/// (no ids: sysfs is already gone), with a DEVPATH under a port derived from
/// the address. What the benches replay in bulk: no FakeSysfs needed.
pub fn remove_env(bus: u32, addr: u32) -> Vec<(String, String)> {
    [
        ("ACTION", "remove".to_string()),
        ("SUBSYSTEM", "usb".into()),
        ("DEVTYPE", "usb_device".into()),
        ("BUSNUM", format!("{bus:03}")),
        ("DEVNUM", format!("{addr:03}")),
        ("DEVPATH", format!("/devices/pci0000:00/0000:00:04.0/usb{bus}/{bus}-{}", addr - 9)),
        ("PRODUCT", "627/1/0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Builds `<root>/sys`: device dirs under `/sys/devices/pci.../usbB/...` with the
/// attribute files the kernel has, and `/sys/bus/usb/devices/<name>` relative symlinks.
pub struct FakeSysfs {
    root: PathBuf,
}

impl FakeSysfs {
    pub fn new(root: &TestRoot) -> FakeSysfs {
        let f = FakeSysfs { root: root.path.clone() };
        std::fs::create_dir_all(f.root.join("sys/bus/usb/devices")).unwrap();
        f
    }

    fn dir(&self, d: &UsbDev) -> PathBuf {
        self.root.join("sys").join(d.devpath().trim_start_matches('/'))
    }

    /// The kernel's `port` link of `d` and that port's `peer`, the other half of
    /// its socket, a port directory named `peer_port_dir` ("usb1-port4", "1-4-port3").
    pub fn peer(&self, d: &UsbDev, peer_port_dir: &str) -> &FakeSysfs {
        let ports = self.root.join("sys/devices/ports");
        let own = ports.join(format!("own-of-{}", d.port_path));
        let peer = ports.join("peers").join(peer_port_dir);
        std::fs::create_dir_all(&own).unwrap();
        std::fs::create_dir_all(&peer).unwrap();
        std::os::unix::fs::symlink(&peer, own.join("peer")).unwrap();
        std::os::unix::fs::symlink(&own, self.dir(d).join("port")).unwrap();
        self
    }

    /// The root hub `usbB` (busnum B, devnum 1, Linux Foundation 1d6b:0002).
    pub fn root_hub(&self, bus: u16) -> &FakeSysfs {
        let mut h = UsbDev::new(bus, 1, &format!("usb{bus}")).hub();
        h.vendor = "1d6b".into();
        h.product = "0002".into();
        h.name = "xHCI Host Controller".into();
        h.manufacturer = "Linux 6.1.0-56-amd64 xhci-hcd".into();
        h.serial = Some("0000:00:04.0".into());
        self.device(&h)
    }

    pub fn device(&self, d: &UsbDev) -> &FakeSysfs {
        let dir = self.dir(d);
        std::fs::create_dir_all(&dir).unwrap();
        let mut files: Vec<(&str, String)> = vec![
            ("busnum", d.bus.to_string()),
            ("devnum", d.addr.to_string()),
            ("idVendor", d.vendor.clone()),
            ("idProduct", d.product.clone()),
            ("bcdDevice", d.bcd.clone()),
            ("speed", d.speed.clone()),
            ("bDeviceClass", d.class.clone()),
            ("bDeviceSubClass", "00".into()),
            ("bDeviceProtocol", "00".into()),
            ("devpath", d.port_path.split_once('-').map(|x| x.1.to_string()).unwrap_or_else(|| "0".into())),
            ("product", d.name.clone()),
            ("manufacturer", d.manufacturer.clone()),
            (
                "uevent",
                format!(
                    "MAJOR=189\nMINOR=0\nDEVNAME=bus/usb/{:03}/{:03}\nDEVTYPE=usb_device\nBUSNUM={:03}\nDEVNUM={:03}",
                    d.bus, d.addr, d.bus, d.addr
                ),
            ),
        ];
        if let Some(s) = &d.serial {
            files.push(("serial", s.clone()));
        }
        for (name, val) in files {
            std::fs::write(dir.join(name), format!("{val}\n")).unwrap();
        }
        // An interface directory, as the kernel has ("3-1.2:1.0"), which is not a device.
        if !d.port_path.starts_with("usb") {
            let intf = dir.join(format!("{}:1.0", d.port_path));
            std::fs::create_dir_all(&intf).unwrap();
            std::fs::write(intf.join("bInterfaceClass"), "03\n").unwrap();
            self.link(&format!("{}:1.0", d.port_path), &intf);
        }
        self.link(&d.port_path, &dir);
        self
    }

    fn link(&self, name: &str, target: &Path) {
        let link = self.root.join("sys/bus/usb/devices").join(name);
        let rel = Path::new("../../..").join(target.strip_prefix(self.root.join("sys")).unwrap());
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(rel, link).unwrap();
    }

    /// Unplug: the device dir and its links vanish (as on a real `remove`).
    pub fn remove(&self, d: &UsbDev) {
        let _ = std::fs::remove_dir_all(self.dir(d));
        let _ = std::fs::remove_file(self.root.join("sys/bus/usb/devices").join(&d.port_path));
        let _ = std::fs::remove_file(self.root.join("sys/bus/usb/devices").join(format!("{}:1.0", d.port_path)));
    }
}

/// The fixture most tests start from: a temp root whose sysfs has root hub
/// usb3 and a Logitech receiver (046d:c52b) at 3-1.2, bus 3 addr 7, and
/// `config` as the config file.
pub fn receiver_at_3_7(tag: &str, config: &str) -> (TestRoot, FakeSysfs, UsbDev) {
    let root = TestRoot::new(tag);
    let sys = FakeSysfs::new(&root);
    sys.root_hub(3);
    let dev = UsbDev::new(3, 7, "3-1.2");
    sys.device(&dev);
    root.write_config(config);
    (root, sys, dev)
}
