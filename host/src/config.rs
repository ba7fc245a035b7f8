//! The parsers for the durations (`250ms`, `5s`, `2m`) and sizes (`64MiB`, `512KiB`)
//! that flags and files use. A leaf: it uses nothing of the host.

use std::time::Duration;

/// Parses `250ms`, `5s`, `1.5s`, `2m`, `24h`, `7d`. A positive amount and a unit are
/// required.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let (number, unit) = split_number(text);
    let value: f64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("`{text}` is not a duration like 250ms, 5s, 2m, 24h or 7d"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        "" => anyhow::bail!("`{text}` needs a unit: ms, s, m, h or d"),
        other => anyhow::bail!("unknown unit `{other}` in `{text}`: use ms, s, m, h or d"),
    };
    anyhow::ensure!(seconds > 0.0, "`{text}` must be more than zero");
    Duration::try_from_secs_f64(seconds).map_err(|_| anyhow::anyhow!("`{text}` is too long a duration"))
}

/// Parses `65536`, `512KiB`, `64MiB`, `1GiB` (also `KB`/`MB`/`GB`, as powers of 1024).
pub fn parse_bytes(text: &str) -> anyhow::Result<u64> {
    let (number, unit) = split_number(text);
    let value: u64 = number.parse().map_err(|_| anyhow::anyhow!("`{text}` is not a size like 64MiB"))?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => anyhow::bail!("unknown unit in `{text}`: use KiB, MiB or GiB"),
    };
    let bytes = value.checked_mul(scale).ok_or_else(|| anyhow::anyhow!("`{text}` is too large"))?;
    anyhow::ensure!(bytes > 0, "`{text}` must be more than zero");
    Ok(bytes)
}

fn split_number(text: &str) -> (&str, &str) {
    let text = text.trim();
    let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    (&text[..end], text[end..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        for bad in ["5", "s", "0s", "-1s", "5w", "abc", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        // Found by a request with ?wait=: too long for a Duration, and once a panic.
        for huge in ["99999999999999999999s", &format!("{}h", "9".repeat(400))] {
            let error = parse_duration(huge).unwrap_err().to_string();
            assert!(error.contains("too long a duration"), "{huge}: {error}");
        }
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("65536").unwrap(), 65536);
        assert_eq!(parse_bytes("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1 GiB").unwrap(), 1 << 30);
        for bad in ["", "0", "12XB", "MiB", "99999999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
