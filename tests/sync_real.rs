//! `sync` against real QEMU 7.2: convergence after a VM restart, idempotence,
//! a probe QEMU (`-machine none`) and a busy socket. As in qemu_real.rs, no
//! usb-host can really attach here (no USB on this machine), so routed present
//! devices end in QEMU's own usb-host error; what is asserted is everything
//! around it: controllers, detaches of dead devices, state equal to QEMU.

mod common;
use common::*;
use serde_json::json;
use std::process::{Command, Stdio};

const QMP: &str = "/run/qemu/vm.qmp";

/// A `-machine none` QEMU (Xen >= 4.20's probe), killed on drop even when the test fails.
struct Probe(std::process::Child);

impl Probe {
    fn start(sock: &std::path::Path) -> Probe {
        std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "none", "-nodefaults", "-S", "-display", "none", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Probe(child);
        let start = std::time::Instant::now();
        while !sock.exists() {
            assert!(start.elapsed() < std::time::Duration::from_secs(30), "probe QEMU socket never appeared");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        p
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a sync that reached `q` for a routed present device leaves in it
/// here (no USB on this machine): the tool's controller and nothing else.
fn holds_only_the_tools_controller(q: &Qemu) {
    let mut c = q.qmp();
    assert_eq!(c.peripherals(), vec![("xenusb-0".to_string(), "child<nec-usb-xhci>".to_string())]);
}

fn usb_hosts(q: &Qemu) -> Vec<String> {
    let mut c = q.qmp();
    c.peripherals().into_iter().filter(|(_, t)| t == "child<usb-host>").map(|(n, _)| n).collect()
}

#[test]
fn sync_detaches_dead_devices_then_a_second_sync_does_nothing() {
    let root = TestRoot::new("s-idem");
    let sys = FakeSysfs::new(&root);
    sys.root_hub(3);
    // 3:8 is plugged and attached by hand (no rule): it must stay.
    let kept = UsbDev::new(3, 8, "3-1.3");
    sys.device(&kept);
    root.write_config(&config_qmp("win10", QMP, "hubs = [\"3-2\"]"));
    let q = Qemu::start("win10", &root.p(QMP));
    q.holding(&[(1, 3, 7, "1.2"), (2, 3, 8, "1.3")]); // 3:7's host device is gone

    let first = root.run(&["sync"]);
    first.ok();
    assert!(
        first.stderr.contains("detached xenusb-3-7 (3:7) from VM win10: its host device is gone"),
        "{}",
        first.stderr
    );
    assert_eq!(usb_hosts(&q), vec!["xenusb-3-8".to_string()]);
    assert!(!root.state_has_device(3, 7) && root.state_has_device(3, 8), "{:?}", root.state_text());

    let before = root.state_text();
    let second = root.run(&["sync"]);
    second.ok();
    // Routine (the timer runs sync every 2 minutes): only at debug.
    assert!(!second.stderr.contains("in sync"), "{}", second.stderr);
    let second = root.run(&["-v", "sync"]);
    second.ok();
    assert!(second.stderr.contains("in sync") && second.stderr.contains("nothing to do"), "{}", second.stderr);
    assert!(!second.stderr.contains("detach") && !second.stderr.contains("attached "), "{}", second.stderr);
    assert_eq!(usb_hosts(&q), vec!["xenusb-3-8".to_string()]);
    assert_eq!(root.state_text(), before, "a no-op sync rewrote state");
}

#[test]
fn sync_after_a_xen_reboot_follows_the_new_domid_and_rebuilds() {
    let root = TestRoot::new("s-reboot");
    let sys = FakeSysfs::new(&root);
    sys.root_hub(3);
    let dev = UsbDev::new(3, 7, "3-1.2");
    sys.device(&dev);
    root.write_config(&config_xen("win10", "hubs = [\"3-1\"]"));
    let xs = FakeXenstored::start(&root);
    xs.domain(7, "win10");
    let q7 = Qemu::start("win10", &root.p("/run/xen/qmp-libxl-7"));
    q7.age(60);
    q7.holding(&[(1, 3, 7, "1.2")]);
    root.run(&["sync"]).ok();
    assert_eq!(root.state().unwrap()["vms"]["win10"]["domid"], json!(7));

    // xl reboot: the old domain's QEMU and socket go, a new domid comes.
    drop(q7);
    let _ = std::fs::remove_file(root.p("/run/xen/qmp-libxl-7"));
    xs.destroy(7);
    xs.domain(9, "win10");
    let q9 = Qemu::start("win10", &root.p("/run/xen/qmp-libxl-9"));
    q9.age(60);
    let run = root.run(&["sync"]);
    // The routed, present device is attempted in the new QEMU: a fresh
    // controller, then QEMU's own usb-host refusal (no USB here).
    let line = run.error_contains_any(&["failed to open", "failed to find host usb device"]);
    assert!(line.contains("xenusb-3-7") || line.contains("3:7"), "{line}");
    holds_only_the_tools_controller(&q9);
    let vm = root.state().unwrap()["vms"]["win10"].clone();
    assert_eq!(vm["domid"], json!(9), "{vm}");
    assert_eq!(vm["socket"], json!("/run/xen/qmp-libxl-9"), "{vm}");
    assert_eq!(vm["devices"], json!([]), "stale device kept: {vm}");
    assert_eq!(vm["controllers"].as_array().map(|a| a.len()), Some(1), "{vm}");
}

#[test]
fn sync_against_a_probe_qemu_without_pci_fails_softly() {
    let root = TestRoot::new("s-probe");
    let sys = FakeSysfs::new(&root);
    sys.root_hub(3);
    sys.device(&UsbDev::new(3, 7, "3-1.2"));
    root.write_config(&config_qmp("win10", QMP, "hubs = [\"usb3\"]"));
    let sock = root.p(QMP);
    let _probe = Probe::start(&sock);
    let run = root.run(&["sync"]);
    run.ok();
    assert!(run.stderr.contains("no PCI bus"), "{}", run.stderr);
    let mut c = Qmp::connect(&sock, std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(c.peripherals(), vec![], "the probe QEMU was changed");
    drop(c);
    root.assert_state_clean();
}

#[test]
fn sync_with_an_unnamed_xen_probe_gives_up_cleanly() {
    // Xen >= 4.20's probe QEMU on the domain's socket has no -name.
    let root = TestRoot::new("s-xprobe");
    root.write_config("timeout = 1.5\n[[vm]]\nname = \"win10\"\nhubs = [\"usb3\"]\n");
    let xs = FakeXenstored::start(&root);
    xs.domain(7, "win10");
    let sock = root.p("/run/xen/qmp-libxl-7");
    let _probe = Probe::start(&sock);
    let run = root.run(&["sync"]);
    run.ok();
    assert!(run.stderr.contains("no PCI bus") && run.stderr.contains("next trigger"), "{}", run.stderr);
}

#[test]
fn sync_with_a_busy_socket_fails_with_one_line() {
    let root = TestRoot::new("s-busy");
    root.write_config(&config_qmp("win10", QMP, "").replace("timeout = 5", "timeout = 2"));
    let q = Qemu::start("win10", &root.p(QMP));
    let _holder = q.qmp(); // another client holds the one QMP slot
    root.run(&["sync"]).fails(1, &["win10", "busy"]);
    root.assert_state_clean();
}

#[test]
fn sync_finds_a_down_xen_vm_listed_after_running_ones() {
    // sync holds each running VM's session while it looks for the next VM; the
    // name scan for a VM that is down must not knock on those held sockets.
    let root = TestRoot::new("s-down-last");
    root.write_config(
        "timeout = 5\n[[vm]]\nname = \"a\"\n[[vm]]\nname = \"b\"\n[[vm]]\nname = \"offline\"\nhubs = [\"usb3\"]\n",
    );
    let xs = FakeXenstored::start(&root);
    xs.domain(7, "a");
    xs.domain(8, "b");
    let qa = Qemu::start("a", &root.p("/run/xen/qmp-libxl-7"));
    let qb = Qemu::start("b", &root.p("/run/xen/qmp-libxl-8"));
    qa.age(60);
    qb.age(60);
    let run = root.run(&["-v", "sync"]);
    run.ok();
    assert!(run.stderr.contains("VM offline is not running"), "{}", run.stderr);
    assert!(!run.stderr.contains("busy"), "{}", run.stderr);
    let s = root.state().unwrap();
    assert_eq!((s["vms"]["a"]["domid"].clone(), s["vms"]["b"]["domid"].clone()), (json!(7), json!(8)), "{s}");
}

/// A VM that starts while `sync` runs, after sync looked for it: systemd drops
/// the path unit's trigger for it (sync, its service, still runs), so that
/// sync sees its directory changed and syncs again. VM `late` (real QEMU) is
/// started by VM `early`'s first `query-pci` (a stand-in that answers as QEMU
/// does): `late` was already found not running by then.
#[test]
fn a_vm_that_starts_while_sync_runs_is_synced_by_that_sync() {
    let root = TestRoot::new("s-late");
    let sys = FakeSysfs::new(&root);
    sys.root_hub(3);
    sys.device(&UsbDev::new(3, 7, "3-1.2"));
    root.write_config(
        "timeout = 10\n\n[[vm]]\nname = \"late\"\nqmp = \"/run/qemu/late.qmp\"\nhubs = [\"3-1\"]\n\n\
         [[vm]]\nname = \"early\"\nqmp = \"/run/qemu/early.qmp\"\nhubs = [\"3-4\"]\n",
    );
    let late: std::sync::Arc<std::sync::Mutex<Option<Qemu>>> = Default::default();
    let (starts, late_sock) = (late.clone(), root.p("/run/qemu/late.qmp"));
    let start_late: Matcher = std::sync::Arc::new(move |v: &serde_json::Value| {
        let mut q = starts.lock().unwrap();
        if v["execute"] == "query-pci" && q.is_none() {
            *q = Some(Qemu::start("late", &late_sock));
        }
        false
    });
    let opts = FakeOptions { name: Some("early".into()), fault: Some((start_late, Fault::Hang)), ..Default::default() };
    let _early = FakeQmp::start(&root.p("/run/qemu/early.qmp"), opts);
    let run = root.run(&["sync"]);
    let late = late.lock().unwrap().take().expect("sync never asked early's QEMU for its PCI bus");
    assert!(run.stderr.contains("/run/qemu changed while syncing (a VM starting?); syncing again"), "{}", run.stderr);
    // Synced: a controller of the tool's in late, then QEMU's own usb-host
    // refusal (no USB here), as for any routed present device.
    let line = run.error_contains_any(&["failed to open", "failed to find host usb device"]);
    assert!(line.contains("3:7") || line.contains("xenusb-3-7"), "{line}");
    holds_only_the_tools_controller(&late);
}

/// A plain VM's socket directory made a moment ago (its making triggered the
/// path unit's sync) with no socket yet: its QEMU is starting, and sync waits
/// for the socket (within the budget) instead of calling the VM not running,
/// since systemd drops the socket's own trigger while this sync runs.
#[test]
fn sync_waits_for_the_socket_of_a_vm_whose_directory_was_just_made() {
    use std::io::BufRead;
    let root = TestRoot::new("s-fresh");
    let sys = FakeSysfs::new(&root);
    sys.root_hub(3);
    sys.device(&UsbDev::new(3, 7, "3-1.2"));
    root.write_config(&config_qmp("late", "/run/qemu-late/late.qmp", "hubs = [\"3-1\"]"));
    std::fs::create_dir_all(root.p("/run/qemu-late")).unwrap();
    let mut sync = Command::new(BIN)
        .args(["--root", root.root_str(), "-v", "sync"])
        .env("AUTO_USB_ATTACH_SYNC_RETRY_MS", "50")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(sync.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The VM starts once sync has found its directory fresh and empty.
    while !seen.iter().any(|l: &String| l.contains("not ready") && l.contains("its directory was made")) {
        match lines.next() {
            Some(l) => seen.push(l.unwrap()),
            None => panic!("sync ended without waiting for late's socket:\n{}", seen.join("\n")),
        }
    }
    let late = Qemu::start("late", &root.p("/run/qemu-late/late.qmp"));
    seen.extend(lines.map(Result::unwrap));
    sync.wait().unwrap();
    let all = seen.join("\n");
    assert!(all.contains("failed to open") || all.contains("failed to find host usb device"), "{all}");
    holds_only_the_tools_controller(&late);
}
