//! `model-server` binary: parse flags, load and warm up the model, serve until SIGTERM, drain, exit 0.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::serve::ListenerExt;
use clap::Parser;
use model_server::config::{Config, LogFormat};
use model_server::{AppState, app, lifecycle};
use tracing_subscriber::EnvFilter;

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    init_logging(&config);
    // One worker: a current-thread runtime, which skips the work-stealing machinery entirely.
    let mut builder = match config.worker_threads() {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("model-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("model-server: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let state = AppState::from_config(&config)
        .and_then(|state| state.warm_up().map(|()| Arc::new(state)))
        .map_err(|e| format!("start-up failed: {e}"))?;
    let address = SocketAddr::new(config.bind, config.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))?;
    // Before the `serving` line: from then on a SIGTERM drains (lifecycle::termination_signal).
    let signal = lifecycle::termination_signal();
    tracing::info!(
        address = %listener.local_addr().map_err(|e| e.to_string())?,
        model_name = %state.model_name,
        model_version = %state.model_version,
        model_sha256 = %state.model.sha256(),
        colour = %state.colour,
        origin_verification = state.origin_verify_secret.is_some(),
        build = model_server::BUILD,
        workers = config.worker_threads(),
        "serving"
    );
    let shutdown = lifecycle::drain_on_signal(state.lifecycle.clone(), config.drain(), signal);
    // Answers are one small write each: send them at once rather than waiting on Nagle.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("all requests finished; exiting");
    Ok(())
}
