//! Watching targets: the pure state machine of one target, its reconnect schedule, the
//! actor that holds the connection and feeds the machine, the supervisor that restarts
//! a crashed actor, and the [`Observer`](observe::Observer) trait through which every
//! transition reaches the rest of tether (status, metrics, logs, hooks).

pub mod backoff;
pub mod checker;
pub mod closer;
pub mod group;
pub mod groups;
pub mod loss;
pub mod machine;
pub mod observe;
pub mod supervisor;
