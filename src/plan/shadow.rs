//! The shadow gate's pure part: the live colour's pods each report how a sample of their real
//! answers compared with the candidate's (model-server's `GET /shadow`); their figures for this
//! candidate are summed, and a promote refuses a candidate that agrees with live on less than
//! `smoke.shadow.min_agreement` of the rows once `min_requests` were compared.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// The live pods' figures for one candidate, summed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub pods: usize,
    pub compared: u64,
    pub agreed: u64,
    /// (live's class, the candidate's class) -> rows.
    pub classes: BTreeMap<(String, String), u64>,
    pub max_shift: f64,
    /// Sum of the pods' mean shifts weighted by the rows each mean is over.
    weighted_shift: f64,
    shifted_rows: u64,
    pub failed: u64,
    pub dropped: u64,
    /// A pod's last reason a copy got no answer.
    pub last_failure: Option<String>,
}

impl Figures {
    pub fn agreement(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.agreed as f64 / self.compared as f64)
    }

    pub fn mean_shift(&self) -> Option<f64> {
        (self.shifted_rows > 0).then(|| self.weighted_shift / self.shifted_rows as f64)
    }

    /// The rows whose class changed, most first: `live 0 -> candidate 1: 12`.
    pub fn flips(&self) -> Vec<String> {
        let mut off: Vec<_> = self.classes.iter().filter(|((l, c), _)| l != c).collect();
        off.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        off.iter()
            .map(|((l, c), n)| format!("live {l} -> candidate {c}: {n}"))
            .collect()
    }

    /// As `status` and the ledger show it.
    pub fn to_json(&self) -> Value {
        json!({
            "pods": self.pods,
            "compared": self.compared,
            "agreement": self.agreement(),
            "class_changes": self.flips(),
            "max_shift": self.max_shift,
            "mean_shift": self.mean_shift(),
            "copies_failed": self.failed,
            "copies_dropped": self.dropped,
            "last_failure": self.last_failure,
        })
    }
}

/// Sum the pods' `/shadow` reports about the candidate `colour` serving the model with
/// `model_sha256` (when known: a colour deployed before release recorded it is matched by
/// `model_version`); a report about another candidate, or none yet, adds nothing but its
/// failures and drops.
pub fn merge<'a>(
    reports: impl IntoIterator<Item = &'a Value>,
    colour: &str,
    model_version: &str,
    model_sha256: &str,
) -> Figures {
    let mut f = Figures::default();
    for r in reports {
        if r["enabled"] != true {
            continue;
        }
        f.pods += 1;
        f.failed += r["failed"].as_u64().unwrap_or(0);
        f.dropped += r["dropped"].as_u64().unwrap_or(0);
        if let Some(why) = r["last_failure"].as_str() {
            f.last_failure = Some(why.to_string());
        }
        let c = &r["candidate"];
        let same_model = if model_sha256.is_empty() {
            c["model_version"] == model_version
        } else {
            c["model_sha256"] == model_sha256
        };
        if c["colour"] != colour || !same_model {
            continue;
        }
        let compared = r["compared"].as_u64().unwrap_or(0);
        f.compared += compared;
        f.agreed += r["agreed"].as_u64().unwrap_or(0);
        for m in r["classes"].as_array().into_iter().flatten() {
            let key = (
                m["live"].as_str().unwrap_or_default().to_string(),
                m["candidate"].as_str().unwrap_or_default().to_string(),
            );
            *f.classes.entry(key).or_default() += m["rows"].as_u64().unwrap_or(0);
        }
        f.max_shift = f.max_shift.max(r["max_shift"].as_f64().unwrap_or(0.0));
        let shifted = r["shifted_rows"].as_u64().unwrap_or(0);
        f.shifted_rows += shifted;
        f.weighted_shift += r["mean_shift"].as_f64().unwrap_or(0.0) * shifted as f64;
    }
    f
}

/// The gate's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Agreement at or above the minimum; what was found.
    Pass(String),
    /// Too few rows compared to judge (the promote goes on, and says so).
    NotJudged(String),
    /// Agreement under the minimum: why, with the class changes.
    Refuse(String),
}

/// `required`: too few rows compared refuses too (`smoke.shadow.required`), so that no promote
/// (an `up --promote` seconds after the deploy) goes live unjudged.
pub fn judge(f: &Figures, min_agreement: f64, min_requests: u64, required: bool) -> Verdict {
    let Some(agreement) = f.agreement().filter(|_| f.compared >= min_requests) else {
        let why = match (&f.last_failure, f.pods) {
            (_, 0) => "no live pod reported a shadow tee (deployed before smoke.shadow was set: the next release turns it on)".to_string(),
            (Some(why), _) if f.compared == 0 => format!("no copy was answered yet (last: {why})"),
            _ => "too little traffic so far".to_string(),
        };
        let what = format!(
            "not judged: {} of the {min_requests} rows needed were compared; {why}",
            f.compared
        );
        return if required {
            Verdict::Refuse(format!(
                "{what}, and smoke.shadow.required is set: send it traffic (or wait) and promote again"
            ))
        } else {
            Verdict::NotJudged(what)
        };
    };
    let shift = format!(
        "largest probability (or value) shift {:.4}, mean {:.4}",
        f.max_shift,
        f.mean_shift().unwrap_or(0.0)
    );
    if agreement >= min_agreement {
        Verdict::Pass(format!(
            "agrees with live on {:.1} % of {} real rows (at least {:.1} % needed); {shift}",
            agreement * 100.0,
            f.compared,
            min_agreement * 100.0
        ))
    } else {
        let flips = f.flips();
        Verdict::Refuse(format!(
            "agrees with live on {:.1} % of {} real rows, under smoke.shadow.min_agreement {:.1} %; class changes: {}; {shift}",
            agreement * 100.0,
            f.compared,
            min_agreement * 100.0,
            if flips.is_empty() {
                "none (the values moved)".to_string()
            } else {
                flips.join(", ")
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod's report about the candidate whose model has sha256 `sha`.
    fn report(colour: &str, sha: &str, compared: u64, agreed: u64, moved: u64) -> Value {
        json!({"enabled": true,
               "candidate": {"colour": colour, "model_version": "1.0.0", "model_sha256": sha},
               "compared": compared, "agreed": agreed, "failed": 1, "dropped": 2,
               "classes": [{"live": "0", "candidate": "0", "rows": agreed},
                           {"live": "0", "candidate": "1", "rows": moved}],
               "max_shift": 0.5, "mean_shift": 0.1, "shifted_rows": compared, "last_failure": null})
    }

    #[test]
    fn the_pods_figures_for_this_candidate_are_summed() {
        let reports = [
            report("green", "2", 60, 50, 10),
            report("green", "2", 40, 38, 2),
            // Another model's figures under the same version string (a pod that has not seen
            // this candidate yet, or the previous colour's): left out.
            report("green", "1", 500, 500, 0),
            json!({"enabled": false}),
        ];
        let f = merge(&reports, "green", "1.0.0", "2");
        assert_eq!((f.pods, f.compared, f.agreed), (3, 100, 88));
        assert_eq!((f.failed, f.dropped), (3, 6));
        assert_eq!(f.flips(), ["live 0 -> candidate 1: 12"]);
        assert!((f.mean_shift().unwrap() - 0.1).abs() < 1e-9);
    }

    #[test]
    fn under_the_minimum_is_refused_with_the_class_changes() {
        let f = merge(&[report("green", "2", 100, 80, 20)], "green", "1.0.0", "2");
        match judge(&f, 0.95, 50, false) {
            Verdict::Refuse(why) => assert!(
                why.contains("80.0 % of 100") && why.contains("live 0 -> candidate 1: 20"),
                "{why}"
            ),
            v => panic!("{v:?}"),
        }
        assert!(matches!(judge(&f, 0.8, 50, true), Verdict::Pass(_)));
        // Too few rows: not judged, and it says how many; refused when a judgement is required.
        match judge(&f, 0.95, 101, false) {
            Verdict::NotJudged(why) => assert!(why.contains("100 of the 101"), "{why}"),
            v => panic!("{v:?}"),
        }
        match judge(&f, 0.95, 101, true) {
            Verdict::Refuse(why) => assert!(why.contains("smoke.shadow.required"), "{why}"),
            v => panic!("{v:?}"),
        }
        // No pod with a tee: said so.
        match judge(&merge(&[], "green", "1.0.0", "2"), 0.95, 1, false) {
            Verdict::NotJudged(why) => assert!(why.contains("no live pod"), "{why}"),
            v => panic!("{v:?}"),
        }
    }
}
