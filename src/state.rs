//! `<state-dir>/state.json`: what this tool put into which QEMU.
//!
//! It is a cache of QEMU's own view plus our intent (who attached what, on
//! whose behalf). Losing it is never fatal: the tool rebuilds from QEMU
//! (`backend::Link::enumerate`). It is versioned kebab-case JSON, written atomically
//! (temp file, fsync, rename, fsync dir) and only under the lock.

use crate::error::{Context, Error, Result};
use crate::types::BusAddr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const VERSION: u32 = 1;
pub const FILE: &str = "state.json";
/// `<state-dir>/attached-BBB-DDD`: an empty file for each host device that
/// state holds in a VM, named with udev's BUSNUM and DEVNUM, for the udev
/// rule to test. The kernel sends `bind` right after `add`; when the add
/// attached the device, the bind has nothing to do and the rule starts no
/// program for it (udev holds the device's later events, and every other
/// listener's view of this one, while a RUN program runs). Made again from
/// state at the end of every locked section (`State::sync_marks`): a lost
/// one costs one invocation that finds the device attached, a stale one
/// lasts until the next event that takes the lock.
pub const MARK_PREFIX: &str = "attached-";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct State {
    pub version: u32,
    #[serde(default)]
    pub vms: BTreeMap<String, VmState>,
    /// Rule-matched devices an admin detached by hand: kept out until unplugged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_out: Vec<HeldOut>,
    /// Ports a VM's device just left (`follow-seconds`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<Lineage>,
}

/// A device of a VM's left its port: a device no rule routes that comes
/// into the same socket within `follow-seconds` goes to the same VM (a
/// firmware updater's DFU mode, a phone's MTP -> adb switch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Lineage {
    pub port_path: String,
    pub vm: String,
    /// The identity that left (`vvvv:pppp`), for the log.
    pub usb_id: String,
    /// When it left, in seconds since the epoch.
    pub left: u64,
}

impl Default for State {
    fn default() -> Self {
        State { version: VERSION, vms: BTreeMap::new(), held_out: Vec::new(), lineage: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VmState {
    /// The QMP socket (as configured, not under --root) last used for this VM.
    pub socket: PathBuf,
    /// Identity of the QEMU behind the socket (socket inode and ctime). A new
    /// QEMU (VM restart) makes a new socket, so a mismatch means "rebuild".
    pub instance: String,
    /// Xen domain id, when the VM was found by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domid: Option<u32>,
    #[serde(default)]
    pub controllers: Vec<Controller>,
    #[serde(default)]
    pub devices: Vec<Attached>,
    /// Ports on our controllers held by devices that are not ours (libxl's,
    /// anonymous ones): "xenusb-0:4".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign_ports: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Controller {
    pub id: String,
    pub driver: String,
    /// Ports 1..=ports take USB 1/2 devices (xhci: p2; uhci 2, ehci 6).
    pub ports: u8,
    /// xhci: ports 1..=usb3_ports (p3) also take USB 3 devices. QEMU's bus
    /// has max(p2, p3) ports; each holds one device of either speed.
    #[serde(default)]
    pub usb3_ports: u8,
    /// Who created it; only the tool's own are ever the tool's to manage.
    /// Missing in state written before 0.2: those were all `xenusb-N`, the
    /// tool's (or libxl's, which the Xen backend marks on every read).
    #[serde(default, skip_serializing_if = "CtrlOrigin::is_tool")]
    pub origin: CtrlOrigin,
    /// The USB bus QEMU gives it, when not `<id>.0`: a controller created
    /// without an id (`-usb` makes `usb-bus.0`), whose `id` is then its QOM path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bus: String,
    /// An EHCI with UHCI companions wired to its bus (`masterbus`, as `-usb`
    /// on q35 builds it): its ports take full- and low-speed devices too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub companions: bool,
}

/// Where a controller came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CtrlOrigin {
    /// Created by this tool (`xenusb-N` on a plain QEMU VM).
    #[default]
    Tool,
    /// Part of the VM as it was started (`-device qemu-xhci`, `-usb`, libvirt's).
    Vm,
    /// libxl's (`xenusb-N` that libxl records: `usbctrl` in the domain's config,
    /// `xl usbctrl-attach`, or the tool's own, recorded as libxl would).
    Libxl,
}

impl CtrlOrigin {
    pub fn is_tool(&self) -> bool {
        *self == CtrlOrigin::Tool
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CtrlOrigin::Tool => "this tool",
            CtrlOrigin::Vm => "the VM's own",
            CtrlOrigin::Libxl => "libxl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Attached because a config rule routes it here (udev event or sync).
    Rule,
    /// Attached by hand with `attach`.
    Manual,
    /// Found in QEMU when rebuilding; we do not know who asked for it.
    Found,
    /// Found in QEMU and recorded by libxl (`xl usbdev-attach`): xl's, left
    /// alone while plugged in, cleaned out of QEMU and xenstore on unplug.
    Xl,
    /// Came into the socket a VM's device had just left (`follow-seconds`):
    /// no rule routes it, and `sync` leaves it where it followed.
    Followed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Attached {
    pub id: String,
    pub bus: u16,
    pub addr: u16,
    pub controller: String,
    pub port: u8,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port_path: String,
    /// "046d:c52b"; empty when rebuilt from QEMU.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub usb_id: String,
    /// The device's serial (iSerial), when it has one: with `usb_id` and
    /// `port_path`, what makes "already attached" mean the same device.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial: String,
    pub origin: Origin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HeldOut {
    pub bus: u16,
    pub addr: u16,
    pub vm: String,
}

/// The mark of host device `at`: `attached-001-005` (udev's zero-padded
/// BUSNUM and DEVNUM, as the rule's `$env{BUSNUM}-$env{DEVNUM}` spells them).
pub fn mark_name(at: BusAddr) -> String {
    format!("{MARK_PREFIX}{:03}-{:03}", at.bus, at.addr)
}

impl Attached {
    pub fn at(&self) -> BusAddr {
        BusAddr::new(self.bus, self.addr)
    }
}

impl State {
    pub fn parse_str(text: &str) -> Result<State> {
        let s: State = serde_json::from_str(text).context("not valid state JSON")?;
        if s.version != VERSION {
            crate::bail!("state version {} (this tool writes {VERSION})", s.version);
        }
        Ok(s)
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("state serialises");
        s.push('\n');
        s
    }

    /// Load from `dir`. Missing: empty. Anything that is not a readable
    /// regular file of valid state (a directory, a symlink, a FIFO, a huge
    /// or corrupt file): moved aside to `state.json.bad` (kept for
    /// inspection) and rebuilt from QEMU later, so that no bad file can
    /// wedge every later invocation.
    pub fn load(dir: &Path) -> Result<State> {
        State::load_from(&crate::fsio::Dir::create(dir)?)
    }

    /// `load`, through a directory already opened and checked.
    pub(crate) fn load_from(d: &crate::fsio::Dir) -> Result<State> {
        let why = match d.read(FILE, crate::fsio::READ_CAP) {
            Err(crate::fsio::ReadError::Missing) => return Ok(State::default()),
            Ok(bytes) => match std::str::from_utf8(&bytes).map_err(|e| Error::caused("not UTF-8", e)) {
                Ok(text) => match State::parse_str(text) {
                    Ok(s) => return Ok(s),
                    Err(e) => format!("{e:#}"),
                },
                Err(e) => format!("{e:#}"),
            },
            Err(e) => e.to_string(),
        };
        let aside = d
            .move_aside(FILE, &format!("{FILE}.bad"))
            .with_context(|| format!("{}: {why}; cannot move it aside", d.shown(FILE)))?;
        log::warn!("{}: {why}; moved to {} and rebuilding from QEMU", d.shown(FILE), d.shown(&aside));
        Ok(State::default())
    }

    /// Atomic replace: a crash leaves either the old or the new file, whole;
    /// never written through a symlink, mode 0644 whatever the umask.
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.save_to(&crate::fsio::Dir::create(dir)?)
    }

    /// `save`, through a directory already opened and checked.
    pub(crate) fn save_to(&self, d: &crate::fsio::Dir) -> Result<()> {
        d.write_atomic(FILE, self.to_json().as_bytes(), crate::fsio::FILE_MODE)
            .with_context(|| format!("cannot write {}", d.shown(FILE)))
    }

    /// Make `<state-dir>/attached-*` (`MARK_PREFIX`) what this state holds.
    pub(crate) fn sync_marks(&self, d: &crate::fsio::Dir) -> Result<()> {
        let want: std::collections::BTreeSet<String> =
            self.vms.values().flat_map(|v| &v.devices).map(|a| mark_name(a.at())).collect();
        let have: std::collections::BTreeSet<String> = d.names_with_prefix(MARK_PREFIX)?.into_iter().collect();
        for gone in have.difference(&want) {
            d.remove(gone)?;
        }
        for new in want.difference(&have) {
            // Empty, never through a symlink, a regular file of exactly this mode.
            d.open_rw(new, crate::fsio::FILE_MODE)?;
        }
        Ok(())
    }

    /// State as last saved, read without the lock (it is replaced
    /// atomically); empty when missing or unusable (nothing is moved).
    pub fn peek(dir: &Path) -> State {
        let Ok(d) = crate::fsio::Dir::open(dir) else { return State::default() };
        d.read(FILE, crate::fsio::READ_CAP)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| State::parse_str(&t).ok())
            .unwrap_or_default()
    }

    /// Which VM holds host device bus:addr, by our records.
    pub fn find(&self, bus: u16, addr: u16) -> Option<(&str, &Attached)> {
        self.vms.iter().find_map(|(name, vm)| {
            vm.devices.iter().find(|d| d.bus == bus && d.addr == addr).map(|d| (name.as_str(), d))
        })
    }

    pub fn is_held_out(&self, bus: u16, addr: u16) -> bool {
        self.held_out.iter().any(|h| h.bus == bus && h.addr == addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        let mut s = State::default();
        s.vms.insert(
            "win10".into(),
            VmState {
                socket: "/run/xen/qmp-libxl-7".into(),
                instance: "1234:1764012345.000000123".into(),
                domid: Some(7),
                controllers: vec![Controller {
                    id: "xenusb-0".into(),
                    driver: "nec-usb-xhci".into(),
                    ports: 15,
                    usb3_ports: 15,
                    ..Default::default()
                }],
                devices: vec![Attached {
                    id: "xenusb-3-7".into(),
                    bus: 3,
                    addr: 7,
                    controller: "xenusb-0".into(),
                    port: 1,
                    port_path: "3-1.2".into(),
                    usb_id: "046d:c52b".into(),
                    serial: String::new(),
                    origin: Origin::Rule,
                }],
                foreign_ports: vec![],
            },
        );
        s.held_out.push(HeldOut { bus: 3, addr: 9, vm: "win10".into() });
        s
    }

    #[test]
    fn golden_fixture_round_trips() {
        let golden = include_str!("../tests/fixtures/state-v1.json");
        assert_eq!(sample().to_json(), golden, "serialised form changed: update the fixture deliberately");
        assert_eq!(State::parse_str(golden).unwrap(), sample());
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        assert!(State::parse_str("{\"version\": 2}").unwrap_err().to_string().contains("version 2"));
        assert!(State::parse_str("{nope").is_err());
        assert!(State::parse_str("{\"version\":1,\"extra\":1}").is_err());
    }

    #[test]
    fn load_save_and_corrupt_file_moved_aside() {
        let dir = std::env::temp_dir().join(format!("aua-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(State::load(&dir).unwrap(), State::default());
        sample().save(&dir).unwrap();
        assert_eq!(State::load(&dir).unwrap(), sample());
        std::fs::write(dir.join(FILE), "{\"version\":1,").unwrap();
        assert_eq!(State::load(&dir).unwrap(), State::default());
        assert_eq!(std::fs::read_to_string(dir.join("state.json.bad")).unwrap(), "{\"version\":1,");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
