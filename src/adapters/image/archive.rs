//! Reading an image someone else built: an OCI layout, an OCI archive, or a `docker save` tar.

use super::*;
use std::path::Path;

/// Read an image from an OCI image layout directory, an OCI archive (that layout in a tar), or a
/// `docker save` tar (its layers are gzipped on the way, as `docker push` does).
pub fn read_archive(path: &Path) -> std::io::Result<Image> {
    let files = if path.is_dir() {
        layout_files(path)?
    } else {
        tar_files(path)?
    };
    if files.contains_key("index.json") {
        return from_oci(&files);
    }
    from_docker_save(&files)
}

/// A file name in an archive or layout, and its bytes.
type Files = std::collections::HashMap<String, Vec<u8>>;

fn bad(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// An OCI layout directory's index, manifest and blobs.
fn layout_files(path: &Path) -> std::io::Result<Files> {
    let mut files = Files::new();
    for name in ["index.json", "manifest.json"] {
        if let Ok(b) = std::fs::read(path.join(name)) {
            files.insert(name.into(), b);
        }
    }
    for entry in std::fs::read_dir(path.join("blobs/sha256"))? {
        let entry = entry?;
        files.insert(
            format!("blobs/sha256/{}", entry.file_name().to_string_lossy()),
            std::fs::read(entry.path())?,
        );
    }
    Ok(files)
}

/// Every file of a tar archive.
fn tar_files(path: &Path) -> std::io::Result<Files> {
    let mut files = Files::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes)?;
        files.insert(name, bytes);
    }
    Ok(files)
}

/// An OCI image: index.json to its (linux/amd64) manifest, the config and layers it names, each
/// checked against its digest.
fn from_oci(files: &Files) -> std::io::Result<Image> {
    let blob_of = |digest: &str| {
        files
            .get(&format!(
                "blobs/sha256/{}",
                digest.trim_start_matches("sha256:")
            ))
            .cloned()
            .ok_or_else(|| bad(format!("blob {digest} is missing")))
    };
    let mut index: serde_json::Value = serde_json::from_slice(&files["index.json"])
        .map_err(|e| bad(format!("index.json: {e}")))?;
    // index.json may point at an image index (Docker 25+'s `docker save`, buildx): follow it to
    // the linux/amd64 image, which is what Fargate runs here.
    let mut manifest = None;
    for _ in 0..4 {
        let d = linux_amd64(&index).map_err(bad)?;
        let bytes = blob_of(&d.digest)?;
        if !d.is_index {
            manifest = Some(bytes);
            break;
        }
        index = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("image index {}: {e}", d.digest)))?;
    }
    let manifest = manifest.ok_or_else(|| bad("image indexes nested too deep".into()))?;
    let manifest =
        String::from_utf8(manifest).map_err(|_| bad("the manifest is not UTF-8".into()))?;
    let m: serde_json::Value =
        serde_json::from_str(&manifest).map_err(|e| bad(format!("manifest: {e}")))?;
    let config_digest = m["config"]["digest"]
        .as_str()
        .ok_or_else(|| bad("the manifest has no config".into()))?;
    let bytes = blob_of(config_digest)?;
    let config = ImageBlob {
        media_type: CONFIG_MEDIA_TYPE,
        digest: config_digest.into(),
        size: bytes.len() as u64,
        content: Content::Bytes(bytes),
    };
    let mut layers = Vec::new();
    for l in m["layers"].as_array().into_iter().flatten() {
        let d = l["digest"]
            .as_str()
            .ok_or_else(|| bad("a layer without a digest".into()))?;
        let bytes = blob_of(d)?;
        layers.push(ImageBlob {
            media_type: LAYER_MEDIA_TYPE,
            digest: d.into(),
            size: bytes.len() as u64,
            content: Content::Bytes(bytes),
        });
    }
    for b in std::iter::once(&config).chain(layers.iter()) {
        if sha256(&b.bytes()?) != b.digest {
            return Err(bad(format!("blob {} does not match its digest", b.digest)));
        }
    }
    Ok(Image {
        config,
        layers,
        manifest,
    })
}

/// A `docker save` archive: manifest.json's config and layer tars, the layers gzipped on the way
/// (as `docker push` does) and an OCI manifest made for them.
fn from_docker_save(files: &Files) -> std::io::Result<Image> {
    let docker = files.get("manifest.json").ok_or_else(|| {
        bad("neither an OCI layout (index.json) nor a docker save archive (manifest.json)".into())
    })?;
    let docker: serde_json::Value =
        serde_json::from_slice(docker).map_err(|e| bad(format!("manifest.json: {e}")))?;
    let entry = &docker[0];
    let file = |name: &str| {
        files
            .get(name)
            .cloned()
            .ok_or_else(|| bad(format!("{name} is missing from the archive")))
    };
    let config = blob(
        CONFIG_MEDIA_TYPE,
        file(
            entry["Config"]
                .as_str()
                .ok_or_else(|| bad("manifest.json has no Config".into()))?,
        )?,
    );
    let mut layers = Vec::new();
    for l in entry["Layers"].as_array().into_iter().flatten() {
        let tar = file(l.as_str().unwrap_or_default())?;
        layers.push(blob(LAYER_MEDIA_TYPE, gzip(&tar)?));
    }
    Ok(Image::of(config, layers))
}

pub(super) const INDEX_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// An image index's entry to follow: its digest, and whether it is itself an index.
struct Entry {
    digest: String,
    is_index: bool,
}

/// The entry of an index for linux/amd64 (or its only image), leaving out attestations (BuildKit
/// lists them with platform unknown/unknown and `vnd.docker.reference.type`).
fn linux_amd64(index: &serde_json::Value) -> Result<Entry, String> {
    let all: Vec<&serde_json::Value> = index["manifests"]
        .as_array()
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    let images: Vec<&serde_json::Value> = all
        .iter()
        .copied()
        .filter(|m| {
            m["annotations"]["vnd.docker.reference.type"] != "attestation-manifest"
                && m["platform"]["os"] != "unknown"
        })
        .collect();
    let platform = |m: &serde_json::Value| {
        format!(
            "{}/{}",
            m["platform"]["os"].as_str().unwrap_or("?"),
            m["platform"]["architecture"].as_str().unwrap_or("?")
        )
    };
    let chosen = match images.as_slice() {
        [] => return Err("the image index lists no image".into()),
        [only] if only.get("platform").is_none() => *only,
        _ => images
            .iter()
            .copied()
            .find(|m| platform(m) == "linux/amd64")
            .ok_or_else(|| {
                format!(
                    "the image index has no linux/amd64 image (it has {}); build for linux/amd64, which the Fargate profile runs",
                    images.iter().map(|m| platform(m)).collect::<Vec<_>>().join(", ")
                )
            })?,
    };
    let digest = chosen["digest"]
        .as_str()
        .ok_or("an index entry without a digest")?
        .to_string();
    let is_index = chosen["mediaType"]
        .as_str()
        .is_some_and(|t| INDEX_MEDIA_TYPES.contains(&t));
    Ok(Entry { digest, is_index })
}
