//! The binary under crashes and signals (`reward-worker serve` as a child on
//! 127.0.0.1 and a unix socket): running statistics that survive SIGKILL at
//! random points of a stream of steps, a full disk for the state file
//! (RLIMIT_FSIZE), SIGTERM at every stage of a request, start-up flags that
//! are out of range, and a unix socket a live server holds.

mod common;

use common::server::ChildServer;
use common::{path_str, run, scratch, stderr, FIXTURE};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

/// SIGTERM to exit: the grace given, plus start-up noise on a loaded machine.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

fn serve_args<'a>(state: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["serve", "--model", FIXTURE, "--port", "0", "--threads", "1", "--prepare-threads", "1"];
    args.extend(["--normalize", "running", "--running-state", state, "--shutdown-grace", "3"]);
    args.extend_from_slice(extra);
    args
}

fn rewards_body(step: usize) -> Value {
    let conv = |i: usize| {
        json!({"messages": [{"role": "user", "content": format!("Question {step}.{i}?")},
                            {"role": "assistant", "content": format!("Answer {i} of step {step}, {}", "ok ".repeat(i))}]})
    };
    json!({"conversations": [conv(0), conv(1), conv(2)]})
}

fn read_state(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("the state file is torn: {e}: {text:?}")))
}

/// A tiny deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_state_survives_sigkill_at_random_points_of_a_stream_of_steps() {
    let dir = scratch("serve_crash_sigkill");
    let state = dir.join("running.json");
    let state_arg = path_str(&state).to_owned();
    let mut rng = Rng(0x5eed_1234_abcd_0042);
    // The `running` object of the last step whose answer arrived.
    let mut acked: Option<Value> = None;
    let (mut answered_steps, mut in_flight_saved) = (0, 0);
    const KILLS: usize = 50;
    for round in 0..KILLS {
        let mut server = ChildServer::start(&serve_args(&state_arg, &[]));
        in_flight_saved += check_after_restart(&state, &mut acked, round);

        let pid = server.child.id() as i32;
        let delay = Duration::from_millis(rng.below(400));
        let killer = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let client = reqwest::Client::new();
        let url = server.url.clone();
        for step in 0.. {
            let scored = client.post(format!("{url}/v1/rewards")).json(&rewards_body(step)).send().await;
            if scored.is_err() {
                break;
            }
            let Ok(answer) = client.post(format!("{url}/v1/rewards/step")).send().await else { break };
            let Ok(answer) = answer.json::<Value>().await else { break };
            acked = Some(answer["running"].clone());
            answered_steps += 1;
        }
        killer.await.unwrap();
        let status = server.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "round {round}: {}", server.stderr());
    }
    assert!(answered_steps >= KILLS / 2, "the stream made progress: {answered_steps} steps");

    // A clean stop after all that: the file is the last step plus this run's rewards as one more.
    let mut server = ChildServer::start(&serve_args(&state_arg, &[]));
    in_flight_saved += check_after_restart(&state, &mut acked, KILLS);
    assert_eq!(server.terminate().code(), Some(0), "{}", server.stderr());
    let last = read_state(&state).unwrap();
    let acked_steps = acked.as_ref().map_or(0, |a| a["steps"].as_u64().unwrap());
    assert_eq!(last["steps"].as_u64().unwrap(), acked_steps + 1);
    assert_eq!(last["count"], acked.unwrap()["count"], "no rewards were pending at the clean stop");
    eprintln!("{KILLS} kills, {answered_steps} answered steps, {in_flight_saved} saved steps whose answer was cut off");
}

/// After a restart the file holds the last answered step, or the one that was
/// being committed when the kill came (then that one counts as answered);
/// never anything torn. Returns 1 in the second case.
fn check_after_restart(state: &Path, acked: &mut Option<Value>, round: usize) -> usize {
    let on_disk = read_state(state);
    let acked_steps = acked.as_ref().map_or(0, |a| a["steps"].as_u64().unwrap());
    let disk_steps = on_disk.as_ref().map_or(0, |d| d["steps"].as_u64().unwrap());
    if disk_steps == acked_steps {
        if let Some(a) = acked.as_ref() {
            assert_eq!(on_disk.as_ref(), Some(a), "round {round}: the file is not the last answered step");
        }
        return 0;
    }
    assert_eq!(disk_steps, acked_steps + 1, "round {round}: file at step {disk_steps}, answered {acked_steps}");
    *acked = on_disk;
    1
}

#[test]
fn a_full_disk_fails_the_step_clearly_keeps_the_old_file_and_keeps_serving() {
    let dir = scratch("serve_crash_full_disk");
    let state = dir.join("running.json");
    let before = json!({"count": 0, "mean": 0.0, "m2": 0.0, "steps": 3});
    std::fs::write(&state, before.to_string()).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_reward-worker"));
    command.args(serve_args(path_str(&state), &[]));
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal).
    unsafe {
        command.pre_exec(|| {
            // A file-size limit of 40 bytes stands in for a full disk: the start-up
            // probe fits, a saved step does not (EFBIG, with SIGXFSZ ignored).
            let limit = libc::rlimit { rlim_cur: 40, rlim_max: 40 };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut server = ChildServer::spawn(command);
    let (status, _) = post(&server, "/v1/rewards", &rewards_body(0));
    assert_eq!(status, 200);
    let (status, error) = post(&server, "/v1/rewards/step", &json!({}));
    assert_eq!(status, 500, "{error}");
    assert_eq!(error["error"]["code"], "state_write_failed");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("running.json") && message.contains("not committed"), "{message}");
    assert_eq!(read_state(&state).unwrap(), before, "the old file is untouched");
    // Still serving, and the statistics were not advanced.
    let (status, answer) = post(&server, "/v1/rewards", &rewards_body(1));
    assert_eq!(status, 200, "{answer}");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temp file is left behind: {leftovers:?}");
    // At exit the save fails again: a clear message and a failing status, not a silent loss.
    let status = server.terminate();
    assert_eq!(status.code(), Some(2), "{}", server.stderr());
    assert!(server.stderr().contains("running.json"), "{}", server.stderr());
}

#[test]
fn a_running_state_path_that_cannot_be_written_is_refused_at_start() {
    let dir = scratch("serve_crash_bad_state_path");
    let plain = dir.join("plain-file");
    std::fs::write(&plain, "x").unwrap();
    let missing = dir.join("no-such-dir/running.json");
    let under_file = plain.join("running.json");
    for path in [missing, under_file] {
        let out = run(&serve_args(path_str(&path), &[]));
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("--running-state") && err.contains(path_str(&path)), "{err}");
    }
}

/// A blocking POST over a fresh connection: status and JSON body.
fn post(server: &ChildServer, path: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let mut stream = tcp(server);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all((head + &body).as_bytes()).unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let json = out.split_once("\r\n\r\n").map_or(Value::Null, |(_, b)| serde_json::from_str(b).unwrap_or(Value::Null));
    (status, json)
}

fn wait_state_steps(path: &Path) -> u64 {
    read_state(path).map_or(0, |s| s["steps"].as_u64().unwrap())
}

/// Start a server, put a client in `stage`, SIGTERM, and check it exits 0 in
/// time with its state saved.
fn sigterm_at(name: &str, stage: impl FnOnce(&ChildServer) -> Option<std::thread::JoinHandle<String>>) {
    let dir = scratch(&format!("serve_crash_sigterm_{name}"));
    let state = dir.join("running.json");
    let mut server = ChildServer::start(&serve_args(path_str(&state), &[]));
    let client = stage(&server);
    std::thread::sleep(Duration::from_millis(200)); // the server has read what was sent
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(EXIT_LIMIT);
    assert_eq!(status.code(), Some(0), "{name}: {}", server.stderr());
    assert_eq!(wait_state_steps(&state), 1, "{name}: the state was saved");
    if let Some(client) = client {
        let answer = client.join().unwrap();
        assert!(!answer.is_empty() || name == "half_headers", "{name}: no answer");
        if name == "in_flight" {
            assert!(answer.starts_with("HTTP/1.1 200"), "{name}: the accepted request is answered: {answer}");
        }
        if name == "half_body" {
            assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("shutting_down"), "{answer}");
        }
    }
}

fn tcp(server: &ChildServer) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(server.url.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream
}

fn send_and_read(mut stream: std::net::TcpStream, bytes: Vec<u8>) -> std::thread::JoinHandle<String> {
    stream.write_all(&bytes).unwrap();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

#[test]
fn sigterm_at_every_stage_of_a_request_exits_0_in_time_with_the_state_saved() {
    sigterm_at("idle", |_| None);
    sigterm_at("half_headers", |s| {
        Some(send_and_read(tcp(s), b"POST /v1/rewards HTTP/1.1\r\nHost: t\r\nX-A".to_vec()))
    });
    sigterm_at("half_body", |s| {
        let head =
            "POST /v1/rewards HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
        Some(send_and_read(tcp(s), format!("{head}{{\"conversations\": [1,").into_bytes()))
    });
    sigterm_at("keep_alive", |s| {
        let mut stream = tcp(s);
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut first = [0u8; 15];
        stream.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 200 OK");
        Some(send_and_read(stream, Vec::new()))
    });
    sigterm_at("in_flight", |s| {
        let conversations: Vec<Value> =
            (0..48).flat_map(|i| rewards_body(i)["conversations"].as_array().unwrap().clone()).collect();
        let body = json!({"conversations": conversations}).to_string();
        let head = format!(
            "POST /v1/rewards HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        Some(send_and_read(tcp(s), (head + &body).into_bytes()))
    });
    // Ctrl-C is the same as SIGTERM.
    let dir = scratch("serve_crash_sigint");
    let state = dir.join("running.json");
    let mut server = ChildServer::start(&serve_args(path_str(&state), &[]));
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit(EXIT_LIMIT).code(), Some(0), "{}", server.stderr());
}

#[test]
fn duration_and_size_flags_out_of_range_are_clear_start_up_errors() {
    let cases: [(&[&str], &str); 9] = [
        (&["--request-timeout", "1e300"], "--request-timeout"),
        (&["--request-timeout", "1e19"], "--request-timeout"),
        (&["--request-timeout", "0"], "--request-timeout"),
        (&["--header-timeout", "nan"], "--header-timeout"),
        (&["--body-timeout=-1"], "--body-timeout"),
        (&["--shutdown-grace", "1e12"], "--shutdown-grace"),
        (&["--max-body-bytes", "0"], "--max-body-bytes"),
        (&["--max-request-tokens", "0"], "--max-request-tokens"),
        (&["--served-model-name", ""], "--served-model-name"),
    ];
    for (flags, named) in cases {
        let mut args = vec!["serve", "--model", FIXTURE, "--port", "0"];
        args.extend_from_slice(flags);
        let out = run(&args); // fails the test on a panic or a signal
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(named), "{flags:?}: {}", stderr(&out));
    }
}

fn unix_health(path: &Path) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

#[test]
fn a_live_unix_socket_is_refused_a_stale_one_replaced_and_only_its_own_removed() {
    let dir = scratch("serve_crash_uds");
    let socket = dir.join("rw.sock");
    let sock = path_str(&socket);
    let base = ["serve", "--model", FIXTURE, "--port", "0", "--threads", "1", "--uds", sock];
    let mut first = ChildServer::start(&base);
    let second = run(&base);
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    assert!(stderr(&second).contains("address in use"), "{}", stderr(&second));
    assert!(unix_health(&socket).starts_with("HTTP/1.1 200"), "the first server is still reachable");

    // Killed: its socket file stays, stale; the next server replaces it.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(socket.exists());
    let mut third = ChildServer::start(&base);
    assert!(unix_health(&socket).starts_with("HTTP/1.1 200"));
    // Someone else's socket at the path by the time it exits is not removed.
    std::fs::remove_file(&socket).unwrap();
    let mut fourth = ChildServer::start(&base);
    assert_eq!(third.terminate().code(), Some(0));
    assert!(unix_health(&socket).starts_with("HTTP/1.1 200"), "the fourth server's socket survived the third's exit");
    assert_eq!(fourth.terminate().code(), Some(0));
    assert!(!socket.exists(), "a server removes its own socket");
}
