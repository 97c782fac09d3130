//! The xenstored stand-in (tests/e2e/rig/fake-xenstored.py, the one the cargo
//! tests and the e2e rig both use) answers as the real xenstored 4.17 does:
//! every request recorded in tests/fixtures/xenstored-4.17-transcript.txt is
//! replayed against it, on as many connections as the recording used, and
//! every reply (watch events included) must equal the recorded bytes. Its
//! test controls under /fake-xenstored/ are checked here too.

mod common;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const TRANSCRIPT: &str = include_str!("fixtures/xenstored-4.17-transcript.txt");

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

fn connect(xs: &FakeXenstored) -> UnixStream {
    let s = UnixStream::connect(&xs.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One whole message (header and payload) as it came.
fn read_msg(s: &mut UnixStream) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    s.read_exact(&mut m).unwrap();
    let len = u32::from_le_bytes(m[12..16].try_into().unwrap()) as usize;
    m.resize(16 + len, 0);
    s.read_exact(&mut m[16..]).unwrap();
    m
}

fn msg(ty: u32, rid: u32, tx: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [ty, rid, tx, payload.len() as u32] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(payload);
    m
}

#[test]
fn fake_xenstored_answers_byte_for_byte_like_real_xenstored() {
    let r = TestRoot::new("xs-pin");
    let xs = FakeXenstored::start(&r);
    let mut conns: std::collections::BTreeMap<String, UnixStream> = Default::default();
    let t = transcript();
    let mut replayed = 0;
    for e in &t {
        let c = conns.entry(e.conn.clone()).or_insert_with(|| connect(&xs));
        c.write_all(&e.request).unwrap();
        if e.replies.is_empty() {
            // Over XENSTORE_PAYLOAD_MAX: the real one resets the connection, no reply.
            let mut b = [0u8; 1];
            match c.read(&mut b) {
                Ok(0) => {}
                Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
                other => panic!("{} [{}]: want the connection dropped, got {other:?}", e.conn, e.what),
            }
        } else {
            for (i, want) in e.replies.iter().enumerate() {
                let got = read_msg(c);
                assert_eq!(hex(&got), hex(want), "{} [{}]: message {i} differs from real xenstored's", e.conn, e.what);
            }
        }
        replayed += 1;
    }
    assert_eq!(replayed, t.len());
    assert!(t.iter().any(|e| e.replies.is_empty()), "the transcript's over-long payload is gone");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn fake_xenstored_test_controls() {
    let r = TestRoot::new("xs-ctl");
    let xs = FakeXenstored::start(&r);
    xs.domain(7, "win10");
    let mut c = connect(&xs);
    // The harness's own requests are not in the log; the tool's (any other connection's) are.
    assert!(xs.log().is_empty(), "{:?}", xs.log());
    c.write_all(&msg(2, 1, 0, b"/local/domain/7/name\0")).unwrap();
    assert_eq!(read_msg(&mut c), msg(2, 1, 0, b"win10"));
    assert_eq!(xs.log(), ["READ /local/domain/7/name"]);
    // The control nodes are never listed.
    c.write_all(&msg(1, 2, 0, b"/\0")).unwrap();
    assert_eq!(read_msg(&mut c), msg(1, 2, 0, b"local\0libxl\0"));
    // eagain-next: the next commit conflicts and is dropped; the one after is not.
    xs.eagain_next_commit();
    for (rid, want) in [(3, msg(16, 5, 1, b"EAGAIN\0")), (6, msg(7, 8, 2, b"OK\0"))] {
        c.write_all(&msg(6, rid, 0, b"\0")).unwrap();
        let tx = rid / 3;
        assert_eq!(read_msg(&mut c), msg(6, rid, 0, format!("{tx}\0").as_bytes()));
        c.write_all(&msg(11, rid + 1, tx, b"/local/domain/7/x\0v")).unwrap();
        assert_eq!(read_msg(&mut c), msg(11, rid + 1, tx, b"OK\0"));
        c.write_all(&msg(7, rid + 2, tx, b"T\0")).unwrap();
        assert_eq!(read_msg(&mut c), want);
        if tx == 1 {
            assert_eq!(xs.get("/local/domain/7/x"), None, "an EAGAIN commit was applied");
        }
    }
    assert_eq!(xs.get("/local/domain/7/x").as_deref(), Some("v"));
    // The vm and libxl nodes the helper wrote are ordinary nodes.
    assert!(xs.dump("/").contains("/libxl/7/dm-version = \"qemu_xen\"\n"), "{}", xs.dump("/"));
}
