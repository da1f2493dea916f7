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
    log: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on an ephemeral loopback port and reads its address from the "serving" log line.
fn start(drain_seconds: &str) -> Server {
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
        .args([
            "--drain-seconds",
            drain_seconds,
            "--origin-verify-secret",
            SECRET,
        ])
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
    let mut server = start("1.5");
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

#[test]
fn forbidden_without_the_origin_header_over_a_real_socket() {
    let server = start("0");
    let raw = format!(
        "POST /predict HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let (status, text) = request(server.address, &raw).unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("origin_verification_failed"), "{text}");
}
