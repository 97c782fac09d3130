//! The per-event remove path against its floor, side by side in one run on
//! the same real QEMU: `auto-usb-attach udev` for a `remove` of a device the
//! state holds (exec, config, lock, state, connect, `device_del`, state
//! write, exit) against `examples/qmp_floor` (exec, connect, greeting,
//! `qmp_capabilities`, `device_del`, exit). Pairs alternate which goes
//! first; the device is put back (not timed) before each. State lives on
//! tmpfs (/dev/shm) when there is one. Prints p50/p90 of each and the
//! ratio; asserts nothing.
//!
//! Run: `make bench-floor` (builds the floor first), or
//! `cargo build --release --example qmp_floor && cargo bench --bench floor`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{remove_env, Qemu, TestRoot, BIN};
use serde_json::json;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PAIRS: usize = 40;
const BUS: u32 = 1;

/// What udevd gives the rule's RUN program for the device's removal: the
/// kernel's uevent (with its SEQNUM) and the rule's properties.
fn udev_env(addr: u32) -> Vec<(String, String)> {
    let mut env = remove_env(BUS, addr);
    env.push(("SEQNUM".into(), (5000 + addr).to_string()));
    env
}

/// The tool under test: this build's, or `TOOL_BIN` (e.g. another profile's build).
fn tool_bin() -> PathBuf {
    std::env::var_os("TOOL_BIN").map_or_else(|| BIN.into(), PathBuf::from)
}

fn floor_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FLOOR_BIN") {
        return p.into();
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/qmp_floor");
    assert!(p.exists(), "{} is missing: cargo build --release --example qmp_floor", p.display());
    p
}

/// What the tool writes as the QEMU's identity: socket inode and ctime.
fn instance_of(sock: &Path) -> String {
    let m = std::fs::metadata(sock).unwrap();
    format!("{}:{}.{:09}", m.ino(), m.ctime(), m.ctime_nsec())
}

/// Put usb-host `xenusb-1-<addr>` on port 1 and the state's record of it.
fn place(root: &TestRoot, q: &Qemu, sock: &Path, addr: u32) {
    let mut c = q.qmp();
    // device_del of a usb-host finishes at once, but wait for it to be gone before reusing the port.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.peripherals().iter().any(|(n, _)| n.starts_with("xenusb-1-")) {
        assert!(Instant::now() < deadline, "the previous device never went away");
        std::thread::sleep(Duration::from_millis(2));
    }
    c.place_usb_host("xenusb-0", 1, BUS, addr, "1");
    let state = json!({"version": 1, "vms": {"a": {
        "socket": "/run/qemu/a.qmp", "instance": instance_of(sock),
        "controllers": [{"id": "xenusb-0", "driver": "nec-usb-xhci", "ports": 15, "usb3-ports": 15}],
        "devices": [{"id": format!("xenusb-{BUS}-{addr}"), "bus": BUS, "addr": addr, "controller": "xenusb-0",
                     "port": 1, "port-path": "1-1", "usb-id": "046d:c52b", "origin": "rule"}]}}});
    std::fs::create_dir_all(root.state_dir()).unwrap();
    std::fs::write(root.state_path(), serde_json::to_string_pretty(&state).unwrap()).unwrap();
}

fn timed(mut c: Command) -> Duration {
    let t = Instant::now();
    let st = c.stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    let d = t.elapsed();
    assert!(st.success(), "{c:?} failed");
    d
}

fn pct(t: &mut [Duration], p: usize) -> f64 {
    t.sort();
    t[(t.len() * p / 100).min(t.len() - 1)].as_secs_f64() * 1000.0
}

fn main() {
    if Path::new("/dev/shm").is_dir() && std::env::var_os("TMPDIR").is_none() {
        std::env::set_var("TMPDIR", "/dev/shm");
    }
    let root = TestRoot::new("floor");
    root.write_config("timeout = 10\n[[vm]]\nname = \"a\"\nqmp = \"/run/qemu/a.qmp\"\nhubs = [\"usb1\"]\n");
    let sock = root.p("/run/qemu/a.qmp");
    let q = Qemu::start("a", &sock);
    q.qmp().add_xhci("xenusb-0", 15);
    let floor = floor_bin();
    let tool_exe = tool_bin();
    // FLOOR_STRACE=1: one of each under `strace -f -c` (where the difference
    // goes; =full: every call, timed), no timing. FLOOR_WRAP="PROGRAM ARGS":
    // one of each under that instead (e.g. `valgrind --tool=cachegrind
    // --cache-sim=yes --cachegrind-out-file=/tmp/cg.%p`: the code each runs).
    let wrap: Option<Vec<String>> = match (std::env::var("FLOOR_WRAP"), std::env::var("FLOOR_STRACE")) {
        (Ok(w), _) => Some(w.split_whitespace().map(String::from).collect()),
        (Err(_), Ok(v)) => Some(
            ["strace", "-f", if v == "full" { "-tt" } else { "-c" }, "-o", "/dev/stdout", "--"]
                .map(String::from)
                .into(),
        ),
        _ => None,
    };
    if let Some(wrap) = wrap.filter(|w| !w.is_empty()) {
        for (what, addr) in [("auto-usb-attach udev remove", 8u32), ("qmp_floor device_del", 9)] {
            place(&root, &q, &sock, addr);
            let mut c = Command::new(&wrap[0]);
            c.args(&wrap[1..]);
            if what.starts_with("auto") {
                c.arg(tool_bin()).args(["--root", root.root_str(), "udev"]).env_clear().envs(udev_env(addr));
            } else {
                c.arg(&floor).arg(&sock).arg(format!("xenusb-{BUS}-{addr}")).env_clear();
            }
            let out = c.output().expect(&wrap[0]);
            println!(
                "--- {what} ---\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        return;
    }
    // FLOOR_PERF=1: 20 of each under `perf stat` (task-clock, page faults,
    // user/kernel instructions, syscalls), means printed, no timing.
    // FLOOR_PERF=/DIR: each run under `perf record -g` instead, into
    // DIR/{tool,floor}-N.data (where the time goes, function by function).
    if std::env::var_os("FLOOR_PERF").is_some() {
        if let Some(dir) = std::env::var("FLOOR_PERF").ok().filter(|v| v.starts_with('/')) {
            std::fs::create_dir_all(&dir).expect("FLOOR_PERF's directory");
        }
        const EVENTS: &str = "task-clock,page-faults,raw_syscalls:sys_enter";
        for (what, base) in [("auto-usb-attach udev remove", 60u32), ("qmp_floor device_del", 90)] {
            let mut sums: Vec<(String, f64)> = Vec::new();
            const N: u32 = 20;
            for i in 0..N {
                let addr = base + i;
                place(&root, &q, &sock, addr);
                let mut c = Command::new("perf");
                match std::env::var("FLOOR_PERF").ok().filter(|v| v.starts_with('/')) {
                    // FLOOR_PERF=DIR: a `perf record` profile of each run into DIR instead.
                    Some(dir) => c
                        .args(["record", "-q", "-e", "cpu-clock", "-F", "49000", "-g", "-o"])
                        .arg(
                            Path::new(&dir)
                                .join(format!("{}-{i}.data", if what.starts_with("auto") { "tool" } else { "floor" })),
                        )
                        .arg("--"),
                    None => c.args(["stat", "-x", ",", "-e", EVENTS, "--"]),
                };
                if what.starts_with("auto") {
                    c.arg(&tool_exe).args(["--root", root.root_str(), "udev"]).env_clear().envs(udev_env(addr));
                } else {
                    c.arg(&floor).arg(&sock).arg(format!("xenusb-{BUS}-{addr}")).env_clear();
                }
                let out = c.output().expect("perf");
                assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
                for line in String::from_utf8_lossy(&out.stderr).lines() {
                    let f: Vec<&str> = line.split(',').collect();
                    let (Some(v), Some(name)) = (f.first().and_then(|v| v.parse::<f64>().ok()), f.get(2)) else {
                        continue;
                    };
                    match sums.iter_mut().find(|(n, _)| n == name) {
                        Some((_, s)) => *s += v,
                        None => sums.push((name.to_string(), v)),
                    }
                }
            }
            if let Some(dir) = std::env::var("FLOOR_PERF").ok().filter(|v| v.starts_with('/')) {
                println!("--- {what}: {N} profiles in {dir} (perf report -i ...) ---");
                continue;
            }
            println!("--- {what}: mean of {N} under perf stat ---");
            for (name, s) in sums {
                println!("  {name:<28} {:>12.3}", s / f64::from(N));
            }
        }
        return;
    }
    let (mut tool, mut raw) = (Vec::new(), Vec::new());
    for i in 0..PAIRS {
        let addr = 10 + i as u32;
        let id = format!("xenusb-{BUS}-{addr}");
        let run_tool = |tool: &mut Vec<Duration>| {
            place(&root, &q, &sock, addr);
            let mut c = Command::new(&tool_exe);
            c.env_clear().envs(udev_env(addr)).args(["--root", root.root_str(), "udev"]);
            tool.push(timed(c));
        };
        let run_floor = |raw: &mut Vec<Duration>| {
            place(&root, &q, &sock, addr);
            // The same empty environment as the tool's run (udev gives RUN
            // programs no LD_LIBRARY_PATH; cargo gives benches one).
            let mut c = Command::new(&floor);
            c.env_clear().arg(&sock).arg(&id);
            raw.push(timed(c));
        };
        if i % 2 == 0 {
            run_tool(&mut tool);
            run_floor(&mut raw);
        } else {
            run_floor(&mut raw);
            run_tool(&mut tool);
        }
    }
    let (t50, t90, f50, f90) = (pct(&mut tool, 50), pct(&mut tool, 90), pct(&mut raw, 50), pct(&mut raw, 90));
    println!(
        "remove path, {PAIRS} pairs alternating, one real QEMU ({}), state under {}:",
        std::env::var("QEMU_VERSION").unwrap_or_else(|_| "qemu-system-x86_64 -M pc".into()),
        root.root_str()
    );
    println!("  auto-usb-attach udev remove  p50 {t50:.2} ms  p90 {t90:.2} ms");
    println!("  qmp_floor device_del         p50 {f50:.2} ms  p90 {f90:.2} ms");
    println!("  ratio (p50)                  {:.2}x", t50 / f50);
}
