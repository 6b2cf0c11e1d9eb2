//! The id of this run of tether: it changes with every process start, so that a receiver
//! of events can tell two lives of the sidecar apart (event sequences start over at 0
//! in each).

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// This process's instance id: 16 hex digits, random, fixed for the life of the process.
pub fn id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        // `RandomState` is seeded from the operating system's randomness for each
        // process; mixing in the pid and the start time only guards against a platform
        // where it is not.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        h.write_u128(now.as_nanos());
        format!("{:016x}", h.finish())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_id_is_16_hex_digits_and_stable_within_the_process() {
        let id = super::id();
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(super::id(), id);
    }
}
