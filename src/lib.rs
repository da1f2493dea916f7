//! The `release` library: what the CLI (src/main.rs) is made of. See ../shared/DESIGN.md.
//! Pure core: `config`, `state`, `plan`. Adapters: `store` (S3), `stacks` (CloudFormation),
//! `image` (OCI images, ECR). Commands: `up`. Output: `output`.

pub mod colour;
pub mod config;
pub mod eks;
pub mod error;
pub mod image;
pub mod output;
pub mod plan;
pub mod promote;
pub mod smoke;
pub mod stacks;
pub mod state;
pub mod store;
pub mod up;
