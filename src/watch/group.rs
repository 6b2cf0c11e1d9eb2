//! The decision of one failover group: which of its members the application should use
//! now, or its fallback when none will do. No I/O and no clock reads, like the target
//! machine beside it: member reports and time are inputs, so every rule (eligibility,
//! the failback policies, split brain) is tested exactly and without sockets.
//!
//! A member is *eligible* when it is up, has stayed up for its `recover_after` (counted
//! from its latest entry into `up`; a member that has never been down since tether
//! started is eligible as soon as it is up, so a fresh start does not sit in the fallback
//! for `recover_after`), and reports the group's role when the group has one. The
//! *active* member is kept while it stays eligible; only the failback policy lets a more
//! preferred member take over. While two or more members claim to be primary, the group
//! switches to none of them.

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// When a more preferred member takes over again from an eligible active one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failback {
    /// As soon as it is eligible.
    Immediate,
    /// Once it has been eligible without a break for this long.
    Hold(Duration),
    /// Only when an operator asks (`tether failback GROUP`).
    Manual,
}

/// The group's settings, as the machine needs them.
#[derive(Clone, Debug)]
pub struct Policy {
    pub failback: Failback,
    /// Each member's `recover_after`, in order of preference.
    pub recover_after: Vec<Duration>,
    /// Whether members must report a role to be eligible. When false, every role report
    /// is ignored.
    pub needs_role: bool,
    /// Whether two members claiming `primary` is a conflict (the group's role is
    /// `primary`). Groups of replicas or without a role have none.
    pub detects_conflicts: bool,
}

/// What the application uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Active {
    /// The member at this index of `members`.
    Member(usize),
    /// No member is eligible: the group's fallback mode.
    Fallback,
}

/// Why the active member changed. Each is announced to hooks as `TETHER_REASON`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The active member went down (or is still inside its `recover_after`), and another
    /// member took over.
    ActiveLost,
    /// The active member is up but no longer reports the group's role, and another
    /// member took over.
    ActiveRoleChanged,
    /// A member better than the current choice (more preferred than the active one, or
    /// any member while in the fallback or at start) is eligible and the failback policy
    /// let it take over.
    PreferredEligible,
    /// An operator ran `tether failback GROUP`.
    ManualFailback,
    /// The group went to its fallback because the members that are eligible disagree on
    /// which is primary.
    Conflict,
    /// The group went to its fallback because no member is eligible.
    NoEligibleMember,
}

impl Reason {
    pub const ALL: [Reason; 6] = [
        Reason::ActiveLost,
        Reason::ActiveRoleChanged,
        Reason::PreferredEligible,
        Reason::ManualFailback,
        Reason::Conflict,
        Reason::NoEligibleMember,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ActiveLost => "active-lost",
            Reason::ActiveRoleChanged => "active-role-changed",
            Reason::PreferredEligible => "preferred-eligible",
            Reason::ManualFailback => "manual-failback",
            Reason::Conflict => "conflict",
            Reason::NoEligibleMember => "no-eligible-member",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the group announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The active member changed. `previous` is `None` for the group's first decision.
    Change {
        previous: Option<Active>,
        active: Active,
        reason: Reason,
    },
    /// Two or more members started claiming `primary` (indices, in order of preference).
    ConflictStarted { claimants: Vec<usize> },
    /// At most one member claims `primary` again.
    ConflictEnded,
}

/// What a member last reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// The member's target entered `up` (`true`), or left it or failed its first
    /// attempt (`false`).
    Up(bool),
    /// The role the member's last check learned: whether it is the group's role, and
    /// whether it is `primary`. Unknown roles report neither.
    Role { matches: bool, primary: bool },
}

/// An operator's `tether failback` that cannot be carried out, worded for them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the group fails back by itself (failback is not \"manual\")")]
    NotManual,
    #[error("the members disagree on which is primary; no switch during a conflict")]
    Conflict,
    #[error("no member more preferred than the active one is eligible")]
    NothingBetter,
}

/// One member's record.
#[derive(Clone, Copy, Debug, Default)]
struct Member {
    /// Since when it has been up, if it is.
    up_since: Option<Instant>,
    /// Whether it has ever left `up` or failed to come up: from then on each entry into
    /// `up` waits `recover_after` before the member is eligible.
    damped: bool,
    /// Since when it has reported the group's role without a break, if it does.
    role_since: Option<Instant>,
    /// Whether its last check said `primary`.
    primary: bool,
    /// Whether a role was reported since it came up.
    role_reported: bool,
    /// Whether its first attempt has ended.
    known: bool,
}

/// One group's decision.
#[derive(Debug)]
pub struct Group {
    policy: Policy,
    members: Vec<Member>,
    /// `None` until the first decision.
    active: Option<Active>,
    /// Whether a conflict is announced.
    conflict: bool,
}

impl Group {
    pub fn new(policy: Policy) -> Group {
        let members = vec![Member::default(); policy.recover_after.len()];
        Group {
            policy,
            members,
            active: None,
            conflict: false,
        }
    }

    /// What the application uses now; `None` before the first decision.
    pub fn active(&self) -> Option<Active> {
        self.active
    }

    /// Whether two or more members claim `primary`.
    pub fn in_conflict(&self) -> bool {
        self.conflict
    }

    /// Whether member `i` is eligible at `now`.
    pub fn is_eligible(&self, i: usize, now: Instant) -> bool {
        self.eligible_since(i).is_some_and(|since| since <= now)
    }

    /// Takes `active` as the decision already announced, when it is still right: a
    /// group rebuilt by a reload keeps the member the application uses, or stays in its
    /// fallback while no member is eligible, instead of announcing it again. Ignored
    /// when it is not right.
    pub fn assume(&mut self, active: Active, now: Instant) {
        let fits = match active {
            Active::Member(i) => i < self.members.len() && self.is_eligible(i, now),
            Active::Fallback => self.best(now).is_none(),
        };
        if fits {
            self.active = Some(active);
        }
    }

    /// Records what member `i` reported at `now` and decides.
    pub fn report(&mut self, i: usize, report: Report, now: Instant) -> Vec<Decision> {
        self.record(i, report, now);
        self.decide(now)
    }

    /// Records what member `i` reported at `now` without deciding: how a group that
    /// starts while its members already run learns their states before its first
    /// decision, which [`Group::tick`] then takes (and the caller announces).
    pub fn record(&mut self, i: usize, report: Report, now: Instant) {
        let member = &mut self.members[i];
        match report {
            Report::Up(true) => {
                if member.up_since.is_none() {
                    member.up_since = Some(now);
                }
                member.known = true;
            }
            Report::Up(false) => {
                // What a member said about its role holds only for the connection it
                // said it on.
                *member = Member {
                    damped: true,
                    known: true,
                    ..Member::default()
                };
            }
            Report::Role { matches, primary } => {
                if !matches {
                    member.role_since = None;
                } else if member.role_since.is_none() {
                    member.role_since = Some(now);
                }
                member.primary = primary;
                member.role_reported = true;
            }
        }
    }

    /// Decides again at `now`: call at [`Group::next_deadline`].
    pub fn tick(&mut self, now: Instant) -> Vec<Decision> {
        self.decide(now)
    }

    /// Members were told apart by a reload: the group now has this policy (same
    /// members, same order). Decides at `now` with the new settings.
    pub fn set_policy(&mut self, policy: Policy, now: Instant) -> Vec<Decision> {
        debug_assert_eq!(policy.recover_after.len(), self.members.len());
        self.policy = policy;
        self.decide(now)
    }

    /// An operator's failback to the most preferred eligible member. The group must be
    /// current (ticked at every deadline up to `now`), as the runtime keeps it.
    pub fn failback(&mut self, now: Instant) -> Result<Decision, Refusal> {
        if self.policy.failback != Failback::Manual {
            return Err(Refusal::NotManual);
        }
        if self.conflict {
            return Err(Refusal::Conflict);
        }
        match (self.active, self.best(now)) {
            (Some(Active::Member(a)), Some(b)) if b < a => {
                Ok(self.switch(Active::Member(b), Reason::ManualFailback))
            }
            _ => Err(Refusal::NothingBetter),
        }
    }

    /// When the decision may change without a report: a member's `recover_after` or a
    /// `hold` ending.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| {
            if at > now {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        for i in 0..self.members.len() {
            if let Some(since) = self.eligible_since(i) {
                consider(since);
                if let (Failback::Hold(hold), Some(Active::Member(a))) =
                    (self.policy.failback, self.active)
                    && i < a
                {
                    consider(since + hold);
                }
            }
        }
        next
    }

    /// Since when member `i` has been eligible without a break (possibly in the future,
    /// while its `recover_after` runs), or `None` while it cannot be.
    fn eligible_since(&self, i: usize) -> Option<Instant> {
        let member = &self.members[i];
        let up_since = member.up_since?;
        let mut since = if member.damped {
            up_since + self.policy.recover_after[i]
        } else {
            up_since
        };
        if self.policy.needs_role {
            since = since.max(member.role_since?);
        }
        Some(since)
    }

    /// The most preferred eligible member.
    fn best(&self, now: Instant) -> Option<usize> {
        (0..self.members.len()).find(|&i| self.is_eligible(i, now))
    }

    fn decide(&mut self, now: Instant) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let claimants: Vec<usize> = if self.policy.detects_conflicts {
            (0..self.members.len())
                .filter(|&i| self.members[i].primary && self.members[i].up_since.is_some())
                .collect()
        } else {
            Vec::new()
        };
        let conflict = claimants.len() > 1;
        if conflict && !self.conflict {
            decisions.push(Decision::ConflictStarted {
                claimants: claimants.clone(),
            });
        } else if !conflict && self.conflict {
            decisions.push(Decision::ConflictEnded);
        }
        self.conflict = conflict;

        let needs_role = self.policy.needs_role;
        let settled =
            |m: &Member| m.known && (!needs_role || m.up_since.is_none() || m.role_reported);
        if self.active.is_none() && !self.members.iter().all(settled) && !self.is_eligible(0, now) {
            // At start, wait for every member's first answer (or for the most preferred
            // one), so a member that answers a few milliseconds later than another is
            // not passed over for good.
            return decisions;
        }
        let next = match self.active {
            Some(Active::Member(a)) if self.is_eligible(a, now) => {
                if conflict {
                    // An eligible active member claims primary: it stays, and no other
                    // claimant takes over.
                    None
                } else {
                    self.failback_to(a, now)
                        .map(|b| (Active::Member(b), Reason::PreferredEligible))
                }
            }
            current => {
                let lost = match current {
                    Some(Active::Member(a)) => Some(
                        if self.members[a].up_since.is_some()
                            && self.members[a].role_since.is_none()
                            && self.policy.needs_role
                        {
                            Reason::ActiveRoleChanged
                        } else {
                            Reason::ActiveLost
                        },
                    ),
                    _ => None,
                };
                let candidate = self
                    .best(now)
                    .filter(|b| !conflict || !claimants.contains(b));
                let next = match (candidate, lost) {
                    (Some(b), Some(reason)) => (Active::Member(b), reason),
                    (Some(b), None) => (Active::Member(b), Reason::PreferredEligible),
                    (None, _) if conflict && self.best(now).is_some() => {
                        (Active::Fallback, Reason::Conflict)
                    }
                    (None, _) => (Active::Fallback, Reason::NoEligibleMember),
                };
                Some(next)
            }
        };
        if let Some((active, reason)) = next
            && self.active != Some(active)
        {
            decisions.push(self.switch(active, reason));
        }
        decisions
    }

    /// The member the failback policy hands over to from eligible active member `a`.
    fn failback_to(&self, a: usize, now: Instant) -> Option<usize> {
        match self.policy.failback {
            Failback::Immediate => self.best(now).filter(|&b| b < a),
            Failback::Hold(hold) => (0..a).find(|&b| {
                self.eligible_since(b)
                    .is_some_and(|since| since + hold <= now)
            }),
            Failback::Manual => None,
        }
    }

    fn switch(&mut self, active: Active, reason: Reason) -> Decision {
        let previous = self.active.replace(active);
        Decision::Change {
            previous,
            active,
            reason,
        }
    }
}
