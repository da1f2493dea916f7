//! `release image build`, and the model-server image every `release up` pushes.

use std::path::Path;

use crate::adapters::image::{self, Image, ImageSpec};
use crate::error::{Exit, Failure, Result};

/// The model-server image `release` builds: the binary at /model-server, non-root, labelled with
/// the model version, the model's sha256 (`config::ModelConfig::sha256`: what the smoke test
/// requires `/version` to report) and the revision.
pub fn image_from(
    binary: &Path,
    model_file: Option<&Path>,
    tag: &str,
    model: &crate::config::ModelConfig,
) -> Result<Image> {
    let (version, sha256) = (model.version.as_str(), model.sha256.as_str());
    let model = model.name.as_str();
    let mut env = vec![
        ("MODEL_SERVER_PORT".to_string(), "8080".to_string()),
        ("MODEL_SERVER_MODEL_NAME".into(), model.into()),
        ("MODEL_SERVER_MODEL_VERSION".into(), version.into()),
    ];
    // Relative to the image's working directory (/), so the same path works in a container and in
    // the sandbox, which runs the unpacked image without a chroot.
    let in_image = format!("model/{model}.onnx");
    if model_file.is_some() {
        env.push(("MODEL_SERVER_MODEL_PATH".into(), in_image.clone()));
    }
    let labels = [
        (
            "org.opencontainers.image.revision".to_string(),
            tag.to_string(),
        ),
        ("release.model.name".into(), model.into()),
        ("release.model.version".into(), version.into()),
        ("release.model.sha256".into(), sha256.into()),
    ];
    let spec = ImageSpec {
        path_in_image: "/model-server",
        env: &env,
        user: "65532:65532",
        exposed_port: 8080,
        labels: &labels,
        model: model_file.map(|m| (in_image.as_str(), m)),
    };
    image::from_binary(binary, &spec, &image::LayerCache::from_env()).map_err(|e| {
        Failure::new(
            Exit::Config,
            "image build",
            format!("{}: {e}", binary.display()),
            "build the static model-server first, or fix image.binary",
        )
    })
}
