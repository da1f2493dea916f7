//! `sandbox serve`: start the whole sandbox (cluster, AWS stand-in, edge) and run until SIGTERM.
//! `sandbox token`: print an ExecCredential for kubectl (the kubeconfig `serve` writes uses it).
//! Started by `scripts/sandbox up` and by the end-to-end tests, which read `<state>/env`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use nix::sys::signal::Signal;
use sandbox::{api, cluster_net, deployments, kubelet, lb, store, system, tls};
use serde_json::json;

#[derive(Parser)]
#[command(
    version,
    about = "Local stand-ins for AWS, EKS and the CloudFront edge, on loopback only"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start everything and run until SIGTERM or SIGINT. A setting given twice takes the last
    /// (the test harness's defaults come first, a test's own after).
    #[command(args_override_self = true)]
    Serve {
        /// Directory for all state (certificates, image layers, unpacked images, logs, env).
        #[arg(long, env = "SANDBOX_STATE")]
        state: PathBuf,
        /// The Python of the venv holding sandbox/aws/requirements.txt.
        #[arg(long, env = "SANDBOX_PYTHON", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv-sandbox/bin/python"))]
        python: PathBuf,
        /// Seconds a CloudFront distribution change takes to deploy (status InProgress, edge unchanged).
        #[arg(long, env = "SANDBOX_EDGE_DELAY", default_value_t = 1.0)]
        edge_delay: f64,
        /// Milliseconds before a LoadBalancer Service gets its address.
        #[arg(long, env = "SANDBOX_LB_DELAY_MS", default_value_t = 300)]
        lb_delay_ms: u64,
        /// Milliseconds a load balancer's new target stays `initial` (not sent connections)
        /// after its pod's containers are ready; 90 to 180 s on AWS.
        #[arg(long, env = "SANDBOX_TARGET_DELAY_MS", default_value_t = 1000)]
        target_delay_ms: u64,
        /// Seconds an EKS token is accepted from its X-Amz-Date: 900 as on EKS, lower in tests.
        #[arg(long, env = "SANDBOX_TOKEN_TTL_SECONDS", default_value_t = 900)]
        token_ttl_seconds: u64,
        /// AWS fault injection, JSON: {"s3": {"throttle": 0.05, "error": 0.02}, "*": {...}}.
        #[arg(long, env = "SANDBOX_FAULTS", default_value = "{}")]
        faults: String,
    },
    /// Print an ExecCredential holding a fresh EKS-style token (a kubectl exec credential plugin).
    Token {
        #[arg(long, default_value = "sandbox")]
        cluster: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Token { cluster } => {
            let expires =
                humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(600))
                    .to_string();
            let cred = json!({
                "kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1beta1", "spec": {},
                "status": {"expirationTimestamp": expires, "token": sandbox::sandbox_token(&cluster, SystemTime::now())},
            });
            println!("{cred}");
            ExitCode::SUCCESS
        }
        Cmd::Serve {
            state,
            python,
            edge_delay,
            lb_delay_ms,
            target_delay_ms,
            token_ttl_seconds,
            faults,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("SANDBOX_LOG")
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let result = runtime.block_on(serve(
                &state,
                &python,
                edge_delay,
                Duration::from_millis(lb_delay_ms),
                Duration::from_millis(target_delay_ms),
                Duration::from_secs(token_ttl_seconds),
                &faults,
            ));
            runtime.shutdown_timeout(Duration::from_secs(1));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sandbox: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

type Error = Box<dyn std::error::Error>;

async fn serve(
    state: &Path,
    python: &Path,
    edge_delay: f64,
    lb_delay: Duration,
    target_delay: Duration,
    token_lifetime: Duration,
    faults: &str,
) -> Result<(), Error> {
    std::fs::create_dir_all(state)?;
    let state = state.canonicalize()?;
    let tls = tls::make()?;
    let ca_path = state.join("ca.pem");
    std::fs::write(&ca_path, &tls.ca_pem)?;

    let listener = tokio::net::TcpListener::bind(tls::loopback(0)).await?;
    let api_port = listener.local_addr()?.port();
    let cluster_url = format!("https://127.0.0.1:{api_port}");

    if !python.exists() {
        return Err(format!(
            "no Python at {} (run scripts/sandbox up, which makes the venv, or set SANDBOX_PYTHON)",
            python.display()
        )
        .into());
    }
    let launcher = Path::new(env!("CARGO_MANIFEST_DIR")).join("aws/launcher.py");
    let aws_log = std::fs::File::create(state.join("aws.log"))?;
    let mut cmd = Command::new(python);
    cmd.arg(&launcher)
        .arg("--state")
        .arg(state.join("aws"))
        .args(["--cluster-endpoint", &cluster_url])
        .arg("--cluster-ca")
        .arg(&ca_path)
        .args(["--edge-delay", &edge_delay.to_string(), "--faults", faults])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(aws_log);
    // SAFETY: one prctl between fork and exec; the AWS stand-in dies with us.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    let mut aws = cmd
        .spawn()
        .map_err(|e| format!("starting the AWS stand-in ({}): {e}", python.display()))?;
    let aws_pid = nix::unistd::Pid::from_raw(aws.id() as i32);
    let stdout = aws.stdout.take().expect("piped");
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(60), first)
        .await
        .map_err(|_| "the AWS stand-in did not start within 60 s (see aws.log)")???;
    let ports: serde_json::Value = serde_json::from_str(&line).map_err(|_| {
        format!(
            "the AWS stand-in failed to start (see {}/aws.log)",
            state.display()
        )
    })?;
    let aws_url = format!("http://127.0.0.1:{}", ports["aws_port"]);
    let edge_url = format!("http://127.0.0.1:{}", ports["edge_port"]);

    let store = Arc::new(store::Store::new());
    system::seed(&store);
    let logs_dir = kubelet::Kubelet::logs_dir(&state);
    std::fs::create_dir_all(&logs_dir)?;
    let router = api::router(Arc::new(api::ApiState {
        store: store.clone(),
        logs_dir,
        token_lifetime,
    }));
    tokio::spawn(tls::serve(listener, tls.acceptor.clone(), router));
    tokio::spawn(deployments::Controller::new(store.clone()).run());
    let cluster_net = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let cluster_proxy = format!("http://{}", cluster_net.local_addr()?);
    tokio::spawn(cluster_net::serve(cluster_net, store.clone()));
    tokio::spawn(
        kubelet::Kubelet::new(store.clone(), state.clone(), aws_url.clone(), cluster_proxy).run(),
    );
    tokio::spawn(lb::Controller::new(store.clone(), lb_delay, target_delay, aws_url.clone()).run());
    tokio::spawn(system::run_addons(store.clone(), aws_url.clone()));

    let exe = std::env::current_exe()?;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {cluster_url}\n    certificate-authority: {}\nusers:\n- name: sandbox\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: {}\n      args: [token]\n      interactiveMode: Never\ncontexts:\n- name: sandbox\n  context: {{cluster: sandbox, user: sandbox}}\ncurrent-context: sandbox\n",
        ca_path.display(),
        exe.display()
    );
    std::fs::write(state.join("kubeconfig"), kubeconfig)?;
    let env = [
        ("AWS_ENDPOINT_URL", aws_url.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "sandbox".into()),
        ("AWS_SECRET_ACCESS_KEY", "sandbox".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("SANDBOX_EDGE_URL", edge_url),
        ("SANDBOX_CONTROL_URL", format!("{aws_url}/_sandbox")),
        ("SANDBOX_CLUSTER_URL", cluster_url),
        (
            "SANDBOX_KUBECONFIG",
            state.join("kubeconfig").display().to_string(),
        ),
        ("SANDBOX_STATE", state.display().to_string()),
    ];
    let text: String = env
        .iter()
        .map(|(k, v)| format!("export {k}={v}\n"))
        .collect();
    let tmp = state.join("env.partial");
    std::fs::File::create(&tmp)?.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, state.join("env"))?;
    tracing::info!(state = %state.display(), "sandbox ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        status = tokio::task::spawn_blocking(move || aws.wait()) => {
            return Err(format!("the AWS stand-in exited ({:?}); see aws.log", status.ok().and_then(|s| s.ok())).into());
        }
    }
    tracing::info!("sandbox stopping");
    let _ = nix::sys::signal::kill(aws_pid, Signal::SIGTERM);
    Ok(())
}
