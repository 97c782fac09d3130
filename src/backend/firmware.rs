//! Is a guest somewhere a hot-plugged PCI controller is safe (issue 19, "the
//! booting guest")? Read from the VM's own QEMU, in the session the tool
//! already has open: two queries, no wait. Asked by the Xen backend before it
//! creates a controller (`Link::controller_wait`).
//!
//! What the Xen 4.17 rig showed (FIRMWARE-FINDINGS.md): QEMU's `query-status`
//! says `running` while xl still holds the domain paused, so it tells
//! nothing; xenstore does not change between libxl's setup and the boot
//! sector. Two QEMU facts bracket the firmware:
//!
//! - **not started**: no PCI BAR of any device is mapped (`query-pci` gives
//!   the unmapped address, all ones). hvmloader (Xen) or SeaBIOS (plain
//!   QEMU) has not assigned BARs yet, so a controller added now is found by
//!   the firmware's PCI scan like a cold-plugged one (seen: hvmloader gave the
//!   hot-plugged xHCI its BAR and SeaBIOS drove it). libxl adds its own
//!   `usbctrl` in the same phase.
//! - **handed over**: a block device has been read (`query-blockstats`
//!   `rd_operations` > 0): the firmware has loaded a boot sector, or an OS
//!   runs; either way firmware's PCI scan and USB setup are over.
//!
//! Between the two (BARs assigned, no disk read yet) the firmware is
//! scanning PCI and starting USB controllers: no controller is added then.
//! A guest that never reads a block device (PXE, diskless) stays in that
//! middle state as far as this can tell; it needs `usbctrl` in its config.

use super::wire::qmp::{Qmp, QmpResult};
use serde_json::Value;
use std::io::{BufRead, Write};

/// Where the guest is, for a hot-plugged controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Phase {
    /// Firmware has not set up PCI yet: safe, seen as cold-plugged.
    Before,
    /// A boot sector was read (or an OS runs): safe.
    Past,
    /// Firmware is (or may be) running: not now. Why, for the log.
    Inside(String),
}

impl Phase {
    #[cfg(test)]
    pub(super) fn can_take_controller(&self) -> bool {
        !matches!(self, Phase::Inside(_))
    }
}

/// The unmapped BAR address in `query-pci` (QEMU's PCI_BAR_UNMAPPED).
const UNMAPPED: u64 = u64::MAX;

/// Decide from the replies of `query-pci` and `query-blockstats`.
pub(super) fn phase_of(pci: &Value, blockstats: &Value) -> Phase {
    let reads: u64 = blockstats
        .as_array()
        .map(|a| a.iter().filter_map(|b| b.pointer("/stats/rd_operations").and_then(Value::as_u64)).sum())
        .unwrap_or(0);
    if reads > 0 {
        return Phase::Past;
    }
    let mut regions = 0usize;
    let mut mapped = 0usize;
    let mut stack: Vec<&Value> = pci.as_array().map(|a| a.iter().collect()).unwrap_or_default();
    while let Some(bus) = stack.pop() {
        for d in bus.get("devices").and_then(Value::as_array).into_iter().flatten() {
            for r in d.get("regions").and_then(Value::as_array).into_iter().flatten() {
                regions += 1;
                if r.get("address").and_then(Value::as_u64).is_some_and(|a| a != UNMAPPED) {
                    mapped += 1;
                }
            }
            if let Some(b) = d.pointer("/pci_bridge/bus") {
                stack.push(b);
            }
        }
    }
    if regions > 0 && mapped == 0 {
        return Phase::Before;
    }
    Phase::Inside(format!(
        "its firmware has set up PCI ({mapped} of {regions} BARs mapped) and has read no boot sector yet"
    ))
}

/// Ask QEMU (two queries on the open session) where the guest is.
pub(super) fn guest_can_take_controller<S: BufRead + Write>(q: &mut Qmp<S>) -> QmpResult<Phase> {
    let pci = q.execute("query-pci", None)?;
    let blk = q.execute("query-blockstats", None)?;
    Ok(phase_of(&pci, &blk))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pci(addrs: &[u64]) -> Value {
        let regions: Vec<Value> = addrs.iter().map(|a| json!({"bar": 0, "address": a, "size": 16})).collect();
        json!([{"bus": 0, "devices": [{"slot": 0, "regions": []}, {"slot": 1, "regions": regions}]}])
    }

    fn blk(reads: u64) -> Value {
        json!([{"device": "ide0-hd0", "stats": {"rd_operations": reads}}, {"device": "", "stats": {"rd_operations": 0}}])
    }

    #[test]
    fn the_three_phases_seen_on_the_xen_rig() {
        // xl create, domain still paused / hvmloader not at its PCI setup yet.
        assert_eq!(phase_of(&pci(&[UNMAPPED, UNMAPPED]), &blk(0)), Phase::Before);
        // hvmloader assigned BARs; SeaBIOS probing, starting USB, no boot sector yet.
        assert!(!phase_of(&pci(&[0xc100, 0xf2000000]), &blk(0)).can_take_controller());
        // "Booting from 0000:7c00": the boot sector was read.
        assert_eq!(phase_of(&pci(&[0xc100, 0xf2000000]), &blk(1)), Phase::Past);
    }

    #[test]
    fn nothing_known_is_not_a_yes() {
        assert!(!phase_of(&json!([]), &json!([])).can_take_controller());
        assert!(!phase_of(&pci(&[]), &blk(0)).can_take_controller());
    }

    #[test]
    fn devices_behind_a_bridge_count() {
        let p = json!([{"bus": 0, "devices": [{"regions": [{"address": UNMAPPED}],
            "pci_bridge": {"bus": {"devices": [{"regions": [{"address": 0xfe000000u64}]}]}}}]}]);
        assert!(!phase_of(&p, &blk(0)).can_take_controller());
    }
}
