//! libvirtd's own RPC protocol, spoken on its local UNIX socket: the few
//! calls one session needs (auth list, open, lookup by name, the live XML,
//! attach, detach, close), XDR both ways, every connect, read and write
//! bounded by the invocation's deadline. It is what libvirt's library does
//! for a local `qemu:///system` (its remote driver, minus the feature probes
//! and keepalive a one-shot caller does not need), so the tool neither
//! starts the helper nor loads libvirt's ~57 libraries for the URIs it can
//! reach so (`socket_for`); every other URI still goes through the helper.
//!
//! The wire format is libvirt's `src/rpc/virnetprotocol.x` (a length word,
//! a 24-byte header, the XDR payload) and the procedures and their
//! arguments are those of `src/remote/remote_protocol.x`.

use super::{Domain, DomainLink, LvError};
use crate::deadline::Deadline;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// REMOTE_PROGRAM and REMOTE_PROTOCOL_VERSION.
const PROGRAM: u32 = 0x2000_8086;
const VERSION: u32 = 1;
/// The procedures used (remote_protocol.x's `remote_procedure`).
const PROC_CONNECT_OPEN: i32 = 1;
const PROC_CONNECT_CLOSE: i32 = 2;
const PROC_DOMAIN_GET_XML_DESC: i32 = 14;
const PROC_DOMAIN_LOOKUP_BY_NAME: i32 = 23;
const PROC_AUTH_LIST: i32 = 66;
const PROC_AUTH_POLKIT: i32 = 70;
const PROC_DOMAIN_ATTACH_DEVICE_FLAGS: i32 = 160;
const PROC_DOMAIN_DETACH_DEVICE_FLAGS: i32 = 161;
/// virNetMessageType / virNetMessageStatus.
const TYPE_CALL: u32 = 0;
const TYPE_REPLY: u32 = 1;
const STATUS_OK: u32 = 0;
const STATUS_ERROR: u32 = 1;
/// remote_auth_type.
const AUTH_NONE: u32 = 0;
const AUTH_POLKIT: u32 = 2;
/// VIR_DOMAIN_AFFECT_LIVE.
const AFFECT_LIVE: u32 = 1;
/// VIR_NET_MESSAGE_MAX plus the length word: no reply is larger.
const MESSAGE_MAX: usize = 16 * 1024 * 1024 + 4;
/// virErrorNumber values the caller acts on (virterror.h; the helper's
/// `conn.rs` names the same through the `virt` crate).
const ERR_INTERNAL_ERROR: i32 = 1;
const ERR_NO_CONNECT: i32 = 5;
const ERR_SYSTEM_ERROR: i32 = 38;
const ERR_NO_DOMAIN: i32 = 42;
const ERR_CONFIG_UNSUPPORTED: i32 = 67;
const ERR_DEVICE_MISSING: i32 = 99;

/// Where libvirt's own library would connect for `uri`, when this client can
/// go there itself: a local `<driver>:///system` (no transport, host or
/// query), as root, with no `remote_mode` set in libvirt.conf. The modular
/// daemon's socket (`virt<driver>d-sock`) if it exists, else libvirtd's
/// (`libvirt-sock`), as libvirt's remote driver picks in its "auto" mode.
/// None: the helper (libvirt's library) handles it.
pub(super) fn socket_for(uri: &str) -> Option<PathBuf> {
    socket_in(uri, Path::new("/run/libvirt"), Path::new("/etc/libvirt/libvirt.conf"))
}

fn socket_in(uri: &str, run: &Path, conf: &Path) -> Option<PathBuf> {
    let driver = uri.strip_suffix(":///system")?;
    if driver.is_empty() || !driver.chars().all(|c| c.is_ascii_lowercase()) || !nix::unistd::geteuid().is_root() {
        return None;
    }
    // An admin's choice of daemon (legacy or direct) is libvirt's to apply.
    if let Ok(text) = std::fs::read_to_string(conf) {
        if text.lines().any(|l| l.trim_start().starts_with("remote_mode")) {
            return None;
        }
    }
    let direct = run.join(format!("virt{driver}d-sock"));
    Some(if direct.exists() { direct } else { run.join("libvirt-sock") })
}

/// Connect to the daemon at `socket`, open `uri` and find running domain
/// `name`, as `helper::open` does through libvirt's library: the domain, or
/// why it is not running.
pub(super) fn open(
    socket: &Path,
    uri: &str,
    name: &str,
    deadline: &Deadline,
) -> Result<Result<Domain, String>, LvError> {
    let mut c = Client::connect(socket, deadline)?;
    let mut auth = c.call(PROC_AUTH_LIST, &[])?;
    let types = (0..auth.u32()?).map(|_| auth.u32()).collect::<Result<Vec<_>, _>>()?;
    if !types.is_empty() && !types.contains(&AUTH_NONE) {
        if !types.contains(&AUTH_POLKIT) {
            return Err(LvError::Unreachable(format!(
                "libvirtd at {} wants SASL authentication, which auto-usb-attach does not do",
                socket.display()
            )));
        }
        c.call(PROC_AUTH_POLKIT, &[])?;
    }
    let mut args = Xdr::default();
    args.some_str(uri).u32(0);
    c.call(PROC_CONNECT_OPEN, &args.0)?;
    let mut args = Xdr::default();
    args.str(name);
    let mut reply = match c.call(PROC_DOMAIN_LOOKUP_BY_NAME, &args.0) {
        Ok(r) => r,
        Err(LvError::Refused(_)) if c.last_code == Some(ERR_NO_DOMAIN) => {
            return Ok(Err(format!("libvirt has no domain {name}")))
        }
        Err(e) => return Err(e),
    };
    let dom = reply.domain()?;
    if dom.id < 0 {
        return Ok(Err(format!("libvirt domain {name} is not running")));
    }
    let instance = format!("{}:{}", dom.uuid_string(), dom.id);
    c.close_on_drop = true;
    Ok(Ok(Domain { link: Box::new(RpcDomain { c, dom }), instance }))
}

/// remote_nonnull_domain: how every call names the domain.
struct Dom {
    name: String,
    uuid: [u8; 16],
    id: i32,
}

impl Dom {
    /// As virDomainGetUUIDString prints it (and so as the helper's instance has it).
    fn uuid_string(&self) -> String {
        let h: String = self.uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    }

    fn put(&self, x: &mut Xdr) {
        x.str(&self.name);
        x.0.extend_from_slice(&self.uuid);
        x.u32(self.id as u32);
    }
}

/// One open domain: its calls, on the connection that found it.
struct RpcDomain {
    c: Client,
    dom: Dom,
}

impl RpcDomain {
    fn device(&mut self, proc: i32, xml: &str) -> Result<(), LvError> {
        let mut args = Xdr::default();
        self.dom.put(&mut args);
        args.str(xml).u32(AFFECT_LIVE);
        self.c.call(proc, &args.0).map(drop)
    }
}

impl DomainLink for RpcDomain {
    fn live_xml(&mut self) -> Result<String, LvError> {
        let mut args = Xdr::default();
        self.dom.put(&mut args);
        args.u32(0);
        self.c.call(PROC_DOMAIN_GET_XML_DESC, &args.0)?.string()
    }
    fn attach(&mut self, xml: &str) -> Result<(), LvError> {
        self.device(PROC_DOMAIN_ATTACH_DEVICE_FLAGS, xml)
    }
    fn detach(&mut self, xml: &str) -> Result<(), LvError> {
        self.device(PROC_DOMAIN_DETACH_DEVICE_FLAGS, xml)
    }
}

/// libvirt's error, by what the caller does about it (as `conn.rs` does
/// with the same codes from libvirt's library).
fn classify(code: i32, msg: String) -> LvError {
    match code {
        ERR_NO_CONNECT | ERR_SYSTEM_ERROR => LvError::Unreachable(msg),
        ERR_DEVICE_MISSING => LvError::DeviceMissing(msg),
        ERR_CONFIG_UNSUPPORTED if msg.contains("USB bus") => LvError::NoUsbPort(msg),
        // libvirt gives "No free USB ports" only as an internal error: its text is all there is.
        ERR_INTERNAL_ERROR if msg.contains("No free USB ports") => LvError::NoUsbPort(msg),
        _ => LvError::Refused(msg),
    }
}

/// A connection to libvirtd: one call at a time, each reply waited for
/// until the deadline.
struct Client {
    sock: UnixStream,
    deadline: Deadline,
    serial: u32,
    /// The error code of the last call that failed (virErrorNumber).
    last_code: Option<i32>,
    /// Opened: say goodbye (CONNECT_CLOSE) when done, as libvirt's library
    /// does, instead of leaving libvirtd an unexpected end of file.
    close_on_drop: bool,
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.close_on_drop {
            self.close_on_drop = false;
            let _ = self.call(PROC_CONNECT_CLOSE, &[]);
        }
    }
}

fn gone(socket: &Path, e: impl std::fmt::Display) -> LvError {
    LvError::Unreachable(format!("cannot connect to {}: {e}", socket.display()))
}

impl Client {
    /// A non-blocking connect, retried until the deadline while the backlog is full.
    fn connect(socket: &Path, deadline: &Deadline) -> Result<Client, LvError> {
        use nix::errno::Errno;
        use nix::sys::socket::{connect, socket as new_socket, AddressFamily, SockFlag, SockType, UnixAddr};
        use std::os::fd::{AsRawFd, OwnedFd};
        let addr = UnixAddr::new(socket).map_err(|e| gone(socket, e))?;
        loop {
            let fd: OwnedFd = new_socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| gone(socket, e))?;
            match connect(fd.as_raw_fd(), &addr) {
                Ok(()) => {
                    let sock = UnixStream::from(fd);
                    sock.set_nonblocking(false).map_err(|e| gone(socket, e))?;
                    return Ok(Client { sock, deadline: *deadline, serial: 0, last_code: None, close_on_drop: false });
                }
                Err(Errno::EAGAIN) | Err(Errno::EINTR) => {
                    deadline.remaining("").map_err(|_| LvError::Timeout)?;
                    std::thread::sleep(crate::timing::poll());
                }
                Err(e) => return Err(gone(socket, e.desc())),
            }
        }
    }

    /// What is left of the budget, for the socket's next read or write.
    fn left(&self) -> Result<Duration, LvError> {
        self.deadline.capped("", Duration::MAX).map_err(|_| LvError::Timeout)
    }

    fn io(e: std::io::Error) -> LvError {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => LvError::Timeout,
            _ => LvError::Unreachable(format!("libvirtd's connection: {e}")),
        }
    }

    /// One call: `proc` with its XDR `args`; its reply's payload, or libvirt's error.
    fn call(&mut self, proc: i32, args: &[u8]) -> Result<Reader, LvError> {
        self.serial += 1;
        let mut msg = Xdr::default();
        msg.u32((28 + args.len()) as u32).u32(PROGRAM).u32(VERSION).u32(proc as u32);
        msg.u32(TYPE_CALL).u32(self.serial).u32(STATUS_OK);
        msg.0.extend_from_slice(args);
        self.sock.set_write_timeout(Some(self.left()?)).map_err(Self::io)?;
        self.sock.write_all(&msg.0).map_err(Self::io)?;
        loop {
            let mut r = Reader::new(self.read_message()?);
            let (prog, _vers, got, kind, serial, status) = (r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?);
            // Anything else (a keepalive ping, an event) is not this call's reply.
            if prog != PROGRAM || kind != TYPE_REPLY || serial != self.serial || got != proc as u32 {
                continue;
            }
            return match status {
                STATUS_OK => {
                    self.last_code = None;
                    Ok(r)
                }
                STATUS_ERROR => {
                    // remote_error: code, domain, message (optional), then fields nobody needs.
                    let code = r.u32()? as i32;
                    let _domain = r.u32()?;
                    let msg = r.opt_string()?.unwrap_or_else(|| format!("libvirt error {code}"));
                    self.last_code = Some(code);
                    Err(classify(code, msg))
                }
                s => Err(LvError::Refused(format!("libvirtd answered with status {s}"))),
            };
        }
    }

    /// One whole message after its length word.
    fn read_message(&mut self) -> Result<Vec<u8>, LvError> {
        let mut len = [0u8; 4];
        self.read_full(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if !(28..=MESSAGE_MAX).contains(&len) {
            return Err(LvError::Refused(format!("libvirtd sent a message of {len} bytes")));
        }
        let mut body = vec![0u8; len - 4];
        self.read_full(&mut body)?;
        Ok(body)
    }

    fn read_full(&mut self, buf: &mut [u8]) -> Result<(), LvError> {
        let mut at = 0;
        while at < buf.len() {
            self.sock.set_read_timeout(Some(self.left()?)).map_err(Self::io)?;
            match self.sock.read(&mut buf[at..]) {
                Ok(0) => return Err(LvError::Unreachable("libvirtd closed the connection".into())),
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Self::io(e)),
            }
        }
        Ok(())
    }
}

/// XDR out: big-endian words, strings padded to a multiple of four.
#[derive(Default)]
struct Xdr(Vec<u8>);

impl Xdr {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }
    /// remote_string (a pointer to a string), present.
    fn some_str(&mut self, s: &str) -> &mut Self {
        self.u32(1).str(s)
    }
}

/// XDR in, over one reply.
struct Reader {
    buf: Vec<u8>,
    at: usize,
}

impl Reader {
    fn new(buf: Vec<u8>) -> Self {
        Reader { buf, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&[u8], LvError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| LvError::Refused("libvirtd's reply is cut short".into()))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, LvError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn string(&mut self) -> Result<String, LvError> {
        let n = self.u32()? as usize;
        let padded = n.checked_next_multiple_of(4).unwrap_or(usize::MAX);
        let s = String::from_utf8_lossy(&self.take(padded)?[..n]).into_owned();
        Ok(s)
    }
    fn opt_string(&mut self) -> Result<Option<String>, LvError> {
        match self.u32()? {
            0 => Ok(None),
            _ => self.string().map(Some),
        }
    }
    fn domain(&mut self) -> Result<Dom, LvError> {
        let name = self.string()?;
        let uuid = self.take(16)?.try_into().expect("16 bytes");
        let id = self.u32()? as i32;
        Ok(Dom { name, uuid, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A directory of its own under the temp dir, removed when dropped.
    struct TempDir(PathBuf);
    impl TempDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tempdir() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p =
            std::env::temp_dir().join(format!("aua-rpc-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    #[test]
    fn strings_are_padded_words() {
        let mut x = Xdr::default();
        x.some_str("qemu:///system").u32(7);
        assert_eq!(x.0.len(), 4 + 4 + 16 + 4);
        assert_eq!(&x.0[..8], &[0, 0, 0, 1, 0, 0, 0, 14]);
        assert_eq!(&x.0[22..24], &[0, 0]);
        let mut r = Reader::new(x.0[4..].to_vec());
        assert_eq!((r.string().unwrap().as_str(), r.u32().unwrap()), ("qemu:///system", 7));
        assert!(r.u32().is_err(), "reading past the end is an error, not a panic");
    }

    #[test]
    fn only_a_local_system_uri_is_reached_directly() {
        let dir = tempdir();
        let conf = dir.path().join("libvirt.conf");
        let root = nix::unistd::geteuid().is_root();
        let got = |uri: &str| socket_in(uri, dir.path(), &conf);
        for uri in
            ["qemu+ssh://h/system", "qemu:///session", "qemu:///system?mode=legacy", "test:///default", "xen:///"]
        {
            assert_eq!(got(uri), None, "{uri}");
        }
        if !root {
            assert_eq!(got("qemu:///system"), None, "libvirt's library decides for a user");
            return;
        }
        assert_eq!(got("qemu:///system"), Some(dir.path().join("libvirt-sock")));
        std::fs::write(dir.path().join("virtqemud-sock"), "").unwrap();
        assert_eq!(got("qemu:///system"), Some(dir.path().join("virtqemud-sock")));
        std::fs::write(&conf, "# remote_mode = \"legacy\"\n").unwrap();
        assert!(got("qemu:///system").is_some(), "a comment is not a setting");
        std::fs::write(&conf, "remote_mode = \"legacy\"\n").unwrap();
        assert_eq!(got("qemu:///system"), None);
    }

    #[test]
    fn the_codes_are_libvirts() {
        assert_eq!(classify(ERR_DEVICE_MISSING, "x".into()), LvError::DeviceMissing("x".into()));
        let m = "internal error: No free USB ports".to_string();
        assert_eq!(classify(ERR_INTERNAL_ERROR, m.clone()), LvError::NoUsbPort(m));
        assert_eq!(classify(ERR_NO_CONNECT, "x".into()), LvError::Unreachable("x".into()));
        assert_eq!(classify(ERR_INTERNAL_ERROR, "x".into()), LvError::Refused("x".into()));
        #[cfg(feature = "libvirt")]
        {
            use virt::sys;
            let ours = [ERR_INTERNAL_ERROR, ERR_NO_CONNECT, ERR_SYSTEM_ERROR, ERR_NO_DOMAIN];
            let theirs = [
                sys::VIR_ERR_INTERNAL_ERROR,
                sys::VIR_ERR_NO_CONNECT,
                sys::VIR_ERR_SYSTEM_ERROR,
                sys::VIR_ERR_NO_DOMAIN,
            ];
            assert_eq!(ours.map(|c| c as i64), theirs.map(|c| c as i64));
            let ours = [ERR_CONFIG_UNSUPPORTED, ERR_DEVICE_MISSING];
            let theirs = [sys::VIR_ERR_CONFIG_UNSUPPORTED, sys::VIR_ERR_DEVICE_MISSING];
            assert_eq!(ours.map(|c| c as i64), theirs.map(|c| c as i64));
            assert_eq!(AFFECT_LIVE as i64, sys::VIR_DOMAIN_AFFECT_LIVE as i64);
        }
    }

    /// One scripted call: the procedure it must be, and its reply payload or (code, message) error.
    type Step = (i32, Result<Vec<u8>, (i32, &'static str)>);

    /// A libvirtd that answers each call of `script` in turn: (procedure it
    /// must be, reply payload or (code, message) error). Returns what it was sent.
    fn fake(script: Vec<Step>) -> (PathBuf, std::thread::JoinHandle<Vec<i32>>, TempDir) {
        let dir = tempdir();
        let path = dir.path().join("libvirt-sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut seen = Vec::new();
            for (want, reply) in script {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).is_err() {
                    break;
                }
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                s.read_exact(&mut body).unwrap();
                let mut r = Reader::new(body);
                let (prog, vers, proc, kind, serial, _) = (
                    r.u32().unwrap(),
                    r.u32().unwrap(),
                    r.u32().unwrap() as i32,
                    r.u32().unwrap(),
                    r.u32().unwrap(),
                    r.u32().unwrap(),
                );
                assert_eq!((prog, vers, kind, proc), (PROGRAM, VERSION, TYPE_CALL, want));
                seen.push(proc);
                // A keepalive ping first, which the client must pass over.
                let mut out = Xdr::default();
                out.u32(28).u32(0x6b65_6570).u32(1).u32(1).u32(2).u32(0).u32(0);
                let (status, payload) = match reply {
                    Ok(p) => (STATUS_OK, p),
                    Err((code, m)) => {
                        let mut e = Xdr::default();
                        e.u32(code as u32).u32(10).some_str(m).u32(2).u32(0).u32(0).u32(0).u32(0).u32(0).u32(0).u32(0);
                        (STATUS_ERROR, e.0)
                    }
                };
                out.u32((28 + payload.len()) as u32).u32(PROGRAM).u32(VERSION).u32(proc as u32);
                out.u32(TYPE_REPLY).u32(serial).u32(status);
                out.0.extend_from_slice(&payload);
                s.write_all(&out.0).unwrap();
            }
            seen
        });
        (path, t, dir)
    }

    fn domain_reply(id: i32) -> Vec<u8> {
        let mut x = Xdr::default();
        x.str("win11");
        x.0.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0, 1, 2, 3, 4, 5, 6, 7]);
        x.u32(id as u32);
        x.0
    }

    fn polkit_list() -> Vec<u8> {
        let mut x = Xdr::default();
        x.u32(1).u32(AUTH_POLKIT);
        x.0
    }

    fn deadline() -> Deadline {
        Deadline::after(Duration::from_secs(10))
    }

    #[test]
    fn one_connection_finds_the_domain_attaches_and_says_goodbye() {
        let mut xml = Xdr::default();
        xml.str("<domain/>");
        let (path, t, _dir) = fake(vec![
            (PROC_AUTH_LIST, Ok(polkit_list())),
            (PROC_AUTH_POLKIT, Ok(vec![0, 0, 0, 1])),
            (PROC_CONNECT_OPEN, Ok(vec![])),
            (PROC_DOMAIN_LOOKUP_BY_NAME, Ok(domain_reply(3))),
            (PROC_DOMAIN_ATTACH_DEVICE_FLAGS, Ok(vec![])),
            (PROC_DOMAIN_GET_XML_DESC, Ok(xml.0)),
            (PROC_DOMAIN_DETACH_DEVICE_FLAGS, Err((ERR_DEVICE_MISSING, "device not found: no such hostdev"))),
            (PROC_CONNECT_CLOSE, Ok(vec![])),
        ]);
        let d = open(&path, "qemu:///system", "win11", &deadline()).unwrap().unwrap();
        assert_eq!(d.instance, "12345678-9abc-def0-0001-020304050607:3");
        let mut link = d.link;
        link.attach("<hostdev/>").unwrap();
        assert_eq!(link.live_xml().unwrap(), "<domain/>");
        assert_eq!(link.detach("<hostdev/>"), Err(LvError::DeviceMissing("device not found: no such hostdev".into())));
        drop(link);
        assert_eq!(t.join().unwrap().last(), Some(&PROC_CONNECT_CLOSE));
    }

    #[test]
    fn a_domain_not_running_or_not_defined_is_not_running() {
        let (path, t, _dir) = fake(vec![
            (PROC_AUTH_LIST, Ok(vec![0, 0, 0, 0])),
            (PROC_CONNECT_OPEN, Ok(vec![])),
            (PROC_DOMAIN_LOOKUP_BY_NAME, Ok(domain_reply(-1))),
        ]);
        let r = open(&path, "qemu:///system", "win11", &deadline()).unwrap();
        assert_eq!(r.err().as_deref(), Some("libvirt domain win11 is not running"));
        t.join().unwrap();
        let (path, t, _dir) = fake(vec![
            (PROC_AUTH_LIST, Ok(vec![0, 0, 0, 0])),
            (PROC_CONNECT_OPEN, Ok(vec![])),
            (PROC_DOMAIN_LOOKUP_BY_NAME, Err((ERR_NO_DOMAIN, "Domain not found: no domain with matching name 'x'"))),
        ]);
        let r = open(&path, "qemu:///system", "x", &deadline()).unwrap();
        assert_eq!(r.err().as_deref(), Some("libvirt has no domain x"));
        t.join().unwrap();
    }

    #[test]
    fn no_daemon_is_unreachable_and_a_silent_one_times_out() {
        let dir = tempdir();
        let r = open(&dir.path().join("libvirt-sock"), "qemu:///system", "w", &deadline());
        assert!(matches!(r, Err(LvError::Unreachable(ref m)) if m.contains("cannot connect to")), "{:?}", r.err());
        let path = dir.path().join("mute-sock");
        let _l = UnixListener::bind(&path).unwrap();
        let t0 = std::time::Instant::now();
        let r = open(&path, "qemu:///system", "w", &Deadline::after(Duration::from_millis(300)));
        assert!(matches!(r, Err(LvError::Timeout)), "{:?}", r.err());
        assert!(t0.elapsed() < Duration::from_secs(3));
    }
}
