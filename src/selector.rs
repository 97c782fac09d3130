//! Naming a host device on the command line: `3:7` (bus:addr, as lsusb and
//! our logs write it), `1-4.2` (port path: stays the same across replugs
//! into the same socket) or `046d:c52b[:serial]` (what the device is).
//! Parsing is pure; `resolve` picks from a host scan and refuses anything
//! ambiguous, listing the candidates, so a typo never detaches the wrong device.

use crate::error::{Error, Result};
use crate::host::HostDevice;
use crate::types::BusAddr;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `3:7`: bus and device address, decimal, unpadded or zero-padded.
    BusAddr(BusAddr),
    /// `1-4.2`: the sysfs port path.
    Port(String),
    /// `046d:c52b` or `046d:c52b:SERIAL`: vendor and product, 4 hex digits each.
    Id { vendor: u16, product: u16, serial: Option<String> },
}

/// What the argument's help and errors say a selector may look like.
pub const FORMS: &str = "BUS:ADDR (3:7), a port path (1-4.2) or VENDOR:PRODUCT[:SERIAL] (046d:c52b)";

fn dec(s: &str, max: u16) -> Option<u16> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|n| (1..=max).contains(n))
}

fn hex4(s: &str) -> Option<u16> {
    if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(s, 16).ok()
}

fn is_port_path(s: &str) -> bool {
    let Some((bus, ports)) = s.split_once('-') else { return false };
    dec(bus, 999).is_some() && ports.split('.').all(|p| dec(p, 255).is_some())
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Selector, String> {
        let parts: Vec<&str> = s.splitn(3, ':').collect();
        // Four hex digits is an id even when they are all decimal digits
        // (bus numbers and addresses have at most 3 digits).
        match parts.as_slice() {
            [b, a] if b.len() <= 3 && a.len() <= 3 => match (dec(b, 999), dec(a, 127)) {
                (Some(b), Some(a)) => Ok(Selector::BusAddr(BusAddr::new(b, a))),
                _ => Err(format!("{s:?}: bus must be 1-999 and address 1-127 (expected {FORMS})")),
            },
            [v, p] | [v, p, _] if hex4(v).is_some() && hex4(p).is_some() => {
                let serial = parts.get(2).map(|x| x.to_string());
                if serial.as_deref() == Some("") {
                    return Err(format!("{s:?}: empty serial (expected {FORMS})"));
                }
                Ok(Selector::Id { vendor: hex4(v).unwrap_or(0), product: hex4(p).unwrap_or(0), serial })
            }
            [one] if is_port_path(one) => Ok(Selector::Port(one.to_string())),
            _ => Err(format!("{s:?} is not a device (expected {FORMS})")),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::BusAddr(at) => at.fmt(f),
            Selector::Port(p) => f.write_str(p),
            Selector::Id { vendor, product, serial: None } => write!(f, "{vendor:04x}:{product:04x}"),
            Selector::Id { vendor, product, serial: Some(s) } => write!(f, "{vendor:04x}:{product:04x}:{s}"),
        }
    }
}

impl Selector {
    pub fn matches(&self, d: &HostDevice) -> bool {
        match self {
            Selector::BusAddr(at) => d.at() == *at,
            Selector::Port(p) => d.port_path == *p,
            Selector::Id { vendor, product, serial } => {
                d.vendor == *vendor
                    && d.product == *product
                    && serial.as_ref().is_none_or(|s| d.serial.as_ref() == Some(s))
            }
        }
    }

    /// The one present host device this names: none is an error, and so is
    /// more than one (the candidates are listed, by bus:addr and port).
    pub fn resolve<'a>(&self, devices: &'a [HostDevice]) -> Result<&'a HostDevice> {
        let found: Vec<&HostDevice> = devices.iter().filter(|d| self.matches(d)).collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::new(format!("no host USB device matches {self} (see `auto-usb-attach list`)"))),
            many => {
                let names: Vec<String> = many
                    .iter()
                    .map(|d| match &d.serial {
                        Some(s) => format!("{} at {} (serial {s})", d.at(), d.port_path),
                        None => format!("{} at {}", d.at(), d.port_path),
                    })
                    .collect();
                Err(Error::new(format!(
                    "{self} is ambiguous: {} devices match ({}); name one by bus:addr, port path or serial",
                    many.len(),
                    names.join(", ")
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The cases are data: tests/cases/selectors.txt, one a line. Adding a case is one line there.
    use super::*;

    const CASES: &str = include_str!("../tests/cases/selectors.txt");

    /// The case lines whose first column is `verb`, split on " | ", with their line numbers.
    fn cases(verb: &str) -> Vec<(usize, Vec<&'static str>)> {
        let rows: Vec<_> = CASES
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|(n, l)| (n + 1, l.split('|').map(str::trim).collect::<Vec<_>>()))
            .filter(|(_, cols)| cols[0] == verb)
            .collect();
        assert!(!rows.is_empty(), "no {verb} cases in tests/cases/selectors.txt");
        rows
    }

    fn p(s: &str) -> Selector {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// "bus 3 addr 7", "port 1-4.2", "vendor 046d product c52b [serial S]", built without the parser.
    fn expected(text: &str) -> Selector {
        let w: Vec<&str> = text.split_whitespace().collect();
        let hex = |s: &str| u16::from_str_radix(s, 16).unwrap();
        match w.as_slice() {
            ["bus", b, "addr", a] => Selector::BusAddr(BusAddr::new(b.parse().unwrap(), a.parse().unwrap())),
            ["port", path] => Selector::Port(path.to_string()),
            ["vendor", v, "product", p] => Selector::Id { vendor: hex(v), product: hex(p), serial: None },
            ["vendor", v, "product", p, "serial", s] => {
                Selector::Id { vendor: hex(v), product: hex(p), serial: Some(s.to_string()) }
            }
            _ => panic!("bad expectation {text:?} in tests/cases/selectors.txt"),
        }
    }

    #[test]
    fn the_three_forms_parse_and_show_again() {
        for (line, c) in cases("parse") {
            let (input, want, shown) = (c[1], c[2], c[3]);
            assert_eq!(p(input), expected(want), "selectors.txt:{line}: {input}");
            assert_eq!(p(input).to_string(), shown, "selectors.txt:{line}: {input}");
        }
    }

    #[test]
    fn bad_selectors_are_refused_with_the_forms() {
        for (line, c) in cases("refuse") {
            let input = c.get(1).copied().unwrap_or("");
            let e = input.parse::<Selector>().unwrap_err();
            assert!(e.contains("expected BUS:ADDR"), "selectors.txt:{line}: {input:?}: {e}");
        }
    }

    #[test]
    fn resolving_picks_one_or_refuses() {
        let mut a = HostDevice::fixture(3, 7, "3-1.2", 0x046d, 0xc52b);
        a.serial = Some("A".into());
        let mut b = HostDevice::fixture(3, 9, "3-2", 0x046d, 0xc52b);
        b.serial = Some("B".into());
        let c = HostDevice::fixture(1, 2, "1-4.2", 0x1050, 0x0407);
        let host = vec![c, a, b];
        for (line, c) in cases("resolve") {
            let (input, want) = (c[1], c[2]);
            let got = p(input).resolve(&host);
            match want.strip_prefix("error: ") {
                Some(words) => {
                    let e = got.unwrap_err().to_string();
                    for w in words.split("; ") {
                        assert!(e.contains(w), "selectors.txt:{line}: {input}: {e:?} lacks {w:?}");
                    }
                }
                None => assert_eq!(got.unwrap().at().to_string(), want, "selectors.txt:{line}: {input}"),
            }
        }
    }
}
