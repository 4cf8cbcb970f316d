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
