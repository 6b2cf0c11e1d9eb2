//! Fault points for tests that prove supervision: armed from a test, they make a
//! target's checker panic at its next connect attempts. Compiled only with the
//! `fault-injection` feature, so no release build or config can reach them.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

fn armed() -> &'static Mutex<HashMap<String, u32>> {
    static ARMED: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    ARMED.get_or_init(Mutex::default)
}

/// Makes the next `times` connect attempts of `target` panic.
pub fn panic_on_connect(target: &str, times: u32) {
    armed()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(target.to_owned(), times);
}

/// Called by the checker before each connect attempt.
pub(crate) fn check(target: &str) {
    let fire = {
        let mut armed = armed().lock().unwrap_or_else(|p| p.into_inner());
        match armed.get_mut(target) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    if fire {
        panic!("injected fault: checker of {target} panics");
    }
}
