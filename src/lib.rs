//! The `release` library: what the CLI (src/main.rs) is made of (docs/architecture.md).
//! Pure core: `plan` (every decision), `config`, `state`. Adapters: `adapters` (AWS, Kubernetes,
//! HTTP; none knows the commands). Commands: `commands` (one module per verb), run in a
//! `session` (the lock, the ledger entry, each step). The command line: `cli`; output: `output`.

pub mod adapters;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod output;
pub mod plan;
pub mod session;
pub mod state;
pub mod wait;
