//! `/etc/auto-usb-attach.toml`: which VM gets which hubs and devices.
//!
//! Parsing (`parse_str`) is pure so tests feed it strings; `load` adds the file
//! I/O. Every error is one line naming the file, the key and the problem.

use crate::error::{Error, ErrorKind, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PATH: &str = "/etc/auto-usb-attach.toml";
/// libvirt's connection URI when a `backend = "libvirt"` VM names none.
pub const DEFAULT_LIBVIRT_URI: &str = "qemu:///system";
/// Bounds of `timeout`, in seconds.
pub const MIN_TIMEOUT: f64 = 0.1;
pub const MAX_TIMEOUT: f64 = 120.0;
/// libxl's XEN_LIB_DIR on Debian and upstream: its lock files live there.
pub const DEFAULT_XEN_LIB_DIR: &str = "/var/lib/xen";
/// `follow-seconds` unless set: a DFU or MTP -> adb switch comes back within seconds.
pub const DEFAULT_FOLLOW_SECONDS: u64 = 10;
pub const MAX_FOLLOW_SECONDS: i64 = 3600;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub state_dir: PathBuf,
    pub xen_run_dir: PathBuf,
    /// libxl's XEN_LIB_DIR, where its lock files live (`userdata-l.<domid>.<uuid>.<lock>`).
    pub xen_lib_dir: PathBuf,
    /// `hook`: program and arguments run after each outcome; empty: none.
    pub hook: Vec<String>,
    pub timeout: Duration,
    pub log_file: Option<PathBuf>,
    pub vms: Vec<VmConfig>,
    /// `follow-seconds`: how long a VM keeps a port after its device left,
    /// for a device no rule routes (a re-enumeration under a new identity).
    /// Zero: never.
    pub follow: Duration,
    /// `deny`: what no rule may route, nor `attach` by hand.
    pub deny: Vec<DenyRule>,
    /// `pass-unauthorized`: attach devices the host's policy keeps
    /// unauthorized (sysfs `authorized` = 0) too.
    pub pass_unauthorized: bool,
}

/// One `deny` entry: beats every routing rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyRule {
    /// `vvvv:pppp[:serial]`.
    Device(DeviceRule),
    /// A port path (or `usbN`): that port, what is behind it, and its socket's other half.
    Port(HubRule),
    /// `class:XX`: a USB class code, matched against the device's class and
    /// every interface's (`class:08`: mass storage).
    Class(u8),
}

impl DenyRule {
    pub fn parse(s: &str) -> Result<DenyRule> {
        if let Some(c) = s.strip_prefix("class:") {
            return Some(c)
                .filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|c| u8::from_str_radix(c, 16).ok())
                .map(DenyRule::Class)
                .ok_or_else(|| {
                    Error::of(ErrorKind::Config, format!("{s:?}: a class is two hex digits, like \"class:08\""))
                });
        }
        if s.contains(':') {
            return DeviceRule::parse(s).map(DenyRule::Device);
        }
        HubRule::parse(s).map(DenyRule::Port)
    }
}

impl std::fmt::Display for DenyRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DenyRule::Device(d) => {
                write!(f, "{:04x}:{:04x}", d.vendor, d.product)?;
                match &d.serial {
                    Some(s) => write!(f, ":{s}"),
                    None => Ok(()),
                }
            }
            DenyRule::Port(HubRule::Bus(b)) => write!(f, "usb{b}"),
            DenyRule::Port(HubRule::Port(p)) => f.write_str(p),
            DenyRule::Class(c) => write!(f, "class:{c:02x}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsbVersion {
    /// piix3-usb-uhci, 2 full-speed ports.
    V1,
    /// usb-ehci, 6 high-speed ports.
    V2,
    /// nec-usb-xhci with p2 = p3 = ports.
    V3,
}

/// Who owns a VM, and so how the tool changes it (`backend = ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A QEMU/KVM VM with its own QMP socket (`qmp = ...`).
    Qemu,
    /// A Xen HVM domain found by name, with libxl's records kept.
    Xen,
    /// A libvirt-managed domain, changed only through libvirtd.
    Libvirt,
}

/// Where a libvirt domain is: libvirt's connection URI and the domain's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtTarget {
    pub uri: String,
    pub domain: String,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Qemu => "qemu",
            BackendKind::Xen => "xen",
            BackendKind::Libvirt => "libvirt",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    pub name: String,
    pub backend: BackendKind,
    /// Explicit QMP socket (backend qemu); None for a Xen domain, found by name.
    pub qmp: Option<PathBuf>,
    /// backend libvirt: where the domain is.
    pub libvirt: Option<LibvirtTarget>,
    pub usb_version: UsbVersion,
    /// xhci: p2 = p3 = ports, so `ports` devices of any speed. uhci/ehci: fixed 2/6.
    pub ports: u8,
    pub max_controllers: u8,
    pub hubs: Vec<HubRule>,
    pub devices: Vec<DeviceRule>,
}

/// A place in the host's USB tree: a whole bus (`usb3`) or a port path
/// (`1-4`, `1-4.2`) and everything plugged below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubRule {
    Bus(u16),
    Port(String),
}

impl HubRule {
    pub fn parse(s: &str) -> Result<HubRule> {
        if let Some(n) = s.strip_prefix("usb") {
            return n
                .parse::<u16>()
                .ok()
                .filter(|v| *v > 0 && n.bytes().all(|c| c.is_ascii_digit()))
                .map(HubRule::Bus)
                .ok_or_else(|| {
                    Error::of(ErrorKind::Config, format!("{s:?} is not usbN or a port path like \"1-4.2\""))
                });
        }
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
        let ok = s.split_once('-').is_some_and(|(bus, path)| {
            digits(bus)
                && bus.parse::<u16>().is_ok_and(|b| b > 0)
                && !path.is_empty()
                && path.split('.').all(|p| digits(p) && p.parse::<u8>().is_ok_and(|p| p > 0))
        });
        if !ok {
            return Err(Error::of(ErrorKind::Config, format!("{s:?} is not usbN or a port path like \"1-4.2\"")));
        }
        Ok(HubRule::Port(s.to_string()))
    }

    /// Does a device at sysfs name `port_path` (e.g. "1-4.1") sit at or below this place?
    pub fn covers(&self, bus: u16, port_path: &str) -> bool {
        match self {
            HubRule::Bus(b) => *b == bus,
            HubRule::Port(p) => {
                port_path == p || port_path.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('.'))
            }
        }
    }
}

impl std::fmt::Display for HubRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubRule::Bus(b) => write!(f, "usb{b}"),
            HubRule::Port(p) => f.write_str(p),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub vendor: u16,
    pub product: u16,
    pub serial: Option<String>,
}

impl DeviceRule {
    pub fn parse(s: &str) -> Result<DeviceRule> {
        let bad =
            || Error::of(ErrorKind::Config, format!("{s:?} is not vendor:product[:serial] in hex, like \"046d:c52b\""));
        let mut it = s.splitn(3, ':');
        // Exactly 4 hex digits: from_str_radix alone would also take "+46d".
        let hex4 = |p: Option<&str>| {
            p.filter(|p| p.len() == 4 && p.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        let vendor = hex4(it.next()).ok_or_else(bad)?;
        let product = hex4(it.next()).ok_or_else(bad)?;
        let serial = match it.next() {
            Some("") => return Err(bad()),
            Some(s) => Some(s.to_string()),
            None => None,
        };
        Ok(DeviceRule { vendor, product, serial })
    }

    pub fn covers(&self, vendor: u16, product: u16, serial: Option<&str>) -> bool {
        self.vendor == vendor
            && self.product == product
            && self.serial.as_deref().is_none_or(|want| serial == Some(want))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    state_dir: Option<PathBuf>,
    xen_run_dir: Option<PathBuf>,
    xen_lib_dir: Option<PathBuf>,
    hook: Option<Vec<String>>,
    /// A TOML integer or float; anything else is named in our own words
    /// (an untagged enum's error would name the Rust type).
    timeout: Option<toml::Value>,
    log_file: Option<PathBuf>,
    follow_seconds: Option<i64>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    pass_unauthorized: bool,
    #[serde(default)]
    vm: Vec<RawVm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawVm {
    name: String,
    backend: Option<String>,
    qmp: Option<PathBuf>,
    domain: Option<String>,
    uri: Option<String>,
    usb_version: Option<i64>,
    ports: Option<i64>,
    max_controllers: Option<i64>,
    #[serde(default)]
    hubs: Vec<String>,
    #[serde(default)]
    devices: Vec<String>,
}

/// Parse and validate config text. `origin` names the file in messages.
pub fn parse_str(text: &str, origin: &str) -> Result<Config> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        // Name the line and show it: toml's own message does not always say which key.
        let at = e
            .span()
            .map(|s| {
                let start = s.start.min(text.len());
                let line_no = text[..start].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                let line: String = line.chars().take(60).collect();
                format!(" line {line_no} ({line}):")
            })
            .unwrap_or_default();
        Error::of(ErrorKind::Config, format!("{origin}:{at} {}", e.message().trim().replace('\n', " ")))
    })?;
    let err = |key: &str, msg: String| Error::of(ErrorKind::Config, format!("{origin}: {key}: {msg}"));

    let timeout = match raw.timeout {
        None => 10.0,
        Some(toml::Value::Integer(i)) => i as f64,
        Some(toml::Value::Float(f)) => f,
        Some(v) => return Err(err("timeout", format!("must be a number of seconds (got {} {v})", v.type_str()))),
    };
    // udev kills RUN programs at 180 s and blocks the device's events
    // meanwhile; below 0.1 s not even a connect fits.
    if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
        return Err(err("timeout", format!("must be {MIN_TIMEOUT} to {MAX_TIMEOUT} seconds (got {timeout})")));
    }
    let hook = parse_hook(raw.hook, &err)?;
    for (key, p) in [
        ("state-dir", &raw.state_dir),
        ("xen-run-dir", &raw.xen_run_dir),
        ("xen-lib-dir", &raw.xen_lib_dir),
        ("log-file", &raw.log_file),
    ] {
        if let Some(p) = p {
            if !p.is_absolute() {
                return Err(err(key, format!("must be an absolute path (got {:?})", p)));
            }
        }
    }

    let follow = match raw.follow_seconds {
        None => DEFAULT_FOLLOW_SECONDS,
        Some(n) if (0..=MAX_FOLLOW_SECONDS).contains(&n) => n as u64,
        Some(n) => return Err(err("follow-seconds", format!("must be 0 (never) to {MAX_FOLLOW_SECONDS} (got {n})"))),
    };
    let deny = raw
        .deny
        .iter()
        .map(|d| DenyRule::parse(d).map_err(|e| err("deny", e.to_string())))
        .collect::<Result<Vec<_>>>()?;

    let mut vms: Vec<VmConfig> = Vec::new();
    for (i, v) in raw.vm.into_iter().enumerate() {
        let vm = parse_vm(i, v, &err)?;
        if vms.iter().any(|o| o.name == vm.name) {
            return Err(err(&format!("vm {:?}: name", vm.name), "used twice".into()));
        }
        vms.push(vm);
    }

    Ok(Config {
        state_dir: raw.state_dir.unwrap_or_else(|| "/run/auto-usb-attach".into()),
        xen_run_dir: raw.xen_run_dir.unwrap_or_else(|| "/run/xen".into()),
        xen_lib_dir: raw.xen_lib_dir.unwrap_or_else(|| DEFAULT_XEN_LIB_DIR.into()),
        hook,
        timeout: Duration::from_secs_f64(timeout),
        log_file: raw.log_file,
        vms,
        follow: Duration::from_secs(follow),
        deny,
        pass_unauthorized: raw.pass_unauthorized,
    })
}

/// `hook = ["/abs/program", "arg", ...]`: run directly (no shell), so the
/// program must be an absolute path; no string may hold a NUL.
fn parse_hook(hook: Option<Vec<String>>, err: &dyn Fn(&str, String) -> Error) -> Result<Vec<String>> {
    let Some(argv) = hook else { return Ok(Vec::new()) };
    let Some(prog) = argv.first() else {
        return Err(err("hook", "must name a program: [\"/usr/local/bin/prog\", \"arg\", ...]".into()));
    };
    if !Path::new(prog).is_absolute() {
        return Err(err(
            "hook",
            format!("the program must be an absolute path (got {prog:?}); it runs without a shell"),
        ));
    }
    if let Some(a) = argv.iter().find(|a| a.contains('\0')) {
        return Err(err("hook", format!("{a:?} holds a NUL character")));
    }
    Ok(argv)
}

/// One `[[vm]]` table, the `i`th; `err` formats an error for a key.
fn parse_vm(i: usize, v: RawVm, err: &dyn Fn(&str, String) -> Error) -> Result<VmConfig> {
    let label = format!("vm[{i}]");
    if v.name.is_empty() || !v.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(err(
            &format!("{label}.name"),
            format!("{:?} must be non-empty letters, digits, '-', '_' or '.'", v.name),
        ));
    }
    let vkey = |k: &str| format!("vm {:?}: {k}", v.name);
    if let Some(q) = &v.qmp {
        if !q.is_absolute() {
            return Err(err(&vkey("qmp"), format!("must be an absolute path (got {q:?})")));
        }
    }
    // Files from before `backend` existed: a `qmp` socket is QEMU, none is Xen.
    let backend = match (v.backend.as_deref(), &v.qmp) {
        (None, Some(_)) | (Some("qemu"), Some(_)) => BackendKind::Qemu,
        (None, None) | (Some("xen"), None) => BackendKind::Xen,
        (Some("qemu"), None) => return Err(err(&vkey("qmp"), "backend \"qemu\" needs the VM's QMP socket".into())),
        (Some("xen"), Some(_)) => {
            return Err(err(&vkey("qmp"), "backend \"xen\" finds the domain's socket itself; remove qmp".into()))
        }
        (Some("libvirt"), Some(_)) => {
            return Err(err(&vkey("qmp"), "backend \"libvirt\" never uses the domain's monitor; remove qmp".into()))
        }
        (Some("libvirt"), None) => BackendKind::Libvirt,
        (Some(b), _) => {
            return Err(err(&vkey("backend"), format!("must be \"qemu\", \"xen\" or \"libvirt\" (got {b:?})")))
        }
    };
    let libvirt = match backend {
        BackendKind::Libvirt => {
            let domain = v.domain.clone().unwrap_or_else(|| v.name.clone());
            let uri = v.uri.clone().unwrap_or_else(|| DEFAULT_LIBVIRT_URI.into());
            if domain.is_empty() || domain.chars().any(|c| c.is_control()) {
                return Err(err(&vkey("domain"), format!("{domain:?} is not a libvirt domain name")));
            }
            if !uri.contains(":/") || uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(err(&vkey("uri"), format!("{uri:?} is not a libvirt URI like \"qemu:///system\"")));
            }
            Some(LibvirtTarget { uri, domain })
        }
        _ => {
            for (key, set) in [("domain", v.domain.is_some()), ("uri", v.uri.is_some())] {
                if set {
                    return Err(err(&vkey(key), "only applies to backend = \"libvirt\"".into()));
                }
            }
            None
        }
    };
    let usb_version = match v.usb_version.unwrap_or(3) {
        1 => UsbVersion::V1,
        2 => UsbVersion::V2,
        3 => UsbVersion::V3,
        n => return Err(err(&vkey("usb-version"), format!("must be 1, 2 or 3 (got {n})"))),
    };
    let ports = match (usb_version, v.ports) {
        (UsbVersion::V3, None) => 15,
        (UsbVersion::V3, Some(p)) if (1..=15).contains(&p) => p as u8,
        (UsbVersion::V3, Some(p)) => return Err(err(&vkey("ports"), format!("must be 1..15 (got {p})"))),
        (UsbVersion::V1, None) => 2,
        (UsbVersion::V2, None) => 6,
        (_, Some(_)) => {
            return Err(err(&vkey("ports"), "only applies to usb-version 3 (uhci has 2 ports, ehci 6)".into()))
        }
    };
    // 0: only the VM's own controllers (and, on Xen, libxl's) are used.
    let max_controllers = match v.max_controllers.unwrap_or(2) {
        n @ 0..=8 => n as u8,
        n => return Err(err(&vkey("max-controllers"), format!("must be 0..8 (got {n})"))),
    };
    let hubs = v
        .hubs
        .iter()
        .map(|h| HubRule::parse(h).map_err(|e| err(&vkey("hubs"), e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    let devices = v
        .devices
        .iter()
        .map(|d| DeviceRule::parse(d).map_err(|e| err(&vkey("devices"), e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    Ok(VmConfig { name: v.name, backend, qmp: v.qmp, libvirt, usb_version, ports, max_controllers, hubs, devices })
}

/// Read and parse the config at `path` (already resolved under the root);
/// `shown` is the path as the user knows it.
pub fn load(path: &Path, shown: &Path) -> Result<Config> {
    // A regular file only, read up to a cap: a FIFO or /dev/zero here would
    // otherwise hold the invocation (and udev's queue for the device) forever.
    let bytes = crate::fsio::read_regular(path, crate::fsio::READ_CAP)
        .map_err(|e| Error::caused(format!("{}: cannot read config", shown.display()), e).as_kind(ErrorKind::Config))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::of(ErrorKind::Config, format!("{}: cannot read config: not UTF-8 text", shown.display()))
    })?;
    parse_str(&text, &shown.display().to_string())
}

/// Directories every service writes in: watching one for a VM's socket
/// would start a sync at each of their changes.
const SHARED_DIRS: [&str; 6] = ["/", "/run", "/var/run", "/tmp", "/var/tmp", "/dev/shm"];

impl VmConfig {
    /// The directory of a plain QEMU VM's QMP socket, where QEMU makes it as
    /// the VM starts. None for Xen and libvirt, whose directories the
    /// shipped sync path unit watches.
    pub fn qmp_dir(&self) -> Option<&Path> {
        self.qmp.as_deref().filter(|_| self.backend == BackendKind::Qemu)?.parent()
    }

    /// `qmp_dir`, which the sync path unit watches (the generator adds it;
    /// `check` says when it is not watched), unless it is one every service
    /// writes in (`/run`, `/tmp`, ...): then nothing watches it, and the
    /// timer syncs the VM.
    pub fn watched_qmp_dir(&self) -> Option<&Path> {
        self.qmp_dir().filter(|d| !SHARED_DIRS.iter().any(|s| Path::new(s) == *d))
    }
}

impl Config {
    /// The index in `vms` of the VM named `name` (which must be configured).
    pub fn index_of(&self, name: &str) -> usize {
        self.vms.iter().position(|v| v.name == name).expect("a configured VM")
    }

    pub fn vm(&self, name: &str) -> Result<&VmConfig> {
        self.vms
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| Error::of(ErrorKind::Config, format!("no VM named {name:?} in the config")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
state-dir = "/var/lib/aua"
xen-run-dir = "/var/run/xen"
timeout = 2.5
log-file = "/var/log/aua.log"
hook = ["/usr/local/bin/notify", "--urgency", "low"]

[[vm]]
name = "win10"
usb-version = 3
ports = 4
max-controllers = 3
hubs = ["usb3", "1-4"]
devices = ["046d:c52b", "1050:0407:0123456"]

[[vm]]
name = "lin"
qmp = "/run/qemu/lin.qmp"
usb-version = 2
"#;

    #[test]
    fn full_config_parses() {
        let c = parse_str(FULL, "t.toml").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/aua"));
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(c.hook, ["/usr/local/bin/notify", "--urgency", "low"]);
        assert_eq!(c.vms.len(), 2);
        let w = &c.vms[0];
        assert_eq!((w.usb_version, w.ports, w.max_controllers), (UsbVersion::V3, 4, 3));
        assert_eq!(w.hubs, vec![HubRule::Bus(3), HubRule::Port("1-4".into())]);
        assert_eq!(w.devices[1].serial.as_deref(), Some("0123456"));
        let l = &c.vms[1];
        assert_eq!((l.usb_version, l.ports, l.max_controllers), (UsbVersion::V2, 6, 2));
        assert_eq!(l.qmp, Some(PathBuf::from("/run/qemu/lin.qmp")));
    }

    #[test]
    fn defaults() {
        let c = parse_str("[[vm]]\nname = \"a\"\n", "t").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/run/auto-usb-attach"));
        assert_eq!(c.xen_run_dir, PathBuf::from("/run/xen"));
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert!(c.hook.is_empty(), "no hook by default");
        assert_eq!((c.vms[0].usb_version, c.vms[0].ports, c.vms[0].max_controllers), (UsbVersion::V3, 15, 2));
        assert!(parse_str("", "t").unwrap().vms.is_empty());
    }

    /// tests/cases/config-errors.txt: one refused config a line, `TEXT => WORD | WORD ...`.
    const ERROR_CASES: &str = include_str!("../tests/cases/config-errors.txt");

    #[test]
    fn errors_name_file_key_and_problem() {
        let mut n = 0;
        for (i, line) in ERROR_CASES.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("config-errors.txt:{}", i + 1);
            let (text, want) = line.rsplit_once(" => ").unwrap_or_else(|| panic!("{at}: no ` => `"));
            let text = format!("{}\n", text.trim().replace("\\n", "\n"));
            let e = match parse_str(&text, "/etc/x.toml") {
                Ok(_) => panic!("{at}: accepted {text:?}"),
                Err(e) => e.to_string(),
            };
            assert!(!e.contains("enum") && !e.contains("variant"), "{at}: names an internal type: {e}");
            assert!(!e.contains('\n'), "{at}: multi-line error: {e}");
            assert!(e.starts_with("/etc/x.toml"), "{at}: {e}");
            for w in want.split(" | ").map(str::trim) {
                assert!(e.contains(w), "{at}: {e:?} lacks {w:?}");
            }
            n += 1;
        }
        assert!(n >= 35, "only {n} cases read");
    }

    #[test]
    fn a_libvirt_vm_defaults_to_its_name_on_the_system_uri() {
        let c = parse_str("[[vm]]\nname = \"w\"\nbackend = \"libvirt\"\n", "t").unwrap();
        let t = c.vms[0].libvirt.clone().unwrap();
        assert_eq!((t.uri.as_str(), t.domain.as_str()), ("qemu:///system", "w"));
    }

    /// The example file and the toml(5) page's EXAMPLE are configs the tool accepts.
    #[test]
    fn the_documented_examples_parse() {
        let example = include_str!("../examples/auto-usb-attach.toml");
        parse_str(example, "examples/auto-usb-attach.toml").unwrap();
        let page = include_str!("../man/auto-usb-attach.toml.5");
        let block = page.split(".SH EXAMPLE\n.nf\n").nth(1).and_then(|r| r.split("\n.fi\n").next()).expect("EXAMPLE");
        let c = parse_str(&block.replace("\\-", "-"), "auto-usb-attach.toml(5)").unwrap();
        assert_eq!(c.vms.len(), 3);
    }

    #[test]
    fn hub_rules_cover_their_subtree_only() {
        let p = HubRule::parse("1-4").unwrap();
        assert!(p.covers(1, "1-4"));
        assert!(p.covers(1, "1-4.1"));
        assert!(p.covers(1, "1-4.1.3"));
        assert!(!p.covers(1, "1-40"));
        assert!(!p.covers(1, "1-3"));
        assert!(!p.covers(2, "2-4"));
        let b = HubRule::parse("usb3").unwrap();
        assert!(b.covers(3, "3-1.2"));
        assert!(!b.covers(13, "13-1"));
        assert_eq!(b.to_string(), "usb3");
    }

    #[test]
    fn device_rules_match_ids_and_serial() {
        let d = DeviceRule::parse("046D:c52b").unwrap();
        assert!(d.covers(0x046d, 0xc52b, None));
        assert!(d.covers(0x046d, 0xc52b, Some("x")));
        assert!(!d.covers(0x046d, 0xc52c, None));
        let s = DeviceRule::parse("1050:0407:0123456").unwrap();
        assert!(s.covers(0x1050, 0x0407, Some("0123456")));
        assert!(!s.covers(0x1050, 0x0407, Some("999")));
        assert!(!s.covers(0x1050, 0x0407, None));
        // serials may contain ':' (everything after the second colon is the serial)
        assert_eq!(DeviceRule::parse("1050:0407:a:b").unwrap().serial.as_deref(), Some("a:b"));
    }
}
