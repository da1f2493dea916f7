//! The command line: every command, flag and environment variable of `release`. In the library
//! (not `main.rs`) so that tests can parse the CircleCI pipeline's `release ...` lines with this
//! very definition, and `release completions` / `release man` can be generated from it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

#[derive(Parser)]
#[command(
    name = "release",
    version,
    about = "Blue/green releases of an ML model server to EKS (Fargate) behind CloudFront",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args)]
pub struct Global {
    /// The configuration file.
    #[arg(
        long,
        global = true,
        env = "RELEASE_CONFIG",
        default_value = "release.yaml"
    )]
    pub config: PathBuf,
    /// AWS region (else release.yaml's `region`, then the AWS configuration chain).
    #[arg(long, global = true, env = "RELEASE_REGION")]
    pub region: Option<String>,
    /// AWS profile from ~/.aws/config.
    #[arg(long, global = true, env = "RELEASE_PROFILE")]
    pub profile: Option<String>,
    /// `human` (progress on a TTY, timestamped lines otherwise) or `json` (one object per event).
    #[arg(long, global = true, env = "RELEASE_OUTPUT", value_enum, default_value_t = Format::Human)]
    pub output: Format,
    /// Print the plan and change nothing, on every command: no stack, Kubernetes object, ledger
    /// entry, lock or image; the exit code is the real command's decision (8: nothing to do, 4:
    /// locked).
    #[arg(long, global = true, env = "RELEASE_DRY_RUN")]
    pub dry_run: bool,
    /// Answer yes to confirmations (needed without a TTY for destructive commands).
    #[arg(long, short = 'y', global = true, env = "RELEASE_YES")]
    pub yes: bool,
    /// With --force-unlock: break even a live run's lock (its lease running). Its own flag, with
    /// no environment variable: a script that exports RELEASE_YES must not break a live lock.
    #[arg(long, global = true)]
    pub break_live_lock: bool,
    /// More logs (-v: info, -vv: debug), on stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The help of every command's --force-unlock.
const FORCE_UNLOCK: &str = "Break a dead run's lock (its process gone from this host, or its lease expired; with --break-live-lock even a live one)";

#[derive(Subcommand)]
pub enum Command {
    /// Provision the stacks, push the image, deploy the idle colour and smoke-test it.
    ///
    /// The first release also creates the edge and puts the colour live, verified through the
    /// public URL. Later releases leave the live colour serving and wait for `release promote`;
    /// when the live colour already runs this image with these manifests there is nothing to
    /// release. A candidate that fails to deploy or to pass its smoke test is torn down.
    /// Exit codes: 3 config, 4 lock, 5 AWS, 6 deploy, 7 smoke (README).
    Up {
        #[arg(long, help = FORCE_UNLOCK)]
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
        /// With --promote: as `release promote --allow-contract-change`.
        #[arg(long, requires = "promote")]
        allow_contract_change: bool,
    },
    /// Put the tested candidate live.
    ///
    /// Re-runs the candidate's smoke test, flips the edge stack's origin to it, waits until
    /// CloudFront has deployed the change, invalidates the cache when configured, and verifies
    /// through the public URL; if that fails it flips back by itself (exit 9). The old live colour
    /// becomes previous and stays deployed for `release rollback`. Finishes a promote that died
    /// after its flip. Exit 8: no tested candidate.
    Promote {
        #[arg(long, help = FORCE_UNLOCK)]
        force_unlock: bool,
        /// Remove the previous colour after a successful flip.
        #[arg(long)]
        retire_previous: bool,
        /// Promote only if the candidate runs this image digest (exit 8 otherwise): what CI's
        /// `release up` deployed, so that an approval cannot promote another pipeline's candidate.
        #[arg(long, env = "RELEASE_EXPECT_DIGEST", value_name = "sha256:...")]
        expect_digest: Option<String>,
        /// After the verified flip, watch the new live colour's /predict (error rate, p99:
        /// `analysis` in the config) this long before it counts as released, and flip back on a
        /// breach (exit 9). Overrides `promote.bake_seconds`. E.g. `5m`, `90s`.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        bake: Option<std::time::Duration>,
        /// Promote even when the candidate's model contract (feature count, output kind, class
        /// labels in order, regression targets; `/version`) differs from the live colour's: the
        /// difference is printed and recorded. Without it such a promote is refused (exit 7):
        /// clients break on that change even when every health check passes.
        #[arg(long)]
        allow_contract_change: bool,
        /// Before the flip, send this share of viewers (1 to 15 %, CloudFront's limit) to the
        /// candidate through the edge's staging distribution, each viewer kept on its side by a
        /// session cookie, and bake it (`--bake` or `promote.bake_seconds`); a breach takes the
        /// share back and flips nothing (exit 9). Needs `edge.preview: true`.
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=15))]
        canary: Option<u8>,
    },
    /// Put the previous colour back behind the edge.
    ///
    /// When the previous colour was retired, it is redeployed first from the image digest and
    /// model version the ledger recorded, and smoke-tested. Then the edge is flipped, the public
    /// URL verified, and the bad colour retired. Exit 8: nothing was live before.
    Rollback {
        #[arg(long, help = FORCE_UNLOCK)]
        force_unlock: bool,
        /// Keep the bad colour deployed (role `failed`) for forensics.
        #[arg(long)]
        keep_failed: bool,
        /// Roll back only if the live colour runs this image digest (exit 8 otherwise): CI's
        /// rollback job passes what it promoted, so it never undoes a release it did not make.
        #[arg(long, value_name = "sha256:...")]
        expect_digest: Option<String>,
    },
    /// Replace the origin-verify value CloudFront sends and the colours require, refusing no
    /// request on the way.
    ///
    /// The Secret gets a new value and keeps the old one as `previous`; each colour restarts
    /// (rolling) to accept both; the edge stack's OriginSecret becomes the new value and CloudFront
    /// deploys it (its edge locations change over minutes, sending either value meanwhile); the
    /// public URL is verified; the old value is dropped and the colours restart to refuse it. A
    /// rotation a failure or crash left unfinished is finished by running the command again.
    /// Exit 8: nothing is live, or the edge is not settled.
    RotateOriginSecret {
        #[arg(long, help = FORCE_UNLOCK)]
        force_unlock: bool,
    },
    /// Remove the colour traffic left, now.
    ///
    /// The previous colour (kept by a promote, or kept warm until its
    /// `promote.retire_previous_after` deadline) or the failed one (`rollback --keep-failed`):
    /// its Deployment and Service are deleted. A rollback after it redeploys from the ledger's
    /// image instead of being instant. Exit 8: nothing to retire, or refused: a candidate, a
    /// colour release did not leave behind, an edge not settled, a flip left unfinished.
    Retire {
        #[arg(long, help = FORCE_UNLOCK)]
        force_unlock: bool,
    },
    /// Remove everything release made for the app.
    ///
    /// In dependency order: both colours (and the origin Secret, and the namespace if release made
    /// it), the edge, cluster and network stacks; with --delete-images also the images, the
    /// registry stack and the state bucket (ledger and lock) last. Each step skips what is gone, so
    /// a re-run after a failure finishes the job. Asks for the app's name on a terminal; without
    /// one, refuses unless --yes (exit 2).
    Destroy {
        #[arg(long, help = FORCE_UNLOCK)]
        force_unlock: bool,
        /// Delete the images, the registry stack and the state bucket as well.
        #[arg(long)]
        delete_images: bool,
    },
    /// What is deployed, read from the world.
    ///
    /// Per colour: role, image digest, model version, age, pods ready and whether its address
    /// answers; the public URL and which colour answers there; CloudFront's deployment state; the
    /// stacks; the lock holder; a flip left unfinished by a crash. `--output json` for CI.
    Status,
    /// The ledger: every run with its action, colour, image, result, duration and actor.
    History {
        /// Show the last N entries.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Write the Kubernetes manifests of a colour, as `release up` would apply them.
    ///
    /// For review and for checks (the CI `templates` job runs checkov on them). The image is
    /// `--image` if given, else the repository named by release.yaml with a placeholder digest.
    Render {
        /// The colour to render.
        #[arg(long, value_parser = colour, default_value = "blue")]
        colour: crate::plan::colour::Colour,
        /// The image reference to put in the Deployment (`repo@sha256:...`).
        #[arg(long)]
        image: Option<String>,
        /// Directory to write `<colour>.yaml` into (else stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Container images without Docker.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) of release and its commands.
    Man {
        /// Write release.1 and release-<command>.1 into this directory instead of printing release.1.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ImageCommand {
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

/// `blue` or `green`, for clap.
fn colour(s: &str) -> Result<crate::plan::colour::Colour, String> {
    crate::plan::colour::Colour::parse(s)
        .ok_or_else(|| format!("{s:?} is not a colour: blue or green"))
}
