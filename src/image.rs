//! Container images without Docker: an OCI image made from one static binary (one gzipped tar
//! layer, a config, a manifest), byte-for-byte reproducible, and its push to ECR through the
//! layer-upload API (skipping layers ECR already has; the digest is the manifest's sha256, as ECR
//! computes it).

use std::io::Write;
use std::path::Path;

use aws_sdk_ecr::primitives::Blob;
use aws_sdk_ecr::types::ImageIdentifier;
use serde_json::json;
use sha2::{Digest, Sha256};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// ECR takes layer parts of at least 5 MiB (but the last); 8 MiB keeps requests few and small.
const PART_SIZE: usize = 8 << 20;

pub struct ImageBlob {
    pub media_type: &'static str,
    pub digest: String,
    pub bytes: Vec<u8>,
}

/// An image ready to push: its blobs and its manifest.
pub struct Image {
    pub config: ImageBlob,
    pub layers: Vec<ImageBlob>,
    pub manifest: String,
}

impl Image {
    /// The digest ECR will give the image: sha256 of the manifest bytes.
    pub fn digest(&self) -> String {
        sha256(self.manifest.as_bytes())
    }

    /// Every blob the manifest refers to, config first.
    pub fn blobs(&self) -> impl Iterator<Item = &ImageBlob> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn blob(media_type: &'static str, bytes: Vec<u8>) -> ImageBlob {
    ImageBlob {
        media_type,
        digest: sha256(&bytes),
        bytes,
    }
}

/// What goes into the image besides the binary.
pub struct ImageSpec<'a> {
    /// Path of the binary inside the image, also the entrypoint (e.g. `/model-server`).
    pub path_in_image: &'a str,
    pub env: &'a [(String, String)],
    /// `uid:gid`; distroless's nonroot is 65532.
    pub user: &'a str,
    pub exposed_port: u16,
    pub labels: &'a [(String, String)],
}

/// Build the image from one static binary. Same inputs, same bytes, same digest.
pub fn from_binary(binary: &Path, spec: &ImageSpec<'_>) -> std::io::Result<Image> {
    let data = std::fs::read(binary)?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(
        &mut header,
        spec.path_in_image.trim_start_matches('/'),
        &data[..],
    )?;
    let tar = tar.into_inner()?;
    let diff_id = sha256(&tar);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    let layer = blob(LAYER_MEDIA_TYPE, gz.finish()?);

    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let labels: serde_json::Map<String, serde_json::Value> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let config = json!({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": [spec.path_in_image], "Env": env, "User": spec.user, "WorkingDir": "/",
            "ExposedPorts": {format!("{}/tcp", spec.exposed_port): {}}, "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "release image build"}],
    });
    let config = blob(
        CONFIG_MEDIA_TYPE,
        serde_json::to_vec(&config).map_err(std::io::Error::other)?,
    );
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.bytes.len()},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.bytes.len()}],
    });
    Ok(Image {
        config,
        layers: vec![layer],
        manifest: manifest.to_string(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("ECR {call} failed: {source}")]
    Api {
        call: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
    let digests: Vec<String> = image.blobs().map(|b| b.digest.clone()).collect();
    let availability = ecr
        .batch_check_layer_availability()
        .repository_name(repository)
        .set_layer_digests(Some(digests))
        .send()
        .await
        .map_err(|e| api("BatchCheckLayerAvailability")(ctx(e)))?;
    let present: Vec<String> = availability
        .layers()
        .iter()
        .filter(|l| {
            l.layer_availability()
                .is_some_and(|a| a.as_str() == "AVAILABLE")
        })
        .filter_map(|l| l.layer_digest().map(str::to_string))
        .collect();
    let mut uploaded = 0u64;
    let mut skipped = 0;
    for b in image.blobs() {
        if present.contains(&b.digest) {
            skipped += 1;
            continue;
        }
        let upload = ecr
            .initiate_layer_upload()
            .repository_name(repository)
            .send()
            .await
            .map_err(|e| api("InitiateLayerUpload")(ctx(e)))?;
        let id = upload.upload_id().unwrap_or_default().to_string();
        for (i, chunk) in b.bytes.chunks(PART_SIZE).enumerate() {
            let first = (i * PART_SIZE) as i64;
            ecr.upload_layer_part()
                .repository_name(repository)
                .upload_id(&id)
                .part_first_byte(first)
                .part_last_byte(first + chunk.len() as i64 - 1)
                .layer_part_blob(Blob::new(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| api("UploadLayerPart")(ctx(e)))?;
            uploaded += chunk.len() as u64;
            progress(uploaded);
        }
        let done = ecr
            .complete_layer_upload()
            .repository_name(repository)
            .upload_id(&id)
            .layer_digests(&b.digest)
            .send()
            .await
            .map_err(|e| api("CompleteLayerUpload")(ctx(e)))?;
        let got = done.layer_digest().unwrap_or_default();
        if got != b.digest {
            return Err(PushError::DigestMismatch {
                want: b.digest.clone(),
                got: got.to_string(),
            });
        }
    }
    let digest = image.digest();
    let put = ecr
        .put_image()
        .repository_name(repository)
        .image_manifest(&image.manifest)
        .image_manifest_media_type(MANIFEST_MEDIA_TYPE)
        .image_tag(tag)
        .send()
        .await;
    match put {
        Ok(out) => {
            let got = out
                .image()
                .and_then(|i| i.image_id())
                .and_then(|id| id.image_digest())
                .unwrap_or_default();
            if got != digest {
                return Err(PushError::DigestMismatch {
                    want: digest,
                    got: got.to_string(),
                });
            }
        }
        Err(e) => {
            let already = e.as_service_error().is_some_and(|s| {
                s.is_image_already_exists_exception() || s.is_image_tag_already_exists_exception()
            });
            if !already {
                return Err(api("PutImage")(ctx(e)));
            }
            let existing = ecr
                .batch_get_image()
                .repository_name(repository)
                .image_ids(ImageIdentifier::builder().image_tag(tag).build())
                .send()
                .await
                .map_err(|e| api("BatchGetImage")(ctx(e)))?;
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
                    pushed: digest,
                });
            }
        }
    }
    Ok(Pushed {
        digest,
        uploaded_bytes: uploaded,
        skipped_blobs: skipped,
    })
}

fn ctx<E: std::error::Error + 'static>(e: E) -> String {
    aws_sdk_ecr::error::DisplayErrorContext(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_binary_makes_the_same_image() {
        let dir = std::env::temp_dir().join(format!("release-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("bin");
        std::fs::write(&bin, b"#!/bin/true\n").unwrap();
        let spec = ImageSpec {
            path_in_image: "/model-server",
            env: &[("A".into(), "1".into())],
            user: "65532:65532",
            exposed_port: 8080,
            labels: &[],
        };
        let a = from_binary(&bin, &spec).unwrap();
        let b = from_binary(&bin, &spec).unwrap();
        assert_eq!(a.digest(), b.digest());
        let manifest: serde_json::Value = serde_json::from_str(&a.manifest).unwrap();
        assert_eq!(manifest["layers"][0]["digest"], a.layers[0].digest);
        assert_eq!(manifest["config"]["size"], a.config.bytes.len());
        let config: serde_json::Value = serde_json::from_slice(&a.config.bytes).unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/model-server");
        assert_eq!(config["config"]["Env"][0], "A=1");
        // The layer holds the binary, executable, at the entrypoint path.
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&a.layers[0].bytes[..]));
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("model-server"));
        assert_eq!(entry.header().mode().unwrap(), 0o755);
        std::fs::write(&bin, b"#!/bin/false\n").unwrap();
        assert_ne!(from_binary(&bin, &spec).unwrap().digest(), a.digest());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
