//! A small xenstore client speaking xenstored's documented wire protocol
//! (Xen docs/misc/xenstore.txt, xen/include/public/io/xs_wire.h), so the tool
//! can read and keep libxl's records (`/local/domain/<domid>/name`,
//! `/libxl/<domid>/device/vusb/...`) without linking libxenstore (the Rust
//! crates for it are GPL; this tool is MIT).
//!
//! Every message, both ways, is a 16-byte header of four little-endian u32
//! (type, req_id, tx_id, len) followed by `len` (at most 4096) payload bytes.
//! Replies echo req_id; an error reply has type XS_ERROR and an errno name
//! ("ENOENT\0"); watch events (req_id 0) may come between replies and are
//! skipped. `Xs` is generic over `Read + Write` so it is unit-tested on
//! in-memory streams replaying bytes recorded from a real xenstored
//! (tests/fixtures/xenstored-4.17-transcript.txt); `connect` opens xenstored's
//! UNIX socket (or /dev/xen/xenbus) under `--root`, with every read and write
//! bounded by the invocation's deadline.

use super::{ConnectError, DeadlineStream};
use crate::deadline::Deadline;
use crate::root::Root;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// xenstored's socket (Xen 4.17's xenstored and oxenstored both listen here).
pub const SOCKET: &str = "/run/xenstored/socket";
/// The kernel's xenbus device: the way in when no daemon socket exists
/// (e.g. xenstored in a stub domain).
pub const XENBUS: &str = "/dev/xen/xenbus";
/// XENSTORE_PAYLOAD_MAX: xenstored kills a connection that sends more.
pub const PAYLOAD_MAX: usize = 4096;

/// Message types (xs_wire.h `enum xsd_sockmsg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    Directory = 1,
    Read = 2,
    #[cfg(test)]
    GetPerms = 3,
    TransactionStart = 6,
    TransactionEnd = 7,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
}

const XS_WATCH_EVENT: u32 = 15;
const XS_ERROR: u32 = 16;

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Directory => "DIRECTORY",
            Op::Read => "READ",
            #[cfg(test)]
            Op::GetPerms => "GET_PERMS",
            Op::TransactionStart => "TRANSACTION_START",
            Op::TransactionEnd => "TRANSACTION_END",
            Op::Write => "WRITE",
            Op::Mkdir => "MKDIR",
            Op::Rm => "RM",
            Op::SetPerms => "SET_PERMS",
        }
    }
}

/// A transaction id; `Tx::NONE` (0) outside any transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tx(pub u32);

impl Tx {
    pub const NONE: Tx = Tx(0);
}

/// What callers tell apart: xenstored's own refusal (by errno name) versus
/// the conversation failing.
#[derive(Debug, Clone, PartialEq)]
pub enum XsError {
    /// xenstored answered XS_ERROR, e.g. errno "ENOENT" or "EAGAIN".
    Xenstored { errno: String, what: String },
    /// No answer in time.
    Timeout(String),
    /// The connection failed, or xenstored closed it.
    Io(String),
    /// Bytes that are not the xenstore protocol, or a request we must not send.
    Protocol(String),
}

impl XsError {
    pub fn errno(&self) -> Option<&str> {
        match self {
            XsError::Xenstored { errno, .. } => Some(errno),
            _ => None,
        }
    }
    /// The node does not exist.
    pub fn is_enoent(&self) -> bool {
        self.errno() == Some("ENOENT")
    }
    /// A transaction conflicted: start it again.
    pub fn is_eagain(&self) -> bool {
        self.errno() == Some("EAGAIN")
    }
}

impl XsError {
    /// What went wrong, without the "xenstore: " every message starts with.
    fn detail(&self) -> String {
        match self {
            XsError::Xenstored { errno, what } => format!("{what}: {errno}"),
            XsError::Timeout(m) | XsError::Io(m) | XsError::Protocol(m) => m.clone(),
        }
    }
}

impl fmt::Display for XsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "xenstore: {}", self.detail())
    }
}

impl std::error::Error for XsError {}

impl crate::error::Classify for XsError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            XsError::Xenstored { .. } => ErrorKind::Refused,
            XsError::Timeout(_) => ErrorKind::Timeout,
            XsError::Io(_) | XsError::Protocol(_) => ErrorKind::Failed,
        }
    }
}

pub type XsResult<T> = Result<T, XsError>;

fn io_err(e: std::io::Error, what: &str) -> XsError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => XsError::Timeout(format!("timed out {what}")),
        std::io::ErrorKind::UnexpectedEof => XsError::Io(format!("xenstored closed the connection while {what}")),
        _ => XsError::Io(format!("{what}: {e}")),
    }
}

pub struct Xs<S> {
    stream: S,
    next_req: u32,
}

impl<S: Read + Write> Xs<S> {
    pub fn new(stream: S) -> Xs<S> {
        Xs { stream, next_req: 1 }
    }

    /// Send one request and return the payload of its reply.
    fn request(&mut self, op: Op, tx: Tx, payload: &[u8], what: &str) -> XsResult<Vec<u8>> {
        if payload.len() > PAYLOAD_MAX {
            return Err(XsError::Protocol(format!(
                "{what}: request of {} bytes is over the protocol's {PAYLOAD_MAX}",
                payload.len()
            )));
        }
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let mut msg = Vec::with_capacity(16 + payload.len());
        for v in [op as u32, req_id, tx.0, payload.len() as u32] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        msg.extend_from_slice(payload);
        let sending = format!("sending {} ({what})", op.name());
        self.stream.write_all(&msg).map_err(|e| io_err(e, &sending))?;
        self.stream.flush().map_err(|e| io_err(e, &sending))?;
        let waiting = format!("waiting for the reply to {} ({what})", op.name());
        loop {
            let mut h = [0u8; 16];
            self.stream.read_exact(&mut h).map_err(|e| io_err(e, &waiting))?;
            let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            let (ty, rid, len) = (word(0), word(4), word(12) as usize);
            // Checked before reading: a bogus length must not make us read (or allocate) more.
            if len > PAYLOAD_MAX {
                return Err(XsError::Protocol(format!(
                    "reply of {len} bytes is over the protocol's {PAYLOAD_MAX} while {waiting}"
                )));
            }
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).map_err(|e| io_err(e, &waiting))?;
            if ty == XS_WATCH_EVENT {
                log::debug!("xenstore: skipping watch event {:?}", String::from_utf8_lossy(&body));
                continue;
            }
            if rid != req_id {
                log::debug!("xenstore: skipping a reply to request {rid} while waiting for {req_id}");
                continue;
            }
            if ty == XS_ERROR {
                let errno = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(&body)).into_owned();
                return Err(XsError::Xenstored { errno, what: what.to_string() });
            }
            if ty != op as u32 {
                return Err(XsError::Protocol(format!("reply of type {ty} to {} ({what})", op.name())));
            }
            return Ok(body);
        }
    }

    fn path_arg(path: &str) -> XsResult<Vec<u8>> {
        if path.is_empty() || path.contains('\0') {
            return Err(XsError::Protocol(format!("bad xenstore path {path:?}")));
        }
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        Ok(p)
    }

    /// "OK\0" is the documented success payload for requests without a result.
    fn expect_ok(body: Vec<u8>, what: &str) -> XsResult<()> {
        if body == b"OK\0" {
            Ok(())
        } else {
            Err(XsError::Protocol(format!("{what}: expected OK, got {:?}", String::from_utf8_lossy(&body))))
        }
    }

    /// A node's value (bytes as stored; libxl's are text).
    pub fn read(&mut self, tx: Tx, path: &str) -> XsResult<Vec<u8>> {
        self.request(Op::Read, tx, &Self::path_arg(path)?, &format!("read {path}"))
    }

    /// A node's value as text, `None` if the node does not exist.
    pub fn read_opt(&mut self, tx: Tx, path: &str) -> XsResult<Option<String>> {
        match self.read(tx, path) {
            Ok(v) => String::from_utf8(v)
                .map(Some)
                .map_err(|_| XsError::Protocol(format!("read {path}: value is not UTF-8"))),
            Err(e) if e.is_enoent() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Set a node's value; xenstored creates missing parents (empty).
    pub fn write(&mut self, tx: Tx, path: &str, value: &[u8]) -> XsResult<()> {
        let mut p = Self::path_arg(path)?;
        p.extend_from_slice(value);
        let what = format!("write {path}");
        let body = self.request(Op::Write, tx, &p, &what)?;
        Self::expect_ok(body, &what)
    }

    /// The names of a node's children (leaf names, in xenstored's order).
    pub fn directory(&mut self, tx: Tx, path: &str) -> XsResult<Vec<String>> {
        let body = self.request(Op::Directory, tx, &Self::path_arg(path)?, &format!("directory {path}"))?;
        Ok(split_strings(&body))
    }

    /// Make sure a node exists (an existing value is left alone).
    pub fn mkdir(&mut self, tx: Tx, path: &str) -> XsResult<()> {
        let what = format!("mkdir {path}");
        let body = self.request(Op::Mkdir, tx, &Self::path_arg(path)?, &what)?;
        Self::expect_ok(body, &what)
    }

    /// Remove a node and its children (a missing node is fine if its parent exists).
    pub fn rm(&mut self, tx: Tx, path: &str) -> XsResult<()> {
        let what = format!("rm {path}");
        let body = self.request(Op::Rm, tx, &Self::path_arg(path)?, &what)?;
        Self::expect_ok(body, &what)
    }

    /// Permissions as xenstored spells them: the first is the owner and the
    /// default for everyone else ("n0"), then per-domain grants ("r3").
    #[cfg(test)]
    pub fn get_perms(&mut self, tx: Tx, path: &str) -> XsResult<Vec<String>> {
        let body = self.request(Op::GetPerms, tx, &Self::path_arg(path)?, &format!("get_perms {path}"))?;
        Ok(split_strings(&body))
    }

    pub fn set_perms(&mut self, tx: Tx, path: &str, perms: &[&str]) -> XsResult<()> {
        let mut p = Self::path_arg(path)?;
        for perm in perms {
            let ok = perm.len() > 1
                && matches!(perm.as_bytes()[0], b'n' | b'r' | b'w' | b'b')
                && perm[1..].bytes().all(|c| c.is_ascii_digit());
            if !ok {
                return Err(XsError::Protocol(format!("set_perms {path}: bad permission {perm:?}")));
            }
            p.extend_from_slice(perm.as_bytes());
            p.push(0);
        }
        let what = format!("set_perms {path}");
        let body = self.request(Op::SetPerms, tx, &p, &what)?;
        Self::expect_ok(body, &what)
    }

    pub fn transaction_start(&mut self) -> XsResult<Tx> {
        let body = self.request(Op::TransactionStart, Tx::NONE, b"\0", "transaction start")?;
        let text = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(&body)).into_owned();
        match text.parse::<u32>() {
            Ok(id) if id != 0 => Ok(Tx(id)),
            _ => Err(XsError::Protocol(format!("transaction start: bad transaction id {text:?}"))),
        }
    }

    /// Commit (`true`) or abandon a transaction. A commit that conflicted with
    /// another writer fails with EAGAIN (`XsError::is_eagain`).
    pub fn transaction_end(&mut self, tx: Tx, commit: bool) -> XsResult<()> {
        let what = if commit { "transaction commit" } else { "transaction abort" };
        let body = self.request(Op::TransactionEnd, tx, if commit { b"T\0" } else { b"F\0" }, what)?;
        Self::expect_ok(body, what)
    }

    /// Run `f` in a transaction and commit it; on EAGAIN (a conflict) start
    /// over, until the deadline. Any other error abandons the transaction.
    pub fn transaction<T>(
        &mut self,
        deadline: &Deadline,
        mut f: impl FnMut(&mut Self, Tx) -> XsResult<T>,
    ) -> XsResult<T> {
        let mut tries = 0u32;
        loop {
            tries += 1;
            let tx = self.transaction_start()?;
            let result = f(self, tx);
            let again = match result {
                Ok(v) => match self.transaction_end(tx, true) {
                    Ok(()) => return Ok(v),
                    Err(e) if e.is_eagain() => e,
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    // Best effort: the transaction is abandoned either way.
                    if let Err(e2) = self.transaction_end(tx, false) {
                        log::debug!("xenstore: abandoning transaction {}: {e2}", tx.0);
                    }
                    if !e.is_eagain() {
                        return Err(e);
                    }
                    e
                }
            };
            log::debug!("xenstore: transaction conflicted ({again}); try {}", tries + 1);
            // Back off (1, 2, 4 .. 64 ms) so a busy writer can finish, within the budget.
            let pause = std::time::Duration::from_millis(1 << tries.min(7).saturating_sub(1));
            let left = deadline.remaining("").map_err(|_| {
                XsError::Timeout(format!("transaction kept conflicting with another writer ({tries} tries)"))
            })?;
            std::thread::sleep(pause.min(left));
        }
    }

    #[cfg(test)]
    pub fn into_inner(self) -> S {
        self.stream
    }
}

/// "a\0b\0" -> ["a", "b"]; "" -> [].
fn split_strings(body: &[u8]) -> Vec<String> {
    let body = body.strip_suffix(b"\0").unwrap_or(body);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

pub type Client = Xs<DeadlineStream>;

/// Connect to xenstored: its socket under `root`, else the xenbus device.
pub fn connect(root: &Root, deadline: &Deadline) -> XsResult<Client> {
    let sock = root.path(SOCKET);
    let sock_err = match connect_unix(&sock, deadline) {
        Ok(s) => return Ok(Xs::new(DeadlineStream::socket(s, deadline, "on xenstore"))),
        Err(e @ XsError::Timeout(_)) => return Err(e),
        Err(e) => e,
    };
    let dev = root.path(XENBUS);
    match OpenOptions::new().read(true).write(true).custom_flags(nix::libc::O_CLOEXEC).open(&dev) {
        Ok(f) => Ok(Xs::new(DeadlineStream::device(f, deadline, "on xenstore"))),
        Err(e) => Err(XsError::Io(format!("{}; and cannot open {}: {e}", sock_err.detail(), dev.display()))),
    }
}

/// The shared connect, in xenstore's terms.
fn connect_unix(path: &Path, deadline: &Deadline) -> XsResult<UnixStream> {
    super::connect_unix(path, deadline).map_err(|e| match e {
        ConnectError::Timeout(m) => XsError::Timeout(m),
        ConnectError::NotListening(m) | ConnectError::Denied(m) | ConnectError::Io(m) => XsError::Io(m),
    })
}

#[cfg(test)]
mod tests {
    //! Every reply these tests feed the client is a message a real xenstored
    //! (Xen 4.17) sent, from tests/fixtures/xenstored-4.17-transcript.txt, and
    //! every request the client writes must equal the recorded request byte for
    //! byte. Where a test needs a reply under another req_id (a retried
    //! transaction), only that header field is rewritten.
    use super::*;
    use std::io::Cursor;
    use std::time::Duration;

    const TRANSCRIPT: &str =
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/xenstored-4.17-transcript.txt"));

    struct Exchange {
        conn: String,
        what: String,
        request: Vec<u8>,
        replies: Vec<Vec<u8>>,
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn transcript() -> Vec<Exchange> {
        let mut out: Vec<Exchange> = Vec::new();
        for line in TRANSCRIPT.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                // "# A [what] TYPE ..." opens an exchange
                if let (Some(open), Some(close)) = (rest.find(" ["), rest.find("] ")) {
                    if open <= 2 {
                        out.push(Exchange {
                            conn: rest[..open].to_string(),
                            what: rest[open + 2..close].to_string(),
                            request: Vec::new(),
                            replies: Vec::new(),
                        });
                    }
                }
            } else if let Some(h) = line.strip_prefix("> ") {
                out.last_mut().unwrap().request = unhex(h);
            } else if let Some(h) = line.strip_prefix("< ") {
                out.last_mut().unwrap().replies.push(unhex(h));
            }
        }
        assert!(out.len() > 30, "transcript has only {} exchanges", out.len());
        out
    }

    fn find<'a>(t: &'a [Exchange], conn: &str, what: &str) -> &'a Exchange {
        t.iter()
            .find(|e| e.conn == conn && e.what == what)
            .unwrap_or_else(|| panic!("no exchange {conn} [{what}] in the transcript"))
    }

    fn word(b: &[u8], i: usize) -> u32 {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }

    /// In-memory xenstored: scripted replies in, requests captured.
    struct Mem {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Mem {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(b)
        }
    }
    impl Write for Mem {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A client positioned at `exchanges[0]`'s req_id, fed their replies.
    fn client(exchanges: &[&Exchange]) -> Xs<Mem> {
        let input = exchanges.iter().flat_map(|e| e.replies.concat()).collect();
        Xs { stream: Mem { input: Cursor::new(input), output: Vec::new() }, next_req: word(&exchanges[0].request, 4) }
    }

    fn sent(xs: Xs<Mem>, exchanges: &[&Exchange]) {
        let want: Vec<u8> = exchanges.iter().flat_map(|e| e.request.clone()).collect();
        assert_eq!(xs.into_inner().output, want, "requests differ from what xenstored was sent");
    }

    /// Run one recorded exchange through `f`; the request must match byte for byte.
    fn one<T>(what: &str, f: impl FnOnce(&mut Xs<Mem>) -> T) -> T {
        let t = transcript();
        let e = find(&t, "A", what);
        let mut xs = client(&[e]);
        let r = f(&mut xs);
        sent(xs, &[e]);
        r
    }

    #[test]
    fn read_write_mkdir_directory() {
        assert_eq!(one("read an existing node", |x| x.read(Tx::NONE, "/local/domain/0/name")).unwrap(), b"Domain-0");
        one("write a new node (parents created)", |x| x.write(Tx::NONE, "/aua-test/a", b"hello")).unwrap();
        assert_eq!(one("read it back", |x| x.read_opt(Tx::NONE, "/aua-test/a")).unwrap().as_deref(), Some("hello"));
        one("write an empty value", |x| x.write(Tx::NONE, "/aua-test/empty", b"")).unwrap();
        assert_eq!(one("read an empty value", |x| x.read(Tx::NONE, "/aua-test/empty")).unwrap(), b"");
        one("mkdir", |x| x.mkdir(Tx::NONE, "/aua-test/dir")).unwrap();
        one("mkdir of an existing node", |x| x.mkdir(Tx::NONE, "/aua-test/dir")).unwrap();
        assert_eq!(one("directory", |x| x.directory(Tx::NONE, "/aua-test")).unwrap(), ["a", "empty", "dir"]);
        assert!(one("directory of an empty node", |x| x.directory(Tx::NONE, "/aua-test/dir")).unwrap().is_empty());
        one("rm a subtree", |x| x.rm(Tx::NONE, "/aua-test/dir")).unwrap();
        one("rm a missing node (parent exists)", |x| x.rm(Tx::NONE, "/aua-test/dir")).unwrap();
    }

    #[test]
    fn errors_are_typed() {
        let e = one("read a missing node", |x| x.read(Tx::NONE, "/aua-test/missing")).unwrap_err();
        assert!(e.is_enoent(), "{e:?}");
        assert_eq!(e.to_string(), "xenstore: read /aua-test/missing: ENOENT");
        assert_eq!(one("read a missing node", |x| x.read_opt(Tx::NONE, "/aua-test/missing")).unwrap(), None);
        let e = one("directory of a missing node", |x| x.directory(Tx::NONE, "/aua-test/missing")).unwrap_err();
        assert!(e.is_enoent(), "{e:?}");
        let e = one("read with a bad path", |x| x.read(Tx::NONE, "no-slash//x")).unwrap_err();
        assert_eq!(e.errno(), Some("EINVAL"));
        let e = one("rm a missing node whose parent is missing", |x| x.rm(Tx::NONE, "/aua-test/nope/deeper"));
        assert!(e.unwrap_err().is_enoent());
    }

    #[test]
    fn permissions() {
        assert_eq!(one("get_perms", |x| x.get_perms(Tx::NONE, "/aua-test/a")).unwrap(), ["n0"]);
        one("set_perms owner 0, domain 1 may read", |x| x.set_perms(Tx::NONE, "/aua-test/a", &["n0", "r1"])).unwrap();
        assert_eq!(one("get_perms after set_perms", |x| x.get_perms(Tx::NONE, "/aua-test/a")).unwrap(), ["n0", "r1"]);
        let mut xs = Xs::new(Mem { input: Cursor::new(Vec::new()), output: Vec::new() });
        let e = xs.set_perms(Tx::NONE, "/x", &["x0"]).unwrap_err();
        assert!(matches!(e, XsError::Protocol(_)), "{e:?}");
        assert!(xs.into_inner().output.is_empty(), "a bad permission was sent");
    }

    #[test]
    fn transaction_commit_and_abort() {
        let t = transcript();
        let ex: Vec<&Exchange> = t
            .iter()
            .filter(|e| e.conn == "A")
            .skip_while(|e| e.what != "transaction start (commit)")
            .take(11)
            .collect();
        let mut xs = client(&ex);
        let tx = xs.transaction_start().unwrap();
        assert_eq!(word(&ex[1].request, 8), tx.0, "recorded write used another tx id");
        xs.write(tx, "/aua-test/tx", b"in-tx").unwrap();
        assert_eq!(xs.read(tx, "/aua-test/tx").unwrap(), b"in-tx");
        assert!(xs.read(Tx::NONE, "/aua-test/tx").unwrap_err().is_enoent());
        xs.transaction_end(tx, true).unwrap();
        assert_eq!(xs.read(Tx::NONE, "/aua-test/tx").unwrap(), b"in-tx");
        let tx = xs.transaction_start().unwrap();
        xs.write(tx, "/aua-test/aborted", b"x").unwrap();
        xs.transaction_end(tx, false).unwrap();
        assert!(xs.read(Tx::NONE, "/aua-test/aborted").unwrap_err().is_enoent());
        assert!(xs.transaction_end(tx, true).unwrap_err().is_enoent());
        sent(xs, &ex);
    }

    #[test]
    fn conflicting_commit_is_eagain() {
        let t = transcript();
        let ex: Vec<&Exchange> = [
            "transaction start (will conflict)",
            "read inside the transaction",
            "write inside the transaction",
            "transaction end: commit -> conflict",
        ]
        .iter()
        .map(|w| {
            // the second "read/write inside" after the conflict's start
            let start = t.iter().position(|e| e.what == "transaction start (will conflict)").unwrap();
            t[start..].iter().find(|e| e.conn == "A" && e.what == *w).unwrap()
        })
        .collect();
        let mut xs = client(&ex);
        let tx = xs.transaction_start().unwrap();
        assert_eq!(xs.read(tx, "/aua-test/a").unwrap(), b"hello");
        xs.write(tx, "/aua-test/a", b"from-tx").unwrap();
        let e = xs.transaction_end(tx, true).unwrap_err();
        assert!(e.is_eagain(), "{e:?}");
        sent(xs, &ex);
    }

    /// The recorded reply with its req_id replaced.
    fn as_reply_to(reply: &[u8], req_id: u32) -> Vec<u8> {
        let mut r = reply.to_vec();
        r[4..8].copy_from_slice(&req_id.to_le_bytes());
        r
    }

    #[test]
    fn transaction_helper_retries_on_eagain() {
        let t = transcript();
        let start = t.iter().position(|e| e.what == "transaction start (will conflict)").unwrap();
        let get = |w: &str| t[start..].iter().find(|e| e.conn == "A" && e.what == w).unwrap().replies[0].clone();
        let (started, read, wrote, conflict) = (
            get("transaction start (will conflict)"),
            get("read inside the transaction"),
            get("write inside the transaction"),
            get("transaction end: commit -> conflict"),
        );
        let ok_end = find(&t, "A", "transaction end: commit").replies[0].clone();
        // Round 1 conflicts (req 1..4), round 2 commits (req 5..8).
        let replies = [&started, &read, &wrote, &conflict, &started, &read, &wrote, &ok_end];
        let input = replies.iter().enumerate().flat_map(|(i, r)| as_reply_to(r, i as u32 + 1)).collect();
        let mut xs = Xs::new(Mem { input: Cursor::new(input), output: Vec::new() });
        let mut runs = 0;
        let v = xs
            .transaction(&Deadline::after(Duration::from_secs(5)), |x, tx| {
                runs += 1;
                let v = x.read(tx, "/aua-test/a")?;
                x.write(tx, "/aua-test/a", b"from-tx")?;
                Ok(v)
            })
            .unwrap();
        assert_eq!((runs, v.as_slice()), (2, &b"hello"[..]));
    }

    #[test]
    fn transaction_helper_gives_up_at_the_deadline() {
        let t = transcript();
        let start = t.iter().position(|e| e.what == "transaction start (will conflict)").unwrap();
        let get = |w: &str| t[start..].iter().find(|e| e.conn == "A" && e.what == w).unwrap().replies[0].clone();
        let input = [get("transaction start (will conflict)"), get("transaction end: commit -> conflict")]
            .iter()
            .enumerate()
            .flat_map(|(i, r)| as_reply_to(r, i as u32 + 1))
            .collect();
        let mut xs = Xs::new(Mem { input: Cursor::new(input), output: Vec::new() });
        let e = xs.transaction(&Deadline::after(Duration::ZERO), |_, _| Ok(())).unwrap_err();
        assert!(matches!(&e, XsError::Timeout(m) if m.contains("kept conflicting")), "{e:?}");
        assert_eq!(e.to_string(), "xenstore: transaction kept conflicting with another writer (1 tries)");
    }

    #[test]
    fn a_transaction_that_keeps_conflicting_backs_off() {
        let t = transcript();
        let start = t.iter().position(|e| e.what == "transaction start (will conflict)").unwrap();
        let get = |w: &str| t[start..].iter().find(|e| e.conn == "A" && e.what == w).unwrap().replies[0].clone();
        let (begin, conflict) = (get("transaction start (will conflict)"), get("transaction end: commit -> conflict"));
        let input = (0..400u32)
            .flat_map(|i| [as_reply_to(&begin, 2 * i + 1), as_reply_to(&conflict, 2 * i + 2)])
            .flatten()
            .collect();
        let mut xs = Xs::new(Mem { input: Cursor::new(input), output: Vec::new() });
        let mut tries = 0;
        let e = xs
            .transaction(&Deadline::after(Duration::from_millis(300)), |_, _| {
                tries += 1;
                Ok(())
            })
            .unwrap_err();
        assert!(e.to_string().contains("kept conflicting"), "{e}");
        // 1+2+4+..+64 ms, then 64 ms each: about 9 tries in 300 ms (it was hundreds, unpaced).
        assert!((5..=15).contains(&tries), "{tries} tries in 300 ms");
    }

    #[test]
    fn watch_events_are_skipped() {
        let v =
            one("A's next request: the watch event may arrive before its reply", |x| x.read(Tx::NONE, "/aua-test/a"));
        assert_eq!(v.unwrap(), b"changed-by-B");
        let t = transcript();
        let e = find(&t, "A", "A's next request: the watch event may arrive before its reply");
        assert!(e.replies.len() > 1 && word(&e.replies[0], 0) == XS_WATCH_EVENT, "transcript has no watch event first");
    }

    #[test]
    fn eof_and_truncation_are_errors() {
        let mut xs = Xs::new(Mem { input: Cursor::new(Vec::new()), output: Vec::new() });
        let e = xs.read(Tx::NONE, "/local/domain/0/name").unwrap_err();
        assert!(matches!(&e, XsError::Io(m) if m.contains("closed the connection")), "{e:?}");
        let t = transcript();
        let r = &find(&t, "A", "read an existing node").replies[0];
        for cut in [1, 15, 16, r.len() - 1] {
            let mut xs = Xs::new(Mem { input: Cursor::new(r[..cut].to_vec()), output: Vec::new() });
            let e = xs.read(Tx::NONE, "/local/domain/0/name").unwrap_err();
            assert!(matches!(e, XsError::Io(_)), "cut at {cut}: {e:?}");
        }
    }

    #[test]
    fn length_cap_both_ways() {
        let mut xs = Xs::new(Mem { input: Cursor::new(Vec::new()), output: Vec::new() });
        let long = format!("/{}", "x".repeat(PAYLOAD_MAX));
        let e = xs.read(Tx::NONE, &long).unwrap_err();
        assert!(matches!(e, XsError::Protocol(_)), "{e:?}");
        assert!(xs.into_inner().output.is_empty(), "an over-long request was sent");
        // A header announcing more than 4096 bytes is refused before reading them.
        let t = transcript();
        let mut r = find(&t, "A", "read an existing node").replies[0].clone();
        r[12..16].copy_from_slice(&(PAYLOAD_MAX as u32 + 1).to_le_bytes());
        let mut xs = Xs::new(Mem { input: Cursor::new(r), output: Vec::new() });
        let e = xs.read(Tx::NONE, "/local/domain/0/name").unwrap_err();
        assert!(matches!(&e, XsError::Protocol(m) if m.contains("over the protocol's 4096")), "{e:?}");
    }

    #[test]
    fn connect_falls_back_and_names_both_ways_in() {
        let dir = std::env::temp_dir().join(format!("aua-xs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let e = connect(&Root::new(&dir), &Deadline::after(Duration::from_secs(1))).err().unwrap().to_string();
        assert!(e.contains("run/xenstored/socket") && e.contains("dev/xen/xenbus"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
