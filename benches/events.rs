//! How long udev events take, and whether one lock for all VMs is fast
//! enough: many `remove` events (each a real `device_del` on a real QEMU)
//! for two VMs, first one after another, then all at once as udev would run
//! them after a hub full of devices is pulled. Prints figures; asserts
//! nothing. Run: `cargo bench --bench events` (or `make bench`).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{remove_env, Qemu, TestRoot, BIN};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PER_VM: u32 = 12;
const VMS: [(&str, u32); 2] = [("a", 1), ("b", 2)];

/// Put PER_VM usb-host devices into each VM and the matching records into
/// state (instance left empty: the first event per VM rebuilds from QEMU,
/// as after a restart, so that cost is in the figures too).
fn populate(root: &TestRoot, qemus: &[Qemu]) {
    let mut vms = serde_json::Map::new();
    for ((name, bus), q) in VMS.iter().zip(qemus) {
        let mut c = q.qmp();
        let have: Vec<String> = c.peripherals().into_iter().map(|(n, _)| n).collect();
        if !have.contains(&"xenusb-0".to_string()) {
            c.add_xhci("xenusb-0", 15);
        }
        let mut devices = Vec::new();
        for i in 0..PER_VM {
            let addr = 10 + i;
            c.place_usb_host("xenusb-0", i + 1, *bus, addr, &format!("{}", i + 1));
            devices.push(json!({"id": format!("xenusb-{bus}-{addr}"), "bus": bus, "addr": addr,
                "controller": "xenusb-0", "port": i + 1, "origin": "rule"}));
        }
        vms.insert(
            name.to_string(),
            json!({"socket": format!("/run/qemu/{name}.qmp"), "instance": "",
            "controllers": [{"id": "xenusb-0", "driver": "nec-usb-xhci", "ports": 15, "usb3-ports": 15}],
            "devices": devices}),
        );
    }
    std::fs::create_dir_all(root.state_dir()).unwrap();
    let state = json!({"version": 1, "vms": vms});
    std::fs::write(root.state_path(), serde_json::to_string_pretty(&state).unwrap()).unwrap();
}

fn spawn(root: &TestRoot, bus: u32, addr: u32) -> std::process::Child {
    Command::new(BIN)
        .env_clear()
        .envs(remove_env(bus, addr))
        .args(["--root", root.root_str(), "udev"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn auto-usb-attach")
}

fn events() -> Vec<(u32, u32)> {
    // interleave the VMs, as a real burst would
    (0..PER_VM).flat_map(|i| VMS.iter().map(move |(_, bus)| (*bus, 10 + i))).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(label: &str, mut t: Vec<Duration>, wall: Duration) {
    t.sort();
    let med = t[t.len() / 2];
    println!(
        "{label}: {} events, median {:.1} ms, p90 {:.1} ms, max {:.1} ms per event; all done in {:.1} ms",
        t.len(),
        ms(med),
        ms(t[t.len() * 9 / 10]),
        ms(*t.last().unwrap()),
        ms(wall)
    );
}

fn gone_everywhere(qemus: &[Qemu]) -> usize {
    qemus
        .iter()
        .map(|q| {
            q.qmp().peripherals().iter().filter(|(n, t)| n.starts_with("xenusb-") && t.contains("usb-host")).count()
        })
        .sum()
}

fn main() {
    let root = TestRoot::new("bench");
    root.write_config(
        "timeout = 10\n[[vm]]\nname = \"a\"\nqmp = \"/run/qemu/a.qmp\"\nhubs = [\"usb1\"]\n[[vm]]\nname = \"b\"\nqmp = \"/run/qemu/b.qmp\"\nhubs = [\"usb2\"]\n",
    );
    let qemus: Vec<Qemu> = VMS.iter().map(|(n, _)| Qemu::start(n, &root.p(&format!("/run/qemu/{n}.qmp")))).collect();

    // 1. one after another
    populate(&root, &qemus);
    let start = Instant::now();
    let mut times = Vec::new();
    for (bus, addr) in events() {
        let t = Instant::now();
        let st = spawn(&root, bus, addr).wait().unwrap();
        times.push(t.elapsed());
        assert!(st.success(), "remove {bus}:{addr} failed");
    }
    summary("sequential remove (device_del on real QEMU)", times, start.elapsed());
    println!("  left in QEMU: {} usb-host devices", gone_everywhere(&qemus));

    // 2. all at once: every process contends for the one lock
    populate(&root, &qemus);
    let start = Instant::now();
    let children: Vec<_> = events().into_iter().map(|(b, a)| (Instant::now(), spawn(&root, b, a))).collect();
    let mut times = Vec::new();
    for (t0, mut c) in children {
        let st = c.wait().unwrap();
        times.push(t0.elapsed());
        assert!(st.success());
    }
    summary("concurrent remove, 2 VMs, one lock", times, start.elapsed());
    println!("  left in QEMU: {} usb-host devices", gone_everywhere(&qemus));

    // 3. events for devices nobody wants: no lock, no QMP
    let start = Instant::now();
    let mut times = Vec::new();
    for (bus, addr) in events() {
        let t = Instant::now();
        let mut e = remove_env(bus, addr);
        e[0].1 = "bind".into();
        e.push(("TYPE".into(), "9/0/0".into())); // a hub: never passed
        Command::new(BIN).env_clear().envs(e).args(["--root", root.root_str(), "udev"]).status().unwrap();
        times.push(t.elapsed());
    }
    summary("ignored event (hub bind)", times, start.elapsed());
}
