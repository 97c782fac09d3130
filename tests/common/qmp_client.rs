//! The test side's QMP client: the library's real `qmp::Qmp` plus helpers
//! for arranging a real QEMU, and raw transcripts of the wire bytes.

use super::*;

/// The library's own QMP client (`auto_usb_attach::backend::testing::Client`), plus the
/// helpers tests use to arrange and read a real QEMU.
pub struct Qmp(pub auto_usb_attach::backend::testing::Client);

impl Qmp {
    /// Connects (retrying while the socket is missing or refusing, up to
    /// `timeout`), reads the greeting and negotiates capabilities, all through
    /// the library's client; the greeting wait is bounded by `timeout`, the
    /// connection's life by 6 x `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> std::io::Result<Qmp> {
        use auto_usb_attach::backend::testing::{connect, QmpError};
        // The library bounds the whole connection by one deadline (an invocation's
        // budget); a test's connection lives longer than one read, hence the margin.
        let deadline = auto_usb_attach::deadline::Deadline::after(timeout * 6);
        let start = Instant::now();
        loop {
            match connect(path, &deadline, timeout) {
                Ok(c) => return Ok(Qmp(c)),
                Err(QmpError::NotListening(_)) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
        }
    }

    /// Connects without reading anything: a client holding the socket (QEMU serves one at a time).
    pub fn hold(path: &Path) -> UnixStream {
        UnixStream::connect(path).unwrap()
    }

    /// Sends a command; returns Ok(return value) or Err(QEMU's error object
    /// `{"class", "desc"}`). Events are kept aside by the client.
    pub fn execute(&mut self, cmd: &str, args: Value) -> std::io::Result<Result<Value, Value>> {
        use auto_usb_attach::backend::testing::QmpError;
        let args = args.as_object().is_some_and(|o| !o.is_empty()).then_some(args);
        match self.0.execute(cmd, args) {
            Ok(v) => Ok(Ok(v)),
            Err(QmpError::Qemu { class, desc }) => Ok(Err(json!({ "class": class, "desc": desc }))),
            Err(e) => Err(std::io::Error::other(e.to_string())),
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
