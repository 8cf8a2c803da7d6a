//! Byte sizes with binary and decimal suffixes, for flags like
//! `--chunk-size 64MiB` or `--reserve 10GB`.

use std::fmt;
use std::str::FromStr;

/// A size in bytes that parses `4096`, `4KiB`, `64MiB`, `1GiB`, `10GB`, `512k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a size did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseSizeError {
    /// No digits, or digits that do not fit.
    #[error("invalid size {0:?}: expected a number with an optional suffix like 64MiB")]
    Invalid(String),
    /// A suffix we do not know.
    #[error(
        "unknown size suffix {suffix:?} in {input:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
    )]
    UnknownSuffix {
        /// The whole input.
        input: String,
        /// The suffix found.
        suffix: String,
    },
    /// The value does not fit in 64 bits.
    #[error("size {0:?} is too large")]
    Overflow(String),
}

impl FromStr for ByteSize {
    type Err = ParseSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, suffix) = t.split_at(split);
        if digits.is_empty() {
            return Err(ParseSizeError::Invalid(s.to_string()));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| ParseSizeError::Overflow(s.to_string()))?;
        let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" | "ki" => 1 << 10,
            "m" | "mib" | "mi" => 1 << 20,
            "g" | "gib" | "gi" => 1 << 30,
            "t" | "tib" | "ti" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => {
                return Err(ParseSizeError::UnknownSuffix {
                    input: s.to_string(),
                    suffix: suffix.to_string(),
                });
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| ParseSizeError::Overflow(s.to_string()))
    }
}

impl fmt::Display for ByteSize {
    /// Human-readable, binary units with one decimal: `1.5 GiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut unit = 0;
        while v >= 1024.0 && unit + 1 < UNITS.len() {
            v /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        for (input, want) in [
            ("4096", 4096),
            ("4KiB", 4096),
            ("64MiB", 64 << 20),
            ("64mib", 64 << 20),
            ("1GiB", 1 << 30),
            ("10GB", 10_000_000_000),
            ("512k", 512 << 10),
            ("7B", 7),
        ] {
            assert_eq!(input.parse::<ByteSize>(), Ok(ByteSize(want)), "{input}");
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            "".parse::<ByteSize>(),
            Err(ParseSizeError::Invalid(_))
        ));
        assert!(matches!(
            "MiB".parse::<ByteSize>(),
            Err(ParseSizeError::Invalid(_))
        ));
        assert!(matches!(
            "4 parsecs".parse::<ByteSize>(),
            Err(ParseSizeError::UnknownSuffix { .. })
        ));
        assert!(matches!(
            "99999999999TiB".parse::<ByteSize>(),
            Err(ParseSizeError::Overflow(_))
        ));
    }

    #[test]
    fn displays_human_units() {
        assert_eq!(ByteSize(512).to_string(), "512 B");
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
    }
}
