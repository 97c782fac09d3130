//! The per-event cost of the Xen backend's xenstore and lock work, against
//! the same event on a plain QEMU VM (`qmp = ...`): remove events, each a
//! real `device_del` on a real paused QEMU. On the Xen side the tool also
//! looks the domain up in xenstore, takes libxl's qmp-socket-lock around the
//! connection, reads libxl's vusb records and empties the device's port
//! entry. xenstored is the tests' in-process stand-in (its wire format is
//! the real one's; the real xenstored is a local C daemon of similar cost).
//! Then `sync` with 1,000 Xen VMs configured and 100 domains running (none
//! of them configured): the domain lookup's cost with many VMs, against the
//! budget. Prints figures; asserts nothing. Run: `cargo bench --bench xen_cost`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{remove_env, FakeXenstored, Qemu, TestRoot, BIN};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const N: u32 = 15;
const BUS: u32 = 1;

/// N usb-host devices in QEMU, our records in state, and (Xen) libxl's.
fn populate(root: &TestRoot, q: &Qemu, socket: &str, xs: Option<&FakeXenstored>) {
    let mut c = q.qmp();
    if !c.peripherals().iter().any(|(n, _)| n == "xenusb-0") {
        c.add_xhci("xenusb-0", 15);
    }
    if let Some(xs) = xs {
        xs.usbctrl(9, 0, 3, 15);
    }
    let mut devices = Vec::new();
    for i in 0..N {
        let addr = 10 + i;
        c.place_usb_host("xenusb-0", i + 1, BUS, addr, &format!("{}", i + 1));
        devices.push(json!({"id": format!("xenusb-{BUS}-{addr}"), "bus": BUS, "addr": addr,
            "controller": "xenusb-0", "port": i + 1, "port-path": format!("{BUS}-{}", i + 1), "origin": "rule"}));
        if let Some(xs) = xs {
            xs.set(&format!("/libxl/9/device/vusb/0/port/{}", i + 1), &format!("{BUS}-{}", i + 1));
        }
    }
    let instance = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(root.p(socket)).unwrap();
        format!("{}:{}.{:09}", m.ino(), m.ctime(), m.ctime_nsec())
    };
    let mut vm = json!({"socket": socket, "instance": instance,
        "controllers": [{"id": "xenusb-0", "driver": "nec-usb-xhci", "ports": 15, "usb3-ports": 15}],
        "devices": devices});
    if xs.is_some() {
        vm["domid"] = json!(9);
    }
    std::fs::create_dir_all(root.state_dir()).unwrap();
    let state = json!({"version": 1, "vms": {"win10": vm}});
    std::fs::write(root.state_path(), serde_json::to_string_pretty(&state).unwrap()).unwrap();
}

fn run(root: &TestRoot) -> Vec<Duration> {
    (0..N)
        .map(|i| {
            let t = Instant::now();
            let st = Command::new(BIN)
                .env_clear()
                .envs(remove_env(BUS, 10 + i))
                .args(["--root", root.root_str(), "udev"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("spawn auto-usb-attach");
            assert!(st.success(), "remove event failed");
            t.elapsed()
        })
        .collect()
}

fn median(mut t: Vec<Duration>) -> f64 {
    t.sort();
    t[t.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    let rounds = 3;
    let (mut plain, mut xen) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let root = TestRoot::new("bench-plain");
        root.write_config("timeout = 10\n[[vm]]\nname = \"win10\"\nqmp = \"/run/qemu/win10.qmp\"\nhubs = [\"usb1\"]\n");
        let q = Qemu::start("win10", &root.p("/run/qemu/win10.qmp"));
        populate(&root, &q, "/run/qemu/win10.qmp", None);
        plain.extend(run(&root));

        let root = TestRoot::new("bench-xen");
        root.write_config("timeout = 10\n[[vm]]\nname = \"win10\"\nhubs = [\"usb1\"]\n");
        let xs = FakeXenstored::start(&root);
        for d in 1..=8 {
            xs.domain(d, &format!("other{d}"));
        }
        xs.domain(9, "win10");
        let q = Qemu::start("win10", &root.p("/run/xen/qmp-libxl-9"));
        populate(&root, &q, "/run/xen/qmp-libxl-9", Some(&xs));
        xen.extend(run(&root));
        let left = xs.dump("/libxl/9/device/vusb/0/port/");
        assert!(!left.contains("\"1-"), "libxl's entries not emptied: {left}");
    }
    let (p, x) = (median(plain.clone()), median(xen.clone()));
    println!("plain QEMU (qmp = ...): {} remove events, median {p:.1} ms per event", plain.len());
    println!(
        "Xen (xenstore lookup among 9 domains, libxl's QMP lock, vusb records, port entry emptied): {} remove events, median {x:.1} ms per event",
        xen.len()
    );
    println!("xenstore + lock work: {:+.1} ms per event (median difference)", x - p);
    many_vms();
}

/// `sync` with 1,000 configured Xen VMs among 100 running domains.
fn many_vms() {
    let mut cfg = String::from("timeout = 10\n");
    for i in 0..1000 {
        cfg.push_str(&format!("\n[[vm]]\nname = \"vm{i}\"\n"));
    }
    let mut took = Vec::new();
    for _ in 0..3 {
        let root = TestRoot::new("bench-many");
        root.write_config(&cfg);
        let xs = FakeXenstored::start(&root);
        for d in 1..=100 {
            xs.domain(d, &format!("other{d}"));
        }
        let t = Instant::now();
        let st = Command::new(BIN)
            .env_clear()
            .arg("--root")
            .arg(&root.path)
            .arg("sync")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        took.push(t.elapsed());
        let reqs = xs.log().len();
        println!(
            "sync, 1,000 Xen VMs, 100 domains: exit {:?} in {:.0} ms, {reqs} xenstore requests",
            st.code(),
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    println!("sync, 1,000 Xen VMs, 100 domains: median {:.0} ms (budget 10 s)", median(took));
}
