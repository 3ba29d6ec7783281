//! Parsers for what operators type: sizes (`64G`), points in time (`10m` ago or RFC 3339), settings
//! (`deadline.commissioning=30m`), durations (`30m`, `1h30m`), and the random request ids that make
//! allocation retries safe.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses `90`, `90s`, `30m`, `1h`, `2d` or `1h30m` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut saw_unit = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("'{s}': unknown unit '{c}' (use s, m, h or d)")),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("'{s}': expected a number before '{c}'"))?;
        total = total.saturating_add(n.saturating_mul(unit));
        num.clear();
        saw_unit = true;
    }
    if !num.is_empty() {
        if saw_unit {
            return Err(format!("'{s}': missing unit after {num}"));
        }
        total = num
            .parse()
            .map_err(|_| format!("'{s}' is not a duration"))?;
    }
    Ok(Duration::from_secs(total))
}

/// Parses a memory size into MiB: a bare number is MiB (`65536`); a suffix `M`/`MiB`, `G`/`GiB` or
/// `T`/`TiB` (also `MB`, `GB`, `TB`; any case; binary units, as MAAS uses) scales it. Decimals are
/// allowed with a suffix and round up (`1.5G` = 1536).
pub fn parse_memory_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => {
            return Err(format!(
                "'{s}': unknown unit '{unit}' (a number of MiB, or a size like 512M, 64G, 1T)"
            ))
        }
    };
    if num.is_empty() {
        return Err(format!(
            "'{s}': expected a size like 65536 (MiB), 64G or 1T"
        ));
    }
    let value = if let Some((int, frac)) = num.split_once('.') {
        if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
            return Err(format!("'{s}' is not a number"));
        }
        let v: f64 = num.parse().map_err(|_| format!("'{s}' is not a number"))?;
        (v * scale as f64).ceil() as u64
    } else {
        num.parse::<u64>()
            .map_err(|_| format!("'{s}' is not a number"))?
            .checked_mul(scale)
            .ok_or_else(|| format!("'{s}' is too large"))?
    };
    Ok(value)
}

/// Seconds and nanoseconds since the Unix epoch of an RFC 3339 time: `2024-05-01T12:00:00Z`,
/// `2024-05-01T12:00:00.5+02:00`, `2024-05-01 12:00:00Z` or a date alone (`2024-05-01`, midnight UTC).
pub fn parse_rfc3339(s: &str) -> Result<(i64, i32), String> {
    let bad = || {
        format!(
            "'{s}' is not a time: use RFC 3339 (2024-05-01T12:00:00Z) or a duration ago (10m, 2h)"
        )
    };
    let t = s.trim();
    let num = |a: usize, b: usize| -> Result<i64, String> {
        let part = t.get(a..b).ok_or_else(bad)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let sep = |i: usize, allowed: &[u8]| -> Result<(), String> {
        match t.as_bytes().get(i) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err(bad()),
        }
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    sep(4, b"-")?;
    sep(7, b"-")?;
    // The calendar (month lengths, leap years) is the `time` crate's.
    let month = u8::try_from(mo)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or_else(bad)?;
    let date = i32::try_from(y)
        .ok()
        .zip(u8::try_from(d).ok())
        .and_then(|(y, d)| time::Date::from_calendar_date(y, month, d).ok())
        .ok_or_else(bad)?;
    let midnight = date.midnight().assume_utc().unix_timestamp();
    if t.len() == 10 {
        return Ok((midnight, 0));
    }
    sep(10, b"Tt ")?;
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    sep(13, b":")?;
    sep(16, b":")?;
    if h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    let mut rest = &t[19..];
    let mut nanos: i32 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        let mut padded: String = frac[..digits.min(9)].to_string();
        while padded.len() < 9 {
            padded.push('0');
        }
        nanos = padded.parse().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let b = rest.as_bytes();
            if b[3] != b':' {
                return Err(bad());
            }
            let oh: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let om: i64 = rest[4..6].parse().map_err(|_| bad())?;
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return Err(bad()),
    };
    let secs = midnight + h * 3600 + mi * 60 + sec - offset;
    Ok((secs, nanos))
}

/// A point in time relative to `now`: a duration means that long ago (`10m`, `1h30m`, `90`); `now`
/// means now; anything else must be RFC 3339 (see [`parse_rfc3339`]).
pub fn parse_time_at(s: &str, now: SystemTime) -> Result<prost_types::Timestamp, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(prost_types::Timestamp::from(now));
    }
    let looks_like_date = t.len() >= 10 && t.as_bytes().get(4) == Some(&b'-');
    if !looks_like_date {
        let ago = parse_duration(t).map_err(|e| {
            format!("{e}; use a duration ago (10m, 2h) or an RFC 3339 time (2024-05-01T12:00:00Z)")
        })?;
        let at = now.checked_sub(ago).unwrap_or(UNIX_EPOCH);
        return Ok(prost_types::Timestamp::from(at));
    }
    let (seconds, nanos) = parse_rfc3339(t)?;
    Ok(prost_types::Timestamp { seconds, nanos })
}

/// [`parse_time_at`] relative to the clock (clap value parser).
pub fn parse_time(s: &str) -> Result<prost_types::Timestamp, String> {
    parse_time_at(s, SystemTime::now())
}

/// A cluster setting assignment: `deadline.<status>=<duration>` (the `deadline.` prefix may be left out).
/// The value is seconds or a duration (`1800`, `30m`, `2h`), or `default` to restore the default.
/// Returns the kebab-case status name and the seconds (0 for `default`).
pub fn parse_setting(s: &str) -> Result<(String, u64), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!(
            "'{s}': expected KEY=VALUE, e.g. deadline.commissioning=30m"
        ));
    };
    let key = key.trim();
    let name = key.strip_prefix("deadline.").unwrap_or(key);
    let status = ingot_common::MachineStatus::parse(name)
        .filter(|st| ingot_common::lifecycle::in_progress(*st));
    let Some(status) = status else {
        let keys: Vec<String> = ingot_common::MachineStatus::ALL
            .iter()
            .filter(|st| ingot_common::lifecycle::in_progress(**st))
            .map(|st| format!("deadline.{}", st.as_str()))
            .collect();
        return Err(format!(
            "'{key}' is not a setting (one of: {})",
            keys.join(", ")
        ));
    };
    let value = value.trim();
    let secs = if value.eq_ignore_ascii_case("default") {
        0
    } else {
        let d = parse_duration(value).map_err(|e| format!("{key}: {e}"))?;
        if d.is_zero() {
            return Err(format!(
                "{key}: a deadline must be at least 1s (use 'default' to restore the default)"
            ));
        }
        d.as_secs()
    };
    Ok((status.as_str().to_string(), secs))
}

/// A fresh random request id in the UUID v4 layout (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`).
pub fn request_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    ingot_common::secret::uuid_v4_text(b)
}

/// A TTL for a token: a duration, at least one second, or `never` (0).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    if s.trim().eq_ignore_ascii_case("never") {
        return Ok(Duration::ZERO);
    }
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("a TTL must be at least 1s (or 'never')".into());
    }
    Ok(d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3600").unwrap().as_secs(), 3600);
        assert_eq!(parse_duration("3600s").unwrap().as_secs(), 3600);
        assert_eq!(parse_duration("30m").unwrap().as_secs(), 1800);
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("1h30").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_mib("65536").unwrap(), 65536);
        assert_eq!(parse_memory_mib("64G").unwrap(), 65536);
        assert_eq!(parse_memory_mib("64GiB").unwrap(), 65536);
        assert_eq!(parse_memory_mib("64 gb").unwrap(), 65536);
        assert_eq!(parse_memory_mib("512M").unwrap(), 512);
        assert_eq!(parse_memory_mib("1T").unwrap(), 1_048_576);
        assert_eq!(parse_memory_mib("1.5G").unwrap(), 1536);
        assert!(parse_memory_mib("").is_err());
        assert!(parse_memory_mib("G").is_err());
        assert!(parse_memory_mib("64X").is_err());
        assert!(parse_memory_mib("1.2.3G").is_err());
        assert!(parse_memory_mib("-1").is_err());
        assert!(parse_memory_mib("99999999999999999999T").is_err());
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), (0, 0));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20Z").unwrap(),
            (1_700_000_000, 0)
        );
        assert_eq!(
            parse_rfc3339("2023-11-15T00:13:20+02:00").unwrap(),
            (1_700_000_000, 0)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14 22:13:20.25Z").unwrap(),
            (1_700_000_000, 250_000_000)
        );
        assert_eq!(parse_rfc3339("2000-02-29").unwrap(), (951_782_400, 0));
        for bad in [
            "2023-13-01T00:00:00Z",
            "2023-02-29",
            "2023-11-14T22:13:20",
            "2023-11-14T25:00:00Z",
            "2023-11-14T22:13:20+0200",
            "yesterday",
            "2023-11-14T22:13:20.Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_times() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_time_at("10m", now).unwrap().seconds,
            1_700_000_000 - 600
        );
        assert_eq!(parse_time_at("now", now).unwrap().seconds, 1_700_000_000);
        assert_eq!(
            parse_time_at("90", now).unwrap().seconds,
            1_700_000_000 - 90
        );
        assert_eq!(
            parse_time_at("2023-11-14T22:13:20Z", now).unwrap().seconds,
            1_700_000_000
        );
        assert!(parse_time_at("10x", now).is_err());
    }

    #[test]
    fn settings() {
        assert_eq!(
            parse_setting("deadline.commissioning=30m").unwrap(),
            ("commissioning".into(), 1800)
        );
        assert_eq!(
            parse_setting("disk-erasing=7200").unwrap(),
            ("disk-erasing".into(), 7200)
        );
        assert_eq!(
            parse_setting("deadline.deploying=default").unwrap(),
            ("deploying".into(), 0)
        );
        assert!(parse_setting("deadline.ready=30m").is_err());
        assert!(parse_setting("deadline.commissioning").is_err());
        assert!(parse_setting("deadline.commissioning=0").is_err());
        assert!(parse_setting("deadline.commissioning=soon").is_err());
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
        assert!(ingot_common::validate::request_id("request_id", &a).is_ok());
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("1h").unwrap().as_secs(), 3600);
        assert_eq!(parse_ttl("never").unwrap().as_secs(), 0);
        assert!(parse_ttl("0").is_err());
    }
}
