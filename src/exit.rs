//! Every exit status of the CLI contract, in one place: scripts and init systems rely on
//! them, so each is named once and used by name.

/// Success: a clean shutdown, a valid config, a healthy address, every required target up.
pub const OK: u8 = 0;
/// The check failed: an address not healthy, a wait timed out, a required target not up,
/// or a fatal error at run time.
pub const FAILURE: u8 = 1;
/// A config that cannot be used (`run`, `check-config`).
pub const BAD_CONFIG: u8 = 2;
/// A command line that makes no sense (`probe`, `wait`; clap's own errors use it too).
pub const USAGE: u8 = 2;
/// `tether status` could not reach the sidecar.
pub const UNREACHABLE: u8 = 2;
/// The immediate exit on a second SIGTERM (128 + 15).
pub const SECOND_SIGTERM: i32 = 143;
/// The immediate exit on a second SIGINT (128 + 2).
pub const SECOND_SIGINT: i32 = 130;
