//! Small typed values used across the tool: a host device's place on the
//! bus (`BusAddr`) and its speed (`Speed`), so that a pair of u16 or a sysfs
//! string cannot be mixed up or misread in one place and not another.

use std::fmt;

/// A host USB device as lsusb names it: bus number and device address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BusAddr {
    pub bus: u16,
    pub addr: u16,
}

impl BusAddr {
    pub fn new(bus: u16, addr: u16) -> BusAddr {
        BusAddr { bus, addr }
    }

    /// QEMU id of the usb-host device for this host device (libxl's scheme).
    pub fn device_id(self) -> String {
        format!("xenusb-{}-{}", self.bus, self.addr)
    }

    /// The inverse of `device_id`; only ids a real device can have (bus
    /// 1..=999, address 1..=127, plain decimal digits).
    pub fn from_device_id(id: &str) -> Option<BusAddr> {
        let (b, a) = id.strip_prefix("xenusb-")?.split_once('-')?;
        let num = |s: &str, max: u16| -> Option<u16> {
            let digits = !s.is_empty() && s.len() <= 3 && s.bytes().all(|c| c.is_ascii_digit());
            s.parse::<u16>().ok().filter(|n| digits && (1..=max).contains(n))
        };
        Some(BusAddr::new(num(b, 999)?, num(a, 127)?))
    }
}

impl BusAddr {
    /// This tool's user alias for the device in a libvirt domain (libvirt
    /// wants user aliases to start with `ua-`); it becomes the QEMU id there.
    pub fn libvirt_alias(self) -> String {
        format!("ua-aua-{}-{}", self.bus, self.addr)
    }

    /// The inverse of `libvirt_alias`, with `from_device_id`'s bounds.
    pub fn from_libvirt_alias(alias: &str) -> Option<BusAddr> {
        BusAddr::from_device_id(&format!("xenusb-{}", alias.strip_prefix("ua-aua-")?))
    }
}

impl fmt::Display for BusAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.bus, self.addr)
    }
}

/// USB signalling speed, from sysfs `speed` (Mbit/s as the kernel writes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Speed {
    /// 1.5 Mb/s.
    Low,
    /// 12 Mb/s.
    Full,
    /// 480 Mb/s.
    High,
    /// 5000 Mb/s and up.
    Super,
}

impl Speed {
    /// Unknown or unreadable values count as high speed (the most common
    /// kind, and what the tool assumed before it read speeds).
    pub fn from_sysfs(s: &str) -> Speed {
        match s.trim().parse::<f64>() {
            Ok(v) if v >= 5000.0 => Speed::Super,
            Ok(v) if v >= 480.0 => Speed::High,
            Ok(v) if v >= 12.0 => Speed::Full,
            Ok(_) => Speed::Low,
            Err(_) => Speed::High,
        }
    }
}

impl fmt::Display for Speed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Speed::Low => "low-speed (1.5 Mb/s)",
            Speed::Full => "full-speed (12 Mb/s)",
            Speed::High => "high-speed (480 Mb/s)",
            Speed::Super => "SuperSpeed (5 Gb/s+)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_from_sysfs() {
        let s = |t| Speed::from_sysfs(t);
        assert_eq!(
            [s("1.5"), s("12"), s("480"), s("5000"), s("10000"), s("?")],
            [Speed::Low, Speed::Full, Speed::High, Speed::Super, Speed::Super, Speed::High]
        );
    }

    #[test]
    fn device_ids_round_trip() {
        let a = BusAddr::new(3, 7);
        assert_eq!(a.device_id(), "xenusb-3-7");
        assert_eq!(BusAddr::from_device_id("xenusb-3-7"), Some(a));
        assert_eq!(BusAddr::from_device_id("xenusb-0"), None);
        for bad in ["xenusb-0-0", "xenusb-3-0", "xenusb-3-128", "xenusb-+3-7", "xenusb-3-+7", "xenusb-1000-1"] {
            assert_eq!(BusAddr::from_device_id(bad), None, "{bad}");
        }
        assert_eq!(BusAddr::from_device_id("xenusb-999-127"), Some(BusAddr::new(999, 127)));
        assert_eq!(a.to_string(), "3:7");
    }
}
