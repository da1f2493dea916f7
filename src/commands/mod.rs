//! The commands: one module per verb. Each observes the world, decides, then prints what it would
//! do (`--dry-run`) or does it, step by step, in a session (`crate::session`).

pub mod destroy;
pub mod flip;
pub mod image;
pub mod observe;
pub mod status;
pub mod steps;
pub mod up;
