//! A VM's owner that hangs affects only that VM: an event for a Xen VM
//! whose xenstored accepts and never answers gives up within
//! `timing::probe_cap()` without ever asking for the state lock, so every
//! other VM's events go on.

mod common;
use common::*;
use std::os::unix::net::UnixListener;
use std::time::Duration;

#[test]
fn an_event_for_a_vm_whose_xenstored_hangs_gives_up_before_the_lock() {
    // The receiver at 3-1.2 (3:7) is routed to Xen VM win10; budget 5 s.
    let (r, _sys, dev) = receiver_at_3_7("hung-owner", &config_xen("win10", "hubs = [\"3-1\"]"));
    std::fs::create_dir_all(r.p("/run/xenstored")).unwrap();
    let _hung = UnixListener::bind(r.p("/run/xenstored/socket")).unwrap();
    // Were the lock asked for, this event would wait on it for the whole budget.
    let _held = r.hold_lock();
    for action in ["add", "remove"] {
        let run = r.udev(&dev.udev_env(action));
        let line = run.fails(1, &["win10", "xenstore"]);
        assert!(!line.contains("lock"), "{action}: it waited for the lock: {line}");
        assert!(run.elapsed < Duration::from_millis(2500), "{action} took {:?}:\n{}", run.elapsed, run.dump());
    }
}
