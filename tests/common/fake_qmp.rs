//! `FakeQmp`: a QMP server on a thread that answers in real QEMU 7.2's exact
//! wire format (see tests/fixtures/qemu-7.2-qmp-transcript.txt) and can
//! misbehave (`Fault`). What it answers is modelled in `fake_qmp_model.rs`.

use super::*;

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
    pub(crate) fn new_child(&mut self, bus: &str) -> usize {
        let n = self.next_child.entry(bus.to_string()).or_insert(0);
        *n += 1;
        *n - 1
    }

    /// (N, device) for the children of `bus`, in child order.
    pub(crate) fn children(&self, bus: &str) -> Vec<(usize, &FakeDev)> {
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

pub(crate) fn is_controller(driver: &str) -> bool {
    matches!(driver, "nec-usb-xhci" | "qemu-xhci" | "usb-ehci" | "piix3-usb-uhci" | "ich9-usb-ehci1")
}

pub(crate) fn controller_ports(driver: &str, props: &serde_json::Map<String, Value>) -> u64 {
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

pub(crate) fn reply_ok(ret: &Value, id: Option<&Value>) -> String {
    // Success: return first, then id (as QEMU 7.2 sends it).
    match id {
        Some(id) => format!("{{\"return\": {}, \"id\": {}}}\r\n", qemu_json(ret), qemu_json(id)),
        None => format!("{{\"return\": {}}}\r\n", qemu_json(ret)),
    }
}

pub(crate) fn reply_err(class: &str, desc: &str, id: Option<&Value>) -> String {
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

    /// The host device usb-host `id` had open went away (QEMU then reads `attached` false).
    pub fn lose_host_device(&self, id: &str) {
        let mut g = self.shared.lock().unwrap();
        let d = g.devices.iter_mut().find(|d| d.id == id).unwrap_or_else(|| panic!("no device {id}"));
        d.props.insert("attached".into(), json!(false));
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
pub(crate) fn serve(
    mut s: UnixStream,
    opts: &FakeOptions,
    sh: &Arc<Mutex<FakeShared>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
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
