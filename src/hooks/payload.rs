//! What a hook learns about the event: one record, rendered as environment variables
//! for commands and as the JSON body for webhooks (and commands' standard input), so
//! both always carry the same values.

use std::time::SystemTime;

use serde::Serialize;

use crate::config::{Group, Target};
use crate::watch::groups::GroupEvent;
use crate::watch::machine::{Event, State, Transition};

/// The JSON document of one event, as documented in the README.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Payload {
    /// `<target>:<sequence>`: receivers drop duplicates and spot gaps with it.
    pub event_id: String,
    /// This run of tether ([`crate::instance::id`]): sequences start over at 0 in each,
    /// so `(instance, event_id)` is what identifies an event.
    pub instance: &'static str,
    pub target: String,
    pub address: String,
    pub event: Event,
    pub state: State,
    pub previous_state: State,
    pub failures: u32,
    pub last_error: Option<String>,
    /// RFC 3339 in UTC with milliseconds.
    pub timestamp: String,
}

impl Payload {
    pub fn new(target: &Target, t: &Transition) -> Payload {
        Payload {
            event_id: t.event_id(&target.name),
            instance: crate::instance::id(),
            target: target.name.clone(),
            address: target.address.to_string(),
            event: t.event,
            state: t.state,
            previous_state: t.previous,
            failures: t.failures,
            last_error: t.last_error.as_ref().map(|e| e.text().to_owned()),
            timestamp: rfc3339(t.at),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a payload always serializes")
    }

    /// The variables given to command and shell hooks. Target data reaches a hook only
    /// this way (and on stdin), never spliced into a command line.
    pub fn env(&self) -> [(&'static str, String); 10] {
        [
            ("TETHER_INSTANCE", self.instance.to_owned()),
            ("TETHER_TARGET", self.target.clone()),
            ("TETHER_ADDRESS", self.address.clone()),
            ("TETHER_EVENT", self.event.as_str().to_owned()),
            ("TETHER_EVENT_ID", self.event_id.clone()),
            ("TETHER_STATE", self.state.as_str().to_owned()),
            (
                "TETHER_PREVIOUS_STATE",
                self.previous_state.as_str().to_owned(),
            ),
            ("TETHER_FAILURES", self.failures.to_string()),
            (
                "TETHER_LAST_ERROR",
                self.last_error.clone().unwrap_or_default(),
            ),
            ("TETHER_TIMESTAMP", self.timestamp.clone()),
        ]
    }
}

/// The JSON document of one group event, as documented in the README.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupPayload {
    /// `<group>:<sequence>`.
    pub event_id: String,
    pub instance: &'static str,
    pub group: String,
    /// `change`, `conflict` or `conflict_resolved`.
    pub event: &'static str,
    /// The member in use after the event, or the fallback's name.
    pub active: String,
    /// Whether `active` is the fallback.
    pub fallback: bool,
    /// What was in use before; empty for the group's first decision.
    pub previous_active: String,
    pub reason: &'static str,
    /// The members claiming `primary`, when a conflict starts.
    pub claimants: Vec<String>,
    /// Whether members disagree on the primary after the event.
    pub conflict: bool,
    pub timestamp: String,
}

impl GroupPayload {
    pub fn new(group: &Group, e: &GroupEvent) -> GroupPayload {
        GroupPayload {
            event_id: e.event_id(&group.name),
            instance: crate::instance::id(),
            group: group.name.clone(),
            event: e.kind.as_str(),
            active: e.active.clone(),
            fallback: e.fallback,
            previous_active: e.previous_active.clone().unwrap_or_default(),
            reason: e.reason.as_str(),
            claimants: e.claimants.clone(),
            conflict: e.conflict,
            timestamp: rfc3339(e.at),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a payload always serializes")
    }

    /// The variables given to a group's command and shell hooks.
    pub fn env(&self) -> [(&'static str, String); 10] {
        [
            ("TETHER_INSTANCE", self.instance.to_owned()),
            ("TETHER_GROUP", self.group.clone()),
            ("TETHER_EVENT", self.event.to_owned()),
            ("TETHER_EVENT_ID", self.event_id.clone()),
            ("TETHER_ACTIVE", self.active.clone()),
            ("TETHER_PREVIOUS_ACTIVE", self.previous_active.clone()),
            ("TETHER_FALLBACK", u8::from(self.fallback).to_string()),
            ("TETHER_REASON", self.reason.to_owned()),
            ("TETHER_CLAIMANTS", self.claimants.join(",")),
            ("TETHER_TIMESTAMP", self.timestamp.clone()),
        ]
    }
}

pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::watch::loss::Loss;
    use std::time::Duration;

    #[test]
    fn env_and_json_carry_the_same_values() {
        let config = Config::parse(
            "[[targets]]\nname = \"db\"\naddress = \"db.internal:5432\"\n",
            "t.toml".as_ref(),
        )
        .unwrap();
        let t = Transition {
            seq: 7,
            event: Event::Failure,
            previous: State::Down,
            state: State::Failed,
            failures: 5,
            last_error: Some(Loss::said("connect 10.0.0.1:5432: connection refused")),
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        };
        let p = Payload::new(&config.targets[0], &t);
        let json: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(json["event_id"], "db:7");
        assert_eq!(json["event"], "failure");
        assert_eq!(json["state"], "failed");
        assert_eq!(json["previous_state"], "down");
        assert_eq!(json["failures"], 5);
        assert_eq!(json["timestamp"], "2023-11-14T22:13:20.123Z");
        let env: std::collections::HashMap<_, _> = p.env().into_iter().collect();
        assert_eq!(env["TETHER_EVENT_ID"], "db:7");
        assert_eq!(env["TETHER_EVENT"], "failure");
        assert_eq!(env["TETHER_PREVIOUS_STATE"], "down");
        assert_eq!(
            env["TETHER_LAST_ERROR"],
            json["last_error"].as_str().unwrap()
        );
        assert_eq!(env["TETHER_TIMESTAMP"], json["timestamp"].as_str().unwrap());
    }
}
