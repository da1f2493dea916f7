//! `release`: blue/green releases of an ML model server to EKS (Fargate) behind CloudFront.
//!
//! The lifecycle commands (`up`, `promote`, `rollback`, `destroy`, `status`, `history`) arrive with
//! their issues; see ../shared/DESIGN.md. Until then the binary only answers `--help` and `--version`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "release",
    version,
    about = "Blue/green releases of an ML model server to EKS (Fargate) behind CloudFront"
)]
struct Cli {}

fn main() {
    let Cli {} = Cli::parse();
    eprintln!("release: no command yet; the lifecycle commands are being built (see README.md)");
    std::process::exit(2);
}
