//! The running groups: what a group that starts while its members already run
//! announces (after a reload), and what members' reports move it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;

/// Every group event, as `group:seq kind previous->active reason`.
#[derive(Default)]
struct Told(Mutex<Vec<String>>);

impl Observer for Told {
    fn transition(&self, _target: &Arc<Target>, _t: &Transition) {}

    fn group_event(&self, group: &Arc<Group>, e: &GroupEvent) {
        self.0.lock().unwrap().push(format!(
            "{} {} {}->{} {}",
            e.event_id(&group.name),
            e.kind.as_str(),
            e.previous_active.as_deref().unwrap_or(""),
            e.active,
            e.reason
        ));
    }
}

impl Told {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn config(groups: &str) -> Config {
    let toml = format!(
        "[[targets]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nprobe = \"redis\"\n\
         [[targets]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\nprobe = \"redis\"\n{groups}"
    );
    Config::parse(&toml, Path::new("test.toml")).unwrap()
}

fn all(state: State) -> impl Fn(&str) -> Option<MemberNow> {
    move |_| Some(MemberNow { state, role: None })
}

#[tokio::test]
async fn a_group_added_by_a_reload_while_its_members_are_up_announces_its_first_decision() {
    let told = Arc::new(Told::default());
    let duo = "[[groups]]\nname = \"duo\"\nmembers = [\"a\", \"b\"]\n";
    let groups = Groups::start(&config(duo), told.clone(), all(State::Connecting));
    assert_eq!(told.take(), Vec::<String>::new(), "nobody has answered yet");

    let solo = "[[groups]]\nname = \"solo\"\nmembers = [\"b\"]\n";
    groups.apply(&config(&format!("{duo}{solo}")), all(State::Up));
    assert_eq!(
        told.take(),
        ["solo:0 change ->b preferred-eligible"],
        "the new group's first decision, announced; the unchanged group says nothing"
    );
    groups.stop();
}

#[tokio::test]
async fn a_group_whose_members_changed_and_whose_active_member_went_announces_the_new_one() {
    let told = Arc::new(Told::default());
    let groups = Groups::start(
        &config("[[groups]]\nname = \"duo\"\nmembers = [\"a\", \"b\"]\n"),
        told.clone(),
        all(State::Up),
    );
    assert_eq!(told.take(), ["duo:0 change ->a preferred-eligible"]);

    groups.apply(
        &config("[[groups]]\nname = \"duo\"\nmembers = [\"b\"]\n"),
        all(State::Up),
    );
    assert_eq!(
        told.take(),
        ["duo:1 change a->b preferred-eligible"],
        "the application was on a"
    );
    groups.stop();
}

#[tokio::test]
async fn a_group_in_its_fallback_whose_members_changed_stays_there_without_a_word_while_none_will_do()
 {
    let told = Arc::new(Told::default());
    let groups = Groups::start(
        &config("[[groups]]\nname = \"duo\"\nmembers = [\"a\", \"b\"]\n"),
        told.clone(),
        all(State::Down),
    );
    assert_eq!(told.take(), ["duo:0 change ->fallback no-eligible-member"]);

    groups.apply(
        &config("[[groups]]\nname = \"duo\"\nmembers = [\"b\"]\n"),
        all(State::Down),
    );
    assert_eq!(told.take(), Vec::<String>::new());
    groups.stop();
}

/// `target` entering `state` (from `previous`), as its checker reports it.
fn enter(groups: &Groups, target: &Arc<Target>, previous: State, state: State) {
    let event = if state == State::Up {
        crate::watch::machine::Event::Connect
    } else {
        crate::watch::machine::Event::Disconnect
    };
    groups.transition(
        target,
        &Transition {
            seq: 0,
            event,
            previous,
            state,
            failures: 0,
            last_error: None,
            at: SystemTime::now(),
        },
    );
}

#[tokio::test]
async fn a_role_that_turns_unknown_while_the_member_stays_up_moves_nothing_and_going_down_is_active_lost()
 {
    let told = Arc::new(Told::default());
    let config =
        config("[[groups]]\nname = \"store\"\nmembers = [\"a\", \"b\"]\nrole = \"replica\"\n");
    let groups = Groups::start(&config, told.clone(), all(State::Connecting));
    let target = |name| Arc::new(config.target(name).unwrap().clone());
    let (a, b) = (target("a"), target("b"));
    for t in [&a, &b] {
        groups.role(t, Some(Role::Replica));
        enter(&groups, t, State::Connecting, State::Up);
    }
    assert_eq!(told.take(), ["store:0 change ->a preferred-eligible"]);

    // The connection went and the reconnect brought it back: nothing to announce.
    groups.role(&a, None);
    groups.role(&a, Some(Role::Replica));
    assert_eq!(told.take(), Vec::<String>::new());

    // The connection went and the reconnect failed: the member is lost, not demoted.
    groups.role(&a, None);
    enter(&groups, &a, State::Up, State::Down);
    assert_eq!(told.take(), ["store:1 change a->b active-lost"]);

    // A member that is up and reports another role is demoted.
    groups.role(&b, Some(Role::Primary));
    assert_eq!(
        told.take(),
        ["store:2 change b->fallback no-eligible-member"]
    );
    groups.stop();
}
