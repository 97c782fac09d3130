//! Logging for a program nobody watches: udev discards a RUN program's
//! stderr, so every line also goes to syslog (`/dev/log`, which journald
//! serves) and, if configured, to `log-file`. Run by hand, stderr shows it.

use crate::root::Root;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

struct Logger {
    level: log::LevelFilter,
    syslog: Option<UnixDatagram>,
    file: Mutex<Option<std::fs::File>>,
}

static LOGGER: std::sync::OnceLock<Logger> = std::sync::OnceLock::new();

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
        eprintln!("{level}: {msg}");
        let pid = std::process::id();
        if let Some(s) = &self.syslog {
            // facility daemon (3); severities per RFC 5424
            let sev = match r.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                _ => 7,
            };
            let _ = s.send(format!("<{}>auto-usb-attach[{pid}]: {msg}", 3 * 8 + sev).as_bytes());
        }
        if let Ok(mut f) = self.file.lock() {
            if let Some(f) = f.as_mut() {
                let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                let _ = writeln!(f, "{}.{:03} [{pid}] {level}: {msg}", t.as_secs(), t.subsec_millis());
            }
        }
    }

    fn flush(&self) {}
}

pub fn init(root: &Root, verbosity: u8) {
    let level = match verbosity {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let syslog = UnixDatagram::unbound().ok().filter(|s| s.connect(root.path("/dev/log")).is_ok());
    let logger = LOGGER.get_or_init(|| Logger { level, syslog, file: Mutex::new(None) });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

/// Once the config is known: also append to its `log-file`.
pub fn add_file(path: PathBuf) {
    if let Some(l) = LOGGER.get() {
        match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => *l.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(f),
            Err(e) => log::warn!("cannot open log file {}: {e}", path.display()),
        }
    }
}
