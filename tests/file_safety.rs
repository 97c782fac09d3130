//! Files, as an admin meets them: nothing is written through a symlink, nothing
//! unsafe is trusted (the state dir, the config and their parents), modes do
//! not depend on the umask, a bad state file never wedges the tool, and a
//! FIFO or device at the config path cannot hang it. Fake root, fake QMP
//! (QEMU's behaviour is not what these test).

mod common;
use common::*;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const QMP: &str = "/run/qemu/vm.qmp";

fn rig(tag: &str) -> (TestRoot, FakeSysfs, UsbDev) {
    receiver_at_3_7(
        tag,
        &format!("timeout = 5\n\n[[vm]]\nname = \"win10\"\nqmp = \"{QMP}\"\ndevices = [\"046d:c52b\"]\n"),
    )
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

#[test]
fn state_and_temp_symlinks_are_replaced_never_written_through() {
    let (r, _sys, dev) = rig("h-link");
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    std::fs::create_dir_all(r.state_dir()).unwrap();
    let victim = r.p("/etc/passwd");
    std::fs::write(&victim, "root:x:0:0\n").unwrap();
    symlink(&victim, r.state_path()).unwrap();
    symlink(&victim, r.state_dir().join(".state.json.tmp")).unwrap();
    r.udev(&dev.udev_env("add")).ok();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root:x:0:0\n", "wrote through a symlink");
    assert!(!std::fs::symlink_metadata(r.state_path()).unwrap().file_type().is_symlink());
    assert!(r.state_has_device(3, 7));
    assert_eq!(f.device_ids(), vec!["xenusb-0", "xenusb-3-7"]);
}

#[test]
fn a_symlinked_lock_is_refused_and_its_target_untouched() {
    let (r, _sys, dev) = rig("h-lock");
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    std::fs::create_dir_all(r.state_dir()).unwrap();
    let victim = r.p("/etc/shadow");
    std::fs::write(&victim, "x").unwrap();
    chmod(&victim, 0o600);
    symlink(&victim, r.state_dir().join("lock")).unwrap();
    r.udev(&dev.udev_env("add")).fails(1, &["lock"]);
    assert_eq!(mode(&victim), 0o600, "chmod through a symlink");
    assert_eq!(f.connections(), 0);
}

#[test]
fn unsafe_state_dirs_and_config_parents_are_refused_in_one_line() {
    let (r, _sys, dev) = rig("h-perm");
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    // The config's directory writable by anyone: anyone can swap the config.
    chmod(&r.p("/etc"), 0o777);
    r.udev(&dev.udev_env("add")).fails(1, &["refusing", "config /etc/auto-usb-attach.toml", "/etc", "0777"]);
    chmod(&r.p("/etc"), 0o755);
    // A shared sticky dir (like /tmp) as the state dir.
    std::fs::create_dir_all(r.p("/shared")).unwrap();
    chmod(&r.p("/shared"), 0o1777);
    let cfg = |dir: &str| {
        format!("timeout = 5\nstate-dir = \"{dir}\"\n\n[[vm]]\nname = \"win10\"\nqmp = \"{QMP}\"\ndevices = [\"046d:c52b\"]\n")
    };
    r.write_config(&cfg("/shared"));
    r.udev(&dev.udev_env("add")).fails(1, &["refusing", "state dir /shared", "1777"]);
    // The state dir's parent writable by anyone.
    std::fs::create_dir_all(r.p("/open/st")).unwrap();
    chmod(&r.p("/open"), 0o777);
    r.write_config(&cfg("/open/st"));
    r.udev(&dev.udev_env("add")).fails(1, &["refusing", "state dir /open/st", "0777"]);
    // The state dir a symlink (to a safe dir, even).
    std::fs::create_dir_all(r.p("/var/real")).unwrap();
    symlink(r.p("/var/real"), r.p("/var/st")).unwrap();
    r.write_config(&cfg("/var/st"));
    r.udev(&dev.udev_env("add")).fails(1, &["refusing", "state dir /var/st", "symlink"]);
    assert_eq!(f.connections(), 0);
    // A sticky shared dir is fine as a parent of a root-owned state dir.
    std::fs::create_dir_all(r.p("/shared/st")).unwrap();
    chmod(&r.p("/shared/st"), 0o755);
    r.write_config(&cfg("/shared/st"));
    r.udev(&dev.udev_env("add")).ok();
    assert_eq!(f.device_ids(), vec!["xenusb-0", "xenusb-3-7"]);
}

#[test]
fn modes_are_exact_under_umask_000_and_the_next_run_still_works() {
    let (r, sys, dev) = rig("h-umask");
    let _f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    // No unsafe code in tests: the umask is set by a shell with fixed arguments.
    let mut c = Command::new("/bin/sh");
    c.env_clear();
    for (k, v) in dev.udev_env("add") {
        c.env(k, v);
    }
    c.args(["-c", "umask 000 && exec \"$0\" \"$@\"", BIN, "--root", r.root_str(), "udev"]);
    run_cmd(c, r.root_str()).ok();
    assert_eq!(mode(&r.state_dir()), 0o755);
    assert_eq!(mode(&r.state_dir().join("lock")), 0o644);
    assert_eq!(mode(&r.state_path()), 0o644);
    let other = UsbDev::new(3, 8, "3-2").ids("046d", "c52b");
    sys.device(&other);
    r.udev(&other.udev_env("add")).ok();
    assert!(r.state_has_device(3, 8));
}

#[test]
fn a_state_file_that_is_a_directory_is_moved_aside_and_the_event_proceeds() {
    let (r, _sys, dev) = rig("h-statedir");
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    std::fs::create_dir_all(r.state_path().join("junk")).unwrap();
    let run = r.udev(&dev.udev_env("add"));
    run.ok();
    assert!(run.stderr.contains("moved to") || run.stdout.contains("moved to"), "{run:?}");
    assert!(r.state_has_device(3, 7));
    assert!(r.state_dir().join("state.json.bad/junk").is_dir(), "kept for inspection");
    assert_eq!(f.device_ids(), vec!["xenusb-0", "xenusb-3-7"]);
    // And again, with state.json.bad already taken: still no wedge.
    std::fs::remove_file(r.state_path()).unwrap();
    std::fs::create_dir_all(r.state_path().join("junk")).unwrap();
    r.run(&["list"]).ok();
    r.udev(&dev.udev_env("add")).ok();
    assert!(std::fs::symlink_metadata(r.state_path()).unwrap().is_file());
}

#[test]
fn a_fifo_or_device_at_the_config_path_fails_at_once_naming_it() {
    let (r, _sys, dev) = rig("h-fifo");
    let cfg = r.p("/etc/auto-usb-attach.toml");
    std::fs::remove_file(&cfg).unwrap();
    nix::unistd::mkfifo(&cfg, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let run = r.udev(&dev.udev_env("add"));
    run.fails(1, &["/etc/auto-usb-attach.toml", "FIFO"]);
    // Wide bound (the default budget is 10 s; a hang would be killed at 60 s).
    assert!(run.elapsed < Duration::from_secs(3), "took {:?}", run.elapsed);
    std::fs::remove_file(&cfg).unwrap();
    symlink("/dev/zero", &cfg).unwrap();
    let run = r.udev(&dev.udev_env("add"));
    run.fails(1, &["/etc/auto-usb-attach.toml", "character device"]);
    assert!(run.elapsed < Duration::from_secs(3), "took {:?}", run.elapsed);
}

#[test]
fn a_failed_save_after_a_qmp_change_names_both_and_the_next_event_rebuilds_from_qemu() {
    let (r, sys, dev) = rig("h-save");
    let f = FakeQmp::start(&r.p(QMP), FakeOptions::default());
    // The temp file's name taken by a non-empty directory: the save fails
    // (root ignores permissions, so this is how a test makes it fail).
    std::fs::create_dir_all(r.state_dir().join(".state.json.tmp/x")).unwrap();
    let line = r.udev(&dev.udev_env("add")).fails(1, &["QEMU changed as asked", "cannot write", "state.json"]);
    assert!(line.contains("rebuilds it from QEMU"), "{line}");
    assert_eq!(f.device_ids(), vec!["xenusb-0", "xenusb-3-7"]);
    assert!(r.state_text().is_none());
    std::fs::remove_dir_all(r.state_dir().join(".state.json.tmp")).unwrap();
    // State never learnt of 3:7; the remove asks QEMU and cleans up.
    sys.remove(&dev);
    r.udev(&dev.udev_env("remove")).ok();
    assert_eq!(f.device_ids(), vec!["xenusb-0"], "{:?}", f.command_names());
    // And an error before the save keeps its own words next to the save's.
    std::fs::create_dir_all(r.state_dir().join(".state.json.tmp/x")).unwrap();
    sys.device(&dev);
    let f2 = FakeOptions { host_has_devices: false, ..FakeOptions::default() };
    drop(f);
    let _f = FakeQmp::start(&r.p(QMP), f2);
    let line = r.udev(&dev.udev_env("add")).fails(1, &["device_add xenusb-3-7", "; and cannot write"]);
    assert!(!line.contains("QEMU changed as asked"), "{line}");
}
