//! Fault points for tests that prove supervision: armed from a test, they make a
//! target's checker panic at a chosen point. Compiled only with the `fault-injection`
//! feature, so no release build or config can reach them.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Where in a checker's life a fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Point {
    /// Before a connect attempt.
    Connect,
    /// While holding a fresh connection, right after announcing it.
    Up,
    /// In the task running one event's hooks.
    Hook,
    /// While building an HTTP answer (`/status`); not tied to a target.
    Http,
}

fn armed() -> &'static Mutex<HashMap<(String, Point), u32>> {
    static ARMED: OnceLock<Mutex<HashMap<(String, Point), u32>>> = OnceLock::new();
    ARMED.get_or_init(Mutex::default)
}

fn arm(target: &str, point: Point, times: u32) {
    armed()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((target.to_owned(), point), times);
}

/// Makes the next `times` connect attempts of `target` panic.
pub fn panic_on_connect(target: &str, times: u32) {
    arm(target, Point::Connect, times);
}

/// Makes the checker of `target` panic the next `times` times it holds a connection.
pub fn panic_when_up(target: &str, times: u32) {
    arm(target, Point::Up, times);
}

/// Makes the task running the next `times` hook events of `target` panic.
pub fn panic_in_hooks(target: &str, times: u32) {
    arm(target, Point::Hook, times);
}

/// Makes the next `times` `/status` answers panic while being built.
pub fn panic_in_http(times: u32) {
    arm("", Point::Http, times);
}

fn check(target: &str, point: Point) {
    let fire = {
        let mut armed = armed().lock().unwrap_or_else(|p| p.into_inner());
        match armed.get_mut(&(target.to_owned(), point)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    if fire {
        panic!("injected fault: checker of {target} panics at {point:?}");
    }
}

/// Called by the checker before each connect attempt.
pub(crate) fn check_connect(target: &str) {
    check(target, Point::Connect);
}

/// Called by the checker when it is about to hold a connection.
pub(crate) fn check_up(target: &str) {
    check(target, Point::Up);
}

/// Called by the hook runner before running an event's actions.
pub(crate) fn check_hook(target: &str) {
    check(target, Point::Hook);
}

/// Called by the HTTP server while building `/status`.
pub(crate) fn check_http() {
    check("", Point::Http);
}
