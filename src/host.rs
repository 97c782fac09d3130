//! The host side: USB devices as sysfs shows them, and udev events as the
//! RUN environment describes them.
//!
//! On `remove` sysfs is already gone, so an event carries everything the
//! tool needs in its environment; on `add`/`bind` sysfs fills in what udev
//! does not export (speed, serial).

use crate::error::{Context, Error, Result};
use crate::root::Root;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const SYS_USB_DEVICES: &str = "/sys/bus/usb/devices";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct HostDevice {
    pub bus: u16,
    pub addr: u16,
    /// sysfs name: "3-1.2" (a port path) or "usb3" (a root hub).
    pub port_path: String,
    #[serde(serialize_with = "hex4")]
    pub vendor: u16,
    #[serde(serialize_with = "hex4")]
    pub product: u16,
    pub serial: Option<String>,
    pub class: u8,
    /// sysfs `speed` in Mbit/s as the kernel writes it: "1.5", "12", "480", "5000", ...
    pub speed: String,
    pub manufacturer: Option<String>,
    pub name: Option<String>,
    /// The other half of its socket: a USB 3 port and its USB 2 companion are
    /// peers (sysfs `port/peer`), so a stick in socket 4 of a USB 3 root hub
    /// is "2-4" and its peer "1-4". None when the kernel names no peer (or on
    /// `remove`, when sysfs is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_port_path: Option<String>,
    /// Every interface's class (`bInterfaceClass`), once the kernel has
    /// configured the device: not always yet at `add` (they come before `bind`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interface_classes: Vec<u8>,
    /// sysfs `authorized`: false while the host's policy (USBGuard,
    /// `authorized_default`) keeps the device out.
    pub authorized: bool,
    /// Why the host itself uses it: a disk of it mounted, or in use as swap,
    /// RAID or LVM. Such a device never goes to a VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_use: Option<String>,
}

fn hex4<S: serde::Serializer>(v: &u16, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:04x}"))
}

impl HostDevice {
    pub fn is_root_hub(&self) -> bool {
        self.port_path.starts_with("usb")
    }
    pub fn is_hub(&self) -> bool {
        self.class == 9
    }
    /// SuperSpeed (USB 3) devices go to an xHCI controller's USB 3 ports.
    pub fn is_superspeed(&self) -> bool {
        self.speed.parse::<f64>().is_ok_and(|s| s >= 5000.0)
    }
    /// The node QEMU opens itself with `hostdevice=` (see `plan::attach_args`).
    pub fn speed_class(&self) -> crate::types::Speed {
        crate::types::Speed::from_sysfs(&self.speed)
    }

    pub fn at(&self) -> crate::types::BusAddr {
        crate::types::BusAddr::new(self.bus, self.addr)
    }

    pub fn devname(&self) -> String {
        devname(self.bus, self.addr)
    }
    pub fn id_string(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor, self.product)
    }
}

#[cfg(test)]
impl HostDevice {
    /// A plain full-speed device for unit tests; tests adjust fields as needed.
    pub fn fixture(bus: u16, addr: u16, port_path: &str, vendor: u16, product: u16) -> HostDevice {
        HostDevice {
            bus,
            addr,
            port_path: port_path.into(),
            vendor,
            product,
            serial: None,
            class: 0,
            speed: "12".into(),
            manufacturer: None,
            name: None,
            peer_port_path: None,
            interface_classes: Vec::new(),
            authorized: true,
            in_use: None,
        }
    }
}

pub fn devname(bus: u16, addr: u16) -> String {
    format!("/dev/bus/usb/{bus:03}/{addr:03}")
}

fn read_attr(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok().map(|s| s.trim_end_matches('\n').to_string()).filter(|s| !s.is_empty())
}

fn num_attr<T: TryFrom<u32>>(dir: &Path, name: &str, radix16: bool) -> Result<T> {
    let s = read_attr(dir, name).ok_or_else(|| Error::new(format!("{}: missing {name}", dir.display())))?;
    let n = if radix16 { u32::from_str_radix(&s, 16) } else { s.parse::<u32>() };
    n.ok().and_then(|n| T::try_from(n).ok()).ok_or_else(|| Error::new(format!("{}: bad {name} {s:?}", dir.display())))
}

/// Read one device directory (`/sys/bus/usb/devices/3-1.2` or the DEVPATH
/// dir); `root` is where `/proc` is, for what the host uses of it.
pub fn read_device(root: &Root, dir: &Path) -> Result<HostDevice> {
    let port_path = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::new(format!("{}: not a device directory", dir.display())))?
        .to_string();
    Ok(HostDevice {
        bus: num_attr(dir, "busnum", false)?,
        addr: num_attr(dir, "devnum", false)?,
        vendor: num_attr(dir, "idVendor", true)?,
        product: num_attr(dir, "idProduct", true)?,
        class: num_attr(dir, "bDeviceClass", true)?,
        serial: read_attr(dir, "serial"),
        speed: read_attr(dir, "speed").unwrap_or_else(|| "480".into()),
        manufacturer: read_attr(dir, "manufacturer"),
        name: read_attr(dir, "product"),
        peer_port_path: std::fs::read_link(dir.join("port/peer"))
            .ok()
            .and_then(|t| t.file_name().and_then(|n| n.to_str()).and_then(port_dir_to_path)),
        interface_classes: interface_classes(dir, &port_path),
        authorized: read_attr(dir, "authorized").is_none_or(|a| a != "0"),
        in_use: None,
        port_path,
    })
    .map(|mut d| {
        if d.class == MASS_STORAGE || d.interface_classes.contains(&MASS_STORAGE) {
            d.in_use = in_use(root, dir);
        }
        d
    })
}

/// USB class 08: mass storage (sticks, disks, card readers; UAS too).
const MASS_STORAGE: u8 = 0x08;

/// The classes of the device's interfaces (`3-1.2:1.0/bInterfaceClass`, ...).
fn interface_classes(dir: &Path, port_path: &str) -> Vec<u8> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<u8> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| n.strip_prefix(port_path).is_some_and(|r| r.starts_with(':')))
        })
        .filter_map(|e| read_attr(&e.path(), "bInterfaceClass").and_then(|c| u8::from_str_radix(&c, 16).ok()))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The host's own use of a mass-storage device's disks: the first of a
/// partition or disk mounted (`/proc/self/mountinfo`), used as swap
/// (`/proc/swaps`), or held by RAID, LVM or dm-crypt (sysfs `holders`).
fn in_use(root: &Root, dir: &Path) -> Option<String> {
    let disks = block_devices(dir);
    if disks.is_empty() {
        return None;
    }
    let mountinfo = std::fs::read_to_string(root.path("/proc/self/mountinfo")).unwrap_or_default();
    let swaps = std::fs::read_to_string(root.path("/proc/swaps")).unwrap_or_default();
    for (name, devno, holders) in &disks {
        // mountinfo: "36 35 8:1 / /boot rw,... - ext4 /dev/sdb1 rw"
        if let Some(at) = mountinfo.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&devno.as_str())).then(|| f.get(4).map(|m| m.to_string())).flatten()
        }) {
            return Some(format!("its disk {name} is mounted on {at}"));
        }
        if swaps.lines().skip(1).any(|l| l.split_whitespace().next() == Some(&format!("/dev/{name}"))) {
            return Some(format!("its disk {name} is in use as swap"));
        }
        if let Some(h) = holders.first() {
            return Some(format!("its disk {name} is held by {h} (RAID, LVM or dm-crypt)"));
        }
    }
    None
}

/// Block devices below a USB device's sysfs dir: (name, "major:minor",
/// holders) for each disk and partition. Symlinks are not followed (sysfs
/// has loops); the depth is bounded (usb -> interface -> host -> target ->
/// lun -> block -> disk -> partition).
fn block_devices(dir: &Path) -> Vec<(String, String, Vec<String>)> {
    fn walk(dir: &Path, depth: u8, in_block: bool, out: &mut Vec<(String, String, Vec<String>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.filter_map(|e| e.ok()) {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if in_block {
                if let Some(devno) = read_attr(&path, "dev") {
                    let holders = std::fs::read_dir(path.join("holders"))
                        .map(|h| {
                            h.filter_map(|h| h.ok()).map(|h| h.file_name().to_string_lossy().into_owned()).collect()
                        })
                        .unwrap_or_default();
                    out.push((name.clone(), devno, holders));
                    // Its partitions are directories of the disk.
                    walk(&path, 0, true, out);
                }
                continue;
            }
            if depth > 0 {
                walk(&path, depth - 1, name == "block", out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, 7, false, &mut out);
    out
}

/// A port's sysfs directory name as the device path in it would be named:
/// "usb1-port4" -> "1-4" (a root hub's port), "1-4-port3" -> "1-4.3".
pub fn port_dir_to_path(port_dir: &str) -> Option<String> {
    let (hub, n) = port_dir.rsplit_once("-port")?;
    let n: u8 = n.parse().ok().filter(|n| *n > 0)?;
    match hub.strip_prefix("usb") {
        Some(bus) if bus.parse::<u16>().is_ok() => Some(format!("{bus}-{n}")),
        Some(_) => None,
        None => Some(format!("{hub}.{n}")),
    }
}

/// Every USB device (not interface) the host has, sorted by bus and address.
pub fn scan(root: &Root) -> Result<Vec<HostDevice>> {
    let dir = root.path(SYS_USB_DEVICES);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        // No USB at all (or no sysfs in a test root): simply no devices.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).context(format!("cannot list {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        // Interfaces are "3-1.2:1.0"; devices have no colon.
        if name.contains(':') {
            continue;
        }
        match read_device(root, &e.path()) {
            Ok(d) => out.push(d),
            // A device unplugged mid-scan, or a half-written fixture: skip, say so.
            Err(err) => log::debug!("skipping {name}: {err}"),
        }
    }
    out.sort_by_key(|d| (d.bus, d.addr));
    Ok(out)
}

pub fn find(root: &Root, bus: u16, addr: u16) -> Result<HostDevice> {
    scan(root)?
        .into_iter()
        .find(|d| d.bus == bus && d.addr == addr)
        .ok_or_else(|| Error::new(format!("no USB device at bus {bus} address {addr} on this host")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Add,
    Bind,
    /// The device changed: on USB, the host's policy authorized it
    /// (`authorized` 0 -> 1 gives the device only a `change`).
    Change,
    Remove,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Bind => "bind",
            Action::Change => "change",
            Action::Remove => "remove",
        }
    }
}

/// One udev event for a USB device, as the RUN program's environment gives it
/// (and as `queue` keeps it for the lock's holder).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct UdevEvent {
    pub action: Action,
    pub bus: u16,
    pub addr: u16,
    pub devpath: String,
    pub vendor: Option<u16>,
    pub product: Option<u16>,
    pub serial: Option<String>,
    pub class: Option<u8>,
}

impl UdevEvent {
    /// Parse the environment. `Ok(None)`: an event we do not act on
    /// (other actions, interfaces, other subsystems).
    pub fn from_env(env: &HashMap<String, String>) -> Result<Option<UdevEvent>> {
        let get = |k: &str| env.get(k).map(|s| s.as_str()).filter(|s| !s.is_empty());
        let action = match get("ACTION") {
            Some("add") => Action::Add,
            Some("bind") => Action::Bind,
            Some("change") => Action::Change,
            Some("remove") => Action::Remove,
            Some(_) => return Ok(None),
            None => return Err(Error::new("udev event: ACTION is not set (run by udev? by hand use attach/detach)")),
        };
        if get("SUBSYSTEM").is_some_and(|s| s != "usb") || get("DEVTYPE").is_some_and(|t| t != "usb_device") {
            return Ok(None);
        }
        // Bus numbers are 1..=999 (3 digits in /dev/bus/usb); USB addresses 1..=127.
        let num = |k: &str, max: u16| -> Result<u16> {
            let v = get(k).ok_or_else(|| Error::new(format!("udev event: {k} is not set")))?;
            v.parse::<u16>()
                .ok()
                .filter(|n| (1..=max).contains(n) && v.len() <= 3 && v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| Error::new(format!("udev event: {k}={v:?} is not a number 1..{max}")))
        };
        // Address 0 is no address: the device is being reset (the kernel
        // sends one as QEMU lets go of a device it had). Nothing to act on.
        if get("DEVNUM").is_some_and(|v| v.len() <= 3 && v.bytes().all(|b| b == b'0')) {
            log::debug!("ignoring {} of {:?}: DEVNUM 000, no address (being reset)", action.as_str(), get("DEVPATH"));
            return Ok(None);
        }
        let bus = num("BUSNUM", 999)?;
        let addr = num("DEVNUM", 127)?;
        let devpath = get("DEVPATH").ok_or_else(|| Error::new("udev event: DEVPATH is not set"))?;
        if !devpath.starts_with("/devices/") || devpath.split('/').any(|c| c == "..") {
            return Err(Error::new(format!("udev event: DEVPATH={devpath:?} is not a /devices path")));
        }
        // PRODUCT is the kernel's own "vid/pid/bcd" in unpadded hex; ID_* come
        // from udev's usb_id builtin and may be missing (always on remove).
        let product_env: Vec<&str> = get("PRODUCT").map(|p| p.split('/').collect()).unwrap_or_default();
        // Named after the variable the value came from; hex digits only
        // (from_str_radix alone would take "+46d").
        let hex = |id: &str, idx: usize| -> Result<Option<u16>> {
            let (name, v) = match (get(id), product_env.get(idx).copied()) {
                (Some(v), _) => (id, v),
                (None, Some(v)) => ("PRODUCT", v),
                (None, None) => return Ok(None),
            };
            let hex = !v.is_empty() && v.len() <= 4 && v.bytes().all(|c| c.is_ascii_hexdigit());
            u16::from_str_radix(v, 16).ok().filter(|_| hex).map(Some).ok_or_else(|| {
                let shown = if name == "PRODUCT" { get("PRODUCT").unwrap_or(v) } else { v };
                Error::new(format!("udev event: {name}={shown:?} is not a hex USB id"))
            })
        };
        let class = match get("TYPE") {
            None => None,
            Some(t) => Some(
                t.split('/')
                    .next()
                    .and_then(|c| c.parse::<u8>().ok())
                    .ok_or_else(|| Error::new(format!("udev event: TYPE={t:?} is not class/subclass/protocol")))?,
            ),
        };
        Ok(Some(UdevEvent {
            action,
            bus,
            addr,
            devpath: devpath.to_string(),
            vendor: hex("ID_VENDOR_ID", 0)?,
            product: hex("ID_MODEL_ID", 1)?,
            serial: get("ID_SERIAL_SHORT").map(str::to_string),
            class,
        }))
    }

    pub fn port_path(&self) -> &str {
        self.devpath.rsplit('/').next().unwrap_or("")
    }

    pub fn sysfs_dir(&self, root: &Root) -> PathBuf {
        root.path(format!("/sys{}", self.devpath))
    }

    /// The device as the host has it: sysfs when present (add/bind), else
    /// what the event itself says.
    pub fn device(&self, root: &Root) -> Result<HostDevice> {
        let dir = self.sysfs_dir(root);
        if let Ok(mut d) = read_device(root, &dir) {
            if (d.bus, d.addr) != (self.bus, self.addr) {
                return Err(Error::new(format!(
                    "udev event for {}:{} but sysfs {} says {}:{}",
                    self.bus,
                    self.addr,
                    dir.display(),
                    d.bus,
                    d.addr
                )));
            }
            if d.serial.is_none() {
                d.serial = self.serial.clone();
            }
            return Ok(d);
        }
        let (Some(vendor), Some(product)) = (self.vendor, self.product) else {
            return Err(Error::new(format!(
                "udev event for {}:{}: no PRODUCT/ID_VENDOR_ID and no sysfs at {}",
                self.bus,
                self.addr,
                dir.display()
            )));
        };
        Ok(HostDevice {
            bus: self.bus,
            addr: self.addr,
            port_path: self.port_path().to_string(),
            vendor,
            product,
            serial: self.serial.clone(),
            class: self.class.unwrap_or(0),
            speed: "480".into(),
            manufacturer: None,
            name: None,
            peer_port_path: None,
            interface_classes: Vec::new(),
            authorized: true,
            in_use: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_directory_names_the_device_path_in_it() {
        assert_eq!(port_dir_to_path("usb1-port4").as_deref(), Some("1-4"));
        assert_eq!(port_dir_to_path("usb12-port15").as_deref(), Some("12-15"));
        assert_eq!(port_dir_to_path("1-4-port3").as_deref(), Some("1-4.3"));
        assert_eq!(port_dir_to_path("2-1.2-port1").as_deref(), Some("2-1.2.1"));
        for bad in ["usb1", "usbx-port1", "1-4-port0", "port3", "1-4-portx"] {
            assert_eq!(port_dir_to_path(bad), None, "{bad}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const ADD: &[(&str, &str)] = &[
        ("ACTION", "add"),
        ("SUBSYSTEM", "usb"),
        ("DEVTYPE", "usb_device"),
        ("BUSNUM", "001"),
        ("DEVNUM", "006"),
        ("DEVPATH", "/devices/pci0000:00/0000:00:04.0/usb1/1-4/1-4.1"),
        ("PRODUCT", "627/1/0"),
        ("TYPE", "0/0/0"),
        ("ID_VENDOR_ID", "0627"),
        ("ID_MODEL_ID", "0001"),
    ];

    #[test]
    fn parses_an_add_event() {
        let e = UdevEvent::from_env(&env(ADD)).unwrap().unwrap();
        assert_eq!((e.action, e.bus, e.addr), (Action::Add, 1, 6));
        assert_eq!(e.port_path(), "1-4.1");
        assert_eq!((e.vendor, e.product, e.class), (Some(0x627), Some(1), Some(0)));
    }

    #[test]
    fn remove_falls_back_to_product() {
        let mut m = env(ADD);
        m.insert("ACTION".into(), "remove".into());
        m.remove("ID_VENDOR_ID");
        m.remove("ID_MODEL_ID");
        m.insert("PRODUCT".into(), "46d/c52b/1201".into());
        let e = UdevEvent::from_env(&m).unwrap().unwrap();
        assert_eq!((e.action, e.vendor, e.product), (Action::Remove, Some(0x46d), Some(0xc52b)));
        // sysfs is gone: the device is built from the event alone
        let d = e.device(&Root::new("/nonexistent-root")).unwrap();
        assert_eq!((d.bus, d.addr, d.port_path.as_str()), (1, 6, "1-4.1"));
    }

    #[test]
    fn ignores_other_actions_and_interfaces() {
        let mut m = env(ADD);
        m.insert("ACTION".into(), "unbind".into());
        assert_eq!(UdevEvent::from_env(&m).unwrap(), None);
        // `change` is how a device arrives once the host's policy authorizes it.
        m.insert("ACTION".into(), "change".into());
        assert_eq!(UdevEvent::from_env(&m).unwrap().map(|e| e.action), Some(Action::Change));
        let mut m = env(ADD);
        m.insert("DEVTYPE".into(), "usb_interface".into());
        assert_eq!(UdevEvent::from_env(&m).unwrap(), None);
    }

    #[test]
    fn a_device_without_an_address_is_ignored() {
        for action in ["add", "bind", "change", "remove"] {
            for zero in ["000", "0"] {
                let mut m = env(ADD);
                m.insert("ACTION".into(), action.into());
                m.insert("DEVNUM".into(), zero.into());
                assert_eq!(UdevEvent::from_env(&m).unwrap(), None, "{action} DEVNUM={zero}");
            }
        }
    }

    #[test]
    fn bad_env_names_the_variable() {
        for (k, v) in [
            ("BUSNUM", "abc"),
            ("DEVNUM", "-1"),
            ("DEVNUM", "0000"),
            ("DEVNUM", "1000"),
            ("DEVNUM", "128"),
            ("ID_VENDOR_ID", "+46d"),
            ("ID_VENDOR_ID", "10000"),
            ("DEVPATH", "/etc/../x"),
            ("TYPE", "x"),
            ("ID_VENDOR_ID", "zz"),
        ] {
            let mut m = env(ADD);
            m.insert(k.into(), v.into());
            let e = UdevEvent::from_env(&m).unwrap_err().to_string();
            assert!(e.contains(k), "{e}");
        }
        let mut m = env(ADD);
        m.remove("BUSNUM");
        assert!(UdevEvent::from_env(&m).unwrap_err().to_string().contains("BUSNUM"));
        assert!(UdevEvent::from_env(&HashMap::new()).unwrap_err().to_string().contains("ACTION"));
        // A bad PRODUCT (no ID_* to override it) is reported as PRODUCT.
        let mut m = env(ADD);
        m.remove("ID_VENDOR_ID");
        m.remove("ID_MODEL_ID");
        m.insert("PRODUCT".into(), "46d/zz/1".into());
        let e = UdevEvent::from_env(&m).unwrap_err().to_string();
        assert!(e.contains("PRODUCT=\"46d/zz/1\"") && !e.contains("ID_"), "{e}");
        let mut m = env(ADD);
        m.insert("DEVNUM".into(), "127".into());
        assert_eq!(UdevEvent::from_env(&m).unwrap().unwrap().addr, 127);
    }

    #[test]
    fn speed_classes() {
        let mut d = HostDevice::fixture(1, 2, "1-1", 1, 2);
        d.speed = "1.5".into();
        assert!(!d.is_superspeed());
        d.speed = "5000".into();
        assert!(d.is_superspeed());
        assert_eq!(d.devname(), "/dev/bus/usb/001/002");
    }
}
