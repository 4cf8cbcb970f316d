//! Small helpers shared by the fakes: ids, clocks, pagination maths.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use rand::Rng;

/// A random UUID v4 in its canonical text form.
pub(crate) fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Moscow time (UTC+3, no DST since 2014).
pub(crate) fn msk() -> FixedOffset {
    FixedOffset::east_opt(3 * 3600).unwrap_or_else(|| Utc.fix())
}

use chrono::Offset;

/// `now` in Moscow time, shifted by `offset` (the fake's test clock).
pub(crate) fn now_msk(offset: chrono::Duration) -> DateTime<FixedOffset> {
    (Utc::now() + offset).with_timezone(&msk())
}

/// Parses `YYYY-MM-DD HH:MM:SS[.mmm]` or `YYYY-MM-DD HH:MM`.
pub(crate) fn parse_naive(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M"))
        .ok()
}

/// A fake vendor's strict rate limit: at most `per_second` requests in a
/// fixed one-second window; `None` = unlimited. Counts what it refused.
#[derive(Debug, Default)]
pub(crate) struct PerSecondLimit {
    per_second: Option<u32>,
    window_start: Option<std::time::Instant>,
    window_count: u32,
    refused: usize,
}

impl PerSecondLimit {
    /// Sets (or with `None` lifts) the limit and starts a new window.
    pub(crate) fn set(&mut self, per_second: Option<u32>) {
        self.per_second = per_second;
        self.window_start = None;
        self.window_count = 0;
    }

    /// Counts one request; `false` when it is over the limit (refused).
    pub(crate) fn admit(&mut self) -> bool {
        let Some(limit) = self.per_second else {
            return true;
        };
        let now = std::time::Instant::now();
        match self.window_start {
            Some(start) if now.duration_since(start) < std::time::Duration::from_secs(1) => {}
            _ => {
                self.window_start = Some(now);
                self.window_count = 0;
            }
        }
        self.window_count += 1;
        if self.window_count > limit {
            self.refused += 1;
            return false;
        }
        true
    }

    /// How many requests were refused.
    pub(crate) fn refused(&self) -> usize {
        self.refused
    }
}
