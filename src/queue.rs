//! Events that found the state lock held, waiting in the state dir for the
//! invocation that holds it.
//!
//! udev gives each RUN program a worker and holds the device's later events
//! (and its interfaces' events) until the program returns. When a hub full
//! of devices arrives, every event but one would sit in its worker waiting
//! for the lock, and the workers run out: the kernel's later events then
//! wait for workers, not for QEMU. So an event that finds the lock held
//! writes itself here (`queued-<SEQNUM>-<pid>`, atomically, mode 0600) and
//! returns; whoever holds the lock serves the queue before it lets go
//! (`Ctx::with_state`), oldest first, with the same code the event would
//! have run. Nothing is lost in the hand-over:
//! - the event tries the lock again after writing its entry, and the
//!   holder looks at the queue after releasing the lock, so one of them
//!   always sees the entry;
//! - a holder serves the entries older than its own event before its own,
//!   and udev runs a device's next event only after this one returned, so
//!   one device's events are served in their order;
//! - an entry is removed only after it was served and state saved: a
//!   holder killed half-way leaves it for the next, and serving it twice
//!   is a replayed event (which changes nothing).
//!
//! A holder serves entries while its budget lasts; what is left waits for
//! the next event or `sync`. An entry older than `STALE` is dropped: `sync`
//! (every 2 minutes) has reconciled that device since.

use crate::fsio::Dir;
use crate::host::UdevEvent;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "queued-";
/// An entry is a few hundred bytes; anything bigger is not ours.
const CAP: u64 = 16 * 1024;
/// Entries older than this (seconds) are dropped unserved.
const STALE: u64 = 60;
const MODE: u32 = 0o600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Entry {
    version: u32,
    seqnum: u64,
    /// Seconds since the epoch.
    queued_at: u64,
    event: UdevEvent,
}

/// A queued event: its udev sequence number and its file's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Queued {
    pub(crate) seqnum: u64,
    name: String,
}

fn name(seqnum: u64) -> String {
    // Zero-padded: names sort as the kernel's sequence numbers do. The pid
    // keeps two events with one number (replayed by hand) apart.
    format!("{PREFIX}{seqnum:020}-{}", std::process::id())
}

fn parse(name: &str) -> Option<Queued> {
    let (seq, pid) = name.strip_prefix(PREFIX)?.split_once('-')?;
    let ok = seq.len() == 20 && seq.bytes().chain(pid.bytes()).all(|b| b.is_ascii_digit()) && !pid.is_empty();
    Some(Queued { seqnum: seq.parse().ok().filter(|_| ok)?, name: name.to_string() })
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Queue `event` (udev's `SEQNUM` `seqnum`) for the lock's holder.
pub(crate) fn push(dir: &Dir, seqnum: u64, event: &UdevEvent) -> std::io::Result<()> {
    let e = Entry { version: 1, seqnum, queued_at: now(), event: event.clone() };
    let json = serde_json::to_vec(&e).map_err(std::io::Error::other)?;
    dir.write_atomic(&name(seqnum), &json, MODE)
}

/// The queued events, oldest first. A name this version would not write
/// is not listed (nor touched).
pub(crate) fn list(dir: &Dir) -> Vec<Queued> {
    let mut seqs: Vec<Queued> = match dir.names_with_prefix(PREFIX) {
        Ok(names) => names.iter().filter_map(|n| parse(n)).collect(),
        Err(e) => {
            log::warn!("cannot list queued events in {}: {e}", dir.path().display());
            Vec::new()
        }
    };
    seqs.sort_unstable();
    seqs
}

/// The event queued as `q`; None (logged) when it is unreadable,
/// malformed or stale: such an entry is removed, never served.
pub(crate) fn read(dir: &Dir, q: &Queued) -> Option<UdevEvent> {
    let (n, seqnum) = (&q.name, q.seqnum);
    let parsed = match dir.read(n, CAP) {
        Ok(bytes) => serde_json::from_slice::<Entry>(&bytes).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let why = match parsed {
        Ok(e) if e.version == 1 && e.seqnum == seqnum && now().saturating_sub(e.queued_at) <= STALE => {
            return Some(e.event)
        }
        Ok(e) if e.version != 1 || e.seqnum != seqnum => "not an entry this version wrote".to_string(),
        Ok(e) => format!("queued {} s ago; sync has reconciled its device since", now().saturating_sub(e.queued_at)),
        Err(e) => e,
    };
    log::info!("dropping queued event {}: {why}", dir.shown(n));
    done(dir, q);
    None
}

/// Remove entry `q` (served, or dropped).
pub(crate) fn done(dir: &Dir, q: &Queued) {
    if let Err(e) = dir.remove(&q.name) {
        log::warn!("cannot remove queued event {}: {e}", dir.shown(&q.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Action;

    fn ev(addr: u16) -> UdevEvent {
        UdevEvent {
            action: Action::Add,
            bus: 3,
            addr,
            devpath: format!("/devices/pci0000:00/usb3/3-{addr}"),
            vendor: Some(0x1209),
            product: Some(0x5000),
            serial: None,
            class: None,
        }
    }

    fn dir(tag: &str) -> (std::path::PathBuf, Dir) {
        let p = std::env::temp_dir().join(format!("aua-queue-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let d = Dir::create(&p).unwrap();
        (p, d)
    }

    fn seqs(d: &Dir) -> Vec<u64> {
        list(d).iter().map(|q| q.seqnum).collect()
    }

    #[test]
    fn entries_round_trip_oldest_first_with_mode_0600() {
        let (p, d) = dir("rt");
        push(&d, 1000, &ev(7)).unwrap();
        push(&d, 999, &ev(6)).unwrap();
        push(&d, 10000, &ev(8)).unwrap();
        assert_eq!(seqs(&d), vec![999, 1000, 10000]);
        let q = &list(&d)[1];
        assert_eq!(read(&d, q), Some(ev(7)));
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(p.join(&q.name)).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o600);
        done(&d, q);
        done(&d, q);
        assert_eq!(seqs(&d), vec![999, 10000]);
        std::fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn malformed_stale_and_foreign_entries_are_dropped_not_served() {
        let (p, d) = dir("bad");
        std::fs::write(p.join(name(1)), b"{not json").unwrap();
        let stale = Entry { version: 1, seqnum: 2, queued_at: now() - STALE - 5, event: ev(2) };
        std::fs::write(p.join(name(2)), serde_json::to_vec(&stale).unwrap()).unwrap();
        let other = Entry { version: 1, seqnum: 4, queued_at: now(), event: ev(3) };
        std::fs::write(p.join(name(3)), serde_json::to_vec(&other).unwrap()).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join(name(5))).unwrap();
        for odd in ["queued-x", "queued-00000000000000000007", "queued-7-1"] {
            std::fs::write(p.join(odd), b"").unwrap();
        }
        assert_eq!(seqs(&d), vec![1, 2, 3, 5]);
        for q in list(&d) {
            assert_eq!(read(&d, &q), None, "entry {q:?}");
        }
        assert_eq!(seqs(&d), Vec::<u64>::new());
        assert!(p.join("queued-x").exists(), "a name this version never writes is left alone");
        assert!(std::fs::symlink_metadata("/etc/passwd").is_ok());
        std::fs::remove_dir_all(&p).unwrap();
    }
}
