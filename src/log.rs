//! Logging for a program nobody watches, where each line must land exactly once.
//!
//! The tool runs from udev (stderr discarded), from a systemd unit (stderr *is*
//! the journal) and by hand (stderr is a terminal). Writing everywhere at once
//! duplicated every journal line, so one sink is chosen per run ([`choose`]):
//!
//! * journald's native socket (`/run/systemd/journal/socket`) when it is there,
//!   with structured fields (below) besides `MESSAGE`;
//! * else syslog (`/dev/log`);
//! * stderr as well only when stderr is a terminal, or when neither socket is
//!   there. Errors also go to stderr when stderr is not the journal stream, so
//!   a script running the tool still gets its one `error: ...` line.
//!
//! `JOURNAL_STREAM` (set by systemd to stderr's `dev:ino`) tells that stderr is
//! already connected to the journal: then stderr is never written while the
//! native socket works, and is the journal fallback if it does not.
//!
//! `log-file` (config) gets every line too, prefixed with ISO-8601 local time
//! (the zone from `TZ` or `/etc/localtime`, read with tz-rs).
//! It is opened `O_APPEND|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC`, created mode 0640,
//! and refused unless it is a regular file (a symlink or FIFO planted there
//! must not redirect or block a root process).
//!
//! # Structured fields
//! Call sites pass fields with `log`'s key-value syntax; the journal gets each
//! as an upper-cased field, the text sinks ignore them (the message already
//! says it in words). Use the names in [`field`]:
//! ```ignore
//! log::info!(vm = vm.name.as_str(), usb_port = dev.port_path.as_str(),
//!            usb_device:% = dev.id_string(), qemu_id = id.as_str();
//!            "attached {id} to VM {}", vm.name);
//! ```
//! For a stretch of code working on one VM or device, [`scope`] sets fields for
//! every line logged on this thread until the guard drops (a record's own
//! fields win over the scope's):
//! ```ignore
//! let _f = crate::log::scope(&[(crate::log::field::VM, vm.name.clone())]);
//! ```

use crate::root::Root;
use nix::fcntl::OFlag;
use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Field names for call sites (journal field = the name upper-cased). Every
/// outcome's line (`apply::announce`) carries `MESSAGE_ID` and the device's
/// fields (`outcome::Outcome::journal_fields` uses these very names).
#[allow(dead_code)]
pub mod field {
    /// The outcome kind's fixed id (`outcome::Event::message_id`). Journal: `MESSAGE_ID=`.
    pub const MESSAGE_ID: &str = "message_id";
    /// The configured VM's name. Journal: `VM=`.
    pub const VM: &str = "vm";
    /// The device's port path (sysfs name), e.g. `1-4.2`. Journal: `USB_PORT=`.
    pub const USB_PORT: &str = "usb_port";
    /// `vendor:product` in hex, e.g. `046d:c52b`. Journal: `USB_DEVICE=`.
    pub const USB_DEVICE: &str = "usb_device";
    /// The device's serial, when it has one. Journal: `USB_SERIAL=`.
    pub const USB_SERIAL: &str = "usb_serial";
    /// The QEMU device id, e.g. `xenusb-3-7`. Journal: `QEMU_ID=`.
    pub const QEMU_ID: &str = "qemu_id";
}

pub const IDENT: &str = "auto-usb-attach";
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";
const SYSLOG_SOCKET: &str = "/dev/log";

/// Where lines go this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sinks {
    pub journal: bool,
    pub syslog: bool,
    /// Every line to stderr.
    pub stderr: bool,
    /// Error lines to stderr (a superset of `stderr`).
    pub stderr_errors: bool,
}

/// The sink policy, pure so it can be tested: `journal`/`syslog` say which
/// sockets accepted a connection.
pub fn choose(journal: bool, syslog: bool, stderr_tty: bool, stderr_is_journal: bool) -> Sinks {
    let syslog = syslog && !journal;
    let socket = journal || syslog;
    let stderr = if stderr_is_journal { !socket } else { stderr_tty || !socket };
    Sinks { journal, syslog, stderr, stderr_errors: stderr || !stderr_is_journal }
}

struct Logger {
    level: log::LevelFilter,
    sinks: Sinks,
    socket: Option<UnixDatagram>,
    file: Mutex<Option<std::fs::File>>,
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

thread_local! {
    static SCOPE: RefCell<Vec<(&'static str, String)>> = const { RefCell::new(Vec::new()) };
}

/// Fields added to every line logged on this thread while the guard lives.
#[allow(dead_code)] // for the command code (see the module doc)
pub fn scope(fields: &[(&'static str, String)]) -> ScopeGuard {
    let n = SCOPE.with(|s| {
        let mut s = s.borrow_mut();
        let n = s.len();
        s.extend(fields.iter().cloned());
        n
    });
    ScopeGuard(n)
}

/// Drops the fields its [`scope`] call added.
#[allow(dead_code)]
pub struct ScopeGuard(usize);

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        SCOPE.with(|s| s.borrow_mut().truncate(self.0));
    }
}

/// Collects a record's key-values as strings.
struct Kv(Vec<(String, String)>);

impl<'k> log::kv::VisitSource<'k> for Kv {
    fn visit_pair(&mut self, k: log::kv::Key<'k>, v: log::kv::Value<'k>) -> Result<(), log::kv::Error> {
        self.0.push((k.as_str().to_string(), v.to_string()));
        Ok(())
    }
}

/// The record's fields, then the scope's ones it does not override.
fn fields_of(r: &log::Record<'_>) -> Vec<(String, String)> {
    let mut kv = Kv(Vec::new());
    let _ = r.key_values().visit(&mut kv);
    SCOPE.with(|s| {
        for (k, v) in s.borrow().iter() {
            if !kv.0.iter().any(|(k2, _)| k2 == k) {
                kv.0.push((k.to_string(), v.clone()));
            }
        }
    });
    kv.0
}

/// syslog/journal priority (RFC 5424 severity).
fn severity(l: log::Level) -> u8 {
    match l {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        _ => 7,
    }
}

/// A journal field name from a key: `[A-Z0-9_]`, not starting with `_`
/// (reserved for trusted fields) or a digit, at most 64 bytes.
fn journal_key(k: &str) -> String {
    let mut s: String =
        k.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    while s.starts_with(|c: char| c == '_' || c.is_ascii_digit()) {
        s.remove(0);
    }
    s.truncate(64);
    s
}

fn put_field(buf: &mut Vec<u8>, key: &str, value: &str) {
    if value.contains('\n') {
        // Binary form: KEY\n, little-endian u64 length, value, \n.
        buf.extend_from_slice(key.as_bytes());
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
    } else {
        buf.extend_from_slice(key.as_bytes());
        buf.push(b'=');
        buf.extend_from_slice(value.as_bytes());
    }
    buf.push(b'\n');
}

/// One datagram in journald's native protocol.
pub fn journal_payload(
    level: log::Level,
    msg: &str,
    fields: &[(String, String)],
    code: Option<(&str, u32)>,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(128 + msg.len());
    put_field(&mut b, "MESSAGE", msg);
    put_field(&mut b, "PRIORITY", &severity(level).to_string());
    put_field(&mut b, "SYSLOG_IDENTIFIER", IDENT);
    put_field(&mut b, "SYSLOG_FACILITY", "3");
    if let Some((file, line)) = code {
        put_field(&mut b, "CODE_FILE", file);
        put_field(&mut b, "CODE_LINE", &line.to_string());
    }
    for (k, v) in fields {
        let k = journal_key(k);
        if !k.is_empty() {
            put_field(&mut b, &k, v);
        }
    }
    b
}

/// The local zone from `TZ` or `/etc/localtime`, read once (tz-rs: no unsafe, no
/// libc `localtime_r` with its global state); `None` (UTC) when it cannot be read.
fn local_zone() -> Option<&'static tz::TimeZone> {
    static ZONE: std::sync::OnceLock<Option<tz::TimeZone>> = std::sync::OnceLock::new();
    ZONE.get_or_init(|| tz::TimeZone::local().ok()).as_ref()
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// ISO-8601 time in `zone` (UTC without one) with milliseconds and the UTC
/// offset, e.g. `2026-11-25T21:04:05.123+01:00`.
pub fn iso8601(t: std::time::SystemTime, zone: Option<&tz::TimeZone>) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
    let off = zone.and_then(|z| z.find_local_time_type(secs).ok()).map_or(0, |l| i64::from(l.ut_offset()));
    let local = secs + off;
    let (y, mo, da) = civil_from_days(local.div_euclid(86_400));
    let sod = local.rem_euclid(86_400);
    let (sign, aoff) = if off < 0 { ('-', -off) } else { ('+', off) };
    format!(
        "{y:04}-{mo:02}-{da:02}T{:02}:{:02}:{:02}.{:03}{sign}{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        d.subsec_millis(),
        aoff / 3600,
        aoff / 60 % 60
    )
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = r.level().as_str().to_lowercase();
        let msg = r.args().to_string().replace('\n', " ");
        let pid = std::process::id();
        let mut sent = false;
        if let Some(s) = &self.socket {
            let data = if self.sinks.journal {
                let code = r.file().zip(r.line());
                journal_payload(r.level(), &msg, &fields_of(r), code)
            } else {
                // facility daemon (3)
                format!("<{}>{IDENT}[{pid}]: {msg}", 3 * 8 + severity(r.level())).into_bytes()
            };
            sent = s.send(&data).is_ok();
        }
        let to_stderr = self.sinks.stderr || (r.level() == log::Level::Error && self.sinks.stderr_errors);
        // A socket that stopped accepting (journald restarting) must not lose the line.
        if to_stderr || !sent && self.socket.is_some() {
            // One write per line: stderr is unbuffered, and under udev a pipe.
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), format!("{level}: {msg}\n").as_bytes());
        }
        if let Ok(mut f) = self.file.lock() {
            if let Some(f) = f.as_mut() {
                let line = format!("{} [{pid}] {level}: {msg}\n", iso8601(std::time::SystemTime::now(), local_zone()));
                let _ = f.write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// True when systemd says stderr is its journal stream (`JOURNAL_STREAM=dev:ino`
/// naming the file stderr is).
fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else { return false };
    let Ok(st) = nix::sys::stat::fstat(2) else { return false };
    #[allow(clippy::unnecessary_cast)] // dev_t and ino_t are narrower on some targets
    let (dev, ino) = (st.st_dev as u64, st.st_ino as u64);
    stream_matches(&v, dev, ino)
}

fn stream_matches(env: &str, dev: u64, ino: u64) -> bool {
    match env.split_once(':') {
        Some((d, i)) => d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino),
        None => false,
    }
}

fn connect(p: &Path) -> Option<UnixDatagram> {
    let s = UnixDatagram::unbound().ok()?;
    s.connect(p).ok()?;
    Some(s)
}

pub fn init(root: &Root, verbosity: u8) {
    let level = match verbosity {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let journal = connect(&root.path(JOURNAL_SOCKET));
    let syslog = if journal.is_none() { connect(&root.path(SYSLOG_SOCKET)) } else { None };
    let sinks = choose(journal.is_some(), syslog.is_some(), std::io::stderr().is_terminal(), stderr_is_journal());
    let socket = journal.or(syslog);
    let logger = LOGGER.get_or_init(|| Logger { level, sinks, socket, file: Mutex::new(None) });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Opens `path` for appending log lines: never through a symlink, never
/// blocking on a FIFO, created 0640, and only a regular file.
pub fn open_log_file(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).bits())
        .open(path)?;
    if !f.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// Once the config is known: also append to its `log-file`. A non-root user
/// (`list`, `check` by hand) usually cannot open it: that is said at debug,
/// not warned about on every run.
pub fn add_file(path: PathBuf) {
    if let Some(l) = LOGGER.get() {
        match open_log_file(&path) {
            Ok(f) => *l.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && !nix::unistd::geteuid().is_root() => {
                log::debug!("not writing log file {}: {e}", path.display())
            }
            Err(e) => log::warn!("cannot open log file {}: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_policy() {
        // Run from a unit: stderr is the journal stream -> native journal only.
        assert_eq!(
            choose(true, false, false, true),
            Sinks { journal: true, syslog: false, stderr: false, stderr_errors: false }
        );
        // Unit, but the native socket is missing: stderr (the journal) once.
        assert!(choose(false, false, false, true).stderr);
        assert!(!choose(false, true, false, true).stderr, "syslog reaches the journal already");
        // From udev (stderr a pipe, not a tty): journal, errors also on stderr.
        let s = choose(true, true, false, false);
        assert!(s.journal && !s.syslog && !s.stderr && s.stderr_errors);
        // Syslog only.
        let s = choose(false, true, false, false);
        assert!(!s.journal && s.syslog && !s.stderr);
        // By hand on a terminal: journal and stderr.
        let s = choose(true, false, true, false);
        assert!(s.journal && s.stderr);
        // No socket at all (a test root, a container): stderr.
        let s = choose(false, false, false, false);
        assert!(s.stderr && s.stderr_errors);
    }

    #[test]
    fn journal_stream_env() {
        assert!(stream_matches("8:1234", 8, 1234));
        assert!(!stream_matches("8:1234", 8, 1235));
        assert!(!stream_matches("9:1234", 8, 1234));
        assert!(!stream_matches("garbage", 8, 1234));
        assert!(!stream_matches("", 0, 0));
    }

    #[test]
    fn journal_datagram_fields() {
        let f = vec![
            (field::VM.to_string(), "win10".to_string()),
            (field::USB_PORT.to_string(), "1-4.2".to_string()),
            (field::USB_DEVICE.to_string(), "046d:c52b".to_string()),
            (field::QEMU_ID.to_string(), "xenusb-3-7".to_string()),
            ("_pid".to_string(), "1".to_string()),
        ];
        let b = journal_payload(log::Level::Warn, "attached it", &f, Some(("src/app.rs", 12)));
        let s = String::from_utf8(b).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines,
            [
                "MESSAGE=attached it",
                "PRIORITY=4",
                "SYSLOG_IDENTIFIER=auto-usb-attach",
                "SYSLOG_FACILITY=3",
                "CODE_FILE=src/app.rs",
                "CODE_LINE=12",
                "VM=win10",
                "USB_PORT=1-4.2",
                "USB_DEVICE=046d:c52b",
                "QEMU_ID=xenusb-3-7",
                // a caller cannot forge a trusted (underscore) field
                "PID=1",
            ]
        );
    }

    #[test]
    fn journal_binary_field_for_newlines() {
        let b = journal_payload(log::Level::Info, "x", &[("k".into(), "a\nb".into())], None);
        let tail = b"K\n\x03\0\0\0\0\0\0\0a\nb\n";
        assert!(b.ends_with(tail), "{:?}", String::from_utf8_lossy(&b));
        assert_eq!(journal_key("9-weird key!"), "WEIRD_KEY_");
    }

    #[test]
    fn kv_and_scope_fields() {
        let _g = scope(&[(field::VM, "win10".into()), (field::QEMU_ID, "old".into())]);
        let kvs: &[(&str, &str)] = &[("qemu_id", "xenusb-1-2")];
        let args = format_args!("m");
        let r = log::Record::builder().args(args).key_values(&kvs).build();
        let f = fields_of(&r);
        assert_eq!(f, [("qemu_id".to_string(), "xenusb-1-2".to_string()), ("vm".to_string(), "win10".to_string())]);
        drop(_g);
        let r = log::Record::builder().args(format_args!("m")).build();
        assert!(fields_of(&r).is_empty(), "scope fields outlived their guard");
        // The call-site syntax the module doc shows compiles (no logger set here: a no-op).
        let id = String::from("xenusb-1-2");
        log::info!(vm = "win10", usb_port = "1-4.2", usb_device:% = format_args!("{:04x}:{:04x}", 0x46d, 0xc52b), qemu_id = id.as_str(); "attached {id}");
    }

    #[test]
    fn iso_time_in_zones() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_104_645_123);
        assert_eq!(iso8601(t, None), "2025-11-25T21:04:05.123+00:00");
        let east = tz::TimeZone::from_posix_tz("XYZ-5:30").unwrap();
        assert_eq!(iso8601(t, Some(&east)), "2025-11-26T02:34:05.123+05:30");
        let west = tz::TimeZone::from_posix_tz("ABC3").unwrap();
        assert_eq!(iso8601(t, Some(&west)), "2025-11-25T18:04:05.123-03:00");
        // Summer time: the offset follows the instant, not the process start.
        let cet = tz::TimeZone::from_posix_tz("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        assert_eq!(iso8601(t, Some(&cet)), "2025-11-25T22:04:05.123+01:00");
        let july = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_751_328_000);
        assert_eq!(iso8601(july, Some(&cet)), "2025-07-01T02:00:00.000+02:00");
        // Day, month, year and leap-day boundaries.
        assert_eq!(iso8601(std::time::UNIX_EPOCH, None), "1970-01-01T00:00:00.000+00:00");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_164_799);
        assert_eq!(iso8601(leap, None), "2024-02-28T23:59:59.000+00:00");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_164_800 + 86_399);
        assert_eq!(iso8601(leap, None), "2024-02-29T23:59:59.000+00:00");
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }

    #[test]
    fn log_file_hardening() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("aua-logtest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("tool.log");
        let mut f = open_log_file(&p).unwrap();
        writeln!(f, "one").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o640 & !umask_now());
        // Appends, never truncates.
        let mut f = open_log_file(&p).unwrap();
        writeln!(f, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\ntwo\n");
        // A symlink planted at the path is not followed.
        let target = d.join("target");
        std::fs::write(&target, "").unwrap();
        let link = d.join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_log_file(&link).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "");
        // A FIFO (no reader) or a directory is refused without blocking.
        let fifo = d.join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(open_log_file(&fifo).is_err());
        assert!(open_log_file(&d).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The process umask, read without changing it (other tests create files concurrently).
    fn umask_now() -> u32 {
        let st = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = st.lines().find_map(|l| l.strip_prefix("Umask:")).unwrap();
        u32::from_str_radix(l.trim(), 8).unwrap()
    }
}
