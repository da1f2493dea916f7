//! Which images the registry must keep. The registry stack's lifecycle policy expires CI's images
//! 30 days after their push, but never one carrying a `release-keep-` tag: an image that matches
//! a rule's tags cannot be expired by a rule of lower priority (ECR User Guide, "Lifecycle policy
//! evaluation rules"). The keep tags are slots, one per colour (`release-keep-blue`: the image
//! that colour runs) and one for each image the rollbacks in a row would deploy again
//! (`release-keep-rollback`, `release-keep-rollback-2`, from the ledger), so a pod rescheduled
//! onto a new node can always pull what it runs, and every rollback the ledger offers finds its
//! image, however many builds CI pushed since; at most four images are kept.
//!
//! A slot moves by putting the image's manifest again under the tag (PutImage), which the
//! repository allows for these tags alone (`IMMUTABLE_WITH_EXCLUSION`, filter `release-keep-*`;
//! every other tag stays immutable). The image the tag leaves keeps its CI tag and ages out.
//! Nothing is ever untagged: that takes ecr:BatchDeleteImage, which can delete images and is the
//! destroy role's alone (cloudformation/ci-role.yaml); a retired colour's slot stays on its last
//! image until the colour is deployed again.

use std::collections::BTreeMap;

/// The tag prefix the lifecycle policy never expires (`cloudformation/registry.yaml`).
pub const KEEP_PREFIX: &str = "release-keep-";

/// The slot of the image a rollback would deploy again.
pub const ROLLBACK_SLOT: &str = "rollback";

/// The slot of the image the `level`th rollback in a row would deploy again: `rollback`, then
/// `rollback-2`, as deep as the ledger's rollback stack is read (`state::STACK_DEPTH`), so each
/// rollback in a row finds its image even when it was pushed more than 30 days before.
pub fn rollback_slot(level: usize) -> String {
    match level {
        0 | 1 => ROLLBACK_SLOT.to_string(),
        n => format!("{ROLLBACK_SLOT}-{n}"),
    }
}

/// The keep tag of a slot (a colour's name, or `ROLLBACK_SLOT`).
pub fn keep_tag(slot: &str) -> String {
    format!("{KEEP_PREFIX}{slot}")
}

/// The step that keeps the images in use, as the plans name it.
pub const PROTECT_STEP: &str = "protect images";

/// What that step does, as the plans print it: `in_use` is the image digest of each slot.
pub fn protect_what(in_use: &BTreeMap<String, String>) -> String {
    let slots: Vec<String> = in_use
        .iter()
        .map(|(slot, d)| {
            let short: String = d.chars().take("sha256:".len() + 12).collect();
            format!("{} {short}", keep_tag(slot))
        })
        .collect();
    let from_ledger: Vec<String> = (1..crate::state::STACK_DEPTH)
        .map(rollback_slot)
        .filter(|slot| !in_use.contains_key(slot))
        .map(|slot| keep_tag(&slot))
        .collect();
    let rollback = if from_ledger.is_empty() {
        String::new()
    } else {
        format!(
            ", and {} to what the rollbacks in a row would deploy again, from the ledger",
            from_ledger.join(", ")
        )
    };
    format!(
        "move the keep tags (exempt from the registry's 30-day expiry) to the images in use: {}{rollback}",
        if slots.is_empty() {
            "none".to_string()
        } else {
            slots.join(", ")
        }
    )
}

/// What to change in the registry's tags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepChanges {
    /// Tags to put: (digest, keep tag), moving the tag from wherever it is.
    pub tag: Vec<(String, String)>,
    /// Images in use that the registry does not have (nothing to keep), with their slot.
    pub missing: Vec<(String, String)>,
}

/// From the registry's tags by image digest and the digest each slot must name: which tags to
/// put. A digest that is not a well-formed sha256 digest is never tagged (it came from the
/// ledger or the cluster; `state::check_digest`).
pub fn keep_changes(
    tags: &BTreeMap<String, Vec<String>>,
    in_use: &BTreeMap<String, String>,
) -> KeepChanges {
    let mut changes = KeepChanges::default();
    for (slot, digest) in in_use {
        if crate::state::check_digest(digest).is_err() {
            changes.missing.push((slot.clone(), digest.clone()));
            continue;
        }
        let keep = keep_tag(slot);
        match tags.get(digest) {
            Some(t) if t.contains(&keep) => {}
            Some(_) => changes.tag.push((digest.clone(), keep)),
            None => changes.missing.push((slot.clone(), digest.clone())),
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn slots(s: &[(&str, String)]) -> BTreeMap<String, String> {
        s.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn a_slot_tag_is_put_where_it_is_missing_or_on_another_image() {
        let tags = BTreeMap::from([
            (d(1), vec!["ci-1".to_string(), keep_tag("blue")]),
            (d(2), vec!["ci-2".to_string(), keep_tag("green")]),
            (d(3), vec!["ci-3".to_string()]),
        ]);
        let want = slots(&[
            ("blue", d(1)),
            ("green", d(3)),
            ("rollback", d(2)),
            ("x", d(9)),
        ]);
        assert_eq!(
            keep_changes(&tags, &want),
            KeepChanges {
                tag: vec![(d(3), keep_tag("green")), (d(2), keep_tag("rollback"))],
                missing: vec![("x".to_string(), d(9))],
            },
            "blue is where it belongs; green moves from 2 to 3; 9 is not in the registry"
        );
        let settled = BTreeMap::from([(d(1), vec![keep_tag("blue")])]);
        assert_eq!(
            keep_changes(&settled, &slots(&[("blue", d(1))])),
            KeepChanges::default()
        );
    }

    #[test]
    fn a_value_that_is_no_digest_is_never_tagged() {
        let tags = BTreeMap::from([("latest".to_string(), vec!["ci".to_string()])]);
        let changes = keep_changes(&tags, &slots(&[("blue", "latest".to_string())]));
        assert!(changes.tag.is_empty());
        assert_eq!(
            changes.missing,
            [("blue".to_string(), "latest".to_string())]
        );
        assert!(keep_tag("rollback").len() <= 128, "ECR's tag limit");
    }
}
