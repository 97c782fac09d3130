//! The floor the per-event path is measured against (`benches/floor.rs`,
//! `tests/bench/run`): the least a program can do to remove one device from
//! a VM over QMP, or to add one: connect, read the greeting,
//! `qmp_capabilities`, `device_del` (or `device_add`), read the answer,
//! exit. No config, no lock, no state, no checks: std only.
//!
//! Usage: qmp_floor SOCKET ID              `device_del` of ID
//!        qmp_floor SOCKET --add ARGS      `device_add` with ARGS, a JSON object
//!                                         sent as it is (e.g. the tool's own
//!                                         arguments: driver usb-host, id, bus,
//!                                         port, hostbus, hostaddr, hostdevice)
//! Exit 0 when QEMU answered `return`, 1 on its `error`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.as_slice() {
        [_, flag, json] if flag == "--add" => format!("{{\"execute\":\"device_add\",\"arguments\":{json}}}\n"),
        [_, id] => format!("{{\"execute\":\"device_del\",\"arguments\":{{\"id\":\"{id}\"}}}}\n"),
        _ => {
            eprintln!("usage: qmp_floor SOCKET ID | qmp_floor SOCKET --add ARGS-JSON");
            std::process::exit(2);
        }
    };
    let s = UnixStream::connect(&args[0]).expect("connect");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").expect("write");
    line.clear();
    r.read_line(&mut line).expect("capabilities");
    w.write_all(command.as_bytes()).expect("write");
    loop {
        line.clear();
        if r.read_line(&mut line).expect("reply") == 0 {
            std::process::exit(1);
        }
        if line.contains("\"return\"") {
            return;
        }
        if line.contains("\"error\"") {
            eprintln!("{}", line.trim_end());
            std::process::exit(1);
        }
    }
}
