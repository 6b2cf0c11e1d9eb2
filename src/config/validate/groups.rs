//! Validation of `[[groups]]`, against the targets already validated.

use std::collections::HashMap;

use super::super::raw::{RawDefaults, RawGroup};
use super::super::{Failback, Group, GroupHooks, HumanDuration, Role, Target};
use super::{At, Ctx, builtin, valid_name};
use toml::Spanned;

impl Ctx<'_> {
    pub(super) fn groups(
        &mut self,
        raw: &[Spanned<RawGroup>],
        targets: &[Target],
        d: &RawDefaults,
    ) -> Vec<Group> {
        let by_name: HashMap<&str, &Target> =
            targets.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut groups = Vec::with_capacity(raw.len());
        for (i, g) in raw.iter().enumerate() {
            let g = g.get_ref();
            let name = g.name.get_ref().as_str();
            let key = |k: &str| format!("groups[{i}].{k}");
            if !valid_name(name) {
                self.err(
                    Some(g.name.span()),
                    key("name"),
                    format!("invalid group name \"{name}\": use letters, digits, '_', '.' and '-'"),
                );
            } else if by_name.contains_key(name) {
                // One namespace: event ids (`<name>:<seq>`) and the stream's filter
                // must not mistake a group for a target.
                self.err(
                    Some(g.name.span()),
                    key("name"),
                    format!("\"{name}\" is already a target's name: groups and targets need different names"),
                );
            }
            let first = *seen.entry(name).or_insert(i);
            if first != i {
                self.err(
                    Some(g.name.span()),
                    key("name"),
                    format!("duplicate group name \"{name}\" (first used by groups[{first}])"),
                );
            }
            groups.push(self.group(i, g, &by_name, d));
        }
        groups
    }

    fn group(
        &mut self,
        i: usize,
        g: &RawGroup,
        targets: &HashMap<&str, &Target>,
        d: &RawDefaults,
    ) -> Group {
        let key = |k: &str| format!("groups[{i}].{k}");
        let role = g
            .role
            .as_ref()
            .and_then(|v| match v.get_ref().parse::<Role>() {
                Ok(role) => Some(role),
                Err(e) => {
                    self.err(Some(v.span()), key("role"), e.to_string());
                    None
                }
            });
        if g.members.get_ref().is_empty() {
            self.err(
                Some(g.members.span()),
                key("members"),
                "a group needs at least one member: the names of targets, in order of preference",
            );
        }
        let mut members: Vec<String> = Vec::with_capacity(g.members.get_ref().len());
        for (n, m) in g.members.get_ref().iter().enumerate() {
            let name = m.get_ref();
            let at = Some(m.span());
            let member_key = format!("groups[{i}].members[{n}]");
            if members.contains(name) {
                self.err(at, member_key, format!("\"{name}\" is listed twice"));
                continue;
            }
            match targets.get(name.as_str()) {
                None => self.err(
                    at,
                    member_key,
                    format!("no target is named \"{name}\": members are names of [[targets]]"),
                ),
                Some(t) if role.is_some() && !t.probe.learns_roles() => self.err(
                    at,
                    member_key,
                    format!(
                        "target \"{name}\" uses the {} probe, which cannot learn its role: \
                         roles come from redis (ROLE) and postgres with a user \
                         (pg_is_in_recovery()); drop `role` or change the probe",
                        t.probe.kind().name
                    ),
                ),
                Some(_) => {}
            }
            members.push(name.clone());
        }
        let fallback = match &g.fallback {
            None => builtin::GROUP_FALLBACK.to_owned(),
            Some(v) => {
                let name = v.get_ref();
                if !valid_name(name) {
                    self.err(
                        Some(v.span()),
                        key("fallback"),
                        format!("invalid fallback name \"{name}\": use letters, digits, '_', '.' and '-'"),
                    );
                } else if members.contains(name) {
                    self.err(
                        Some(v.span()),
                        key("fallback"),
                        format!("\"{name}\" is a member: the fallback needs a name of its own, so hooks can tell them apart"),
                    );
                }
                name.clone()
            }
        };
        let failback = match &g.failback {
            None => Failback::Immediate,
            Some(v) => v.get_ref().parse().unwrap_or_else(|()| {
                self.err(
                    Some(v.span()),
                    key("failback"),
                    format!(
                        "unknown failback \"{}\": expected {}",
                        v.get_ref(),
                        Failback::NAMES
                    ),
                );
                Failback::Immediate
            }),
        };
        let failback_after = match (&g.failback_after, failback) {
            (Some(v), Failback::Hold) => Some(self.duration(
                Some(At {
                    value: *v.get_ref(),
                    span: v.span(),
                    key: key("failback_after"),
                }),
                builtin::FAILBACK_AFTER,
                false,
            )),
            (None, Failback::Hold) => Some(HumanDuration::from(builtin::FAILBACK_AFTER)),
            (Some(v), _) => {
                self.err(
                    Some(v.span()),
                    key("failback_after"),
                    "`failback_after` applies only to failback = \"hold\"",
                );
                None
            }
            (None, _) => None,
        };
        let hook_timeout = match (&g.hook_timeout, &d.hook_timeout) {
            (Some(v), _) => Some(At {
                value: *v.get_ref(),
                span: v.span(),
                key: key("hook_timeout"),
            }),
            (None, Some(v)) => Some(At {
                value: *v.get_ref(),
                span: v.span(),
                key: "defaults.hook_timeout".to_owned(),
            }),
            (None, None) => None,
        };
        let hook_timeout = self.duration(hook_timeout, builtin::HOOK_TIMEOUT, false);
        let hooks = g
            .hooks
            .as_ref()
            .map_or_else(GroupHooks::default, |h| GroupHooks {
                on_change: h
                    .on_change
                    .as_ref()
                    .map(|v| self.actions(v, &key("hooks.on_change")))
                    .unwrap_or_default(),
                on_conflict: h
                    .on_conflict
                    .as_ref()
                    .map(|v| self.actions(v, &key("hooks.on_conflict")))
                    .unwrap_or_default(),
            });
        Group {
            name: g.name.get_ref().clone(),
            members,
            role,
            fallback,
            failback,
            failback_after,
            required: g.required.unwrap_or(true),
            hook_timeout,
            hooks,
        }
    }
}
