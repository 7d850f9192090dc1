//! `make bench-serve`: the service under 64 concurrent clients against
//! `score` on the same records (in the same run) and against a static-padded
//! server on transformers (`bench/serve_peer.py`: how NeMo-Aligner's and
//! OpenRLHF's reward servers batch), same weights, same threads, same dtype.
//!
//!     cargo run --release --example bench_serve -- [--clients 64] [--groups 8] [--conversations 64]
//!         [--hidden 384 --layers 4 --heads 6 --kv-heads 2 --ffn 1536 | --model DIR]
//!         [--batch-tokens 8192] [--threads N] [--dtype auto|f32|bf16] [--device cpu|cuda]
//!
//! Useful tokens count every scored prefix as if it were scored alone (what a
//! client asks for). Every answer is checked against `score`'s numbers, and
//! the count of answers must equal the count of requests.
//!
//! Then the streaming workloads (f) and (g) ([`streaming`]), each through the
//! service with the prefix cache off and on (`--streaming-only` runs just them).

mod model;
mod peer;
mod streaming;
mod workload;

use clap::Parser;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reward_worker::engine::{ModelSource, PreparedRecord, ScoreOptions, Scorer};
use reward_worker::model::{parse_device, DType};
use reward_worker::reward::{PresetBook, RewardConfig, RewardPipeline};
use reward_worker::scheduler::QueueConfig;
use reward_worker::server::{self, Listener, ServeConfig};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// GRPO groups (one prompt, `--group-size` responses sent as separate requests).
    #[arg(long, default_value_t = 8)]
    groups: usize,
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    /// Multi-turn conversations with 1-3 rated turns.
    #[arg(long, default_value_t = 64)]
    conversations: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A model directory instead of a generated random one.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value_t = 384)]
    hidden: i64,
    #[arg(long, default_value_t = 4)]
    layers: i64,
    #[arg(long, default_value_t = 6)]
    heads: i64,
    #[arg(long, default_value_t = 2)]
    kv_heads: i64,
    #[arg(long, default_value_t = 1536)]
    ffn: i64,
    #[arg(long, default_value_t = 8192)]
    batch_tokens: usize,
    /// Sequences per static micro-batch of the padded peer.
    #[arg(long, default_value_t = 8)]
    peer_micro_batch: usize,
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, value_enum, default_value = "auto")]
    dtype: DType,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Write the workload as JSONL (for `reward-worker score` / `bench`) and exit.
    #[arg(long)]
    dump_workload: Option<PathBuf>,
    /// Run only the streaming workloads (f) and (g).
    #[arg(long)]
    streaming_only: bool,
    /// (f): GRPO groups whose responses arrive one by one.
    #[arg(long, default_value_t = 6)]
    stream_groups: usize,
    /// (f): seconds over which the responses arrive (default: `--stream-batches`
    /// batch durations).
    #[arg(long)]
    stream_window: Option<f64>,
    /// (f): the arrival window in batch durations (the time the cache-off
    /// engine takes for a full batch of `--batch-tokens`).
    #[arg(long, default_value_t = 5.0)]
    stream_batches: f64,
    /// (g): conversations, and the assistant turns each grows to.
    #[arg(long, default_value_t = 16)]
    rollouts: usize,
    #[arg(long, default_value_t = 6)]
    rollout_turns: usize,
    /// The prefix cache's bound in the cache-on runs.
    #[arg(long, default_value_t = 1 << 30)]
    prefix_cache_bytes: usize,
}

/// A line of the results table.
struct Row<'a> {
    name: &'static str,
    seconds: f64,
    run: Option<&'a Run>,
    computed: usize,
    requested: usize,
    batches: Option<usize>,
    /// Batches filled to the token budget (not the padded peer's).
    packed: bool,
    answered: usize,
    failed: usize,
    wrong: usize,
}

/// One run of the workload through one server.
struct Run {
    seconds: f64,
    latencies: Vec<f64>,
    answers: Vec<Option<Vec<[f32; 9]>>>,
    failures: usize,
}

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    let args = Args::parse();
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let device = parse_device(&args.device)?;
    let dir = match &args.model {
        Some(d) => d.clone(),
        None => {
            let shape = model::Shape {
                hidden: args.hidden,
                layers: args.layers,
                heads: args.heads,
                kv_heads: args.kv_heads,
                ffn: args.ffn,
            };
            model::bench_model(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-models"), shape)?
        }
    };
    let dtype = args.dtype.resolve(device).0;
    let load = || Scorer::load(&ModelSource::Dir(dir.clone()), dtype, device);
    let scorer = load()?;
    if args.streaming_only {
        println!("{}", machine());
        return run_streaming(&scorer, &load, &args);
    }
    let records = workload::requests(&scorer.preparer(), args.groups, args.group_size, args.conversations, args.seed);
    if let Some(path) = &args.dump_workload {
        std::fs::write(path, records.iter().map(|r| format!("{r}\n")).collect::<String>())?;
        return Ok(());
    }
    println!("{}", machine());
    println!(
        "model: {} ({}), batch tokens {}, libtorch threads {}",
        dir.display(),
        scorer.describe(),
        args.batch_tokens,
        tch::get_num_threads()
    );

    // score: prepare + score every record in one call, as `reward-worker score`
    // does (the second of two runs). On a thread of its own, like the service's
    // engine and the peer: on this project's machine libtorch ran the same call
    // about 2x slower on the process's main thread, which would flatter the service.
    let (base_seconds, prepared, base_raw, base_stats) = {
        let (records, budget, cache) = (records.clone(), args.batch_tokens, args.prefix_cache_bytes);
        std::thread::spawn(move || {
            // each call from an empty prefix cache, as one `reward-worker score` run
            scorer.set_prefix_cache_bytes(cache);
            let _warm = score_all(&scorer, &records, budget);
            scorer.set_prefix_cache_bytes(cache);
            score_all(&scorer, &records, budget)
        })
        .join()
        .expect("the score run does not panic")
    };
    let useful: usize = prepared.iter().map(PreparedRecord::useful_tokens).sum();
    let requested: usize = prepared.iter().map(PreparedRecord::tokens).sum();
    let turns: usize = prepared.iter().map(PreparedRecord::turns).sum();
    let lengths: Vec<usize> = prepared.iter().map(PreparedRecord::tokens).collect();
    println!(
        "workload: {} requests ({} GRPO groups x {} + {} conversations of 1-3 rated turns), {turns} rated turns, {}..{} tokens per request, {useful} useful tokens",
        records.len(), args.groups, args.group_size, args.conversations, lengths.iter().min().unwrap_or(&0), lengths.iter().max().unwrap_or(&0)
    );

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let service_scorer = load()?;
    service_scorer.set_prefix_cache_bytes(args.prefix_cache_bytes);
    let (service, metrics) = runtime.block_on(run_service(service_scorer, &records, &args))?;
    let peer = peer::PythonPeer::start(&dir, dtype, &args.device, tch::get_num_threads(), args.peer_micro_batch)?;
    let (padded, peer_stats) = runtime.block_on(run_peer(&peer, &records, args.clients))?;
    drop(peer);

    let rows = [
        Row {
            name: "score (in-process, one call)",
            seconds: base_seconds,
            run: None,
            computed: base_stats.1,
            requested: base_stats.0,
            batches: Some(base_stats.2),
            packed: true,
            answered: records.len(),
            failed: 0,
            wrong: 0,
        },
        Row {
            name: "service, HTTP, concurrent clients",
            seconds: service.seconds,
            run: Some(&service),
            computed: metrics.computed,
            requested: metrics.requested,
            batches: Some(metrics.batches),
            packed: true,
            answered: count(&service),
            failed: service.failures,
            wrong: mismatches(&service, &base_raw, tolerance(dtype)),
        },
        Row {
            name: "static padded peer (transformers), HTTP",
            seconds: padded.seconds,
            run: Some(&padded),
            computed: peer_stats.padded_tokens,
            requested,
            batches: Some(peer_stats.forwards),
            packed: false,
            answered: count(&padded),
            failed: padded.failures,
            wrong: mismatches(&padded, &base_raw, tolerance(dtype)),
        },
    ];
    println!("\n| run | useful tok/s | p50 ms | p99 ms | tokens computed / requested | forward batches | batch fill | answered / sent | wrong |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut report = Vec::new();
    for row in rows {
        let (p50, p99) =
            row.run.map_or((f64::NAN, f64::NAN), |r| (percentile(&r.latencies, 0.50), percentile(&r.latencies, 0.99)));
        // Fill of a token budget; the padded peer has no budget (one padded sequence per forward).
        let fill =
            row.batches.filter(|_| row.packed).map(|b| row.computed as f64 / (b.max(1) * args.batch_tokens) as f64);
        let rate = useful as f64 / row.seconds;
        println!(
            "| {} | {rate:.0} | {:.0} | {:.0} | {} / {} | {} | {} | {} / {} | {} |",
            row.name,
            p50 * 1e3,
            p99 * 1e3,
            row.computed,
            row.requested,
            row.batches.map_or("-".into(), |b| b.to_string()),
            fill.map_or("-".into(), |f| format!("{f:.2}")),
            row.answered,
            records.len(),
            row.wrong
        );
        report.push(json!({"run": row.name, "seconds": row.seconds, "useful_tokens_per_s": rate, "p50_s": p50, "p99_s": p99,
                           "tokens_computed": row.computed, "tokens_requested": row.requested, "forward_batches": row.batches,
                           "batch_fill": fill, "answered": row.answered, "sent": records.len(), "failed": row.failed, "wrong": row.wrong}));
    }
    let ratio = |a: f64, b: f64| b / a;
    println!(
        "\nservice / score: {:.2}   service / static padded: {:.2}   (peer padded tokens {}, forward passes {})",
        ratio(service.seconds, base_seconds),
        ratio(service.seconds, padded.seconds),
        peer_stats.padded_tokens,
        peer_stats.forwards
    );
    println!(
        "largest |raw - score's raw| / record scale ({} dtype, tolerance {}): service {:.1e}, static padded peer {:.1e}",
        dtype.name(),
        tolerance(dtype),
        max_diff(&service, &base_raw),
        max_diff(&padded, &base_raw)
    );
    println!("{}", json!({"useful_tokens": useful, "clients": args.clients, "runs": report}));
    let lost = records.len() - count(&service) + service.failures;
    anyhow::ensure!(
        lost == 0 && mismatches(&service, &base_raw, tolerance(dtype)) == 0,
        "the service lost or mis-scored requests"
    );
    run_streaming(&load()?, &load, &args)
}

/// (f) and (g), each with the prefix cache off, then on, through the service.
fn run_streaming(
    scorer: &Scorer,
    load: &dyn Fn() -> Result<Scorer, reward_worker::model::ModelError>,
    args: &Args,
) -> anyhow::Result<()> {
    let preparer = scorer.preparer();
    // The (f) window: `--stream-batches` batch durations, a batch duration
    // being the cache-off engine's time for a full batch of `--batch-tokens`
    // (measured on the records in one call, the second of two).
    let (f_records, _) = streaming::grpo_arrivals(&preparer, args.stream_groups, args.group_size, 1.0, args.seed);
    let all: Vec<PreparedRecord> =
        f_records.iter().map(|r| preparer.prepare(r, ScoreOptions::default()).expect("valid")).collect();
    let refs: Vec<&PreparedRecord> = all.iter().collect();
    let _ = scorer.score_with_stats(&refs, args.batch_tokens); // warm-up
    let started = Instant::now();
    let (_, one_call) = scorer.score_with_stats(&refs, args.batch_tokens);
    let per_batch = started.elapsed().as_secs_f64() * args.batch_tokens as f64 / one_call.tokens_computed.max(1) as f64;
    let window = args.stream_window.unwrap_or(args.stream_batches * per_batch);
    let (f_records, f_at) = streaming::grpo_arrivals(&preparer, args.stream_groups, args.group_size, window, args.seed);
    let g_steps = streaming::growing(&preparer, args.rollouts, args.rollout_turns, args.seed);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "\nstreaming: (f) {} GRPO groups x {}, arriving over {window:.1} s ({:.1} batch durations of {per_batch:.2} s); (g) {} conversations growing to {} turns; \
         prefix cache {} bytes when on; batch tokens {}",
        args.stream_groups,
        args.group_size,
        window / per_batch,
        args.rollouts,
        args.rollout_turns,
        args.prefix_cache_bytes,
        args.batch_tokens
    );
    println!("\n| workload | cache | useful tok/s | p50 ms | p99 ms | tokens computed | unique tokens | computed / unique | hit rate | cache bytes / bound | peak RSS MiB | answered / sent |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut report = Vec::new();
    for (name, records) in [
        ("(f) GRPO, responses arriving one by one", f_records.iter().collect::<Vec<_>>()),
        ("(g) growing multi-turn", g_steps.iter().flatten().collect()),
    ] {
        let useful = streaming::useful_tokens(&preparer, &records);
        let unique = streaming::unique_tokens(&preparer, &records);
        let mut rates = Vec::new();
        for cache in [0, args.prefix_cache_bytes] {
            let scorer = load()?;
            scorer.set_prefix_cache_bytes(cache);
            let bound = scorer.prefix_cache_stats().bound_bytes;
            let (run, c, held, peak) = runtime.block_on(serve_stream(scorer, args, |client, url| {
                let (client, url) = (client.clone(), url.to_string());
                let (f_records, f_at, g_steps) = (f_records.clone(), f_at.clone(), g_steps.clone());
                let f = name.starts_with("(f)");
                Box::pin(async move {
                    if f {
                        streaming::drive_arrivals(&client, &url, &f_records, &f_at).await
                    } else {
                        streaming::drive_growing(&client, &url, &g_steps).await
                    }
                })
            }))?;
            let rate = useful as f64 / run.seconds;
            rates.push(rate);
            let hit = c.hit as f64 / (c.hit + c.computed).max(1) as f64;
            let (p50, p99) = (percentile(&run.latencies, 0.5), percentile(&run.latencies, 0.99));
            let label = if cache == 0 { "off" } else { "on" };
            println!(
                "| {name} | {label} | {rate:.0} | {:.0} | {:.0} | {} | {unique} | {:.2} | {hit:.2} | {held} / {bound} | {:.0} | {} / {} |",
                p50 * 1e3,
                p99 * 1e3,
                c.computed,
                c.computed as f64 / unique as f64,
                peak as f64 / (1 << 20) as f64,
                records.len() - run.failures,
                records.len()
            );
            report.push(json!({"workload": name, "cache": label, "useful_tokens_per_s": rate, "p50_s": p50, "p99_s": p99,
                               "tokens_computed": c.computed, "unique_tokens": unique, "hit_rate": hit, "cache_bytes": held,
                               "bound_bytes": bound, "peak_rss_bytes": peak, "failed": run.failures, "sent": records.len()}));
            anyhow::ensure!(run.failures == 0, "{name}, cache {label}: {} requests failed", run.failures);
        }
        println!("| {name} | on / off | {:.2}x | | | | | | | | | |", rates[1] / rates[0]);
    }
    println!("{}", json!({"streaming": report}));
    Ok(())
}

type Drive = std::pin::Pin<Box<dyn std::future::Future<Output = streaming::StreamRun> + Send>>;

/// The service on a free local port: its URL, the sender that stops it, and its task.
async fn start_server(
    scorer: Scorer,
    config: ServeConfig,
) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(
        scorer,
        vec![Listener::Tcp(listener)],
        async move {
            let _ = stopped.await;
        },
        config,
    ));
    Ok((url, stop, server))
}

/// Serve `scorer` in-process and run `drive(client, rewards url)` against it:
/// the run, the counters over it, the cache's bytes after it and the peak RSS.
async fn serve_stream(
    scorer: Scorer,
    args: &Args,
    drive: impl Fn(&reqwest::Client, &str) -> Drive,
) -> anyhow::Result<(streaming::StreamRun, Counters, usize, usize)> {
    let pipeline = RewardPipeline::new(RewardConfig::default(), PresetBook::builtin())?;
    let mut config = ServeConfig::new(pipeline);
    config.queue = QueueConfig { batch_tokens: args.batch_tokens, queue_limit: 4096, prepare_threads: 2 };
    let (url, stop, server) = start_server(scorer, config).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    // warm-up on a record of its own (its prompt is in no workload)
    let warm = json!({"messages": [{"role": "user", "content": "warm up"}, {"role": "assistant", "content": "ok"}]});
    client.post(format!("{url}/v1/rewards")).json(&json!({"conversations": [warm]})).send().await?;
    let before = counters(&client, &url).await?;
    streaming::reset_peak_memory();
    let run = drive(&client, &format!("{url}/v1/rewards")).await;
    let peak = streaming::peak_memory();
    let after = counters(&client, &url).await?;
    let _ = stop.send(());
    server.await??;
    let delta = Counters {
        requested: after.requested - before.requested,
        computed: after.computed - before.computed,
        batches: after.batches - before.batches,
        hit: after.hit - before.hit,
        held: after.held,
    };
    let held = delta.held;
    Ok((run, delta, held, peak))
}

/// What `score` did: seconds, the prepared records, raw scores per turn, and
/// (tokens requested, tokens computed, forward batches).
type Baseline = (f64, Vec<PreparedRecord>, Vec<Vec<[f32; 9]>>, (usize, usize, usize));

/// Prepare and score every record in one call.
fn score_all(scorer: &Scorer, records: &[Value], budget: usize) -> Baseline {
    let started = Instant::now();
    let prepared: Vec<PreparedRecord> =
        records.iter().map(|r| scorer.prepare(r, ScoreOptions::default()).expect("the workload is valid")).collect();
    let tokenised = started.elapsed().as_secs_f64();
    let (scores, stats) = scorer.score_with_stats(&prepared.iter().collect::<Vec<_>>(), budget);
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("score: tokenising {tokenised:.3} s, forward {:.3} s, {} batches", seconds - tokenised, stats.batches);
    let raw =
        scores.into_iter().map(|s| s.expect("the workload scores").turns.iter().map(|t| t.raw).collect()).collect();
    (seconds, prepared, raw, (stats.tokens_requested, stats.tokens_computed, stats.batches))
}

struct Counters {
    requested: usize,
    computed: usize,
    batches: usize,
    /// Tokens read from the prefix cache, and the bytes it holds.
    hit: usize,
    held: usize,
}

async fn run_service(scorer: Scorer, records: &[Value], args: &Args) -> anyhow::Result<(Run, Counters)> {
    let pipeline = RewardPipeline::new(RewardConfig::default(), PresetBook::builtin())?;
    let mut config = ServeConfig::new(pipeline);
    config.queue = QueueConfig {
        batch_tokens: args.batch_tokens,
        queue_limit: 4 * records.len().max(args.clients),
        prepare_threads: 2,
    };
    let (url, stop, server) = start_server(scorer, config).await?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.clients).build()?;
    drive(&client, &format!("{url}/v1/rewards"), &records[..1], 1, raw_of_rewards).await?; // warm-up
    let before = counters(&client, &url).await?;
    let run = drive(&client, &format!("{url}/v1/rewards"), records, args.clients, raw_of_rewards).await?;
    let after = counters(&client, &url).await?;
    let _ = stop.send(());
    server.await??;
    let delta = Counters {
        requested: after.requested - before.requested,
        computed: after.computed - before.computed,
        batches: after.batches - before.batches,
        hit: after.hit - before.hit,
        held: after.held,
    };
    Ok((run, delta))
}

/// The peer under the same clients; its counters cover the timed run only.
async fn run_peer(
    peer: &peer::PythonPeer,
    records: &[Value],
    clients: usize,
) -> anyhow::Result<(Run, peer::PeerStats)> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let url = format!("{}/score", peer.url);
    drive(&client, &url, &records[..1], 1, raw_of_peer).await?; // warm-up
    let before = peer.stats(&client).await?;
    let run = drive(&client, &url, records, clients, raw_of_peer).await?;
    let after = peer.stats(&client).await?;
    Ok((run, after.since(&before)))
}

fn raw_of_rewards(answer: &Value) -> Option<Vec<[f32; 9]>> {
    answer["results"][0]["turns"].as_array()?.iter().map(|t| raw9(&t["raw"])).collect()
}

fn raw_of_peer(answer: &Value) -> Option<Vec<[f32; 9]>> {
    answer["results"][0].as_array()?.iter().map(raw9).collect()
}

fn raw9(v: &Value) -> Option<[f32; 9]> {
    let xs: Vec<f32> = v.as_array()?.iter().map(|x| x.as_f64().map(|x| x as f32)).collect::<Option<_>>()?;
    xs.try_into().ok()
}

/// `clients` tasks take the next request as soon as their last one is answered.
async fn drive(
    client: &reqwest::Client,
    url: &str,
    records: &[Value],
    clients: usize,
    read: fn(&Value) -> Option<Vec<[f32; 9]>>,
) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicUsize::new(0));
    let records: Arc<Vec<Value>> = Arc::new(records.to_vec());
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (client, url, next, records) =
                (client.clone(), url.to_string(), Arc::clone(&next), Arc::clone(&records));
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(record) = records.get(i) else { return done };
                    let sent = Instant::now();
                    let answer = client
                        .post(&url)
                        .json(&json!({"conversations": [record]}))
                        .timeout(Duration::from_secs(600))
                        .send()
                        .await;
                    let raw = match answer {
                        Ok(r) if r.status().is_success() => r.json::<Value>().await.ok().and_then(|v| read(&v)),
                        _ => None,
                    };
                    done.push((i, sent.elapsed().as_secs_f64(), raw));
                }
            })
        })
        .collect();
    let mut run = Run { seconds: 0.0, latencies: Vec::new(), answers: vec![None; records.len()], failures: 0 };
    for task in tasks {
        for (i, latency, raw) in task.await? {
            run.latencies.push(latency);
            match raw {
                Some(raw) => {
                    anyhow::ensure!(run.answers[i].is_none(), "request {i} was answered twice");
                    run.answers[i] = Some(raw);
                }
                None => run.failures += 1,
            }
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}

async fn counters(client: &reqwest::Client, url: &str) -> anyhow::Result<Counters> {
    let text = client.get(format!("{url}/metrics")).send().await?.text().await?;
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0)
            as usize
    };
    Ok(Counters {
        requested: value("reward_worker_batch_tokens_requested_total "),
        computed: value("reward_worker_batch_tokens_computed_total "),
        batches: value("reward_worker_forward_batches_total "),
        hit: value("reward_worker_prefix_cache_hit_tokens_total "),
        held: value("reward_worker_prefix_cache_bytes "),
    })
}

fn count(run: &Run) -> usize {
    run.answers.iter().filter(|a| a.is_some()).count()
}

/// Answers whose numbers differ from `score`'s by more than batching and
/// dtype noise: `tolerance` times the record's largest |raw| (a lost, swapped
/// or mis-scored record is off by the order of that scale).
fn mismatches(run: &Run, want: &[Vec<[f32; 9]>], tolerance: f32) -> usize {
    run.answers
        .iter()
        .zip(want)
        .filter(|(got, want)| match got {
            None => false,
            Some(got) => got.len() != want.len() || worst_diff(got, want) > tolerance,
        })
        .count()
}

/// The largest [`worst_diff`] over a run's answers.
fn max_diff(run: &Run, want: &[Vec<[f32; 9]>]) -> f32 {
    run.answers.iter().zip(want).filter_map(|(got, want)| Some(worst_diff(got.as_ref()?, want))).fold(0f32, f32::max)
}

/// Largest |got - want| over a record, relative to its largest |want| (at least 1).
fn worst_diff(got: &[[f32; 9]], want: &[[f32; 9]]) -> f32 {
    let scale = want.iter().flatten().fold(1f32, |m, w| m.max(w.abs()));
    got.iter().flatten().zip(want.iter().flatten()).fold(0f32, |m, (g, w)| m.max((g - w).abs())) / scale
}

/// Mismatch tolerance: f32 differs by GEMM blocking (~1e-6 of the scale), bf16
/// by rounding (transformers' bf16 and ours each about 0.2 from f32 at a scale
/// of 50, the parity test's bound; a swapped record is off by about 1).
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::Bf16 => 5e-2,
        _ => 1e-4,
    }
}

fn percentile(xs: &[f64], q: f64) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    xs.get(((xs.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

/// The CPU and the flags that decide libtorch's kernels.
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let flags = info.lines().find_map(|l| l.strip_prefix("flags")).unwrap_or("");
    let have: Vec<&str> = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("cpu: {name}, {cores} cores, flags: {}", have.join(" "))
}

/// What `reward-worker`'s main does before anything runs, so the three runs
/// allocate as the binaries do (see src/main.rs).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
