//! `release`: blue/green releases of an ML model server to EKS (Fargate) behind CloudFront.
//! Exit codes are listed in the README and in `release::error::Exit`.

// An interrupted or panicking command closes its ledger entry and releases its lock
// (`interruptible`), which needs panics to unwind: refuse to build `release` otherwise.
#[cfg(not(panic = "unwind"))]
compile_error!("release needs panic = \"unwind\" (see [profile.release] in Cargo.toml)");

use std::process::ExitCode;
use std::sync::Arc;

use aws_config::BehaviorVersion;
use clap::{CommandFactory, Parser};
use release::cli::{Cli, Command, ImageCommand};
use release::commands::up::UpArgs;
use release::error::{Exit, Failure};
use release::output::{Format, Reporter};
use release::session::Ctx;

mod offline;

use offline::{image_build, man, print_history, render};

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

/// A configuration that cannot be used (exit 3), with what to do.
fn config_failure(e: impl std::fmt::Display, hint: &str) -> Failure {
    Failure::new(Exit::Config, "configuration", e.to_string(), hint)
}

fn fail(out: &Reporter, e: &Failure) -> ExitCode {
    out.note(&format!("error: {e}"));
    if out.format() == Format::Json {
        let summary = serde_json::json!({"ok": false, "step": e.step, "error": e.message, "caused_by": e.causes(), "what_to_do": e.hint, "exit_code": e.exit as i32});
        out.summary(&summary);
    }
    ExitCode::from(e.exit as u8)
}

async fn run(cli: Cli, out: &Reporter) -> ExitCode {
    if let Some(done) = without_aws(&cli, out) {
        return done;
    }
    let ctx = match context(&cli, out).await {
        Ok(ctx) => ctx,
        Err(done) => return done,
    };
    let done = dispatch(&cli, &ctx).await;
    notify(&cli, &ctx, &done).await;
    match done {
        // History prints its table itself.
        Ok(_)
            if matches!(cli.command, Command::History { .. })
                && ctx.out.format() == Format::Human =>
        {
            ExitCode::SUCCESS
        }
        Ok(summary) => {
            ctx.out.summary(&summary);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&ctx.out, &e),
    }
}

/// Tell `notify.webhook_url` how a command that changes something ended (never for a dry run,
/// which changes nothing). A notification that fails is a warning: it never fails the command.
async fn notify(cli: &Cli, ctx: &Ctx, done: &release::error::Result<serde_json::Value>) {
    let action = match cli.command {
        Command::Up { .. } => "up",
        Command::Promote { .. } => "promote",
        Command::Rollback { .. } => "rollback",
        Command::Destroy { .. } => "destroy",
        Command::Retire { .. } => "retire",
        Command::RotateOriginSecret { .. } => "rotate-origin-secret",
        _ => return,
    };
    // `${SLACK_WEBHOOK_URL:-}` unset: no webhook.
    let Some(url) = ctx
        .config
        .notify
        .webhook_url
        .as_deref()
        .filter(|u| !u.is_empty())
    else {
        return;
    };
    if ctx.dry_run {
        return;
    }
    use release::plan::notify::{Context, Ended, message};
    let (actor, build) = release::session::this_actor();
    let who = Context {
        app: &ctx.config.app,
        action,
        actor: &actor,
        build: build.as_deref(),
    };
    let ended = match done {
        Ok(summary) => Ended::Done(summary),
        Err(e) => Ended::Failed {
            exit: e.exit as i32,
            step: &e.step,
            message: &e.message,
        },
    };
    let Some(body) = message(ctx.config.notify.format, &who, &ended) else {
        return;
    };
    if let Err(why) = release::adapters::notify::send(url, &body).await {
        ctx.out
            .note(&format!("warning: the notification was not sent: {why}"));
    }
}

/// The commands that need neither the configuration nor AWS: image build, completions, man.
fn without_aws(cli: &Cli, out: &Reporter) -> Option<ExitCode> {
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
        return Some(image_build(g, binary.clone(), tag.clone(), dir, out));
    }
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "release",
                &mut std::io::stdout(),
            );
            Some(ExitCode::SUCCESS)
        }
        Command::Man { out: dir } => Some(man(dir.as_deref(), out)),
        _ => None,
    }
}

/// The configuration, its checks that need no AWS (the golden cases, the image: exit 3), the
/// AWS configuration and the state bucket: the context of every other command. `Err`: the exit,
/// the failure printed (or `render` done).
async fn context(cli: &Cli, out: &Reporter) -> Result<Ctx, ExitCode> {
    let g = &cli.global;
    let (config, base) = match release::config::load(&g.config, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            return Err(fail(
                out,
                &config_failure(e, "fix the file; docs/configuration.md lists every field"),
            ));
        }
    };
    if let Command::Render {
        colour,
        image,
        out: dir,
    } = &cli.command
    {
        return Err(render(
            &config,
            &base,
            *colour,
            image.as_deref(),
            dir.as_deref(),
            out,
        ));
    }
    // What can be told without AWS first: the golden cases of a command that smoke-tests, and the
    // image of an up (exit 3).
    if matches!(
        cli.command,
        Command::Up { .. }
            | Command::Promote { .. }
            | Command::Rollback { .. }
            | Command::RotateOriginSecret { .. }
    ) && let Err(e) = config.check_cases("the configuration", &base)
    {
        return Err(fail(
            out,
            &config_failure(
                e,
                "fix the case file; docs/configuration.md says what it holds",
            ),
        ));
    }
    if matches!(cli.command, Command::Up { .. })
        && let Err(e) = release::commands::up::check_image(&config, &base)
    {
        return Err(fail(out, &e));
    }
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(8));
    if let Some(region) = g.region.clone().or_else(|| config.region.clone()) {
        loader = loader.region(aws_config::Region::new(region));
    }
    if let Some(profile) = &g.profile {
        loader = loader.profile_name(profile);
    }
    let aws = loader.load().await;
    let mut config = config;
    if config.state.bucket.is_none()
        && let Err(e) = resolve_state_bucket(&mut config, &aws).await
    {
        return Err(fail(out, &e));
    }
    if config.state.bucket_owner.is_none() {
        match caller_account(&aws, "the state bucket's owner").await {
            Ok(account) => config.state.bucket_owner = Some(account),
            Err(e) => return Err(fail(out, &e)),
        }
    }
    Ok(Ctx {
        config,
        base,
        aws,
        out: Reporter::new(g.output),
        dry_run: g.dry_run,
        yes: g.yes,
        break_live_lock: g.break_live_lock,
        session: Arc::new(tokio::sync::Mutex::new(None)),
        closing: std::sync::atomic::AtomicBool::new(false),
        executed: std::sync::Mutex::new(Vec::new()),
    })
}

/// Run the command in `ctx`, the mutating ones under `interruptible`.
async fn dispatch(cli: &Cli, ctx: &Ctx) -> release::error::Result<serde_json::Value> {
    match &cli.command {
        Command::Up {
            force_unlock,
            force,
            promote,
            retire_previous,
            allow_contract_change,
        } => {
            let args = UpArgs {
                force_unlock: *force_unlock,
                force: *force,
            };
            let up_then_promote = async {
                let up = release::commands::up::up(ctx, &args).await?;
                let mut summary = up.summary;
                if *promote && ctx.dry_run {
                    ctx.out.note("plan: promote: once up has a tested candidate waiting, promote it as `release promote` would");
                }
                if *promote && !ctx.dry_run {
                    if up.candidate_waits {
                        summary["promote"] =
                            release::commands::flip::promote(
                                ctx,
                                false,
                                *retire_previous,
                                None,
                                None,
                                *allow_contract_change,
                                None,
                            )
                            .await?;
                    } else {
                        ctx.out.note("--promote: no candidate waits (nothing to release, or this first release is live already): nothing to promote");
                    }
                }
                Ok(summary)
            };
            interruptible(
                ctx,
                "up",
                "re-run release up; it continues from what is really there",
                up_then_promote,
            )
            .await
        }
        Command::Promote {
            force_unlock,
            retire_previous,
            expect_digest,
            bake,
            allow_contract_change,
            canary,
        } => {
            interruptible(
                ctx,
                "promote",
                "check `release status`, then re-run release promote",
                release::commands::flip::promote(
                    ctx,
                    *force_unlock,
                    *retire_previous,
                    expect_digest.as_deref(),
                    *bake,
                    *allow_contract_change,
                    *canary,
                ),
            )
            .await
        }
        Command::Rollback {
            force_unlock,
            keep_failed,
            expect_digest,
        } => {
            interruptible(
                ctx,
                "rollback",
                "check `release status`, then re-run release rollback",
                release::commands::flip::rollback(
                    ctx,
                    *force_unlock,
                    *keep_failed,
                    expect_digest.as_deref(),
                ),
            )
            .await
        }
        Command::RotateOriginSecret { force_unlock } => interruptible(
            ctx,
            "rotate-origin-secret",
            "re-run release rotate-origin-secret; the edge's value stays accepted until it finishes",
            release::commands::rotate::rotate_origin_secret(ctx, *force_unlock),
        )
        .await,
        Command::Retire { force_unlock } => interruptible(
            ctx,
            "retire",
            "check `release status`, then re-run release retire",
            release::commands::retire::retire(ctx, *force_unlock),
        )
        .await,
        Command::Destroy {
            force_unlock,
            delete_images,
        } => {
            interruptible(
                ctx,
                "destroy",
                "re-run release destroy; it continues with what is left",
                release::commands::destroy::destroy(ctx, *force_unlock, *delete_images),
            )
            .await
        }
        Command::Status => release::commands::status::status(ctx).await,
        Command::History { limit } => release::commands::status::history(ctx, *limit)
            .await
            .inspect(|h| {
                if ctx.out.format() == Format::Human {
                    print_history(h)
                }
            }),
        Command::Image { .. }
        | Command::Render { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => unreachable!("handled above"),
    }
}

/// Run a command that holds the app's lock. On Ctrl-C, SIGTERM (a cancelled CI job), SIGHUP (a
/// closed terminal) or a panic, stop it, close its ledger entry and release its lock (tearing down
/// a candidate being deployed), and fail with 130, 143, 129 or 1 and `hint`.
async fn interruptible(
    ctx: &Ctx,
    command: &str,
    hint: &str,
    work: impl std::future::Future<Output = release::error::Result<serde_json::Value>>,
) -> release::error::Result<serde_json::Value> {
    use futures_util::FutureExt;
    use tokio::signal::unix::{Signal, SignalKind, signal};
    // Registered before the work starts, so that no signal finds the default action (death with
    // the lock held). A signal this process was started ignoring stays ignored, as POSIX
    // utilities leave it: `nohup release up` ignores SIGHUP, a script's `release up &` SIGINT.
    let handle = |kind: SignalKind, number: libc::c_int| -> std::io::Result<Option<Signal>> {
        if inherited_ignore(number) {
            Ok(None)
        } else {
            signal(kind).map(Some)
        }
    };
    let handlers = handle(SignalKind::interrupt(), libc::SIGINT).and_then(|i| {
        Ok((
            i,
            handle(SignalKind::terminate(), libc::SIGTERM)?,
            handle(SignalKind::hangup(), libc::SIGHUP)?,
        ))
    });
    let (mut int, mut term, mut hup) = handlers.map_err(|e| {
        Failure::new(
            Exit::Internal,
            command,
            format!("cannot handle signals: {e}"),
            "",
        )
    })?;
    async fn received(s: &mut Option<Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    let mut work = std::pin::pin!(std::panic::AssertUnwindSafe(work).catch_unwind());
    // A signal that came while the run was closing, acted on once the closing is done.
    let mut pending: Option<(Exit, String, String)> = None;
    let (exit, why, hint) = loop {
        let stop = tokio::select! {
            r = &mut work => match r {
                Ok(r) => return r,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into());
                    break (Exit::Internal, format!("internal error (a bug): {what}"), format!("{hint}; please report this with the output above"));
                }
            },
            _ = received(&mut int) => (Exit::Interrupted, "interrupted (Ctrl-C)".to_string(), hint.to_string()),
            _ = received(&mut term) => (Exit::Terminated, "interrupted (SIGTERM)".to_string(), hint.to_string()),
            _ = received(&mut hup) => (Exit::HangUp, "interrupted (SIGHUP)".to_string(), hint.to_string()),
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)), if pending.is_some() => {
                if ctx.closing.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                break pending.take().expect("pending");
            }
        };
        release::session::signalled();
        // The run is already closing (tearing a failed candidate down, closing its ledger entry,
        // releasing the lock): cut short, it would leave half of that and record a finished run
        // as failed. It finishes first and ends with its own outcome.
        if ctx.closing.load(std::sync::atomic::Ordering::SeqCst) {
            ctx.out.note(&format!(
                "{}: the run is closing; it finishes that first",
                stop.1
            ));
            pending.get_or_insert(stop);
            continue;
        }
        break stop;
    };
    release::session::finish_session(ctx, Some(why.clone()), None).await;
    Err(Failure::new(exit, command, why, hint))
}

/// The state bucket when the config names none: the one the registry stack made, if it is there
/// (an install from before the default changed keeps its `<app>-release-state`, its ledger and its
/// lock), else the caller's account's and region's (STS GetCallerIdentity).
async fn resolve_state_bucket(
    config: &mut release::config::Config,
    aws: &aws_config::SdkConfig,
) -> Result<(), Failure> {
    let hint = "check the AWS credentials and region, or set state.bucket in the config";
    let registry = release::adapters::stacks::Stacks::new(
        release::adapters::endpoint::cloudformation(aws),
        std::time::Duration::from_secs(60),
        None,
    )
    .observe(&config.stack_name("registry"))
    .await?;
    if let Some(bucket) = registry.outputs.get("StateBucketName") {
        config.state.bucket = Some(bucket.clone());
        return Ok(());
    }
    let region = aws.region().map(|r| r.to_string()).ok_or_else(|| {
        Failure::new(
            Exit::Aws,
            "state bucket",
            "no AWS region: the default state bucket is named after it",
            "set AWS_REGION, --region or region in the config",
        )
    })?;
    let account = caller_account(aws, "the default state bucket's name").await?;
    config
        .state
        .bucket_owner
        .get_or_insert_with(|| account.clone());
    config
        .resolve_state_bucket(&account, &region)
        .map_err(|e| Failure::new(Exit::Config, "configuration", e, hint))
}

/// The caller's AWS account (STS GetCallerIdentity), for `what`.
async fn caller_account(aws: &aws_config::SdkConfig, what: &str) -> Result<String, Failure> {
    let hint = "check the AWS credentials and region, or set state.bucket and state.bucket_owner in the config";
    let who = release::adapters::endpoint::sts(aws)
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| {
            Failure::new(
                Exit::Aws,
                "state bucket",
                format!(
                    "cannot tell the account for {what}: {}",
                    release::error::sdk(e)
                ),
                hint,
            )
        })?;
    who.account()
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            Failure::new(
                Exit::Aws,
                "state bucket",
                format!("STS GetCallerIdentity named no account, needed for {what}"),
                hint,
            )
        })
}

/// Whether `signal` was ignored when this process started (before any handler of ours).
fn inherited_ignore(signal: libc::c_int) -> bool {
    // SAFETY: sigaction(2) with no new action only reads the signal's current disposition into
    // `old`, a zeroed plain C struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}
