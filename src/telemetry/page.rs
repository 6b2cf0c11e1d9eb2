//! `GET /`: the status page, for people. One self-contained HTML document, built from
//! the same status document `/status` serves and the newest events of the stream, so it
//! is complete with scripts off (a `<noscript>` refresh then keeps it current); with
//! scripts on, its inline script follows `/events` from the position the page was
//! rendered at and updates it in place.
//!
//! The page shows addresses and errors, like `/status`. Its one style sheet and one
//! script are inline and allowed by their hashes alone: nothing else may run, load or
//! frame it.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::telemetry::events::{Entry, Index};
use crate::telemetry::http::{App, Body};
use crate::telemetry::status::{Document, GroupStatus, TargetStatus, Timestamp};
use crate::watch::machine::State;

/// The skeleton, with `{{name}}` where the values go.
const TEMPLATE: &str = include_str!("page/page.html");
const STYLE: &str = include_str!("page/page.css");
const SCRIPT: &str = include_str!("page/page.js");

/// Events listed, newest first; the script keeps the same number.
pub const EVENTS_SHOWN: usize = 50;

/// Only the page's own style and script, its own origin for the stream, and nothing
/// that could frame it. The hashes are those of the exact text between the tags.
static POLICY: LazyLock<HeaderValue> = LazyLock::new(|| {
    let policy = format!(
        "default-src 'none'; style-src '{}'; script-src '{}'; connect-src 'self'; \
         img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash(STYLE),
        hash(SCRIPT)
    );
    HeaderValue::from_str(&policy).expect("a policy of ASCII hashes is a valid header")
});

/// The CSP source expression that allows exactly `text` inline.
pub fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Builds the page. Runs on the blocking pool: it grows with the number of targets.
pub fn respond(app: &App) -> Response<Body> {
    // The events and their position first: the document then holds at least every
    // change up to that position, and the script resumes the stream right after it.
    let (events, index) = app.events.recent(EVENTS_SHOWN);
    let html = render(&app.status.document(), &index, &events);
    let mut res = Response::new(Full::new(Bytes::from(html)).boxed());
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        POLICY.clone(),
    );
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    res
}

/// The page for `doc`, current to `index`, listing `events` (newest first).
pub fn render(doc: &Document, index: &Index, events: &[Arc<Entry>]) -> String {
    let mut out = String::with_capacity(TEMPLATE.len() + STYLE.len() + SCRIPT.len() + 4096);
    let mut rest = TEMPLATE;
    // One pass over the template: a value is never scanned for placeholders, so a
    // target named `{{script}}` is just a name.
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .map(|e| start + e)
            .expect("every placeholder of the template is closed");
        let key = &rest[start + 2..end];
        match key {
            "style" => out.push_str(STYLE),
            "script" => out.push_str(SCRIPT),
            "title" => out.push_str(&escape(&summary(doc))),
            "summary" => out.push_str(&escape(&summary(doc))),
            "position" => out.push_str(&escape(&index.to_string())),
            "generated" => out.push_str(&doc.generated_at.to_string()),
            "instance" => out.push_str(&escape(&doc.instance)),
            "version" => out.push_str(&escape(&doc.version)),
            "stopping" => out.push_str(if doc.stopping { "true" } else { "false" }),
            "groups_hidden" => {
                if doc.groups.is_empty() {
                    out.push_str(" hidden");
                }
            }
            "groups" => {
                for g in &doc.groups {
                    group_row(&mut out, g, doc.generated_at);
                }
            }
            "targets" => {
                for t in &doc.targets {
                    target_row(&mut out, t, doc.generated_at);
                }
            }
            "events" => {
                for entry in events {
                    event_row(&mut out, entry);
                }
            }
            other => unreachable!("the template has no placeholder {other:?}"),
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// `2 up / 1 down · not ready · instance … · tether …`, as the script writes it too.
fn summary(doc: &Document) -> String {
    let (mut up, mut down, mut connecting) = (0, 0, 0);
    for t in &doc.targets {
        match t.state {
            State::Up => up += 1,
            State::Connecting => connecting += 1,
            State::Down | State::Failed => down += 1,
        }
    }
    let mut s = format!("{up} up / {down} down");
    if connecting > 0 {
        let _ = write!(s, " / {connecting} connecting");
    }
    let ready = if doc.stopping {
        "stopping"
    } else if doc.ready {
        "ready"
    } else {
        "not ready"
    };
    let _ = write!(
        s,
        " \u{b7} {ready} \u{b7} instance {} \u{b7} tether {}",
        doc.instance, doc.version
    );
    s
}

/// One target's row: the cells the script renders, in the same order.
fn target_row(out: &mut String, t: &TargetStatus, now: Timestamp) {
    let state = t.state.as_str();
    let _ = write!(
        out,
        "\n<tr data-target=\"{name}\" data-state=\"{state}\" data-since=\"{since}\" data-required=\"{required}\">\
         <th scope=\"row\">{name}{optional}</th>\
         <td class=\"state\"><span class=\"badge {state}\">{state}</span></td>\
         <td class=\"for\">{for_}</td><td class=\"failures\">{failures}</td>\
         <td class=\"error\">{error}</td><td class=\"address\">{address}</td>\
         <td class=\"probe\">{probe}</td></tr>",
        name = escape(&t.name),
        since = t.since,
        required = t.required,
        optional = if t.required {
            ""
        } else {
            " <span class=\"opt\">(optional)</span>"
        },
        for_ = duration(t.since.until(now).as_secs()),
        failures = t.failures,
        error = escape(t.last_error.as_deref().unwrap_or("")),
        address = escape(&t.address),
        probe = escape(&t.probe),
    );
}

/// One group's row: the cells the script renders, in the same order, and the fields it
/// takes over in `data-` attributes (member names never hold a comma).
fn group_row(out: &mut String, g: &GroupStatus, now: Timestamp) {
    let active = g.active.as_deref().unwrap_or("");
    let active_cell = match &g.active {
        None => "<span class=\"badge undecided\">undecided</span>".to_owned(),
        Some(name) if g.fallback_active => {
            format!(
                "<span class=\"fallback\">{}</span> (fallback)",
                escape(name)
            )
        }
        Some(name) => format!("<span class=\"badge up\">{}</span>", escape(name)),
    };
    let members = g
        .members
        .iter()
        .map(|m| {
            if Some(m.as_str()) == g.active.as_deref() {
                format!("<span class=\"on\">{}</span>", escape(m))
            } else {
                format!("<span>{}</span>", escape(m))
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let conflict = if g.conflict {
        format!(
            "<span class=\"conflict\">{}</span>",
            escape(&conflict_text(&g.claimants))
        )
    } else {
        String::new()
    };
    let _ = write!(
        out,
        "\n<tr data-group=\"{name}\" data-members=\"{members_list}\" data-fallback=\"{fallback}\" \
         data-active=\"{active}\" data-fallback-active=\"{fallback_active}\" data-since=\"{since}\" \
         data-conflict=\"{in_conflict}\" data-claimants=\"{claimants}\" data-required=\"{required}\">\
         <th scope=\"row\">{name}{optional}</th>\
         <td class=\"active\">{active_cell}</td><td class=\"for\">{for_}</td>\
         <td class=\"members\">{members}</td><td class=\"conflict\">{conflict}</td>\
         <td class=\"reason\">{reason}</td><td class=\"id\">{id}</td></tr>",
        name = escape(&g.name),
        members_list = escape(&g.members.join(",")),
        fallback = escape(&g.fallback),
        active = escape(active),
        fallback_active = g.fallback_active,
        since = g.since,
        in_conflict = g.conflict,
        claimants = escape(&g.claimants.join(",")),
        required = g.required,
        optional = if g.required {
            ""
        } else {
            " <span class=\"opt\">(optional)</span>"
        },
        for_ = if g.active.is_some() {
            duration(g.since.until(now).as_secs())
        } else {
            String::new()
        },
        reason = escape(g.reason.as_deref().unwrap_or("")),
        id = escape(g.event_id.as_deref().unwrap_or("")),
    );
}

/// `conflict: a, b claim primary`, as the script writes it too.
fn conflict_text(claimants: &[String]) -> String {
    format!("conflict: {} claim primary", claimants.join(", "))
}

/// The fields of an event's data that the page lists.
#[derive(Deserialize)]
struct Listed {
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    previous_state: Option<String>,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    active: Option<String>,
    #[serde(default)]
    previous_active: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    claimants: Vec<String>,
}

fn event_row(out: &mut String, entry: &Entry) {
    let Ok(data) = serde_json::from_str::<Listed>(entry.data()) else {
        return;
    };
    let what = match entry.kind {
        // `up → down (disconnect)`; `up (recover)` when the state stays.
        "transition" => {
            let state = data.state.as_deref().unwrap_or("?");
            let event = data.event.as_deref().unwrap_or("?");
            match data.previous_state.as_deref() {
                Some(previous) if previous != state => {
                    format!("{previous} \u{2192} {state} ({event})")
                }
                _ => format!("{state} ({event})"),
            }
        }
        // `a → b (active-lost)`; `conflict: a, b claim primary`.
        "group" => match data.event.as_deref() {
            Some("conflict") => conflict_text(&data.claimants),
            Some("conflict_resolved") => "conflict over".to_owned(),
            _ => format!(
                "{}{} ({})",
                data.previous_active
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .map(|p| format!("{p} \u{2192} "))
                    .unwrap_or_default(),
                data.active.as_deref().unwrap_or("?"),
                data.reason.as_deref().unwrap_or("?"),
            ),
        },
        "target_added" => "added".to_owned(),
        "target_removed" => "removed".to_owned(),
        other => other.to_owned(),
    };
    let time = match &data.timestamp {
        Some(at) => {
            let at = escape(at);
            let clock = at.get(11..19).unwrap_or(&at);
            format!("<time datetime=\"{at}\" title=\"{at}\">{clock}</time>")
        }
        None => String::new(),
    };
    let _ = write!(
        out,
        "\n<tr><td class=\"time\">{time}</td><th scope=\"row\">{target}</th>\
         <td class=\"what\">{what}</td><td class=\"id\">{id}</td></tr>",
        target = escape(entry.target()),
        what = escape(&what),
        id = escape(data.event_id.as_deref().unwrap_or("")),
    );
}

/// `12 s`, `3 min 4 s`, `2 h 5 min`, `3 d 4 h`: what the script's ticking shows too.
pub fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        3600..86400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86400, secs % 86400 / 3600),
    }
}

/// Text from config, servers and errors, made inert in element content and in quoted
/// attribute values alike.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::telemetry::status::Status;

    fn doc_with_error(name: &str, error: &str) -> Document {
        let config = Config::parse(
            &format!("[[targets]]\nname = \"{name}\"\naddress = \"db.internal:5432\"\n"),
            "t.toml".as_ref(),
        )
        .unwrap();
        let mut doc = Status::new(&config).document();
        doc.targets[0].last_error = Some(error.to_owned());
        doc
    }

    #[test]
    fn an_error_carrying_markup_is_rendered_as_text() {
        let doc = doc_with_error("db", "<script>alert(1)</script>\"onload='x'");
        let html = render(&doc, &Index::here(0), &[]);
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;onload=&#39;x&#39;"),
            "{html}"
        );
        assert_eq!(html.matches("<script>").count(), 1, "only the page's own");
    }

    #[test]
    fn a_placeholder_in_a_value_is_left_as_text() {
        let doc = doc_with_error("db", "{{script}}");
        let html = render(&doc, &Index::here(0), &[]);
        assert!(
            html.contains("<td class=\"error\">{{script}}</td>"),
            "{html}"
        );
        assert_eq!(html.matches(SCRIPT).count(), 1);
    }

    #[test]
    fn the_policy_allows_the_page_own_style_and_script_by_hash_only() {
        let policy = POLICY.to_str().unwrap();
        assert!(policy.contains(&format!("script-src '{}'", hash(SCRIPT))));
        assert!(policy.contains(&format!("style-src '{}'", hash(STYLE))));
        assert!(!policy.contains("unsafe"), "{policy}");
        assert!(!SCRIPT.contains("</script"));
        assert!(!STYLE.contains("</style"));
    }

    #[test]
    fn events_read_as_transitions_newest_first_and_a_recover_names_one_state() {
        let entry = |position, data: &str| {
            Arc::new(Entry::rendered(position, "transition", "db", data.into()))
        };
        let events = [
            entry(
                2,
                r#"{"event":"recover","state":"up","previous_state":"up","event_id":"db:4","timestamp":"2025-01-31T10:15:02.114Z"}"#,
            ),
            entry(
                1,
                r#"{"event":"disconnect","state":"down","previous_state":"up","event_id":"db:3","timestamp":"2025-01-31T10:14:40.007Z"}"#,
            ),
        ];
        let doc = doc_with_error("db", "");
        let html = render(&doc, &Index::here(2), &events);
        let recover = html.find("<td class=\"what\">up (recover)</td>").unwrap();
        let down = html.find("up \u{2192} down (disconnect)").unwrap();
        assert!(recover < down, "newest first");
        assert!(html.contains(">10:15:02</time>"), "{html}");
        assert!(html.contains("<td class=\"id\">db:3</td>"), "{html}");
    }

    #[test]
    fn groups_are_listed_above_the_targets_only_when_configured_with_their_decision() {
        let html = render(&doc_with_error("db", ""), &Index::here(0), &[]);
        assert!(html.contains("<div class=\"wrap\" id=\"groups-wrap\" hidden>"));

        let config = Config::parse(
            "[[targets]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\
             [[targets]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n\
             [[groups]]\nname = \"store\"\nmembers = [\"a\", \"b\"]\nfallback = \"memory\"\n",
            "t.toml".as_ref(),
        )
        .unwrap();
        let mut doc = Status::new(&config).document();
        let html = render(&doc, &Index::here(0), &[]);
        assert!(
            html.contains("<div class=\"wrap\" id=\"groups-wrap\">"),
            "{html}"
        );
        assert!(html.contains("<span class=\"badge undecided\">undecided</span>"));
        assert!(html.find("id=\"groups\"").unwrap() < html.find("id=\"targets\"").unwrap());

        let g = &mut doc.groups[0];
        g.active = Some("b".into());
        g.conflict = true;
        g.claimants = vec!["a".into(), "b".into()];
        let html = render(&doc, &Index::here(0), &[]);
        assert!(
            html.contains("<td class=\"active\"><span class=\"badge up\">b</span></td>"),
            "{html}"
        );
        assert!(
            html.contains("<span>a</span>, <span class=\"on\">b</span>"),
            "{html}"
        );
        assert!(html.contains("<span class=\"conflict\">conflict: a, b claim primary</span>"));

        let g = &mut doc.groups[0];
        g.active = Some("memory".into());
        g.fallback_active = true;
        let html = render(&doc, &Index::here(0), &[]);
        assert!(
            html.contains("<span class=\"fallback\">memory</span> (fallback)"),
            "{html}"
        );
    }

    #[test]
    fn a_group_event_is_listed_with_what_the_group_uses_now() {
        let events = [Arc::new(Entry::rendered(
            1,
            "group",
            "store",
            r#"{"event":"change","active":"b","previous_active":"a","reason":"active-lost","claimants":[],"event_id":"store:1","timestamp":"2025-01-31T10:15:02.114Z"}"#.into(),
        ))];
        let html = render(&doc_with_error("db", ""), &Index::here(1), &events);
        assert!(html.contains("<th scope=\"row\">store</th><td class=\"what\">a \u{2192} b (active-lost)</td><td class=\"id\">store:1</td>"), "{html}");
    }

    #[test]
    fn durations_read_in_the_largest_two_units() {
        assert_eq!(duration(12), "12 s");
        assert_eq!(duration(184), "3 min 4 s");
        assert_eq!(duration(7500), "2 h 5 min");
        assert_eq!(duration(273_600), "3 d 4 h");
    }

    #[test]
    fn the_page_of_a_few_targets_stays_small() {
        let doc = doc_with_error("db", "connect db.internal:5432: connection refused");
        let size = render(&doc, &Index::here(0), &[]).len();
        assert!(size < 20 * 1024, "{size} bytes");
    }
}
