//! Wall-clock helpers for the protocol's `*_unix_ms` fields.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds on this process's monotonic clock: counted from the first
/// call (plus one, so it is never 0), unaffected by wall-clock steps. Every
/// duration a server measures (liveness, graces, expiries, maintenance
/// windows) uses it; the wall clock only labels events for humans.
pub fn monotonic_ms() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// Converts an instant of [`monotonic_ms`] to wall-clock Unix ms, as of now.
pub fn monotonic_to_unix_ms(mono_ms: u64) -> u64 {
    let now_mono = monotonic_ms();
    let now_wall = now_unix_ms();
    if mono_ms <= now_mono {
        now_wall.saturating_sub(now_mono - mono_ms)
    } else {
        now_wall.saturating_add(mono_ms - now_mono)
    }
}

/// Converts a wall-clock Unix ms deadline to [`monotonic_ms`], as of now
/// (a durable deadline read back after a restart).
pub fn unix_to_monotonic_ms(unix_ms: u64) -> u64 {
    let now_mono = monotonic_ms();
    let now_wall = now_unix_ms();
    if unix_ms >= now_wall {
        now_mono.saturating_add(unix_ms - now_wall)
    } else {
        now_mono.saturating_sub(now_wall - unix_ms).max(1)
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Parses durations like `3s`, `500ms`, `2m`, `1h` (a bare number is seconds),
/// for flags such as `--heartbeat-interval 3s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 3s, 500ms, 2m"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {s:?} (ms, s, m, h)"
            ));
        }
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 days").is_err());
    }
}
