//! The `release` library: what the CLI (src/main.rs) is made of. See ../shared/DESIGN.md.

pub mod image;
