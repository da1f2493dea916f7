//! Graceful shutdown of the real binary: SIGTERM turns readiness off at once, the server keeps
//! answering new connections for the drain period, an in-flight request finishes after the listener
//! has closed, and the process exits 0. The origin secret never appears in the logs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SECRET: &str = "do-not-log-me-7f3a";

struct Server {
    child: Child,
    address: SocketAddr,
    /// The `serving` log line, as JSON.
    serving: serde_json::Value,
    log: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on an ephemeral loopback port with the origin secret and `args`, and reads its
/// address from the "serving" log line.
fn start(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_model-server"))
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--colour",
            "blue",
            "--log",
            "debug",
        ])
        .args(["--origin-verify-secret", SECRET])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("model-server starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Owned by the guard from here on, so a failed start still kills and reaps the process.
    let mut server = Server {
        child,
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        serving: serde_json::Value::Null,
        log: rx,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = server
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a `serving` log line within 20 s");
        let event: serde_json::Value = serde_json::from_str(&line).expect("JSON log lines");
        if event["message"] == "serving" {
            server.address = event["address"].as_str().unwrap().parse().unwrap();
            server.serving = event;
            return server;
        }
    }
}

/// One HTTP/1.1 request on a fresh connection; returns (status, headers+body text).
fn request(address: SocketAddr, raw: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(raw.as_bytes())?;
    read_answer(&mut stream)
}

fn read_answer(stream: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
}

fn predict_head(length: usize) -> String {
    format!(
        "POST /predict HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\n\
         X-Origin-Verify: {SECRET}\r\nContent-Length: {length}\r\n\r\n"
    )
}

const BODY: &str = r#"{"features":[6.7,3.0,5.2,2.3]}"#;

#[test]
fn sigterm_drains_then_exits_zero_and_secret_is_never_logged() {
    let mut server = start(&["--drain-seconds", "1.5"]);
    let address = server.address;
    assert_eq!(request(address, &get("/readyz")).unwrap().0, 200);

    // A request that is in flight across the whole drain: head and half the body now, rest later.
    let mut in_flight = TcpStream::connect(address).unwrap();
    in_flight
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (first, rest) = BODY.split_at(10);
    in_flight
        .write_all(format!("{}{first}", predict_head(BODY.len())).as_bytes())
        .unwrap();

    let pid = server.child.id().to_string();
    let signalled = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    // Readiness turns off at once (well within the drain period)...
    let mut readiness = 0;
    while signalled.elapsed() < Duration::from_millis(500) {
        readiness = request(address, &get("/readyz")).unwrap().0;
        if readiness == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(readiness, 503, "readyz not 503 shortly after SIGTERM");
    // ...while new connections are still served, and told to close.
    let (status, text) = request(address, &format!("{}{BODY}", predict_head(BODY.len()))).unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""prediction":2"#), "{text}");
    assert!(
        signalled.elapsed() < Duration::from_millis(1500),
        "checked during the drain"
    );

    // After the drain period the listener is closed...
    std::thread::sleep(
        Duration::from_millis(1500).saturating_sub(signalled.elapsed())
            + Duration::from_millis(300),
    );
    assert!(
        TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_err(),
        "listener still open after the drain period"
    );
    // ...but the in-flight request is finished and answered.
    in_flight.write_all(rest.as_bytes()).unwrap();
    let (status, text) = read_answer(&mut in_flight).unwrap();
    assert_eq!(status, 200, "{text}");

    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "still running 5 s after the drain"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit status {exit}");

    let logs: Vec<String> = server.log.try_iter().collect();
    assert!(logs.iter().any(|l| l.contains("draining")), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l.contains(r#""route":"/predict""#)),
        "request lines at debug: {logs:#?}"
    );
    assert!(
        !logs.iter().any(|l| l.contains(SECRET)),
        "secret logged: {logs:#?}"
    );
}

/// `--workers 1` runs a current-thread runtime; it must serve (and guard) like the default one.
#[test]
fn one_worker_serves_and_refuses_predict_without_the_origin_header() {
    let server = start(&["--drain-seconds", "0", "--workers", "1"]);
    assert_eq!(server.serving["workers"], 1, "{}", server.serving);
    let raw = format!(
        "POST /predict HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let (status, text) = request(server.address, &raw).unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("origin_verification_failed"), "{text}");
    let (status, text) = request(
        server.address,
        &format!("{}{BODY}", predict_head(BODY.len())),
    )
    .unwrap();
    assert_eq!(status, 200, "{text}");
}

/// The exit codes the README documents: 1 with the reason when start-up fails, 2 for a bad flag.
#[test]
fn start_up_failures_exit_1_with_the_reason_and_bad_flags_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let cases: [(&[&str], i32, &str); 4] = [
        (
            &["--model-path", "/nonexistent/m.onnx"],
            1,
            "/nonexistent/m.onnx",
        ),
        (&["--port", &port], 1, "cannot listen on 127.0.0.1:"),
        (&["--drain-seconds=-1"], 2, "between 0 and 3600"),
        (&["--no-such-flag"], 2, "--no-such-flag"),
    ];
    for (args, code, reason) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_model-server"))
            .args(["--bind", "127.0.0.1"])
            .env("MODEL_SERVER_PORT", "0") // a flag in `args` overrides it
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}
