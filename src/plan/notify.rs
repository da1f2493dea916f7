//! What a notification says (`notify.webhook_url`): one message per outcome of a command that
//! changes something, made from the command's own summary or failure. Pure: the adapter sends it.

use serde_json::{Value, json};

use crate::config::NotifyFormat;

/// How the command ended.
pub enum Ended<'a> {
    /// Its summary.
    Done(&'a Value),
    /// Its failure: exit code, step and message.
    Failed {
        exit: i32,
        step: &'a str,
        message: &'a str,
    },
}

/// Who and where: the fields every message carries.
pub struct Context<'a> {
    pub app: &'a str,
    pub action: &'a str,
    pub actor: &'a str,
    pub build: Option<&'a str>,
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The outcome and its one-line description, or `None` when there is nothing to tell (an `up`
/// that found nothing to release).
fn outcome(action: &str, ended: &Ended) -> Option<(&'static str, String)> {
    let summary = match ended {
        // A scheduled `release retire` finds nothing to retire most of the time: not news.
        Ended::Failed {
            exit: 8, message, ..
        } if action == "retire" && message.starts_with(super::retire::NOTHING_TO_RETIRE) => {
            return None;
        }
        Ended::Failed {
            exit: 9,
            step,
            message,
        } => return Some(("aborted", format!("{step}: {message}"))),
        Ended::Failed {
            exit,
            step,
            message,
        } => return Some(("failed", format!("{step} (exit {exit}): {message}"))),
        Ended::Done(summary) => summary,
    };
    let field = |k: &str| summary.get(k).and_then(text_of);
    Some(match action {
        "up" if summary.get("promote").is_some_and(Value::is_object) => {
            let promoted = &summary["promote"];
            (
                "promoted",
                format!(
                    "{} is live (up --promote)",
                    promoted.get("live").and_then(text_of).unwrap_or_default()
                ),
            )
        }
        "up" => match (field("candidate"), field("live")) {
            (Some(c), _) if c.starts_with("none") => return None,
            (Some(c), Some(l)) if c == l => ("released", format!("{l} is live (first release)")),
            (Some(c), Some(l)) => (
                "released",
                format!("{c} deployed and tested as the candidate; {l} stays live until promote"),
            ),
            (_, Some(l)) => ("released", format!("{l} is live")),
            _ => ("released", "released".to_string()),
        },
        "promote" => (
            "promoted",
            format!(
                "{} is live{}",
                field("live").unwrap_or_default(),
                field("previous")
                    .map(|p| format!(" (previous: {p})"))
                    .unwrap_or_default()
            ),
        ),
        "rollback" => (
            "rolled back",
            format!(
                "{} is live again{}",
                field("live").unwrap_or_default(),
                field("rolled back from")
                    .map(|p| format!(" (from {p})"))
                    .unwrap_or_default()
            ),
        ),
        "destroy" => ("destroyed", "everything release made is gone".to_string()),
        "retire" => (
            "retired",
            format!(
                "{} removed; {} stays live",
                field("retired").unwrap_or_default(),
                field("live").unwrap_or_default()
            ),
        ),
        _ => ("done", format!("{action} done")),
    })
}

/// The message to send, or `None` when there is nothing to tell.
pub fn message(format: NotifyFormat, who: &Context, ended: &Ended) -> Option<Value> {
    let (outcome, detail) = outcome(who.action, ended)?;
    let digest = match ended {
        Ended::Done(s) => s
            .get("image_digest")
            .and_then(text_of)
            .or_else(|| s.get("image").and_then(text_of)),
        Ended::Failed { .. } => None,
    };
    Some(match format {
        NotifyFormat::Json => json!({
            "app": who.app,
            "action": who.action,
            "outcome": outcome,
            "detail": detail,
            "image": digest,
            "actor": who.actor,
            "build": who.build,
        }),
        NotifyFormat::Slack => {
            let mut text = format!("*{}* {}: {outcome}: {detail}", who.app, who.action);
            if let Some(d) = &digest {
                text.push_str(&format!("\nimage `{d}`"));
            }
            text.push_str(&format!("\nby {}", who.actor));
            if let Some(b) = who.build {
                text.push_str(&format!(" <{b}|CI build>"));
            }
            json!({ "text": text })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(action: &str) -> Context<'_> {
        Context {
            app: "iris",
            action,
            actor: "ci@runner",
            build: Some("https://circleci.com/gh/o/r/7"),
        }
    }

    #[test]
    fn each_outcome_is_named_with_what_a_reader_needs() {
        let promoted = json!({"live": "green", "previous": "blue", "image_digest": "sha256:ab"});
        let m = message(NotifyFormat::Json, &who("promote"), &Ended::Done(&promoted)).unwrap();
        assert_eq!(m["outcome"], "promoted");
        assert_eq!(m["detail"], "green is live (previous: blue)");
        assert_eq!(m["image"], "sha256:ab");
        assert_eq!(m["build"], "https://circleci.com/gh/o/r/7");
        let aborted = Ended::Failed {
            exit: 9,
            step: "verify public URL",
            message: "/version reports blue",
        };
        let m = message(NotifyFormat::Slack, &who("promote"), &aborted).unwrap();
        let text = m["text"].as_str().unwrap();
        assert!(
            text.starts_with("*iris* promote: aborted: verify public URL: /version reports blue"),
            "{text}"
        );
        assert!(
            text.contains("<https://circleci.com/gh/o/r/7|CI build>"),
            "{text}"
        );
        let rolled = json!({"live": "blue", "rolled back from": "green (failed, kept)"});
        let m = message(NotifyFormat::Json, &who("rollback"), &Ended::Done(&rolled)).unwrap();
        assert_eq!(
            m["detail"],
            "blue is live again (from green (failed, kept))"
        );
        let retired = json!({"live": "green", "retired": "blue"});
        let m = message(NotifyFormat::Json, &who("retire"), &Ended::Done(&retired)).unwrap();
        assert_eq!(
            (m["outcome"].as_str(), m["detail"].as_str()),
            (Some("retired"), Some("blue removed; green stays live"))
        );
        // The refusal's own text, as plan::retire makes it.
        let only_live = crate::plan::retire::plan_retire(&crate::plan::retire::RetireWorld {
            app: "iris".into(),
            live: Some(crate::plan::colour::Colour::Green),
            edge: crate::plan::up::EdgeState::Serving {
                origin: "g.lb".into(),
                deployed: true,
            },
            colours: std::collections::BTreeMap::from([(
                crate::plan::colour::Colour::Green,
                crate::plan::colour::Observed {
                    exists: true,
                    ..Default::default()
                },
            )]),
            now: 0,
        })
        .unwrap_err()
        .explain("iris")
        .0;
        let nothing = Ended::Failed {
            exit: 8,
            step: "retire",
            message: &only_live,
        };
        assert!(message(NotifyFormat::Json, &who("retire"), &nothing).is_none());
        let refused = Ended::Failed {
            exit: 8,
            step: "retire",
            message: "iris-blue is the tested candidate, not a colour a flip left behind",
        };
        assert_eq!(
            message(NotifyFormat::Json, &who("retire"), &refused).unwrap()["outcome"],
            "failed"
        );
    }

    #[test]
    fn an_up_with_nothing_to_release_tells_nobody() {
        let noop = json!({"live": "blue", "candidate": "none: nothing to release"});
        assert!(message(NotifyFormat::Json, &who("up"), &Ended::Done(&noop)).is_none());
        let candidate = json!({"live": "blue", "candidate": "green"});
        let m = message(NotifyFormat::Json, &who("up"), &Ended::Done(&candidate)).unwrap();
        assert_eq!(m["outcome"], "released");
        assert!(
            m["detail"]
                .as_str()
                .unwrap()
                .starts_with("green deployed and tested")
        );
        let first = json!({"live": "blue", "candidate": "blue"});
        let m = message(NotifyFormat::Json, &who("up"), &Ended::Done(&first)).unwrap();
        assert_eq!(m["detail"], "blue is live (first release)");
        let promoted = json!({"live": "blue", "candidate": "green", "promote": {"live": "green"}});
        let m = message(NotifyFormat::Json, &who("up"), &Ended::Done(&promoted)).unwrap();
        assert_eq!(m["outcome"], "promoted");
        assert_eq!(m["detail"], "green is live (up --promote)");
    }
}
