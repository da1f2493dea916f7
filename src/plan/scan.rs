//! The image scan gate (`image.scan_gate`): what ECR's scan of the pushed image says, judged. A
//! gate that cannot judge refuses: a scan that never ran, failed, or cannot read the image
//! (`UNSUPPORTED_IMAGE`: basic scanning reads only an operating system's package database, which
//! an image of one static binary does not have) is not a pass.

use std::collections::BTreeMap;

use crate::config::Severity;

/// ECR's scan of one image, as `DescribeImageScanFindings` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanSeen {
    /// ScanNotFoundException: no scan of this image (yet, or ever: the repository does not scan
    /// on push and the registry's scanning is not enhanced).
    NotFound,
    /// `imageScanStatus` and, when there are findings, `findingSeverityCounts`.
    Status {
        status: String,
        description: String,
        counts: BTreeMap<String, u64>,
    },
}

/// What the gate makes of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Scanned, nothing at the gate's severity or worse: what was found.
    Pass(String),
    /// Not scanned yet: why, to look again (or to refuse with, at the deadline).
    Wait(String),
    /// Refused for its findings: which.
    Refuse(String),
    /// Refused because the scan cannot judge the image: why.
    CannotJudge(String),
}

fn counted(counts: &BTreeMap<String, u64>) -> String {
    let listed: Vec<String> = [
        "CRITICAL",
        "HIGH",
        "MEDIUM",
        "LOW",
        "INFORMATIONAL",
        "UNDEFINED",
    ]
    .iter()
    .filter_map(|k| {
        counts
            .get(*k)
            .filter(|n| **n > 0)
            .map(|n| format!("{n} {k}"))
    })
    .collect();
    if listed.is_empty() {
        "no findings".into()
    } else {
        listed.join(", ")
    }
}

/// Judge a scan against the gate (ECR API reference, `ImageScanStatus`: COMPLETE for a basic
/// scan, ACTIVE for enhanced scanning's continuous one; IN_PROGRESS and PENDING not yet; the
/// rest say the image was not judged).
pub fn judge(seen: &ScanSeen, gate: Severity) -> Verdict {
    let ScanSeen::Status {
        status,
        description,
        counts,
    } = seen
    else {
        return Verdict::Wait(
            "ECR has no scan of this image (ScanNotFoundException): the registry stack's repository scans on push; with it off, turn on enhanced scanning".into(),
        );
    };
    match status.as_str() {
        "COMPLETE" | "ACTIVE" => {
            let over: u64 = gate
                .and_worse()
                .filter_map(|s| counts.get(s.ecr_name()))
                .sum();
            if over > 0 {
                Verdict::Refuse(format!(
                    "ECR's scan ({status}) found {}: {over} at {} or worse",
                    counted(counts),
                    gate.ecr_name()
                ))
            } else {
                Verdict::Pass(format!("ECR's scan ({status}): {}", counted(counts)))
            }
        }
        "IN_PROGRESS" | "PENDING" => Verdict::Wait(format!("ECR's scan is {status}")),
        other => Verdict::CannotJudge(format!(
            "ECR could not judge the image ({other}{}): a gate that cannot judge refuses",
            if description.is_empty() {
                String::new()
            } else {
                format!(": {description}")
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(status: &str, counts: &[(&str, u64)]) -> ScanSeen {
        ScanSeen::Status {
            status: status.into(),
            description: String::new(),
            counts: counts.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn findings_at_the_gate_or_worse_refuse_and_milder_ones_pass() {
        let some = scan("COMPLETE", &[("HIGH", 2), ("LOW", 5)]);
        assert_eq!(
            judge(&some, Severity::High),
            Verdict::Refuse("ECR's scan (COMPLETE) found 2 HIGH, 5 LOW: 2 at HIGH or worse".into())
        );
        assert_eq!(
            judge(&some, Severity::Medium),
            Verdict::Refuse(
                "ECR's scan (COMPLETE) found 2 HIGH, 5 LOW: 2 at MEDIUM or worse".into()
            ),
            "a milder gate counts the worse findings too"
        );
        assert_eq!(
            judge(&some, Severity::Critical),
            Verdict::Pass("ECR's scan (COMPLETE): 2 HIGH, 5 LOW".into())
        );
        assert_eq!(
            judge(&scan("ACTIVE", &[]), Severity::Low),
            Verdict::Pass("ECR's scan (ACTIVE): no findings".into())
        );
    }

    #[test]
    fn a_scan_not_done_waits_and_one_that_cannot_judge_refuses() {
        assert!(matches!(
            judge(&scan("IN_PROGRESS", &[]), Severity::Critical),
            Verdict::Wait(_)
        ));
        assert!(matches!(
            judge(&ScanSeen::NotFound, Severity::Critical),
            Verdict::Wait(_)
        ));
        for status in [
            "UNSUPPORTED_IMAGE",
            "FAILED",
            "FINDINGS_UNAVAILABLE",
            "SCAN_ELIGIBILITY_EXPIRED",
        ] {
            let Verdict::CannotJudge(why) = judge(&scan(status, &[]), Severity::Critical) else {
                panic!("{status} passed");
            };
            assert!(why.contains(status), "{why}");
        }
    }
}
