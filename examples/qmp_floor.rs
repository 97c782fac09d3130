//! The floor the per-event path is measured against (`benches/floor.rs`):
//! the least a program can do to remove one device from a VM over QMP:
//! connect, read the greeting, `qmp_capabilities`, `device_del`, read the
//! answer, exit. No config, no lock, no state, no checks: std only.
//!
//! Usage: qmp_floor SOCKET ID   (exit 0 when QEMU answered `return`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(sock), Some(id)) = (args.next(), args.next()) else {
        eprintln!("usage: qmp_floor SOCKET ID");
        std::process::exit(2);
    };
    let s = UnixStream::connect(&sock).expect("connect");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").expect("write");
    line.clear();
    r.read_line(&mut line).expect("capabilities");
    w.write_all(format!("{{\"execute\":\"device_del\",\"arguments\":{{\"id\":\"{id}\"}}}}\n").as_bytes())
        .expect("write");
    loop {
        line.clear();
        if r.read_line(&mut line).expect("reply") == 0 {
            std::process::exit(1);
        }
        if line.contains("\"return\"") {
            return;
        }
        if line.contains("\"error\"") {
            std::process::exit(1);
        }
    }
}
