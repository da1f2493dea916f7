//! The registry's keep tags (`plan::images`): what the repository has, and the slot tags put
//! so that each names the image in use.

use std::collections::BTreeMap;

use aws_sdk_ecr::types::ImageIdentifier;

use crate::plan::images::{KeepChanges, keep_changes};

/// Every image of `repository`, by digest, with its tags (none for an untagged one), over every
/// page of ListImages (which lists an image once per tag).
pub async fn tags_by_digest(
    ecr: &aws_sdk_ecr::Client,
    repository: &str,
) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut tags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pages = ecr
        .list_images()
        .repository_name(repository)
        .into_paginator()
        .items()
        .send();
    while let Some(id) = pages.next().await {
        let id = id.map_err(|e| format!("ECR ListImages: {}", crate::error::sdk(e)))?;
        let Some(digest) = id.image_digest() else {
            continue;
        };
        let entry = tags.entry(digest.to_string()).or_default();
        entry.extend(id.image_tag().map(str::to_string));
    }
    Ok(tags)
}

/// Tag `digest` with `tag`: its own manifest put again under the tag (ECR API reference,
/// PutImage), which moves the tag from the image that had it: the repository leaves keep tags
/// mutable (`cloudformation/registry.yaml`).
async fn tag(
    ecr: &aws_sdk_ecr::Client,
    repository: &str,
    digest: &str,
    tag: &str,
) -> Result<(), String> {
    let got = ecr
        .batch_get_image()
        .repository_name(repository)
        .image_ids(ImageIdentifier::builder().image_digest(digest).build())
        .accepted_media_types(super::MANIFEST_MEDIA_TYPE)
        .accepted_media_types("application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .await
        .map_err(|e| format!("ECR BatchGetImage {digest}: {}", crate::error::sdk(e)))?;
    let Some(image) = got.images().first() else {
        return Err(format!("ECR has no image {digest} in {repository}"));
    };
    let put = ecr
        .put_image()
        .repository_name(repository)
        .image_manifest(image.image_manifest().unwrap_or_default())
        .set_image_manifest_media_type(image.image_manifest_media_type().map(str::to_string))
        .image_digest(digest)
        .image_tag(tag)
        .send()
        .await;
    match put {
        Ok(_) => Ok(()),
        // Tagged already (a run that died after this call): done. ImageTagAlreadyExists is not:
        // the tag is on another image and the repository would not move it (its keep tags are
        // not excluded from immutability yet), so the image stays unprotected.
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_image_already_exists_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("ECR PutImage {tag}: {}", crate::error::sdk(e))),
    }
}

/// Put every keep slot's tag on its image in `repository`; says what it did.
pub async fn protect(
    ecr: &aws_sdk_ecr::Client,
    repository: &str,
    in_use: &BTreeMap<String, String>,
) -> Result<String, String> {
    let changes: KeepChanges = keep_changes(&tags_by_digest(ecr, repository).await?, in_use);
    for (digest, keep) in &changes.tag {
        tag(ecr, repository, digest, keep).await?;
    }
    let mut said = format!(
        "{} images in use kept ({} tags moved)",
        in_use.len() - changes.missing.len(),
        changes.tag.len()
    );
    if !changes.missing.is_empty() {
        said.push_str(&format!(
            "; not in the registry: {}",
            changes
                .missing
                .iter()
                .map(|(slot, d)| format!("{d} ({slot})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(said)
}
