//! The push to ECR through the layer-upload API, skipping the layers ECR already has.

use super::*;
use aws_sdk_ecr::primitives::Blob;
use aws_sdk_ecr::types::ImageIdentifier;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("ECR {call} failed: {source}")]
    Api {
        call: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("layer {digest}: {source}")]
    Layer {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ECR computed {got} for a blob whose digest is {want}")]
    DigestMismatch { want: String, got: String },
    #[error(
        "tag {tag} of {repository} already names {existing}, not {pushed}; ECR tags are immutable, so use a new tag"
    )]
    TagTaken {
        repository: String,
        tag: String,
        existing: String,
        pushed: String,
    },
}

fn api(call: &'static str) -> impl FnOnce(String) -> PushError {
    move |e| PushError::Api {
        call,
        source: e.into(),
    }
}

/// Bytes sent for each blob (0 when ECR already had it), then the image digest.
pub struct Pushed {
    pub digest: String,
    pub uploaded_bytes: u64,
    pub skipped_blobs: usize,
}

/// Push `image` to `repository` under `tag`. Idempotent: pushing the same image and tag again
/// uploads nothing and succeeds; a tag that already names another image is refused.
pub async fn push(
    ecr: &aws_sdk_ecr::Client,
    repository: &str,
    tag: &str,
    image: &Image,
    mut progress: impl FnMut(u64),
) -> Result<Pushed, PushError> {
    let present = present_layers(ecr, repository, image).await?;
    let mut uploaded = 0u64;
    let mut skipped = 0;
    for b in image.blobs() {
        if present.contains(&b.digest) {
            skipped += 1;
            continue;
        }
        upload(ecr, repository, b, &mut |n| {
            uploaded += n;
            progress(uploaded)
        })
        .await?;
    }
    let digest = image.digest();
    put_manifest(ecr, repository, tag, image, &digest).await?;
    Ok(Pushed {
        digest,
        uploaded_bytes: uploaded,
        skipped_blobs: skipped,
    })
}

/// The digests of the image's blobs the repository already has.
pub async fn present_layers(
    ecr: &aws_sdk_ecr::Client,
    repository: &str,
    image: &Image,
) -> Result<Vec<String>, PushError> {
    let digests: Vec<String> = image.blobs().map(|b| b.digest.clone()).collect();
    let availability = ecr
        .batch_check_layer_availability()
        .repository_name(repository)
        .set_layer_digests(Some(digests))
        .send()
        .await
        .map_err(|e| api("BatchCheckLayerAvailability")(crate::error::sdk(e)))?;
    Ok(availability
        .layers()
        .iter()
        .filter(|l| {
            l.layer_availability()
                .is_some_and(|a| a.as_str() == "AVAILABLE")
        })
        .filter_map(|l| l.layer_digest().map(str::to_string))
        .collect())
}

/// Upload one blob in parts; `sent` is told each part's size. ECR must name the same digest.
async fn upload(
    ecr: &aws_sdk_ecr::Client,
    repository: &str,
    b: &ImageBlob,
    sent: &mut impl FnMut(u64),
) -> Result<(), PushError> {
    let upload = ecr
        .initiate_layer_upload()
        .repository_name(repository)
        .send()
        .await
        .map_err(|e| api("InitiateLayerUpload")(crate::error::sdk(e)))?;
    let id = upload.upload_id().unwrap_or_default().to_string();
    let bytes = b.bytes().map_err(|e| PushError::Layer {
        digest: b.digest.clone(),
        source: e,
    })?;
    for (i, chunk) in bytes.chunks(PART_SIZE).enumerate() {
        let first = (i * PART_SIZE) as i64;
        ecr.upload_layer_part()
            .repository_name(repository)
            .upload_id(&id)
            .part_first_byte(first)
            .part_last_byte(first + chunk.len() as i64 - 1)
            .layer_part_blob(Blob::new(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| api("UploadLayerPart")(crate::error::sdk(e)))?;
        sent(chunk.len() as u64);
    }
    let done = ecr
        .complete_layer_upload()
        .repository_name(repository)
        .upload_id(&id)
        .layer_digests(&b.digest)
        .send()
        .await
        .map_err(|e| api("CompleteLayerUpload")(crate::error::sdk(e)))?;
    let got = done.layer_digest().unwrap_or_default();
    if got != b.digest {
        return Err(PushError::DigestMismatch {
            want: b.digest.clone(),
            got: got.to_string(),
        });
    }
    Ok(())
}

/// Put the manifest under `tag`. ECR tags are immutable: a tag that already names this image is
/// fine, one that names another is `TagTaken`.
async fn put_manifest(
    ecr: &aws_sdk_ecr::Client,
    repository: &str,
    tag: &str,
    image: &Image,
    digest: &str,
) -> Result<(), PushError> {
    let put = ecr
        .put_image()
        .repository_name(repository)
        .image_manifest(&image.manifest)
        .image_manifest_media_type(image.media_type())
        .image_tag(tag)
        .send()
        .await;
    let e = match put {
        Ok(out) => {
            let got = out
                .image()
                .and_then(|i| i.image_id())
                .and_then(|id| id.image_digest())
                .unwrap_or_default();
            if got != digest {
                return Err(PushError::DigestMismatch {
                    want: digest.to_string(),
                    got: got.to_string(),
                });
            }
            return Ok(());
        }
        Err(e) => e,
    };
    let already = e.as_service_error().is_some_and(|s| {
        s.is_image_already_exists_exception() || s.is_image_tag_already_exists_exception()
    });
    if !already {
        return Err(api("PutImage")(crate::error::sdk(e)));
    }
    let existing = ecr
        .batch_get_image()
        .repository_name(repository)
        .image_ids(ImageIdentifier::builder().image_tag(tag).build())
        .send()
        .await
        .map_err(|e| api("BatchGetImage")(crate::error::sdk(e)))?;
    let existing = existing
        .images()
        .first()
        .and_then(|i| i.image_id())
        .and_then(|id| id.image_digest())
        .unwrap_or_default()
        .to_string();
    if existing != digest {
        return Err(PushError::TagTaken {
            repository: repository.into(),
            tag: tag.into(),
            existing,
            pushed: digest.to_string(),
        });
    }
    Ok(())
}
