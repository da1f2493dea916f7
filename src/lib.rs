//! The `release` library: what the CLI (src/main.rs) is made of (docs/architecture.md).
//! Pure core: `config`, `state`, `plan`, `colour::roles`. Adapters: `endpoint` (the AWS clients), `store` (S3), `stacks`
//! (CloudFormation), `image` (OCI images, ECR), `eks`, `colour` (Kubernetes), `smoke`. Commands:
//! `commands` (one module per verb), run in a `session` (the lock, the ledger entry, each step). The command line: `cli`.

pub mod addons;
pub mod cli;
pub mod colour;
pub mod commands;
pub mod config;
pub mod eks;
pub mod endpoint;
pub mod error;
pub mod image;
pub mod output;
pub mod plan;
pub mod session;
pub mod smoke;
pub mod stacks;
pub mod state;
pub mod store;
pub mod wait;
