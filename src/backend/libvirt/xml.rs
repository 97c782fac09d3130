//! libvirt's domain XML, both ways: the `<hostdev>` this tool attaches and
//! detaches, and what a live domain holds (its USB controllers, our hostdevs,
//! every other USB device and the port it takes). Pure.

use crate::state::{Attached, Controller, CtrlOrigin, Origin, VmState};
use crate::types::BusAddr;

/// Our alias for host device `at`: it becomes the QEMU id too.
pub fn alias_of(at: BusAddr) -> String {
    at.libvirt_alias()
}

fn parse_alias(a: &str) -> Option<BusAddr> {
    BusAddr::from_libvirt_alias(a)
}

/// The live `<hostdev>` for host device `at`: by bus and device (two identical
/// devices are told apart only so; libvirt finds it in sysfs and hands QEMU
/// its node), with our alias. A detach matches on the same address.
pub fn hostdev_xml(at: BusAddr) -> String {
    format!(
        "<hostdev mode='subsystem' type='usb' managed='no'><source><address bus='{}' device='{}'/></source>\
         <alias name='{}'/></hostdev>",
        at.bus,
        at.addr,
        alias_of(at)
    )
}

/// Ports of a libvirt USB controller model when its XML gives no `ports`
/// (QEMU's own defaults: xHCI 4 + 4, EHCI 6, UHCI 2).
fn default_ports(model: &str) -> u8 {
    match model {
        m if m.contains("xhci") => 4,
        m if m.contains("ehci") => 6,
        _ => 2,
    }
}

/// What the live domain XML says this domain holds. Controllers are the
/// domain's own; devices are our hostdevs (by alias); every other device on
/// a USB port (an admin's hostdev, libvirt's tablet) is a foreign port.
pub fn view_of(xml: &str) -> Result<VmState, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("libvirt's domain XML: {e}"))?;
    let devices = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("devices"))
        .ok_or("libvirt's domain XML has no <devices>")?;
    let alias = |n: roxmltree::Node<'_, '_>| {
        n.children().find(|c| c.has_tag_name("alias")).and_then(|a| a.attribute("name")).map(str::to_string)
    };
    let mut view = VmState::default();
    let mut by_index: Vec<(String, String)> = Vec::new();
    for c in devices.children().filter(|n| n.has_tag_name("controller") && n.attribute("type") == Some("usb")) {
        let model = c.attribute("model").unwrap_or("piix3-uhci");
        if model == "none" {
            continue;
        }
        let index = c.attribute("index").unwrap_or("0").to_string();
        let id = alias(c).unwrap_or_else(|| format!("usb{index}"));
        let ports = c.attribute("ports").and_then(|p| p.parse().ok()).unwrap_or_else(|| default_ports(model));
        let usb3_ports = if model.contains("xhci") { ports } else { 0 };
        by_index.push((index, id.clone()));
        view.controllers.push(Controller {
            id,
            driver: model.to_string(),
            ports,
            usb3_ports,
            origin: CtrlOrigin::Vm,
            bus: String::new(),
            companions: false,
        });
    }
    for d in devices.children().filter(|n| n.is_element()) {
        let Some(addr) = d.children().find(|c| c.has_tag_name("address") && c.attribute("type") == Some("usb")) else {
            continue;
        };
        let ctrl = by_index
            .iter()
            .find(|(i, _)| Some(i.as_str()) == addr.attribute("bus"))
            .map(|(_, id)| id.clone())
            .unwrap_or_default();
        // "1.2": behind a hub; the hub holds the root port.
        let Some(port) = addr.attribute("port").and_then(|p| p.parse::<u8>().ok()) else { continue };
        let ours = alias(d).as_deref().and_then(parse_alias).filter(|_| d.has_tag_name("hostdev"));
        match ours {
            Some(at) => view.devices.push(Attached {
                id: alias_of(at),
                bus: at.bus,
                addr: at.addr,
                controller: ctrl,
                port,
                port_path: String::new(),
                usb_id: String::new(),
                serial: String::new(),
                origin: Origin::Found,
            }),
            None => view.foreign_ports.push(format!("{ctrl}:{port}")),
        }
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `virsh dumpxml win11` (libvirt 9.0, QEMU 7.2, the rig's q35 domain) with
    /// our keyboard, an admin's hostdev and libvirt's tablet, trimmed to <devices>.
    const LIVE: &str = r#"<domain type='qemu' id='3'>
  <name>win11</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' index='0' model='qemu-xhci' ports='8'>
      <alias name='usb'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </controller>
    <controller type='pci' index='0' model='pcie-root'><alias name='pcie.0'/></controller>
    <input type='tablet' bus='usb'>
      <alias name='input0'/>
      <address type='usb' bus='0' port='1'/>
    </input>
    <hostdev mode='subsystem' type='usb' managed='no'>
      <source><address bus='1' device='4'/></source>
      <alias name='ua-aua-1-4'/>
      <address type='usb' bus='0' port='2'/>
    </hostdev>
    <hostdev mode='subsystem' type='usb' managed='no'>
      <source><vendor id='0x056a'/><product id='0x0000'/><address bus='1' device='5'/></source>
      <alias name='hostdev0'/>
      <address type='usb' bus='0' port='3'/>
    </hostdev>
  </devices>
</domain>"#;

    #[test]
    fn a_live_domain_reads_as_its_controllers_our_devices_and_foreign_ports() {
        let v = view_of(LIVE).unwrap();
        assert_eq!(v.controllers.len(), 1);
        let c = &v.controllers[0];
        assert_eq!((c.id.as_str(), c.driver.as_str(), c.ports, c.origin), ("usb", "qemu-xhci", 8, CtrlOrigin::Vm));
        assert_eq!(v.devices.len(), 1, "{v:?}");
        let d = &v.devices[0];
        assert_eq!((d.id.as_str(), d.bus, d.addr, d.controller.as_str(), d.port), ("ua-aua-1-4", 1, 4, "usb", 2));
        assert_eq!(v.foreign_ports, ["usb:1", "usb:3"]);
    }

    #[test]
    fn no_usb_bus_and_bad_xml() {
        let none = "<domain><devices><controller type='usb' model='none'/></devices></domain>";
        assert!(view_of(none).unwrap().controllers.is_empty());
        assert!(view_of("<domain>").unwrap_err().starts_with("libvirt's domain XML:"));
        assert!(view_of("<domain/>").unwrap_err().contains("no <devices>"));
    }

    #[test]
    fn hostdev_by_address_with_our_alias() {
        let at = BusAddr::new(3, 7);
        assert_eq!(
            hostdev_xml(at),
            "<hostdev mode='subsystem' type='usb' managed='no'><source><address bus='3' device='7'/></source>\
             <alias name='ua-aua-3-7'/></hostdev>"
        );
        assert_eq!(parse_alias(&alias_of(at)), Some(at));
        assert_eq!(parse_alias("hostdev0"), None);
        assert_eq!(parse_alias("ua-aua-3"), None);
    }
}
