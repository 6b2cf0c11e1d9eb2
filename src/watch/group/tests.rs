//! The group decision, by scenario and by property over random member histories.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;

const PG_A: usize = 0;
const PG_B: usize = 1;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn primary_group(failback: Failback) -> Group {
    Group::new(Policy {
        failback,
        recover_after: vec![Duration::ZERO; 2],
        needs_role: true,
        detects_conflicts: true,
    })
}

fn up_as(g: &mut Group, i: usize, primary: bool, now: Instant) -> Vec<Decision> {
    let mut out = g.report(
        i,
        Report::Role {
            matches: primary,
            primary,
        },
        now,
    );
    out.extend(g.report(i, Report::Up(true), now));
    out
}

fn change(previous: Option<Active>, active: Active, reason: Reason) -> Decision {
    Decision::Change {
        previous,
        active,
        reason,
    }
}

#[test]
fn the_primary_replica_story() {
    let t = Instant::now();
    let mut g = primary_group(Failback::Immediate);
    assert_eq!(
        up_as(&mut g, PG_B, false, t),
        vec![],
        "waits for pg-a's answer"
    );
    assert_eq!(
        up_as(&mut g, PG_A, true, t),
        vec![change(
            None,
            Active::Member(PG_A),
            Reason::PreferredEligible
        )]
    );

    // The primary dies; the replica is still in recovery: fallback.
    assert_eq!(
        g.report(PG_A, Report::Up(false), t + ms(10)),
        vec![change(
            Some(Active::Member(PG_A)),
            Active::Fallback,
            Reason::NoEligibleMember
        )]
    );
    // The replica is promoted: it takes over.
    assert_eq!(
        g.report(
            PG_B,
            Report::Role {
                matches: true,
                primary: true
            },
            t + ms(20)
        ),
        vec![change(
            Some(Active::Fallback),
            Active::Member(PG_B),
            Reason::PreferredEligible
        )]
    );
    // The old primary comes back, still a primary: a conflict, and no switch although
    // it is preferred and failback is immediate.
    assert_eq!(
        up_as(&mut g, PG_A, true, t + ms(30)),
        vec![Decision::ConflictStarted {
            claimants: vec![PG_A, PG_B]
        }]
    );
    assert_eq!(g.tick(t + ms(40)), vec![]);
    // It is stopped: the conflict ends and the active member is kept.
    assert_eq!(
        g.report(PG_A, Report::Up(false), t + ms(50)),
        vec![Decision::ConflictEnded]
    );
    assert_eq!(g.active(), Some(Active::Member(PG_B)));
}

#[test]
fn a_conflict_that_loses_the_active_member_goes_to_the_fallback_not_to_the_other_claimant() {
    let t = Instant::now();
    let mut g = Group::new(Policy {
        failback: Failback::Immediate,
        recover_after: vec![Duration::ZERO; 3],
        needs_role: true,
        detects_conflicts: true,
    });
    up_as(&mut g, 0, true, t);
    up_as(&mut g, 1, true, t);
    up_as(&mut g, 2, true, t);
    assert_eq!(g.active(), Some(Active::Member(0)));
    assert!(g.in_conflict());
    assert_eq!(
        g.report(0, Report::Up(false), t + ms(1)),
        vec![change(
            Some(Active::Member(0)),
            Active::Fallback,
            Reason::Conflict
        )]
    );
}

#[test]
fn a_demoted_active_member_hands_over_with_its_role_change_as_the_reason() {
    let t = Instant::now();
    let mut g = primary_group(Failback::Immediate);
    up_as(&mut g, PG_A, true, t);
    up_as(&mut g, PG_B, false, t);
    let mut out = g.report(
        PG_B,
        Report::Role {
            matches: true,
            primary: true,
        },
        t + ms(1),
    );
    assert_eq!(
        out.pop(),
        Some(Decision::ConflictStarted {
            claimants: vec![PG_A, PG_B]
        })
    );
    assert_eq!(
        g.report(
            PG_A,
            Report::Role {
                matches: false,
                primary: false
            },
            t + ms(2)
        ),
        vec![
            Decision::ConflictEnded,
            change(
                Some(Active::Member(PG_A)),
                Active::Member(PG_B),
                Reason::ActiveRoleChanged
            )
        ]
    );
}

#[test]
fn hold_waits_for_unbroken_eligibility_and_a_flap_starts_the_wait_over() {
    let t = Instant::now();
    let mut g = Group::new(Policy {
        failback: Failback::Hold(ms(1000)),
        recover_after: vec![Duration::ZERO; 2],
        needs_role: false,
        detects_conflicts: false,
    });
    g.report(PG_A, Report::Up(true), t);
    g.report(PG_B, Report::Up(true), t);
    g.report(PG_A, Report::Up(false), t + ms(10));
    assert_eq!(g.active(), Some(Active::Member(PG_B)));
    g.report(PG_A, Report::Up(true), t + ms(100));
    assert_eq!(g.next_deadline(t + ms(100)), Some(t + ms(1100)));
    assert_eq!(g.tick(t + ms(600)), vec![]);
    g.report(PG_A, Report::Up(false), t + ms(700));
    g.report(PG_A, Report::Up(true), t + ms(800));
    assert_eq!(
        g.tick(t + ms(1100)),
        vec![],
        "the flap started the hold over"
    );
    assert_eq!(g.next_deadline(t + ms(1100)), Some(t + ms(1800)));
    assert_eq!(
        g.tick(t + ms(1800)),
        vec![change(
            Some(Active::Member(PG_B)),
            Active::Member(PG_A),
            Reason::PreferredEligible
        )]
    );
}

#[test]
fn leaving_the_fallback_does_not_wait_for_the_hold() {
    let t = Instant::now();
    let mut g = primary_group(Failback::Hold(ms(1000)));
    up_as(&mut g, PG_A, true, t);
    up_as(&mut g, PG_B, false, t);
    g.report(PG_A, Report::Up(false), t + ms(10));
    assert_eq!(g.active(), Some(Active::Fallback));
    up_as(&mut g, PG_A, true, t + ms(20));
    assert_eq!(g.active(), Some(Active::Member(PG_A)));
}

#[test]
fn manual_failback_happens_only_when_asked_and_says_why_it_cannot() {
    let t = Instant::now();
    let mut g = Group::new(Policy {
        failback: Failback::Manual,
        recover_after: vec![Duration::ZERO; 2],
        needs_role: false,
        detects_conflicts: false,
    });
    g.report(PG_A, Report::Up(true), t);
    g.report(PG_B, Report::Up(true), t);
    assert_eq!(g.failback(t), Err(Refusal::NothingBetter));
    g.report(PG_A, Report::Up(false), t + ms(1));
    g.report(PG_A, Report::Up(true), t + ms(2));
    assert_eq!(g.tick(t + ms(100_000)), vec![]);
    assert_eq!(g.active(), Some(Active::Member(PG_B)));
    assert_eq!(
        g.failback(t + ms(100_001)),
        Ok(change(
            Some(Active::Member(PG_B)),
            Active::Member(PG_A),
            Reason::ManualFailback
        ))
    );

    let mut automatic = primary_group(Failback::Immediate);
    assert_eq!(automatic.failback(t), Err(Refusal::NotManual));
}

#[test]
fn recover_after_damps_a_returning_member_but_not_a_fresh_start() {
    let t = Instant::now();
    let mut g = Group::new(Policy {
        failback: Failback::Immediate,
        recover_after: vec![ms(500), ms(500)],
        needs_role: false,
        detects_conflicts: false,
    });
    g.report(PG_A, Report::Up(true), t);
    assert_eq!(
        g.active(),
        Some(Active::Member(PG_A)),
        "eligible at once on start"
    );
    g.report(PG_B, Report::Up(true), t);
    g.report(PG_A, Report::Up(false), t + ms(10));
    assert_eq!(g.active(), Some(Active::Member(PG_B)));
    g.report(PG_A, Report::Up(true), t + ms(20));
    assert!(!g.is_eligible(PG_A, t + ms(519)));
    assert_eq!(g.next_deadline(t + ms(20)), Some(t + ms(520)));
    assert_eq!(
        g.tick(t + ms(520)),
        vec![change(
            Some(Active::Member(PG_B)),
            Active::Member(PG_A),
            Reason::PreferredEligible
        )]
    );
}

// === properties ===

#[derive(Clone, Debug)]
enum Step {
    Up(usize, bool),
    Role(usize, bool),
    Failback,
}

fn step(members: usize) -> impl Strategy<Value = (u64, Step)> {
    (
        0u64..1500,
        prop_oneof![
            3 => (0..members, any::<bool>()).prop_map(|(i, up)| Step::Up(i, up)),
            2 => (0..members, any::<bool>()).prop_map(|(i, p)| Step::Role(i, p)),
            1 => Just(Step::Failback),
        ],
    )
}

fn failback() -> impl Strategy<Value = Failback> {
    prop_oneof![
        Just(Failback::Immediate),
        (1u64..2000).prop_map(|n| Failback::Hold(ms(n))),
        Just(Failback::Manual),
    ]
}

/// The test's own account of each member, kept apart from the machine's.
#[derive(Clone, Copy, Default)]
struct Model {
    up_since: Option<Instant>,
    damped: bool,
    role_since: Option<Instant>,
    primary: bool,
}

struct World {
    policy: Policy,
    model: Vec<Model>,
}

impl World {
    fn eligible_since(&self, i: usize) -> Option<Instant> {
        let m = self.model[i];
        let mut since = m.up_since?;
        if m.damped {
            since += self.policy.recover_after[i];
        }
        if self.policy.needs_role {
            since = since.max(m.role_since?);
        }
        Some(since)
    }

    fn eligible(&self, i: usize, now: Instant) -> bool {
        self.eligible_since(i).is_some_and(|s| s <= now)
    }

    fn claimants(&self) -> Vec<usize> {
        if !self.policy.detects_conflicts {
            return Vec::new();
        }
        (0..self.model.len())
            .filter(|&i| self.model[i].up_since.is_some() && self.model[i].primary)
            .collect()
    }

    fn apply(&mut self, step: &Step, now: Instant) {
        match *step {
            Step::Up(i, true) => {
                let m = &mut self.model[i];
                m.up_since.get_or_insert(now);
            }
            Step::Up(i, false) => {
                self.model[i] = Model {
                    damped: true,
                    ..Model::default()
                }
            }
            Step::Role(i, primary) => {
                let m = &mut self.model[i];
                m.primary = primary;
                if primary {
                    m.role_since.get_or_insert(now);
                } else {
                    m.role_since = None;
                }
            }
            Step::Failback => {}
        }
    }

    /// Every promise a batch of decisions made at `now` must keep.
    fn check(&self, g: &Group, decisions: &[Decision], before: Option<Active>, now: Instant) {
        let claimants = self.claimants();
        let conflict = claimants.len() > 1;
        let mut current = before;
        for d in decisions {
            if let Decision::Change {
                previous,
                active,
                reason,
            } = d
            {
                assert_eq!(*previous, current, "changes chain");
                assert_ne!(
                    Some(*active),
                    current,
                    "no change repeats the active member"
                );
                if let Active::Member(b) = active {
                    assert!(self.eligible(*b, now), "only to an eligible member");
                    if conflict {
                        assert!(
                            !claimants.contains(b),
                            "never to a claimant during a conflict"
                        );
                    }
                    if let Some(Active::Member(a)) = current
                        && self.eligible(a, now)
                    {
                        assert!(*b < a, "an eligible member is left only for a better one");
                        match self.policy.failback {
                            Failback::Immediate => {}
                            Failback::Hold(hold) => assert!(
                                self.eligible_since(*b).unwrap() + hold <= now,
                                "hold returned before failback_after of unbroken eligibility"
                            ),
                            Failback::Manual => assert_eq!(*reason, Reason::ManualFailback),
                        }
                    }
                }
                current = Some(*active);
            }
        }
        assert_eq!(g.active(), current);
        assert_eq!(g.in_conflict(), conflict);
        match g.active() {
            Some(Active::Member(a)) => {
                assert!(self.eligible(a, now), "the active member is eligible")
            }
            Some(Active::Fallback) => {
                let usable = (0..self.model.len())
                    .any(|i| self.eligible(i, now) && !(conflict && claimants.contains(&i)));
                assert!(!usable, "in the fallback although a member is usable");
            }
            None => {}
        }
        if let (Failback::Immediate, false, Some(Active::Member(a))) =
            (self.policy.failback, conflict, g.active())
        {
            assert!(
                !(0..a).any(|b| self.eligible(b, now)),
                "immediate failback did not return to a preferred eligible member"
            );
        }
        if let (Failback::Hold(hold), false, Some(Active::Member(a))) =
            (self.policy.failback, conflict, g.active())
        {
            assert!(
                !(0..a).any(|b| self.eligible_since(b).is_some_and(|s| s + hold <= now)),
                "hold did not return after failback_after"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_member_histories_keep_every_promise(
        members in 2usize..5,
        failback in failback(),
        needs_role in any::<bool>(),
        recover in proptest::collection::vec(0u64..1000, 4),
        steps in proptest::collection::vec(step(4), 1..120),
    ) {
        let policy = Policy {
            failback,
            recover_after: recover[..members].iter().map(|&n| ms(n)).collect(),
            needs_role,
            detects_conflicts: needs_role,
        };
        let mut world = World {
            policy: policy.clone(),
            model: vec![Model::default(); members],
        };
        let mut g = Group::new(policy);
        let start = Instant::now();
        let mut now = start;
        for (dt, step) in steps {
            let at = now + ms(dt);
            // The runtime wakes the group at each deadline before the next report.
            while let Some(deadline) = g.next_deadline(now) {
                if deadline > at {
                    break;
                }
                now = deadline;
                let before = g.active();
                let decisions = g.tick(now);
                world.check(&g, &decisions, before, now);
            }
            now = at;
            let step = match step {
                Step::Up(i, up) => Step::Up(i % members, up),
                Step::Role(i, p) => Step::Role(i % members, p),
                Step::Failback => Step::Failback,
            };
            world.apply(&step, now);
            let before = g.active();
            let decisions = match step {
                Step::Up(i, up) => g.report(i, Report::Up(up), now),
                Step::Role(i, primary) => g.report(i, Report::Role { matches: primary, primary }, now),
                Step::Failback => g.failback(now).into_iter().collect(),
            };
            world.check(&g, &decisions, before, now);
        }
    }
}
