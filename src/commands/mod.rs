//! The commands: one module per verb. Each observes the world, decides, then prints what it would
//! do (`--dry-run`) or does it, step by step, in a session (`crate::session`).

pub mod destroy;
pub mod flip;
pub mod image;
pub mod observe;
pub mod retire;
pub mod rotate;
pub mod status;
pub mod steps;
pub mod up;

use serde_json::{Value, json};

use crate::session::Ctx;

/// Print one planned step: `plan: <step>: <what>`, then what undoes it.
pub fn print_step(ctx: &Ctx, s: &crate::plan::PlannedStep) {
    ctx.out.note(&format!("plan: {}: {}", s.step, s.what));
    if let Some(undo) = &s.undo {
        ctx.out.note(&format!("      undo: {undo}"));
    }
}

/// Print a dry run's steps (`plan: <step>: <what>`, then what undoes it) and return them as the command's summary,
/// with `extra`'s fields.
pub fn print_plan(ctx: &Ctx, steps: &[crate::plan::PlannedStep], extra: Value) -> Value {
    for s in steps {
        print_step(ctx, s);
    }
    let mut summary = match extra {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    summary.insert("plan".into(), json!(steps));
    summary.insert("dry run".into(), json!("nothing was changed"));
    Value::Object(summary)
}
