//! The rendezvous between real processes on loopback: `reward-worker
//! rendezvous-check` exchanges opaque ids exactly as the NCCL group does (random
//! bytes in place of NCCL's), from torchrun's and from SLURM's environment.

mod common;

use serde_json::Value;
use std::process::{Child, Command, Stdio};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(env: &[(&str, String)], args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_reward-worker"))
        .arg("rendezvous-check")
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// (exit code, stdout JSON or null, stderr) of each process, in the order given.
fn finish(children: Vec<Child>) -> Vec<(i32, Value, String)> {
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            (out.status.code().unwrap(), json, String::from_utf8_lossy(&out.stderr).into_owned())
        })
        .collect()
}

fn torchrun(rank: usize, world: usize, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("LOCAL_RANK", (rank % 2).to_string()),
        ("MASTER_ADDR", "127.0.0.1".into()),
        ("MASTER_PORT", port.to_string()),
    ]
}

#[test]
fn four_torchrun_processes_agree_on_the_ids() {
    let port = free_port();
    // Rank 0 starts last: the others retry until it listens.
    let children: Vec<Child> = [1, 2, 3, 0]
        .iter()
        .map(|&r| spawn(&torchrun(r, 4, port), &["--tp", "2", "--pp", "2", "--timeout", "30"]))
        .collect();
    let mut out = finish(children);
    out.sort_by_key(|(_, j, _)| j["rank"].as_u64());
    for (code, json, err) in &out {
        assert_eq!(*code, 0, "{err}");
        assert_eq!(json["world_id"], out[0].1["world_id"]);
        assert_eq!(json["stage_ids"], out[0].1["stage_ids"]);
        assert_eq!(json["launcher"], "torchrun");
    }
    let ids: Vec<&str> = out.iter().map(|(_, j, _)| j["stage_id"].as_str().unwrap()).collect();
    let world = out[0].1["world_id"].as_str().unwrap();
    assert_eq!(world.len(), 256, "128 opaque bytes");
    assert_eq!((ids[0], ids[2]), (ids[1], ids[3]), "ranks of one stage share its tensor-parallel id");
    assert!(ids[0] != ids[2] && ids[0] != world && ids[2] != world);
    assert_eq!(out.iter().map(|(_, j, _)| j["local_rank"].as_u64().unwrap()).collect::<Vec<_>>(), vec![0, 1, 0, 1]);
}

#[test]
fn slurm_processes_find_rank_zero_from_the_nodelist() {
    let port = free_port();
    let children: Vec<Child> = (0..3)
        .map(|r| {
            let env = vec![
                ("SLURM_PROCID", r.to_string()),
                ("SLURM_NTASKS", "3".to_string()),
                ("SLURM_LOCALID", r.to_string()),
                ("SLURM_JOB_NODELIST", "localhost".to_string()),
                ("MASTER_PORT", port.to_string()),
            ];
            spawn(&env, &["--tp", "3", "--timeout", "30"])
        })
        .collect();
    let out = finish(children);
    for (code, json, err) in &out {
        assert_eq!(*code, 0, "{err}");
        assert_eq!(
            (json["launcher"].as_str(), json["master"].as_str()),
            (Some("slurm"), Some(&*format!("localhost:{port}")))
        );
        assert_eq!(json["world_id"], out[0].1["world_id"]);
        assert_eq!(json["stage_id"], out[0].1["stage_id"]);
    }
}

#[test]
fn a_missing_rank_ends_in_a_timeout_that_names_it() {
    let port = free_port();
    let children: Vec<Child> =
        [0, 1].iter().map(|&r| spawn(&torchrun(r, 3, port), &["--tp", "3", "--timeout", "2"])).collect();
    let out = finish(children);
    assert_eq!(out[0].0, 2);
    assert!(
        out[0].2.contains(&format!(
            "rendezvous at 127.0.0.1:{port}: timed out after 2.0 s waiting for ranks [2] of 3 to join"
        )),
        "{}",
        out[0].2
    );
    assert_eq!(out[1].0, 2);
    // whichever deadline passes first: rank 1's own, or rank 0's, which it relays
    let own = out[1].2.contains("rank 1 timed out after 2.0 s waiting for rank 0 to answer");
    let relayed = out[1].2.contains("rank 0 gave up: timed out after 2.0 s waiting for ranks [2] of 3 to join");
    assert!(own || relayed, "{}", out[1].2);
}

#[test]
fn ranks_started_with_another_layout_are_refused() {
    let port = free_port();
    let children = vec![
        spawn(&torchrun(0, 2, port), &["--tp", "2", "--timeout", "30"]),
        spawn(&torchrun(1, 2, port), &["--pp", "2", "--timeout", "30"]),
    ];
    let out = finish(children);
    for (code, _, err) in &out {
        assert_eq!(*code, 2);
        assert!(err.contains("rank 1 was started with `tp=1 pp=2`, rank 0 with `tp=2 pp=1`"), "{err}");
    }
    let wrong = finish(vec![spawn(&torchrun(0, 3, port), &["--tp", "2", "--timeout", "5"])]);
    assert!(
        wrong[0].2.contains("the launcher started 3 processes (torchrun) but --tp 2 x --pp 1 needs 2, one per rank"),
        "{}",
        wrong[0].2
    );
}
