//! A blocking QMP client: greeting, `qmp_capabilities`, then one command at a
//! time with an `id` that the reply must echo. Asynchronous events between
//! replies are kept aside (`events`) and otherwise skipped.
//!
//! `Qmp` is generic over `BufRead + Write` so it is unit-tested on in-memory
//! streams; `connect` builds one on a UNIX socket whose every read and write
//! is bounded by the invocation's deadline.

use super::{ConnectError, DeadlineStream};
use crate::deadline::Deadline;
use serde_json::{json, Value};
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::time::Duration;

/// Errors callers must tell apart: QEMU's own answer (class + desc) versus
/// the conversation failing.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpError {
    /// QEMU answered `{"error": {"class": ..., "desc": ...}}`.
    Qemu { class: String, desc: String },
    /// No answer in time.
    Timeout(String),
    /// The socket failed or QEMU closed it.
    Io(String),
    /// Nobody listens on the socket (refused, or no such file): a QEMU that
    /// is gone or not started yet.
    NotListening(String),
    /// Something that is not QMP.
    Protocol(String),
    /// The socket's permissions keep us out (not root?).
    Denied(String),
}

impl fmt::Display for QmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QmpError::Qemu { class, desc } => write!(f, "QEMU said {class}: {desc}"),
            QmpError::Timeout(m)
            | QmpError::Io(m)
            | QmpError::NotListening(m)
            | QmpError::Protocol(m)
            | QmpError::Denied(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for QmpError {}

impl crate::error::Classify for QmpError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            QmpError::Qemu { .. } => ErrorKind::Refused,
            QmpError::Timeout(_) => ErrorKind::Timeout,
            QmpError::NotListening(_) => ErrorKind::Unreachable,
            QmpError::Denied(_) => ErrorKind::Denied,
            QmpError::Io(_) | QmpError::Protocol(_) => ErrorKind::Failed,
        }
    }
}

impl QmpError {
    pub fn class(&self) -> Option<&str> {
        match self {
            QmpError::Qemu { class, .. } => Some(class),
            _ => None,
        }
    }
    pub fn desc(&self) -> &str {
        match self {
            QmpError::Qemu { desc, .. } => desc,
            QmpError::Timeout(m)
            | QmpError::Io(m)
            | QmpError::NotListening(m)
            | QmpError::Protocol(m)
            | QmpError::Denied(m) => m,
        }
    }
}

/// What QEMU's refusal of a command means to us. QEMU reports most of these
/// as GenericError with a text; this is the one place that reads the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `device_del` of an id QEMU does not have.
    DeviceNotFound,
    /// Our picture of its ports/controllers was wrong: port in use,
    /// duplicate id, or a bus that does not exist.
    StaleView,
    /// QEMU before 5.1: usb-host has no `hostdevice` property.
    NoHostdeviceProperty,
    Other,
}

impl QmpError {
    /// None when QEMU did not answer (timeout, I/O, protocol).
    pub fn refusal(&self) -> Option<Refusal> {
        let QmpError::Qemu { class, desc: d } = self else { return None };
        Some(match class.as_str() {
            "DeviceNotFound" => Refusal::DeviceNotFound,
            "GenericError"
                if d.contains("(in use?)")
                    || d.contains("Duplicate device ID")
                    || (d.starts_with("Bus '") && d.ends_with("not found")) =>
            {
                Refusal::StaleView
            }
            _ if d.contains("hostdevice") && d.contains("not found") => Refusal::NoHostdeviceProperty,
            _ => Refusal::Other,
        })
    }
}

pub type QmpResult<T> = Result<T, QmpError>;

/// A line longer than this is not QMP we understand (QEMU's replies to our
/// commands are a few KiB at most).
const MAX_LINE: u64 = 4 << 20;

pub struct Qmp<S> {
    stream: S,
    next_id: u64,
    pub greeting: Value,
    pub events: Vec<Value>,
}

fn io_err(e: std::io::Error, what: &str) -> QmpError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => QmpError::Timeout(format!("timed out {what}")),
        _ => QmpError::Io(format!("{what}: {e}")),
    }
}

impl<S: BufRead + Write> Qmp<S> {
    /// Read the greeting and negotiate capabilities.
    pub fn handshake(mut stream: S) -> QmpResult<Qmp<S>> {
        let greeting = match read_json(&mut stream, "waiting for the QMP greeting") {
            Ok(g) => g,
            // QEMU accepts a second client into the backlog but only greets it
            // when the first one leaves.
            Err(QmpError::Timeout(_)) => {
                return Err(QmpError::Timeout("QMP socket busy (another client connected?): no greeting".into()))
            }
            // Closed or reset before a single byte of greeting: a QEMU that
            // is exiting (or just died), the same as one not listening.
            Err(QmpError::Io(m)) => return Err(QmpError::NotListening(format!("QEMU went away before greeting: {m}"))),
            Err(e) => return Err(e),
        };
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("not a QMP greeting: {}", snippet(&greeting.to_string()))));
        }
        let mut q = Qmp { stream, next_id: 0, greeting, events: Vec::new() };
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Run one command; returns the `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> QmpResult<Value> {
        let (id, line) = self.request(command, arguments);
        let what = format!("sending {command}");
        self.stream.write_all(line.as_bytes()).map_err(|e| io_err(e, &what))?;
        self.stream.flush().map_err(|e| io_err(e, &what))?;
        self.reply(command, &id)
    }

    /// The next id, and the line that sends `command` with it.
    fn request(&mut self, command: &str, arguments: Option<Value>) -> (String, String) {
        self.next_id += 1;
        let id = format!("aua-{}", self.next_id);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        (id, line)
    }

    /// Read up to the reply to `command` (sent with `id`).
    fn reply(&mut self, command: &str, id: &str) -> QmpResult<Value> {
        let what = format!("waiting for the reply to {command}");
        loop {
            let v = read_json(&mut self.stream, &what)?;
            if v.get("event").is_some() {
                log::debug!("QMP event: {v}");
                self.events.push(v);
                continue;
            }
            // A reply to someone else's id (there is no one else on our
            // connection) or without our id is not ours to take.
            if v.get("id").and_then(Value::as_str) != Some(id) {
                log::debug!("QMP: skipping reply not for {id}: {}", snippet(&v.to_string()));
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
                return Err(QmpError::Qemu { class: s("class"), desc: s("desc") });
            }
            return Err(QmpError::Protocol(format!(
                "reply to {command} has neither return nor error: {}",
                snippet(&v.to_string())
            )));
        }
    }

    pub fn into_inner(self) -> S {
        self.stream
    }
}

fn snippet(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn read_json<S: BufRead>(stream: &mut S, what: &str) -> QmpResult<Value> {
    loop {
        let mut buf = Vec::new();
        let n = stream.take(MAX_LINE).read_until(b'\n', &mut buf).map_err(|e| io_err(e, what))?;
        if n == 0 {
            return Err(QmpError::Io(format!("QEMU closed the QMP connection while {what}")));
        }
        if buf.last() != Some(&b'\n') && n as u64 == MAX_LINE {
            return Err(QmpError::Protocol(format!("QMP line over {MAX_LINE} bytes while {what}")));
        }
        let text = String::from_utf8_lossy(&buf);
        if text.trim().is_empty() {
            continue;
        }
        if buf.last() != Some(&b'\n') {
            // EOF in the middle of a line: the peer went away mid-reply.
            return Err(QmpError::Io(format!("QEMU closed the QMP connection mid-reply while {what}")));
        }
        return serde_json::from_str(&text)
            .map_err(|_| QmpError::Protocol(format!("not QMP (invalid JSON) while {what}: {}", snippet(&text))));
    }
}

/// `BufRead + Write` over one socket.
pub struct Conn(BufReader<DeadlineStream>);

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}
impl BufRead for Conn {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.0.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.0.consume(amt)
    }
}
impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.get_mut().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.get_mut().flush()
    }
}

pub type Client = Qmp<Conn>;

impl Client {
    /// `execute`, with `fd` passed along with the command, as `add-fd`
    /// takes the descriptor it adds.
    pub fn execute_with_fd(&mut self, command: &str, arguments: Option<Value>, fd: BorrowedFd<'_>) -> QmpResult<Value> {
        let (id, line) = self.request(command, arguments);
        let what = format!("sending {command}");
        self.stream.0.get_mut().send_with_fd(line.as_bytes(), fd).map_err(|e| io_err(e, &what))?;
        self.reply(command, &id)
    }

    /// The pid of the QEMU at the other end (the process that made the socket).
    pub fn peer_pid(&self) -> Option<i32> {
        self.stream.0.get_ref().peer_pid()
    }
}

/// Connect and handshake. `greeting_cap` bounds the wait for the greeting
/// (a busy socket) separately from the whole budget.
pub fn connect(path: &Path, deadline: &Deadline, greeting_cap: Duration) -> QmpResult<Client> {
    let sock = super::connect_unix(path, deadline).map_err(|e| match e {
        ConnectError::NotListening(m) => QmpError::NotListening(m),
        ConnectError::Denied(m) => QmpError::Denied(m),
        ConnectError::Timeout(m) => QmpError::Timeout(m),
        ConnectError::Io(m) => QmpError::Io(m),
    })?;
    let mut stream = DeadlineStream::socket(sock, deadline, "on QMP");
    stream.set_cap(greeting_cap);
    let conn = Conn(BufReader::new(stream));
    let mut q = Qmp::handshake(conn)?;
    // Past the greeting the socket is ours: the rest of the budget applies.
    q.stream.0.get_mut().set_cap(Duration::MAX);
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// In-memory peer: scripted input, captured output.
    struct Mem {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Mem {
        fn new(lines: &str) -> Mem {
            Mem { input: Cursor::new(lines.as_bytes().to_vec()), output: Vec::new() }
        }
    }
    impl Read for Mem {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(b)
        }
    }
    impl BufRead for Mem {
        fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
            self.input.fill_buf()
        }
        fn consume(&mut self, n: usize) {
            self.input.consume(n)
        }
    }
    impl Write for Mem {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.output.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const GREETING: &str = "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n";

    fn client(rest: &str) -> Qmp<Mem> {
        Qmp::handshake(Mem::new(&format!("{GREETING}{{\"return\": {{}}, \"id\": \"aua-1\"}}\r\n{rest}"))).unwrap()
    }

    fn sent(q: Qmp<Mem>) -> Vec<Value> {
        String::from_utf8(q.into_inner().output).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn handshake_then_command_with_id() {
        let mut q = client("{\"return\": {\"name\": \"win10\"}, \"id\": \"aua-2\"}\r\n");
        assert_eq!(q.execute("query-name", None).unwrap(), json!({"name": "win10"}));
        let s = sent(q);
        assert_eq!(s[0], json!({"execute": "qmp_capabilities", "id": "aua-1"}));
        assert_eq!(s[1], json!({"execute": "query-name", "id": "aua-2"}));
    }

    #[test]
    fn skips_events_and_foreign_ids() {
        let mut q = client(concat!(
            "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"DEVICE_DELETED\", \"data\": {\"device\": \"xenusb-3-7\", \"path\": \"/machine/peripheral/xenusb-3-7\"}}\r\n",
            "{\"return\": 5, \"id\": \"someone-else\"}\r\n",
            "{\"return\": {}}\r\n",
            "{\"return\": {}, \"id\": \"aua-2\"}\r\n",
        ));
        assert_eq!(q.execute("device_del", Some(json!({"id": "xenusb-3-7"}))).unwrap(), json!({}));
        assert_eq!(q.events.len(), 1);
        assert_eq!(q.events[0]["event"], "DEVICE_DELETED");
        assert_eq!(sent(q)[1]["arguments"], json!({"id": "xenusb-3-7"}));
    }

    #[test]
    fn error_keeps_class_and_desc() {
        let mut q = client("{\"id\": \"aua-2\", \"error\": {\"class\": \"GenericError\", \"desc\": \"failed to find host usb device 3:7\"}}\r\n");
        let e = q.execute("device_add", Some(json!({}))).unwrap_err();
        assert_eq!(e.class(), Some("GenericError"));
        assert_eq!(e.to_string(), "QEMU said GenericError: failed to find host usb device 3:7");
        assert_eq!(e.refusal(), Some(Refusal::Other));
        let q = |class: &str, desc: &str| QmpError::Qemu { class: class.into(), desc: desc.into() };
        assert_eq!(q("DeviceNotFound", "Device 'x' not found").refusal(), Some(Refusal::DeviceNotFound));
        assert_eq!(q("GenericError", "Duplicate device ID 'xenusb-0'").refusal(), Some(Refusal::StaleView));
        assert_eq!(q("GenericError", "Bus 'xenusb-1.0' not found").refusal(), Some(Refusal::StaleView));
        assert_eq!(
            q("GenericError", "Property 'usb-host.hostdevice' not found").refusal(),
            Some(Refusal::NoHostdeviceProperty)
        );
    }

    #[test]
    fn eof_is_an_error_not_a_panic() {
        let mut q = client("");
        let e = q.execute("qom-list", None).unwrap_err();
        assert!(matches!(e, QmpError::Io(_)), "{e:?}");
        assert!(e.to_string().contains("closed"), "{e}");
        let mut q = client("{\"return\": {}, \"i");
        assert!(q.execute("qom-list", None).unwrap_err().to_string().contains("mid-reply"));
        assert!(Qmp::handshake(Mem::new("")).is_err());
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        let mut q = client("Segmentation fault\n");
        let e = q.execute("qom-list", None).unwrap_err();
        assert!(matches!(e, QmpError::Protocol(_)), "{e:?}");
        assert!(e.to_string().contains("Segmentation fault"));
        assert_eq!(e.refusal(), None);
        let e = Qmp::handshake(Mem::new("{\"hello\": 1}\n")).err().unwrap();
        assert!(e.to_string().contains("not a QMP greeting"));
        let mut q = client("{\"id\": \"aua-2\"}\n");
        assert!(q.execute("x", None).unwrap_err().to_string().contains("neither"));
    }
}
