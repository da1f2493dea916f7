//! `release`: blue/green releases of an ML model server to EKS (Fargate) behind CloudFront.
//! Exit codes are listed in the README and in `release::error::Exit`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use aws_config::BehaviorVersion;
use clap::{Args, Parser, Subcommand};
use release::error::{Exit, Failure};
use release::output::{Format, Reporter};
use release::up::{Ctx, UpArgs};

#[derive(Parser)]
#[command(
    name = "release",
    version,
    about = "Blue/green releases of an ML model server to EKS (Fargate) behind CloudFront",
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "RELEASE_CONFIG",
        default_value = "release.yaml"
    )]
    config: PathBuf,
    /// AWS region (else release.yaml's `region`, then the AWS configuration chain).
    #[arg(long, global = true, env = "RELEASE_REGION")]
    region: Option<String>,
    /// AWS profile from ~/.aws/config.
    #[arg(long, global = true, env = "RELEASE_PROFILE")]
    profile: Option<String>,
    /// `human` (progress on a TTY, timestamped lines otherwise) or `json` (one object per event).
    #[arg(long, global = true, env = "RELEASE_OUTPUT", value_enum, default_value_t = Format::Human)]
    output: Format,
    /// Print the plan and change nothing.
    #[arg(long, global = true, env = "RELEASE_DRY_RUN")]
    dry_run: bool,
    /// Answer yes to confirmations (needed without a TTY for destructive commands).
    #[arg(long, short = 'y', global = true, env = "RELEASE_YES")]
    yes: bool,
    /// More logs (-v: info, -vv: debug), on stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Provision the stacks, push the image (and, next, deploy and smoke-test the idle colour).
    Up {
        /// Break the app's lock if its lease has expired (with --yes, even a live one).
        #[arg(long)]
        force_unlock: bool,
        /// Deploy a candidate even when the live colour runs this image already.
        #[arg(long)]
        force: bool,
        /// Then promote the tested candidate (`release up` followed by `release promote`).
        #[arg(long)]
        promote: bool,
        /// With --promote: remove the previous colour after the flip.
        #[arg(long, requires = "promote")]
        retire_previous: bool,
    },
    /// Put the tested candidate live: re-test it, flip the edge to it, verify through the public
    /// URL (flipping back by itself if that fails); the old live colour becomes previous.
    Promote {
        #[arg(long)]
        force_unlock: bool,
        /// Remove the previous colour after a successful flip.
        #[arg(long)]
        retire_previous: bool,
    },
    /// Put the previous colour back behind the edge (verified through the public URL) and retire
    /// the bad one.
    Rollback {
        #[arg(long)]
        force_unlock: bool,
        /// Keep the bad colour deployed for forensics.
        #[arg(long)]
        keep_failed: bool,
    },
    /// Remove everything release made for the app: colours, then the edge, cluster and network
    /// stacks; with --delete-images the images, the registry and the state bucket too. Re-runnable.
    Destroy {
        #[arg(long)]
        force_unlock: bool,
        /// Delete the images, the registry stack and the state bucket as well.
        #[arg(long)]
        delete_images: bool,
    },
    /// The live, candidate and previous colours, the public URL, the stacks, the lock holder.
    Status,
    /// The ledger: every release with its result and actor.
    History {
        /// Show the last N entries.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Container images without Docker.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the model-server image from a static binary into an OCI image layout directory.
    Build {
        /// The static model-server binary (else release.yaml's image.binary).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The tag recorded in the layout (else release.yaml's image.tag).
        #[arg(long)]
        tag: Option<String>,
        /// Where to write the OCI image layout.
        #[arg(long, default_value = "target/image")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.global.verbose {
        0 => "warn",
        1 => "info,release=debug",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RELEASE_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // kube's TLS: ring (the AWS SDK brings aws-lc-rs too, so the choice must be explicit).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let out = Reporter::new(cli.global.output);
    let code = runtime.block_on(run(cli, &out));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

fn fail(out: &Reporter, e: &Failure) -> ExitCode {
    out.note(&format!("error: {e}"));
    if out.format() == Format::Json {
        let summary = serde_json::json!({"ok": false, "step": e.step, "error": e.message, "what_to_do": e.hint, "exit_code": e.exit as i32});
        out.summary(&summary);
    }
    ExitCode::from(e.exit as u8)
}

async fn run(cli: Cli, out: &Reporter) -> ExitCode {
    let g = &cli.global;
    if let Command::Image {
        command:
            ImageCommand::Build {
                binary,
                tag,
                out: dir,
            },
    } = &cli.command
    {
        return image_build(g, binary.clone(), tag.clone(), dir, out);
    }
    let (config, base) = match release::config::load(&g.config, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                out,
                &Failure::new(
                    Exit::Config,
                    "configuration",
                    e.to_string(),
                    "fix the file; docs/configuration.md lists every field",
                ),
            );
        }
    };
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(8));
    if let Some(region) = g.region.clone().or_else(|| config.region.clone()) {
        loader = loader.region(aws_config::Region::new(region));
    }
    if let Some(profile) = &g.profile {
        loader = loader.profile_name(profile);
    }
    let aws = loader.load().await;
    let ctx = Ctx {
        config,
        base,
        aws,
        out: Reporter::new(g.output),
        dry_run: g.dry_run,
        yes: g.yes,
        session: Arc::new(tokio::sync::Mutex::new(None)),
    };
    let result = match &cli.command {
        Command::Up {
            force_unlock,
            force,
            promote,
            retire_previous,
        } => {
            let args = UpArgs {
                force_unlock: *force_unlock,
                force: *force,
            };
            let up_then_promote = async {
                let mut summary = release::up::up(&ctx, &args).await?;
                let candidate = summary["candidate"].as_str().map(str::to_string);
                let waiting =
                    candidate.is_some_and(|c| summary["live"].as_str().is_some_and(|l| l != c));
                if *promote && !ctx.dry_run {
                    if waiting {
                        summary["promote"] =
                            release::promote::promote(&ctx, false, *retire_previous).await?;
                    } else {
                        ctx.out.note("--promote: no candidate waits (nothing to release, or this first release is live already)");
                    }
                }
                Ok(summary)
            };
            tokio::select! {
                r = up_then_promote => r,
                _ = tokio::signal::ctrl_c() => {
                    release::up::finish_session(&ctx, Some("interrupted (Ctrl-C)".into()), None).await;
                    Err(Failure::new(Exit::Interrupted, "up", "interrupted", "re-run release up; it continues from what is really there"))
                }
            }
        }
        Command::Promote {
            force_unlock,
            retire_previous,
        } => {
            tokio::select! {
                r = release::promote::promote(&ctx, *force_unlock, *retire_previous) => r,
                _ = tokio::signal::ctrl_c() => {
                    release::up::finish_session(&ctx, Some("interrupted (Ctrl-C)".into()), None).await;
                    Err(Failure::new(Exit::Interrupted, "promote", "interrupted", "check `release status`, then re-run release promote"))
                }
            }
        }
        Command::Rollback {
            force_unlock,
            keep_failed,
        } => {
            tokio::select! {
                r = release::promote::rollback(&ctx, *force_unlock, *keep_failed) => r,
                _ = tokio::signal::ctrl_c() => {
                    release::up::finish_session(&ctx, Some("interrupted (Ctrl-C)".into()), None).await;
                    Err(Failure::new(Exit::Interrupted, "rollback", "interrupted", "check `release status`, then re-run release rollback"))
                }
            }
        }
        Command::Destroy {
            force_unlock,
            delete_images,
        } => release::promote::destroy(&ctx, *force_unlock, *delete_images).await,
        Command::Status => release::promote::status(&ctx).await,
        Command::History { limit } => release::promote::history(&ctx, *limit).await.inspect(|h| {
            if ctx.out.format() == Format::Human {
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
        }),
        Command::Image { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(summary)
            if matches!(cli.command, Command::History { .. })
                && ctx.out.format() == Format::Human =>
        {
            let _ = summary;
            ExitCode::SUCCESS
        }
        Ok(summary) => {
            ctx.out.summary(&summary);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&ctx.out, &e),
    }
}

fn image_build(
    g: &Global,
    binary: Option<PathBuf>,
    tag: Option<String>,
    dir: &std::path::Path,
    out: &Reporter,
) -> ExitCode {
    let loaded = release::config::load(&g.config, |k| std::env::var(k).ok()).ok();
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
    let (model, version) = loaded
        .as_ref()
        .map(|(c, _)| (c.model.name.clone(), c.model.version.clone()))
        .unwrap_or_else(|| ("iris".into(), "1.0.0".into()));
    let model_file = loaded
        .as_ref()
        .and_then(|(c, b)| c.model.path.as_ref().map(|m| b.join(m)));
    let result = release::up::image_from(&binary, model_file.as_deref(), &tag, &model, &version)
        .and_then(|image| {
            release::image::write_layout(&image, &tag, dir).map_err(|e| {
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
