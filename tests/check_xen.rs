//! `check` on a Xen domain: with no controller of libxl's, the tool would
//! hot-plug one into a guest that may still be in its firmware, so check
//! recommends libxl's own (`usbctrl` in the domain's config); with one, no
//! such warning.

mod common;
use common::*;

fn check_out(with_usbctrl: bool) -> String {
    let tag = if with_usbctrl { "chk-xen-ctrl" } else { "chk-xen-none" };
    let (r, _sys, _dev) = receiver_at_3_7(tag, &config_xen("win10", ""));
    let xs = FakeXenstored::start(&r);
    xs.domain(7, "win10");
    let q = FakeQmp::start(&r.p("/run/xen/qmp-libxl-7"), FakeOptions::default());
    if with_usbctrl {
        xs.usbctrl(7, 0, 3, 15);
        q.preload_xhci("xenusb-0", 15);
    }
    r.run(&["check"]).stdout
}

#[test]
fn check_recommends_a_usbctrl_for_a_domain_without_one() {
    let out = check_out(false);
    let w: Vec<&str> = out.lines().filter(|l| l.starts_with("warning: VM win10:")).collect();
    assert_eq!(w.len(), 1, "{out}");
    assert!(w[0].contains("usbctrl = ['type=devicemodel,version=3,ports=15']"), "{out}");
    let out = check_out(true);
    assert!(!out.contains("usbctrl ="), "{out}");
    assert!(out.contains("controllers: xenusb-0 (nec-usb-xhci, libxl): 15 of 15 ports free"), "{out}");
}
