//! Human-readable durations in the config file ("250ms", "2s", "1m").

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as a string with a unit, so that `"250ms"` and `"2s"` cannot be
/// confused the way a bare number of unspecified unit could.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        HumanDuration(d)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&humantime::format_duration(self.0), f)
    }
}

/// The longest duration tether accepts anywhere. Far beyond any sensible setting, and
/// far below what would overflow a deadline computed from it: a typo such as
/// `"300000000000y"` is refused where it is written instead of breaking a timer later.
pub const MAX: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Parses the strings accepted in the config file and on the command line.
pub fn parse(s: &str) -> Result<Duration, String> {
    let trimmed = s.trim();
    if trimmed.starts_with('-') {
        return Err(format!("invalid duration \"{s}\": must not be negative"));
    }
    let d = humantime::parse_duration(trimmed).map_err(|e| {
        format!("invalid duration \"{s}\": {e} (write a number and a unit, like \"250ms\", \"2s\" or \"1m\")")
    })?;
    if d > MAX {
        return Err(format!("invalid duration \"{s}\": at most 365 days"));
    }
    Ok(d)
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string with a unit, like \"250ms\", \"2s\" or \"1m\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse(v).map(HumanDuration).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_units_operators_write() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_numbers_without_unit_and_negatives() {
        assert!(parse("10").is_err());
        assert!(parse("-1s").unwrap_err().contains("negative"));
        assert!(parse("soon").is_err());
    }

    #[test]
    fn durations_beyond_a_year_are_refused_however_large() {
        assert_eq!(parse("365d").unwrap(), MAX);
        for huge in ["366d", "300000000000y", "18446744073709551615s"] {
            let e = parse(huge).unwrap_err();
            assert!(e.contains(huge), "{e}");
        }
        assert!(
            parse("300000000000y")
                .unwrap_err()
                .contains("at most 365 days")
        );
    }

    #[test]
    fn displays_back_in_the_same_notation() {
        assert_eq!(
            HumanDuration(Duration::from_millis(250)).to_string(),
            "250ms"
        );
        assert_eq!(HumanDuration(Duration::from_secs(90)).to_string(), "1m 30s");
    }
}
