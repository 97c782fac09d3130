//! The invocation's time budget. udev blocks a device's later events while a
//! RUN program runs and kills it at its event timeout, so every wait (lock,
//! connect, each QMP read) draws from one deadline fixed at start-up.

use crate::error::{Error, Result};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    start: Instant,
    end: Instant,
    budget: Duration,
}

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Deadline::starting_at(Instant::now(), budget)
    }

    /// A budget that began at `start` (the process start: config and log
    /// I/O before the config is known count too).
    pub fn starting_at(start: Instant, budget: Duration) -> Self {
        Deadline { start, end: start + budget, budget }
    }

    /// Time left, or an error naming what we were waiting for.
    pub fn remaining(&self, what: &str) -> Result<Duration> {
        let now = Instant::now();
        if now >= self.end {
            return Err(Error::of(
                crate::error::ErrorKind::Timeout,
                format!("timed out {what} ({:.1} s budget used up)", self.budget.as_secs_f64()),
            ));
        }
        Ok(self.end - now)
    }

    /// The smaller of `cap` and what is left (never zero, which sockets treat as "no timeout").
    pub fn capped(&self, what: &str, cap: Duration) -> Result<Duration> {
        Ok(self.remaining(what)?.min(cap).max(Duration::from_millis(1)))
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}
