//! Container images without Docker: an OCI image made from one static binary (one gzipped tar
//! layer, a config, a manifest), byte-for-byte reproducible, and its push to ECR through the
//! layer-upload API (skipping layers ECR already has; the digest is the manifest's sha256, as ECR
//! computes it).

use std::io::Write;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

mod archive;
pub mod keep;
mod push;
pub mod scan;

pub use archive::read_archive;
pub use push::{PushError, Pushed, present_layers, push};
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// ECR takes layer parts of at least 5 MiB (but the last); 8 MiB keeps requests few and small.
const PART_SIZE: usize = 8 << 20;

pub struct ImageBlob {
    pub media_type: &'static str,
    pub digest: String,
    pub size: u64,
    content: Content,
}

enum Content {
    Bytes(Vec<u8>),
    /// A layer whose gzipped digest came from the [`LayerCache`]: its tar, gzipped only when the
    /// bytes are needed (a push of a layer the registry lacks, an image layout written). With
    /// the cache entry it came from.
    Tar(Vec<u8>, std::path::PathBuf),
}

impl ImageBlob {
    /// The blob's bytes. A cached layer is gzipped now and checked against the digest and size
    /// the cache gave; a mismatch (a cache written by a build whose gzip differs) is an error
    /// that names the cache, whose entry is dropped, so a re-run gzips afresh.
    pub fn bytes(&self) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        match &self.content {
            Content::Bytes(b) => Ok(std::borrow::Cow::Borrowed(b)),
            Content::Tar(tar, entry) => {
                let gz = gzip(tar)?;
                if sha256(&gz) != self.digest || gz.len() as u64 != self.size {
                    let _ = std::fs::remove_file(entry);
                    return Err(std::io::Error::other(format!(
                        "the layer cache gave {} for a layer that gzips to {}; its entry ({}) was removed, re-run",
                        self.digest,
                        sha256(&gz),
                        entry.display()
                    )));
                }
                Ok(std::borrow::Cow::Owned(gz))
            }
        }
    }
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

    /// The manifest's own media type, which PutImage must declare (ECR API reference, PutImage:
    /// `imageManifestMediaType`, required when the manifest has no `mediaType`): a Docker v2
    /// manifest from a `docker save` layout is not an OCI one. An OCI manifest may omit the field.
    pub fn media_type(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.manifest)
            .ok()
            .and_then(|m| m["mediaType"].as_str().map(str::to_string))
            .unwrap_or_else(|| MANIFEST_MEDIA_TYPE.to_string())
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
        size: bytes.len() as u64,
        content: Content::Bytes(bytes),
    }
}

fn gzip(tar: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(tar)?;
    gz.finish()
}

/// What gzipping a layer gave, by the layer's uncompressed digest (its diff_id): so an unchanged
/// build learns its image digest without gzipping again (on the sandbox a no-op `up` spent most of
/// its time there). One small file per layer, `<dir>/layers/<diff_id>`, holding the gzipped
/// digest, its size and the gzip it came from; best effort: a cache that cannot be read or
/// written is no cache.
pub struct LayerCache {
    dir: Option<std::path::PathBuf>,
}

/// Which gzip made a cached digest: another `release` version may gzip differently.
const GZIP_ID: &str = concat!(
    "release-",
    env!("CARGO_PKG_VERSION"),
    " flate2 default mtime0"
);

impl LayerCache {
    /// `RELEASE_CACHE_DIR`, else `$XDG_CACHE_HOME/release`, else `~/.cache/release`; an empty
    /// `RELEASE_CACHE_DIR` turns the cache off.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var_os(k).map(std::path::PathBuf::from);
        let dir = match var("RELEASE_CACHE_DIR") {
            Some(d) if d.as_os_str().is_empty() => None,
            Some(d) => Some(d),
            None => var("XDG_CACHE_HOME")
                .or_else(|| var("HOME").map(|h| h.join(".cache")))
                .map(|d| d.join("release")),
        };
        LayerCache { dir }
    }

    pub fn at(dir: Option<&Path>) -> Self {
        LayerCache {
            dir: dir.map(Path::to_path_buf),
        }
    }

    fn entry(&self, diff_id: &str) -> Option<std::path::PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(
            dir.join("layers")
                .join(diff_id.trim_start_matches("sha256:")),
        )
    }

    /// The gzipped digest and size cached for `diff_id`, and the entry they are in.
    fn get(&self, diff_id: &str) -> Option<(String, u64, std::path::PathBuf)> {
        let entry = self.entry(diff_id)?;
        let text = std::fs::read_to_string(&entry).ok()?;
        let (digest, rest) = text.split_once(' ')?;
        let (size, id) = rest.split_once(' ')?;
        if id.trim_end() != GZIP_ID || !digest.starts_with("sha256:") {
            return None;
        }
        Some((digest.to_string(), size.parse().ok()?, entry))
    }

    fn put(&self, diff_id: &str, blob: &ImageBlob) {
        let Some(path) = self.entry(diff_id) else {
            return;
        };
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = path
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| {
                std::fs::write(&tmp, format!("{} {} {GZIP_ID}\n", blob.digest, blob.size))?;
                std::fs::rename(&tmp, &path)
            });
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
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
    /// A model file for its own layer: (path in the image, file).
    pub model: Option<(&'a str, &'a Path)>,
}

/// One gzipped tar layer of the given files (path in the image, mode, bytes), in the given order,
/// owned by root, mtime 0: the same files make the same bytes. Its gzip is skipped when `cache`
/// already knows what it gives.
fn layer(files: &[(&str, u32, &[u8])], cache: &LayerCache) -> std::io::Result<(ImageBlob, String)> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mode, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path.trim_start_matches('/'), *data)?;
    }
    let tar = tar.into_inner()?;
    let diff_id = sha256(&tar);
    if let Some((digest, size, entry)) = cache.get(&diff_id) {
        let cached = ImageBlob {
            media_type: LAYER_MEDIA_TYPE,
            digest,
            size,
            content: Content::Tar(tar, entry),
        };
        return Ok((cached, diff_id));
    }
    let gzipped = blob(LAYER_MEDIA_TYPE, gzip(&tar)?);
    cache.put(&diff_id, &gzipped);
    Ok((gzipped, diff_id))
}

/// Build the image from one static binary (the first layer) and, when given, a model file (a
/// second layer, so a new model alone changes only that layer). Same inputs, same bytes, same
/// digest.
pub fn from_binary(
    binary: &Path,
    spec: &ImageSpec<'_>,
    cache: &LayerCache,
) -> std::io::Result<Image> {
    let data = std::fs::read(binary)?;
    let mut layers = vec![layer(&[(spec.path_in_image, 0o755, &data)], cache)?];
    if let Some((path, model)) = spec.model {
        let bytes = std::fs::read(model)?;
        layers.push(layer(&[(path, 0o644, &bytes)], cache)?);
    }
    let diff_ids: Vec<&String> = layers.iter().map(|(_, d)| d).collect();
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
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "release image build"}],
    });
    let config = blob(
        CONFIG_MEDIA_TYPE,
        serde_json::to_vec(&config).map_err(std::io::Error::other)?,
    );
    let layers: Vec<ImageBlob> = layers.into_iter().map(|(b, _)| b).collect();
    Ok(Image::of(config, layers))
}

impl Image {
    /// The image made of `config` and `layers`, with the OCI manifest that names them.
    fn of(config: ImageBlob, layers: Vec<ImageBlob>) -> Image {
        let manifest = json!({
            "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
            "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
        });
        Image {
            config,
            layers,
            manifest: manifest.to_string(),
        }
    }
}

/// Write `image` as an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`).
pub fn write_layout(image: &Image, tag: &str, dir: &Path) -> std::io::Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let write_blob = |digest: &str, bytes: &[u8]| {
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), bytes)
    };
    for b in image.blobs() {
        write_blob(&b.digest, &b.bytes()?)?;
    }
    write_blob(&image.digest(), image.manifest.as_bytes())?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{
        "mediaType": MANIFEST_MEDIA_TYPE, "digest": image.digest(), "size": image.manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), index.to_string())
}

#[cfg(test)]
mod tests {
    use super::archive::INDEX_MEDIA_TYPES;
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, name, *data).unwrap();
        }
        t.into_inner().unwrap()
    }

    #[test]
    fn a_docker_save_archive_is_read_with_its_layers_gzipped() {
        let layer = tar_of(&[("model-server", b"binary")]);
        let config = br#"{"config":{"Entrypoint":["/model-server"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let manifest =
            br#"[{"Config":"cfg.json","RepoTags":["iris:1"],"Layers":["abc/layer.tar"]}]"#;
        let archive = tar_of(&[
            ("manifest.json", manifest),
            ("cfg.json", config),
            ("abc/layer.tar", &layer),
        ]);
        let path =
            std::env::temp_dir().join(format!("release-docker-save-{}.tar", std::process::id()));
        std::fs::write(&path, archive).unwrap();
        let image = read_archive(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(&image.config.bytes().unwrap()[..], config);
        assert_eq!(image.layers.len(), 1);
        let mut unpacked = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&image.layers[0].bytes().unwrap()[..]),
            &mut unpacked,
        )
        .unwrap();
        assert_eq!(unpacked, layer, "the layer is the saved tar, gzipped");
        let m: serde_json::Value = serde_json::from_str(&image.manifest).unwrap();
        assert_eq!(m["layers"][0]["digest"], image.layers[0].digest);
        assert_eq!(m["config"]["digest"], sha256(config));
        let missing =
            std::env::temp_dir().join(format!("release-not-an-image-{}.tar", std::process::id()));
        std::fs::write(&missing, tar_of(&[("hello.txt", b"hi")])).unwrap();
        let err = read_archive(&missing).err().expect("not an image");
        assert!(err.to_string().contains("neither an OCI layout"), "{err}");
        std::fs::remove_file(&missing).unwrap();
    }

    #[test]
    fn an_oci_layout_whose_index_points_at_an_image_index_gives_its_linux_amd64_image() {
        // As Docker 25+'s `docker save` or buildx write it: index.json -> an image index listing
        // an arm64 image, the amd64 one (a Docker v2 manifest) and an attestation.
        let spec = ImageSpec {
            path_in_image: "/model-server",
            env: &[],
            user: "65532:65532",
            exposed_port: 8080,
            labels: &[],
            model: None,
        };
        let dir = std::env::temp_dir().join(format!("release-index-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("bin"), b"#!/bin/true\n").unwrap();
        let image = from_binary(&dir.join("bin"), &spec, &LayerCache::at(None)).unwrap();
        let put = |bytes: &[u8]| {
            let d = sha256(bytes);
            std::fs::write(
                dir.join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
                bytes,
            )
            .unwrap();
            d
        };
        for b in image.blobs() {
            put(&b.bytes().unwrap());
        }
        let mut docker: serde_json::Value = serde_json::from_str(&image.manifest).unwrap();
        docker["mediaType"] = json!("application/vnd.docker.distribution.manifest.v2+json");
        let docker = docker.to_string();
        let amd64 = put(docker.as_bytes());
        let entry = |digest: &str, os: &str, arch: &str, kind: &str| {
            json!({"mediaType": kind, "digest": digest, "size": 1,
                   "platform": {"os": os, "architecture": arch}})
        };
        let manifest = "application/vnd.docker.distribution.manifest.v2+json";
        let index = json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPES[0], "manifests": [
            entry(&sha256(b"arm"), "linux", "arm64", manifest),
            {"mediaType": MANIFEST_MEDIA_TYPE, "digest": sha256(b"att"), "size": 1,
             "platform": {"os": "unknown", "architecture": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
            entry(&amd64, "linux", "amd64", manifest),
        ]})
        .to_string();
        let index_digest = put(index.as_bytes());
        let top = json!({"schemaVersion": 2, "manifests": [
            {"mediaType": INDEX_MEDIA_TYPES[0], "digest": index_digest, "size": index.len()}]});
        std::fs::write(dir.join("index.json"), top.to_string()).unwrap();
        let read = read_archive(&dir).unwrap();
        assert_eq!(read.manifest, docker);
        assert_eq!(read.digest(), amd64);
        assert_eq!(
            read.media_type(),
            manifest,
            "PutImage declares the manifest's own type"
        );
        // An index with no linux/amd64 image is refused with what it has.
        let arm_only = json!({"schemaVersion": 2, "manifests": [
            entry(&sha256(b"arm"), "linux", "arm64", manifest)]});
        std::fs::write(dir.join("index.json"), arm_only.to_string()).unwrap();
        let err = read_archive(&dir).err().expect("no amd64 image");
        assert!(
            err.to_string()
                .contains("no linux/amd64 image (it has linux/arm64)"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(image.media_type(), MANIFEST_MEDIA_TYPE);
    }

    #[test]
    fn the_same_binary_makes_the_same_image() {
        let dir = std::env::temp_dir().join(format!("release-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("bin");
        std::fs::write(&bin, b"#!/bin/true\n").unwrap();
        let none = LayerCache::at(None);
        let spec = ImageSpec {
            path_in_image: "/model-server",
            env: &[("A".into(), "1".into())],
            user: "65532:65532",
            exposed_port: 8080,
            labels: &[],
            model: None,
        };
        let a = from_binary(&bin, &spec, &none).unwrap();
        let b = from_binary(&bin, &spec, &none).unwrap();
        assert_eq!(a.digest(), b.digest());
        let manifest: serde_json::Value = serde_json::from_str(&a.manifest).unwrap();
        assert_eq!(manifest["layers"][0]["digest"], a.layers[0].digest);
        assert_eq!(manifest["config"]["size"], a.config.size);
        let config: serde_json::Value = serde_json::from_slice(&a.config.bytes().unwrap()).unwrap();
        assert_eq!(config["config"]["Entrypoint"][0], "/model-server");
        assert_eq!(config["config"]["Env"][0], "A=1");
        // The layer holds the binary, executable, at the entrypoint path.
        let gz = a.layers[0].bytes().unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("model-server"));
        assert_eq!(entry.header().mode().unwrap(), 0o755);
        // The layout reads back as the same image, as a directory and as a tar of it.
        write_layout(&a, "v1", &dir.join("layout")).unwrap();
        assert_eq!(
            read_archive(&dir.join("layout")).unwrap().digest(),
            a.digest()
        );
        let mut t = tar::Builder::new(Vec::new());
        t.append_dir_all(".", dir.join("layout")).unwrap();
        std::fs::write(dir.join("oci.tar"), t.into_inner().unwrap()).unwrap();
        assert_eq!(
            read_archive(&dir.join("oci.tar")).unwrap().manifest,
            a.manifest
        );
        // A model file goes into a layer of its own; the binary's layer is unchanged.
        std::fs::write(dir.join("m.onnx"), b"model").unwrap();
        let with_model = ImageSpec {
            model: Some(("model/m.onnx", &dir.join("m.onnx"))),
            ..spec
        };
        let m = from_binary(&bin, &with_model, &none).unwrap();
        assert_eq!(m.layers.len(), 2);
        assert_eq!(m.layers[0].digest, a.layers[0].digest);
        let gz = m.layers[1].bytes().unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("model/m.onnx"));
        std::fs::write(&bin, b"#!/bin/false\n").unwrap();
        assert_ne!(
            from_binary(&bin, &spec, &none).unwrap().digest(),
            a.digest()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unchanged_layer_is_not_gzipped_again_and_gzips_the_same_when_needed() {
        let dir = std::env::temp_dir().join(format!("release-cache-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("bin");
        std::fs::write(&bin, b"#!/bin/true\n".repeat(1000)).unwrap();
        let spec = ImageSpec {
            path_in_image: "/model-server",
            env: &[],
            user: "65532:65532",
            exposed_port: 8080,
            labels: &[],
            model: None,
        };
        let cache = LayerCache::at(Some(&dir.join("cache")));
        let fresh = from_binary(&bin, &spec, &cache).unwrap();
        assert!(matches!(fresh.layers[0].content, Content::Bytes(_)));
        let again = from_binary(&bin, &spec, &cache).unwrap();
        assert!(
            matches!(again.layers[0].content, Content::Tar(..)),
            "the second build takes the layer's digest from the cache"
        );
        assert_eq!(again.manifest, fresh.manifest);
        assert_eq!(
            again.layers[0].bytes().unwrap(),
            fresh.layers[0].bytes().unwrap()
        );
        // A cache entry that lies (another gzip, a corrupted file) is caught when the bytes are
        // needed, and dropped: the next build gzips afresh.
        let entry = cache.entry(&sha256(b"")).unwrap();
        let layers = entry.parent().unwrap();
        let file = std::fs::read_dir(layers)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let lie = format!("sha256:{} 12 {GZIP_ID}\n", "0".repeat(64));
        std::fs::write(&file, lie).unwrap();
        let lied = from_binary(&bin, &spec, &cache).unwrap();
        assert_ne!(lied.manifest, fresh.manifest);
        let err = lied.layers[0].bytes().unwrap_err().to_string();
        assert!(
            err.contains("layer cache") && err.contains("re-run"),
            "{err}"
        );
        let healed = from_binary(&bin, &spec, &cache).unwrap();
        assert_eq!(healed.manifest, fresh.manifest);
        // An entry from another gzip is no entry.
        std::fs::write(
            &file,
            format!("{} {} release-0.0.0 other\n", fresh.layers[0].digest, 1),
        )
        .unwrap();
        assert!(matches!(
            from_binary(&bin, &spec, &cache).unwrap().layers[0].content,
            Content::Bytes(_)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
