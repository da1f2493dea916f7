//! The commands of the binary that need no AWS: `image build`, `render`, `man`, and the table
//! `history` prints.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use release::cli::{Cli, Global};
use release::error::{Exit, Failure};
use release::output::Reporter;

use crate::{config_failure, fail};

/// `release image build`: the model-server image as an OCI layout in `dir`, built from the binary
/// and the model the configuration names (CI builds it once and `up` pushes the same bytes).
pub fn image_build(
    g: &Global,
    binary: Option<PathBuf>,
    tag: Option<String>,
    dir: &std::path::Path,
    out: &Reporter,
) -> ExitCode {
    // Only image and model are read: settings that only deploying uses may be unset (CI's build
    // job). A configuration that is there but broken is an error, never silently skipped (the
    // image would be built without its model).
    let loaded = if g.config.exists() {
        match release::config::load_for_image(&g.config, |k| std::env::var(k).ok()) {
            Ok(c) => Some(c),
            Err(e) => {
                return fail(
                    out,
                    &config_failure(
                        e,
                        "fix the file, or set the variable (image build reads only image and model)",
                    ),
                );
            }
        }
    } else {
        None
    };
    let binary = binary.or_else(|| {
        loaded
            .as_ref()
            .and_then(|(c, b)| c.image.binary.as_ref().map(|p| b.join(p)))
    });
    let tag = tag.or_else(|| loaded.as_ref().map(|(c, _)| c.image.tag.clone()));
    let (Some(binary), Some(tag)) = (binary, tag) else {
        return fail(
            out,
            &Failure::new(
                Exit::Usage,
                "image build",
                "no binary or tag",
                "give --binary and --tag, or a release.yaml with image.binary and image.tag",
            ),
        );
    };
    let model = loaded
        .as_ref()
        .map(|(c, _)| c.model.clone())
        .unwrap_or_else(|| release::config::ModelConfig {
            sha256: release::config::model_sha256(release::config::BUNDLED_MODEL),
            ..Default::default()
        });
    let model_file = loaded
        .as_ref()
        .and_then(|(c, b)| c.model.path.as_ref().map(|m| b.join(m)));
    let result = release::commands::image::image_from(&binary, model_file.as_deref(), &tag, &model)
        .and_then(|image| {
            release::adapters::image::write_layout(&image, &tag, dir).map_err(|e| {
                Failure::new(
                    Exit::Internal,
                    "image build",
                    format!("writing {}: {e}", dir.display()),
                    "check the output directory",
                )
            })?;
            Ok(image.digest())
        });
    match result {
        Ok(digest) => {
            out.summary(&serde_json::json!({"layout": dir.display().to_string(), "tag": tag, "digest": digest}));
            ExitCode::SUCCESS
        }
        Err(e) => fail(out, &e),
    }
}

/// `release man`: the man page of release, or with --out one page per command.
pub fn man(dir: Option<&std::path::Path>, out: &Reporter) -> ExitCode {
    let cmd = Cli::command();
    let written = match dir {
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
        Some(d) => std::fs::create_dir_all(d).and_then(|_| clap_mangen::generate_to(cmd, d)),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(
            out,
            &Failure::new(
                Exit::Internal,
                "man",
                e.to_string(),
                "check the output directory",
            ),
        ),
    }
}

/// `release render`: a colour's manifests as `release up` would apply them.
pub fn render(
    config: &release::config::Config,
    base: &std::path::Path,
    colour: release::adapters::colour::Colour,
    image: Option<&str>,
    dir: Option<&std::path::Path>,
    out: &Reporter,
) -> ExitCode {
    let placeholder = format!("sha256:{}", "0".repeat(64));
    let image = image
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}@{placeholder}", config.app));
    let digest = image
        .split_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or(placeholder);
    let rendered = release::adapters::colour::render(
        &base.join(&config.deploy.templates),
        config,
        colour,
        &image,
        &digest,
        "render",
        "candidate",
    )
    .map_err(|e| Failure::new(Exit::Config, "render", e, "fix kube-templates/"))
    .and_then(|(manifests, _)| {
        let docs: Vec<String> = manifests
            .iter()
            .map(|m| serde_yaml::to_string(m).expect("YAML"))
            .collect();
        let text = docs.join("---\n");
        match dir {
            None => {
                print!("{text}");
                Ok(())
            }
            Some(d) => std::fs::create_dir_all(d)
                .and_then(|_| std::fs::write(d.join(format!("{colour}.yaml")), text))
                .map_err(|e| {
                    Failure::new(
                        Exit::Internal,
                        "render",
                        format!("{}: {e}", d.display()),
                        "check the output directory",
                    )
                }),
        }
    });
    match rendered {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(out, &e),
    }
}

/// `release history` as a table.
pub fn print_history(h: &serde_json::Value) {
    for r in h["releases"].as_array().into_iter().flatten() {
        let s = |k: &str| {
            r[k].as_str().map(str::to_string).unwrap_or_else(|| {
                if r[k].is_null() {
                    "-".into()
                } else {
                    r[k].to_string()
                }
            })
        };
        println!(
            "{:<14} {:<8} {:<6} {:<12} {:<14} {:>6}s  {}",
            s("id"),
            s("action"),
            s("colour"),
            s("image"),
            s("outcome"),
            s("duration_s"),
            s("actor")
        );
    }
}
