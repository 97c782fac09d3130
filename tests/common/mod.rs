//! Shared helpers for the black-box integration tests (std + serde_json only).
//!
//! - [`TestRoot`]: a temp dir used as `--root`, with config/state helpers, removed on drop.
//! - [`run`]/[`TestRoot::run`]/[`TestRoot::udev`]: run the built binary, with a hard
//!   safety kill so a hanging tool fails the test instead of hanging the suite.
//! - [`FakeSysfs`]: a sysfs tree shaped like the kernel's.
//! - [`Qmp`]: a tiny blocking QMP client (greeting, capabilities, events skipped).
//! - [`Qemu`]: a real `qemu-system-x86_64 -M pc -nodefaults -S` guard, killed on drop.
//! - [`FakeQmp`]: a QMP server on a thread that answers in real QEMU 7.2's exact wire
//!   format (see tests/fixtures/qemu-7.2-qmp-transcript.txt) and can misbehave.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_auto-usb-attach");

/// A safety net only: no test asserts on this, it just turns a hang into a failure.
pub const HARD_KILL: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Temp root
// ---------------------------------------------------------------------------

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct TestRoot {
    pub path: PathBuf,
}

impl TestRoot {
    /// `/tmp/aua-<tag>-<pid>-<n>`: kept short, QMP socket paths must fit in 108 bytes.
    pub fn new(tag: &str) -> TestRoot {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir();
        let base = if base.as_os_str().len() > 40 { PathBuf::from("/tmp") } else { base };
        let path = base.join(format!("aua-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TestRoot { path }
    }

    /// An absolute OS path as the tool sees it under `--root`.
    pub fn p(&self, abs: &str) -> PathBuf {
        self.path.join(abs.trim_start_matches('/'))
    }

    pub fn root_str(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Writes `<root>/etc/auto-usb-attach.toml`.
    pub fn write_config(&self, text: &str) {
        let p = self.p("/etc/auto-usb-attach.toml");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        // The tool refuses a config writable by group/others: don't depend on the umask.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    pub fn state_dir(&self) -> PathBuf {
        self.p("/run/auto-usb-attach")
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    pub fn state_text(&self) -> Option<String> {
        match std::fs::read_to_string(self.state_path()) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => panic!("cannot read state: {e}"),
        }
    }

    /// The state file parsed; panics (fails the test) if it exists but is not
    /// valid versioned JSON. `None` when there is no state file.
    pub fn state(&self) -> Option<Value> {
        let t = self.state_text()?;
        let v: Value = serde_json::from_str(&t).unwrap_or_else(|e| panic!("state.json is not JSON ({e}):\n{t}"));
        assert_eq!(v["version"], json!(1), "state.json version:\n{t}");
        Some(v)
    }

    /// Asserts the state dir holds no half-written or moved-aside state file.
    pub fn assert_state_clean(&self) {
        if let Ok(rd) = std::fs::read_dir(self.state_dir()) {
            for e in rd {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    name == "state.json" || name == "lock",
                    "unexpected file {name:?} in the state dir (temp file left behind or state moved aside?)"
                );
            }
        }
    }

    pub fn remove_state(&self) {
        let _ = std::fs::remove_file(self.state_path());
    }

    /// Records (vm name, device object) of every device in the state file.
    pub fn state_devices(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        if let Some(s) = self.state() {
            if let Some(vms) = s["vms"].as_object() {
                for (name, vm) in vms {
                    for d in vm["devices"].as_array().cloned().unwrap_or_default() {
                        out.push((name.clone(), d));
                    }
                }
            }
        }
        out
    }

    /// Is host device bus:addr recorded in the state file (in any VM)?
    pub fn state_has_device(&self, bus: u64, addr: u64) -> bool {
        self.state_devices().iter().any(|(_, d)| d["bus"] == json!(bus) && d["addr"] == json!(addr))
    }

    /// Runs `auto-usb-attach --root R ARGS...` with a clean environment
    /// (no AUTO_USB_ATTACH_ROOT, no udev variables leaking in from the outside).
    pub fn run(&self, args: &[&str]) -> Run {
        let mut c = Command::new(BIN);
        c.env_clear();
        c.arg("--root").arg(&self.path).args(args);
        run_cmd(c, self.root_str())
    }

    /// Runs the binary as udev's RUN would: empty environment (no PATH) plus `env`,
    /// args `--root R --config /etc/auto-usb-attach.toml udev`.
    pub fn udev(&self, env: &[(String, String)]) -> Run {
        let mut c = Command::new(BIN);
        c.env_clear();
        for (k, v) in env {
            c.env(k, v);
        }
        c.arg("--root").arg(&self.path).args(["--config", "/etc/auto-usb-attach.toml", "udev"]);
        run_cmd(c, self.root_str())
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct Run {
    pub args: String,
    /// The temp root; replaced by `<root>` before matching error text, so a test's
    /// own directory name can never satisfy an assertion.
    pub root: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

fn run_cmd(mut c: Command, root: &str) -> Run {
    let args = format!("{:?}", c);
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = c.spawn().unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > HARD_KILL {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args} still running after {HARD_KILL:?}: killed (the tool hangs)");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    let r = Run { args, root: root.to_string(), code: status.code(), stdout, stderr, elapsed };
    // AUA_TEST_SHOW=1 cargo test -- --nocapture: see every run's output.
    if std::env::var_os("AUA_TEST_SHOW").is_some() {
        eprintln!("{}\n({:?})\n", r.dump(), r.elapsed);
    }
    r
}

impl Run {
    fn dump(&self) -> String {
        format!(
            "command: {}\nexit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }

    /// Asserts the exit code and that nothing panicked.
    pub fn code(&self, want: i32) -> &Run {
        self.no_panic();
        assert_eq!(self.code, Some(want), "wrong exit code\n{}", self.dump());
        self
    }

    pub fn no_panic(&self) -> &Run {
        assert!(
            !self.stderr.contains("panicked") && !self.stdout.contains("panicked"),
            "the tool panicked\n{}",
            self.dump()
        );
        self
    }

    /// Exit 0, and no `error:` line.
    pub fn ok(&self) -> &Run {
        self.code(0);
        assert!(self.error_lines().is_empty(), "exit 0 but an error line was printed\n{}", self.dump());
        self
    }

    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.starts_with("error:")).collect()
    }

    /// Asserts exit `code` and exactly one `error: ` line on stderr that contains every
    /// string of `want` (case-sensitive, with the temp root path replaced by `<root>`);
    /// returns that line (root replaced).
    pub fn fails(&self, code: i32, want: &[&str]) -> String {
        self.code(code);
        let lines = self.error_lines();
        assert_eq!(lines.len(), 1, "want exactly one 'error: ' line on stderr\n{}", self.dump());
        assert!(lines[0].starts_with("error: "), "error line must start with 'error: '\n{}", self.dump());
        let line = lines[0].replace(&self.root, "<root>");
        for w in want {
            assert!(line.contains(w), "error line lacks {w:?}: {line:?}\n{}", self.dump());
        }
        line
    }

    /// Like `fails` but any of `alternatives` may appear.
    pub fn error_contains_any(&self, alternatives: &[&str]) -> String {
        let line = self.fails(1, &[]);
        assert!(
            alternatives.iter().any(|a| line.contains(a)),
            "error line contains none of {alternatives:?}: {line:?}\n{}",
            self.dump()
        );
        line
    }

    pub fn stdout_json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.dump()))
    }
}

// ---------------------------------------------------------------------------
// Fake sysfs
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// QMP client (test side)
// ---------------------------------------------------------------------------

pub struct Qmp {
    stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
    pub greeting: Value,
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects (retrying while the socket is missing or refusing, up to `timeout`),
    /// reads the greeting and negotiates capabilities. Every read has `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> std::io::Result<Qmp> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                        && start.elapsed() < timeout =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut q = Qmp { stream, buf: Vec::new(), next_id: 1, greeting: Value::Null, events: Vec::new() };
        q.greeting = q.read_obj()?;
        if q.greeting.get("QMP").is_none() {
            return Err(std::io::Error::other(format!("not a QMP greeting: {}", q.greeting)));
        }
        q.execute("qmp_capabilities", json!({}))?
            .map_err(|e| std::io::Error::other(format!("qmp_capabilities: {e}")))?;
        Ok(q)
    }

    /// Connects without reading anything: a client holding the socket (QEMU serves one at a time).
    pub fn hold(path: &Path) -> UnixStream {
        UnixStream::connect(path).unwrap()
    }

    fn read_obj(&mut self) -> std::io::Result<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    continue;
                }
                return serde_json::from_str(text.trim())
                    .map_err(|e| std::io::Error::other(format!("bad QMP line {text:?}: {e}")));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "QMP connection closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command; returns Ok(return value) or Err(error object). Events are kept in `events`.
    pub fn execute(&mut self, cmd: &str, args: Value) -> std::io::Result<Result<Value, Value>> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"execute": cmd, "id": id});
        if args.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = args;
        }
        let mut line = serde_json::to_vec(&msg).unwrap();
        line.push(b'\n');
        self.stream.write_all(&line)?;
        loop {
            let v = self.read_obj()?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if v.get("id") != Some(&json!(id)) {
                return Err(std::io::Error::other(format!("reply for another id: {v}")));
            }
            if let Some(e) = v.get("error") {
                return Ok(Err(e.clone()));
            }
            return Ok(Ok(v.get("return").cloned().unwrap_or(Value::Null)));
        }
    }

    /// `execute` that must succeed.
    pub fn cmd(&mut self, cmd: &str, args: Value) -> Value {
        match self.execute(cmd, args.clone()) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!("QMP {cmd} {args} failed: {e}"),
            Err(e) => panic!("QMP {cmd} {args}: {e}"),
        }
    }

    /// `(name, type)` of the devices with an id, from `qom-list /machine/peripheral`.
    pub fn peripherals(&mut self) -> Vec<(String, String)> {
        let v = self.cmd("qom-list", json!({"path": "/machine/peripheral"}));
        v.as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"].as_str().is_some_and(|t| t.starts_with("child<")))
            .map(|p| (p["name"].as_str().unwrap().to_string(), p["type"].as_str().unwrap().to_string()))
            .collect()
    }

    pub fn has_peripheral(&mut self, id: &str, ty: &str) -> bool {
        self.peripherals().iter().any(|(n, t)| n == id && t == &format!("child<{ty}>"))
    }

    /// Places a usb-host the way an earlier run of the tool would have (controller
    /// `ctrl` must exist). `hostport` makes QEMU 7.2 accept it without the device.
    pub fn place_usb_host(&mut self, ctrl: &str, port: u32, bus: u32, addr: u32, hostport: &str) {
        self.cmd(
            "device_add",
            json!({"driver": "usb-host", "id": format!("xenusb-{bus}-{addr}"), "bus": format!("{ctrl}.0"),
                   "port": port.to_string(), "hostbus": bus, "hostaddr": addr, "hostport": hostport}),
        );
    }

    pub fn add_xhci(&mut self, id: &str, ports: u32) {
        self.cmd("device_add", json!({"driver": "nec-usb-xhci", "id": id, "p2": ports, "p3": ports}));
    }
}

/// Raw wire bytes: the greeting line, then for each command (sent as given, one per
/// line) its reply line. Events (asynchronous: real QEMU sends DEVICE_DELETED some
/// time after device_del's reply) are skipped. Lines keep their CRLF.
pub fn raw_transcript(path: &Path, cmds: &[&str]) -> Vec<String> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let line = |s: &mut UnixStream, buf: &mut Vec<u8>| -> String {
        loop {
            if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let l: Vec<u8> = buf.drain(..=i).collect();
                return String::from_utf8(l).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).expect("read");
            assert!(n > 0, "peer closed");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let mut out = vec![line(&mut s, &mut buf)];
    for c in cmds {
        s.write_all(format!("{c}\n").as_bytes()).unwrap();
        loop {
            let l = line(&mut s, &mut buf);
            if !l.contains("\"event\": ") {
                out.push(l);
                break;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Real QEMU
// ---------------------------------------------------------------------------

pub struct Qemu {
    child: Child,
    pub sock: PathBuf,
    pub name: String,
}

impl Qemu {
    /// `qemu-system-x86_64 -M pc -nodefaults -S -display none -name NAME -qmp unix:SOCK,server=on,wait=off`,
    /// waited for until it answers QMP (our probe connection is closed again before returning).
    pub fn start(name: &str, sock: &Path) -> Qemu {
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        // A stale socket (SIGKILLed QEMU) would make "the path exists" meaningless.
        let _ = std::fs::remove_file(sock);
        let child = Command::new("qemu-system-x86_64")
            .args(["-M", "pc", "-nodefaults", "-S", "-display", "none", "-name", name, "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64: {e}"));
        let mut q = Qemu { child, sock: sock.to_path_buf(), name: name.into() };
        let start = Instant::now();
        while !sock.exists() {
            if let Some(st) = q.child.try_wait().unwrap() {
                panic!("qemu-system-x86_64 exited early: {st}");
            }
            assert!(start.elapsed() < Duration::from_secs(30), "QEMU socket {} never appeared", sock.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        // Ready when it answers; then let go of the (single) QMP client slot.
        let mut c = q.qmp();
        c.cmd("query-status", json!({}));
        drop(c);
        q
    }

    /// As an earlier run of the tool would have left it: controller xenusb-0
    /// (xhci, 15 ports) holding usb-host devices (port, bus, addr, hostport).
    pub fn holding(&self, devices: &[(u32, u32, u32, &str)]) {
        let mut c = self.qmp();
        c.add_xhci("xenusb-0", 15);
        for (port, bus, addr, hostport) in devices {
            c.place_usb_host("xenusb-0", *port, *bus, *addr, hostport);
        }
    }

    pub fn qmp(&self) -> Qmp {
        Qmp::connect(&self.sock, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("QMP connect to {}: {e}", self.sock.display()))
    }

    /// Makes the socket look created `secs` seconds ago (mtime; ctime becomes now).
    /// The tool lets a brand-new Xen domain settle for a few seconds before it
    /// creates a controller there; tests about established domains age their
    /// sockets first. Call before the tool first sees the socket: the change of
    /// ctime alters the socket's identity ("instance").
    pub fn age(&self, secs: u64) -> &Qemu {
        set_mtime_ago(&self.sock, secs);
        self
    }

    /// SIGKILL, as a crashed/destroyed VM: the socket file stays behind.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets `path`'s atime and mtime to `secs` seconds ago (works on sockets).
pub fn set_mtime_ago(path: &Path, secs: u64) {
    use nix::sys::time::TimeVal;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let t = now.saturating_sub(Duration::from_secs(secs));
    let tv = TimeVal::new(t.as_secs() as _, t.subsec_micros() as _);
    nix::sys::stat::utimes(path, &tv, &tv).unwrap_or_else(|e| panic!("utimes {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Fake QMP server
// ---------------------------------------------------------------------------

pub const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;

/// What to do instead of a normal reply, for commands the matcher selects.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Read the command, never answer (keep the connection open until the client leaves).
    Hang,
    /// Answer with a line that is not JSON.
    Garbage,
    /// Send the first bytes of a reply, then close the connection.
    DropMidReply,
    /// Close the connection without answering (QEMU crashed mid-command).
    Close,
    /// Answer with a QMP error of this class and desc.
    Error { class: String, desc: String },
}

pub type Matcher = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// Matches commands named `cmd`.
pub fn on_cmd(cmd: &'static str) -> Matcher {
    Arc::new(move |v: &Value| v["execute"] == json!(cmd))
}

/// Matches `device_add` of driver `driver`.
pub fn on_device_add(driver: &'static str) -> Matcher {
    Arc::new(move |v: &Value| v["execute"] == json!("device_add") && v["arguments"]["driver"] == json!(driver))
}

#[derive(Clone)]
pub struct FakeOptions {
    /// `-name`: what query-name answers (None: `{}` as QEMU without -name).
    pub name: Option<String>,
    /// false: accept but never greet (as a QEMU whose single QMP slot is taken).
    pub greeting: bool,
    /// Events sent before every reply once capabilities are negotiated.
    pub events_before_reply: usize,
    pub fault: Option<(Matcher, Fault)>,
    /// Whether `device_add usb-host` with hostbus/hostaddr finds the device (a host
    /// that has it) or fails like QEMU here does.
    pub host_has_devices: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            name: Some("win10".into()),
            greeting: true,
            events_before_reply: 0,
            fault: None,
            host_has_devices: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FakeDev {
    pub id: String,
    pub driver: String,
    pub props: serde_json::Map<String, Value>,
    /// For usb devices: the bus ("xenusb-0.0").
    pub bus: Option<String>,
}

#[derive(Default)]
pub struct FakeShared {
    pub connections: usize,
    /// Every command object received, in order.
    pub commands: Vec<Value>,
    pub devices: Vec<FakeDev>,
    /// QEMU names a bus's children `child[N]` from a per-bus counter that every
    /// device_add reaching the bus bumps, failed ones included (seen: after two failed
    /// device_adds the first real device is `child[2]`).
    pub next_child: std::collections::HashMap<String, usize>,
    /// Device id -> its N in `child[N]`.
    pub child_of: std::collections::HashMap<String, usize>,
}

impl FakeShared {
    fn new_child(&mut self, bus: &str) -> usize {
        let n = self.next_child.entry(bus.to_string()).or_insert(0);
        *n += 1;
        *n - 1
    }

    /// (N, device) for the children of `bus`, in child order.
    fn children(&self, bus: &str) -> Vec<(usize, &FakeDev)> {
        let mut v: Vec<(usize, &FakeDev)> = self
            .devices
            .iter()
            .filter(|d| d.bus.as_deref() == Some(bus))
            .map(|d| (self.child_of.get(&d.id).copied().unwrap_or(0), d))
            .collect();
        v.sort_by_key(|(n, _)| *n);
        v
    }
}

pub struct FakeQmp {
    pub path: PathBuf,
    pub shared: Arc<Mutex<FakeShared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn is_controller(driver: &str) -> bool {
    matches!(driver, "nec-usb-xhci" | "qemu-xhci" | "usb-ehci" | "piix3-usb-uhci" | "ich9-usb-ehci1")
}

fn controller_ports(driver: &str, props: &serde_json::Map<String, Value>) -> u64 {
    match driver {
        // QEMU's xHCI bus has max(p2, p3) ports (seen on 7.2: p2=p3=15 refuses port 16;
        // p2=2 p3=4 takes ports 1..4, refuses 5).
        "nec-usb-xhci" | "qemu-xhci" => {
            let p2 = props.get("p2").and_then(|v| v.as_u64()).unwrap_or(4);
            let p3 = props.get("p3").and_then(|v| v.as_u64()).unwrap_or(4);
            p2.max(p3)
        }
        "usb-ehci" | "ich9-usb-ehci1" => 6,
        _ => 2,
    }
}

/// QEMU's JSON formatter style: `{"a": 1, "b": [1, 2]}`.
pub fn qemu_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let parts: Vec<String> =
                m.iter().map(|(k, v)| format!("{}: {}", Value::String(k.clone()), qemu_json(v))).collect();
            format!("{{{}}}", parts.join(", "))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(qemu_json).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

fn reply_ok(ret: &Value, id: Option<&Value>) -> String {
    // Success: return first, then id (as QEMU 7.2 sends it).
    match id {
        Some(id) => format!("{{\"return\": {}, \"id\": {}}}\r\n", qemu_json(ret), qemu_json(id)),
        None => format!("{{\"return\": {}}}\r\n", qemu_json(ret)),
    }
}

fn reply_err(class: &str, desc: &str, id: Option<&Value>) -> String {
    // Error: id first, then error (as QEMU 7.2 sends it).
    let err = format!("{{\"class\": {}, \"desc\": {}}}", json!(class), json!(desc));
    match id {
        Some(id) => format!("{{\"id\": {}, \"error\": {err}}}\r\n", qemu_json(id)),
        None => format!("{{\"error\": {err}}}\r\n"),
    }
}

pub fn event_line(event: &str, data: Value) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!(
        "{{\"timestamp\": {{\"seconds\": {}, \"microseconds\": {}}}, \"event\": {}, \"data\": {}}}\r\n",
        now.as_secs(),
        now.subsec_micros(),
        json!(event),
        qemu_json(&data)
    )
}

impl FakeQmp {
    pub fn start(path: &Path, opts: FakeOptions) -> FakeQmp {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Mutex::new(FakeShared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // One client at a time, like QEMU: the next is accepted when this one leaves.
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        sh.lock().unwrap().connections += 1;
                        let _ = s.set_nonblocking(false);
                        let _ = serve(s, &opts, &sh, &st);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeQmp { path: path.to_path_buf(), shared, stop, thread: Some(thread) }
    }

    pub fn connections(&self) -> usize {
        self.shared.lock().unwrap().connections
    }

    pub fn commands(&self) -> Vec<Value> {
        self.shared.lock().unwrap().commands.clone()
    }

    /// Names of the commands received, in order.
    pub fn command_names(&self) -> Vec<String> {
        self.commands().iter().map(|c| c["execute"].as_str().unwrap_or("?").to_string()).collect()
    }

    pub fn device_ids(&self) -> Vec<String> {
        self.shared.lock().unwrap().devices.iter().map(|d| d.id.clone()).collect()
    }

    /// Puts a device into the fake QEMU's model, as if added earlier.
    pub fn preload(&self, dev: FakeDev) {
        let mut g = self.shared.lock().unwrap();
        if let Some(bus) = &dev.bus {
            let n = g.new_child(bus);
            g.child_of.insert(dev.id.clone(), n);
        }
        g.devices.push(dev);
    }

    pub fn preload_xhci(&self, id: &str, ports: u64) {
        let mut props = serde_json::Map::new();
        props.insert("p2".into(), json!(ports));
        props.insert("p3".into(), json!(ports));
        self.preload(FakeDev { id: id.into(), driver: "nec-usb-xhci".into(), props, bus: None });
    }

    pub fn preload_usb_host(&self, ctrl: &str, port: u32, bus: u32, addr: u32) {
        let mut props = serde_json::Map::new();
        props.insert("port".into(), json!(port.to_string()));
        props.insert("hostbus".into(), json!(bus));
        props.insert("hostaddr".into(), json!(addr));
        props.insert("attached".into(), json!(true));
        self.preload(FakeDev {
            id: format!("xenusb-{bus}-{addr}"),
            driver: "usb-host".into(),
            props,
            bus: Some(format!("{ctrl}.0")),
        });
    }
}

impl Drop for FakeQmp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads from `s` until a complete JSON value is available; None on EOF/stop.
fn serve(mut s: UnixStream, opts: &FakeOptions, sh: &Arc<Mutex<FakeShared>>, stop: &AtomicBool) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    if opts.greeting {
        s.write_all(format!("{GREETING}\r\n").as_bytes())?;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut negotiated = false;
    let mut silent = !opts.greeting; // busy or hung: read and discard until the client leaves
    loop {
        // Take every complete value out of the buffer.
        loop {
            if silent {
                buf.clear();
                break;
            }
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
            let item = it.next();
            let used = it.byte_offset();
            match item {
                None => {
                    buf.drain(..used);
                    break;
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    // QEMU: {"error": {"class": "GenericError", "desc": "JSON parse error, ..."}}
                    let line = buf.iter().position(|b| *b == b'\n').map(|i| i + 1).unwrap_or(buf.len());
                    buf.drain(..line);
                    s.write_all(reply_err("GenericError", &format!("JSON parse error, {e}"), None).as_bytes())?;
                }
                Some(Ok(v)) => {
                    buf.drain(..used);
                    sh.lock().unwrap().commands.push(v.clone());
                    let id = v.get("id").cloned();
                    if let Some((m, fault)) = &opts.fault {
                        if m(&v) {
                            match fault {
                                Fault::Hang => {
                                    silent = true;
                                    continue;
                                }
                                Fault::Garbage => {
                                    s.write_all(b"this is not JSON at all }{\r\n")?;
                                    continue;
                                }
                                Fault::DropMidReply => {
                                    s.write_all(b"{\"return\": {\"na")?;
                                    let _ = s.flush();
                                    let _ = s.shutdown(std::net::Shutdown::Both);
                                    return Ok(());
                                }
                                Fault::Close => {
                                    let _ = s.shutdown(std::net::Shutdown::Both);
                                    return Ok(());
                                }
                                Fault::Error { class, desc } => {
                                    s.write_all(reply_err(class, desc, id.as_ref()).as_bytes())?;
                                    continue;
                                }
                            }
                        }
                    }
                    if negotiated {
                        for i in 0..opts.events_before_reply {
                            let ev = if i % 2 == 0 {
                                event_line(
                                    "RTC_CHANGE",
                                    json!({"offset": i, "qom-path": "/machine/unattached/device[7]"}),
                                )
                            } else {
                                event_line(
                                    "NIC_RX_FILTER_CHANGED",
                                    json!({"path": "/machine/peripheral-anon/device[1]/virtio-backend"}),
                                )
                            };
                            s.write_all(ev.as_bytes())?;
                        }
                    }
                    let (out, after) = answer(&v, &mut negotiated, opts, sh);
                    let text = match out {
                        Ok(ret) => reply_ok(&ret, id.as_ref()),
                        Err((class, desc)) => reply_err(&class, &desc, id.as_ref()),
                    };
                    s.write_all(text.as_bytes())?;
                    for ev in after {
                        s.write_all(ev.as_bytes())?;
                    }
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
}

type Answer = Result<Value, (String, String)>;

fn gerr(desc: String) -> Answer {
    Err(("GenericError".into(), desc))
}

/// A small model of QEMU 7.2's answers to what this tool uses.
fn answer(v: &Value, negotiated: &mut bool, opts: &FakeOptions, sh: &Arc<Mutex<FakeShared>>) -> (Answer, Vec<String>) {
    let Some(obj) = v.as_object() else {
        return (gerr("QMP input must be a JSON object".into()), vec![]);
    };
    let Some(cmd) = obj.get("execute").and_then(|c| c.as_str()) else {
        return (gerr("QMP input lacks member 'execute'".into()), vec![]);
    };
    let args = obj.get("arguments").cloned().unwrap_or(json!({}));
    if !*negotiated {
        if cmd == "qmp_capabilities" {
            *negotiated = true;
            return (Ok(json!({})), vec![]);
        }
        return (
            Err(("CommandNotFound".into(), "Expecting capabilities negotiation with 'qmp_capabilities'".into())),
            vec![],
        );
    }
    let mut g = sh.lock().unwrap();
    let s = |k: &str| args.get(k).and_then(|x| x.as_str()).map(str::to_string);
    match cmd {
        "qmp_capabilities" => (
            Err(("CommandNotFound".into(), "Capabilities negotiation is already complete, command ignored".into())),
            vec![],
        ),
        "query-name" => (
            Ok(match &opts.name {
                Some(n) => json!({"name": n}),
                None => json!({}),
            }),
            vec![],
        ),
        "query-status" => (Ok(json!({"status": "prelaunch", "singlestep": false, "running": false})), vec![]),
        "query-version" => (
            Ok(json!({"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"})),
            vec![],
        ),
        "device_add" => {
            let Some(driver) = s("driver") else {
                return (gerr("Parameter 'driver' is missing".into()), vec![]);
            };
            let id = s("id");
            if let Some(id) = &id {
                if g.devices.iter().any(|d| &d.id == id) {
                    return (gerr(format!("Duplicate device ID '{id}'")), vec![]);
                }
            }
            let mut props = args.as_object().cloned().unwrap_or_default();
            props.remove("driver");
            props.remove("id");
            let bus_arg = props.remove("bus").and_then(|b| b.as_str().map(str::to_string));
            if is_controller(&driver) {
                g.devices.push(FakeDev { id: id.unwrap_or_default(), driver, props, bus: None });
                return (Ok(json!({})), vec![]);
            }
            if driver != "usb-host" {
                return (gerr(format!("'{driver}' is not a valid device model name")), vec![]);
            }
            for k in ["hostbus", "hostaddr"] {
                if props.get(k).is_some_and(|x| !x.is_u64()) {
                    // QEMU 7.2 still converts strings; the tool must send integers (9.2 refuses strings).
                    return (gerr(format!("Parameter '{k}' expects uint32 (test fake: send a JSON integer)")), vec![]);
                }
            }
            let bus = match bus_arg {
                Some(b) => {
                    let exists = g.devices.iter().any(|d| is_controller(&d.driver) && format!("{}.0", d.id) == b);
                    if !exists {
                        return (gerr(format!("Bus '{b}' not found")), vec![]);
                    }
                    b
                }
                None => match g.devices.iter().find(|d| is_controller(&d.driver)) {
                    Some(c) => format!("{}.0", c.id),
                    None => return (gerr("No 'usb-bus' bus found for device 'usb-host'".into()), vec![]),
                },
            };
            let child = g.new_child(&bus);
            let ctrl = g.devices.iter().find(|d| format!("{}.0", d.id) == bus).unwrap();
            let nports = controller_ports(&ctrl.driver, &ctrl.props);
            let used: Vec<String> = g
                .devices
                .iter()
                .filter(|d| d.bus.as_deref() == Some(bus.as_str()))
                .filter_map(|d| d.props.get("port").and_then(|p| p.as_str()).map(str::to_string))
                .collect();
            let port = match props.get("port").and_then(|p| p.as_str()) {
                Some(p) => {
                    let n: u64 = p.parse().unwrap_or(0);
                    if n == 0 || n > nports || used.iter().any(|u| u == p) {
                        return (gerr(format!("usb port {p} (bus {bus}) not found (in use?)")), vec![]);
                    }
                    p.to_string()
                }
                None => match (1..=nports).map(|n| n.to_string()).find(|n| !used.contains(n)) {
                    Some(n) => n,
                    None => return (gerr(format!("no free usb port on bus {bus}")), vec![]),
                },
            };
            let hb = props.get("hostbus").and_then(|x| x.as_u64()).unwrap_or(0);
            let ha = props.get("hostaddr").and_then(|x| x.as_u64()).unwrap_or(0);
            let by_port = props.get("hostport").is_some() || props.get("vendorid").is_some();
            if !opts.host_has_devices && !by_port {
                if let Some(dev) = props.get("hostdevice").and_then(|d| d.as_str()) {
                    return (gerr(format!("failed to open {dev}: No such file or directory")), vec![]);
                }
                return (gerr(format!("failed to find host usb device {hb}:{ha}")), vec![]);
            }
            props.insert("port".into(), json!(port));
            props.insert("attached".into(), json!(opts.host_has_devices && !by_port));
            let id = id.unwrap_or_default();
            g.child_of.insert(id.clone(), child);
            g.devices.push(FakeDev { id, driver, props, bus: Some(bus) });
            (Ok(json!({})), vec![])
        }
        "device_del" => {
            let Some(id) = s("id") else {
                return (gerr("Parameter 'id' is missing".into()), vec![]);
            };
            let Some(i) = g.devices.iter().position(|d| d.id == id) else {
                return (Err(("DeviceNotFound".into(), format!("Device '{id}' not found"))), vec![]);
            };
            if is_controller(&g.devices[i].driver) {
                // PCI unplug needs the (paused) guest: accepted, nothing happens.
                return (Ok(json!({})), vec![]);
            }
            g.devices.remove(i);
            let ev = event_line("DEVICE_DELETED", json!({"device": id, "path": format!("/machine/peripheral/{id}")}));
            (Ok(json!({})), vec![ev])
        }
        "qom-list" => {
            let path = s("path").unwrap_or_default();
            if path == "/machine/peripheral" {
                let mut out = vec![json!({"name": "type", "type": "string"})];
                for d in g.devices.iter().filter(|d| !d.id.is_empty()) {
                    out.push(json!({"name": d.id, "type": format!("child<{}>", d.driver)}));
                }
                return (Ok(Value::Array(out)), vec![]);
            }
            if let Some(bus) = resolve_bus(&g, &path) {
                let mut out =
                    vec![json!({"name": "type", "type": "string"}), json!({"name": "realized", "type": "bool"})];
                for (n, d) in g.children(&bus) {
                    out.push(json!({"name": format!("child[{n}]"), "type": format!("link<{}>", d.driver)}));
                }
                out.push(json!({"name": "hotplug-handler", "type": "link<hotplug-handler>"}));
                return (Ok(Value::Array(out)), vec![]);
            }
            if let Some(d) = resolve_dev(&g, &path) {
                let mut out = vec![
                    json!({"name": "type", "type": "string"}),
                    json!({"name": "parent_bus", "type": "link<bus>"}),
                    json!({"name": "realized", "type": "bool"}),
                ];
                if is_controller(&d.driver) {
                    out.push(json!({"name": format!("{}.0", d.id), "type": "child<usb-bus>"}));
                    out.push(json!({"name": "p2", "type": "uint32"}));
                    out.push(json!({"name": "p3", "type": "uint32"}));
                } else {
                    for (n, t) in [
                        ("port", "str"),
                        ("hostbus", "uint32"),
                        ("hostaddr", "uint32"),
                        ("hostport", "str"),
                        ("hostdevice", "str"),
                        ("vendorid", "uint32"),
                        ("productid", "uint32"),
                        ("attached", "bool"),
                    ] {
                        out.push(json!({"name": n, "type": t}));
                    }
                }
                return (Ok(Value::Array(out)), vec![]);
            }
            (Err(("DeviceNotFound".into(), format!("Device '{path}' not found"))), vec![])
        }
        "qom-get" => {
            let path = s("path").unwrap_or_default();
            let prop = s("property").unwrap_or_default();
            if let Some(bus) = resolve_bus(&g, &path) {
                if let Some(n) =
                    prop.strip_prefix("child[").and_then(|r| r.strip_suffix(']')).and_then(|n| n.parse::<usize>().ok())
                {
                    if let Some((_, d)) = g.children(&bus).into_iter().find(|(c, _)| *c == n) {
                        return (Ok(json!(format!("/machine/peripheral/{}", d.id))), vec![]);
                    }
                }
                if prop == "type" {
                    return (Ok(json!("usb-bus")), vec![]);
                }
                return (gerr(format!("Property 'usb-bus.{prop}' not found")), vec![]);
            }
            let Some(d) = resolve_dev(&g, &path) else {
                return (Err(("DeviceNotFound".into(), format!("Device '{path}' not found"))), vec![]);
            };
            let val = match prop.as_str() {
                "type" => Some(json!(d.driver)),
                "realized" => Some(json!(true)),
                "parent_bus" => Some(match &d.bus {
                    Some(b) => json!(format!("/machine/peripheral/{}/{b}", b.trim_end_matches(".0"))),
                    None => json!("/machine/i440fx/pci.0"),
                }),
                p if is_controller(&d.driver) => match p {
                    "p2" | "p3" => Some(d.props.get(p).cloned().unwrap_or(json!(4))),
                    _ => None,
                },
                "port" | "hostport" | "hostdevice" => Some(d.props.get(prop.as_str()).cloned().unwrap_or(json!(""))),
                "hostbus" | "hostaddr" | "vendorid" | "productid" => {
                    Some(d.props.get(prop.as_str()).cloned().unwrap_or(json!(0)))
                }
                "attached" => Some(d.props.get("attached").cloned().unwrap_or(json!(false))),
                _ => None,
            };
            match val {
                Some(v) => (Ok(v), vec![]),
                None => (gerr(format!("Property '{}.{prop}' not found", d.driver)), vec![]),
            }
        }
        other => (Err(("CommandNotFound".into(), format!("The command {other} has not been found"))), vec![]),
    }
}

/// "xenusb-0.0" or "/machine/peripheral/xenusb-0/xenusb-0.0" -> "xenusb-0.0" when that bus exists.
fn resolve_bus(g: &FakeShared, path: &str) -> Option<String> {
    g.devices.iter().filter(|d| is_controller(&d.driver) && !d.id.is_empty()).find_map(|c| {
        let bus = format!("{}.0", c.id);
        (path == bus || path == format!("/machine/peripheral/{}/{bus}", c.id)).then_some(bus)
    })
}

/// "/machine/peripheral/<id>" or a bare "<id>" (QEMU resolves partial paths).
fn resolve_dev<'a>(g: &'a FakeShared, path: &str) -> Option<&'a FakeDev> {
    let id = path.strip_prefix("/machine/peripheral/").unwrap_or(path);
    g.devices.iter().find(|d| !d.id.is_empty() && d.id == id)
}

// ---------------------------------------------------------------------------
// Config snippets
// ---------------------------------------------------------------------------

/// A VM with an explicit QMP socket.
pub fn config_qmp(vm: &str, qmp: &str, extra: &str) -> String {
    format!("timeout = 5\n\n[[vm]]\nname = \"{vm}\"\nqmp = \"{qmp}\"\n{extra}\n")
}

/// A Xen VM found by name on <root>/run/xen/qmp-libxl-*.
pub fn config_xen(vm: &str, extra: &str) -> String {
    format!("timeout = 5\n\n[[vm]]\nname = \"{vm}\"\n{extra}\n")
}
