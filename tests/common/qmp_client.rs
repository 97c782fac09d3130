//! The test side's QMP client: the library's real `qmp::Qmp` plus helpers
//! for arranging a real QEMU, and raw transcripts of the wire bytes.

use super::*;

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
