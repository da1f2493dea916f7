//! The model's contract, as `/version` reports it (`input.features`, `output.kind`,
//! `output.classes` or `output.targets`), and how a candidate's differs from live's: what a
//! promote refuses without `--allow-contract-change`, because clients break on such a change even
//! when every health check passes (a feature more or less, a class renamed or reordered, which
//! moves every probability, a classifier become a regressor).

use serde_json::Value;

/// How a candidate's contract compares with live's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// The same feature count and output.
    Same(String),
    /// What differs, one line each.
    Differs(Vec<String>),
    /// Live's `/version` has no contract (a model-server from before it reported one): nothing
    /// to compare with; the reason.
    LiveUnknown(String),
}

/// A contract in one line, e.g. `4 features -> classifier [0, 1, 2]`.
pub fn describe(version: &Value) -> String {
    let output = &version["output"];
    let out = match output["kind"].as_str() {
        Some("classifier") => format!("classifier {}", list(&output["classes"])),
        Some("regressor") => format!("regressor, {} target(s)", output["targets"]),
        Some(k) => k.to_string(),
        None => "no output reported".into(),
    };
    format!("{} features -> {out}", version["input"]["features"])
}

fn list(v: &Value) -> String {
    match v.as_array() {
        Some(items) => format!(
            "[{}]",
            items
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "(unnamed)".into(),
    }
}

/// Compare the candidate's `/version` with live's. An answer without a contract on the
/// candidate's side is a difference (it cannot be judged, and this `release` deployed it); on
/// live's side there is nothing to compare with.
pub fn compare(live: &Value, candidate: &Value) -> Comparison {
    if live["input"]["features"].as_u64().is_none() || live["output"]["kind"].as_str().is_none() {
        return Comparison::LiveUnknown(
            "live's /version reports no input or output contract (a model-server from before it did): not compared".into(),
        );
    }
    let mut diffs = Vec::new();
    let (lf, cf) = (&live["input"]["features"], &candidate["input"]["features"]);
    if lf != cf {
        diffs.push(format!("input features: live {lf}, candidate {cf}"));
    }
    let (lo, co) = (&live["output"], &candidate["output"]);
    if lo["kind"] != co["kind"] {
        diffs.push(format!(
            "output kind: live {}, candidate {}",
            lo["kind"], co["kind"]
        ));
    } else if lo["kind"] == "classifier" && lo["classes"] != co["classes"] {
        diffs.push(format!(
            "classes (in the order of the probabilities): live {}, candidate {}",
            list(&lo["classes"]),
            list(&co["classes"])
        ));
    } else if lo["kind"] == "regressor" && lo["targets"] != co["targets"] {
        diffs.push(format!(
            "regression targets: live {}, candidate {}",
            lo["targets"], co["targets"]
        ));
    }
    if diffs.is_empty() {
        Comparison::Same(describe(live))
    } else {
        Comparison::Differs(diffs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn classifier(features: u64, classes: Value) -> Value {
        json!({"input": {"name": "x", "features": features},
               "output": {"kind": "classifier", "classes": classes}})
    }

    #[test]
    fn the_same_contract_passes_whatever_else_changed() {
        let mut candidate = classifier(4, json!([0, 1, 2]));
        candidate["input"]["name"] = json!("float_input");
        candidate["model_sha256"] = json!("other");
        assert_eq!(
            compare(&classifier(4, json!([0, 1, 2])), &candidate),
            Comparison::Same("4 features -> classifier [0, 1, 2]".into())
        );
    }

    #[test]
    fn each_change_a_client_would_notice_is_named() {
        let live = classifier(4, json!([0, 1, 2]));
        let Comparison::Differs(d) = compare(&live, &classifier(5, json!([0, 1]))) else {
            panic!()
        };
        assert_eq!(
            d,
            [
                "input features: live 4, candidate 5",
                "classes (in the order of the probabilities): live [0, 1, 2], candidate [0, 1]"
            ]
        );
        // Reordered or relabelled classes move every probability.
        assert!(matches!(
            compare(&live, &classifier(4, json!([2, 1, 0]))),
            Comparison::Differs(_)
        ));
        assert!(matches!(
            compare(&live, &classifier(4, json!(["0", "1", "2"]))),
            Comparison::Differs(_)
        ));
        let regressor =
            json!({"input": {"features": 4}, "output": {"kind": "regressor", "targets": 1}});
        assert_eq!(
            compare(&live, &regressor),
            Comparison::Differs(vec![
                "output kind: live \"classifier\", candidate \"regressor\"".into()
            ])
        );
        let two = json!({"input": {"features": 4}, "output": {"kind": "regressor", "targets": 2}});
        assert_eq!(
            compare(&regressor, &two),
            Comparison::Differs(vec!["regression targets: live 1, candidate 2".into()])
        );
        // A candidate that reports no contract cannot be judged: a difference, not a pass.
        assert!(matches!(
            compare(&live, &json!({"model_version": "1"})),
            Comparison::Differs(_)
        ));
    }

    #[test]
    fn a_live_server_without_a_contract_is_said_not_compared() {
        assert!(matches!(
            compare(&json!({"model_version": "1"}), &classifier(4, json!([0]))),
            Comparison::LiveUnknown(_)
        ));
    }
}
