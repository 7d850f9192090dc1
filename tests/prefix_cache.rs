//! The prefix cache is exact: whatever earlier calls kept (or evicted), every
//! turn equals the record scored alone with the cache off, in f32 within
//! `close::SAME_MATH` of the turn's largest |raw| (cached keys and values are
//! the ones a batch would compute, attended to as one more cascade part, so
//! only the summation order changes). And it saves what it should: a shared
//! prompt or a growing history is computed once across calls.
//!
//! Records arrive the way training loops send them: one response per call,
//! groups interleaved, conversations growing a turn per call. The same over the
//! CLI (`score` across chunks, `bench`'s hit rate) and over real HTTP (the
//! service's `/metrics`, the `"prefix_cache": false` request option).

mod common;

use common::server::ChildServer;
use common::words::{chat, text};
use common::*;
use reqwest::{Client, StatusCode};
use reward_worker::config::{CommBackend, ParallelLayout};
use reward_worker::engine::{ModelSource, PreparedRecord, RecordScores, ScoreOptions, ScoreStats, Scorer};
use reward_worker::model::DType;
use reward_worker::parallel::{load_scorer, GroupOptions};
use serde_json::{json, Value};
use tch::Device;

/// GRPO groups of `per_group` responses, interleaved: response r of every
/// group, then response r + 1 of every group.
fn interleaved_groups(groups: usize, per_group: usize, prompt_words: usize) -> Vec<Value> {
    let prompts: Vec<String> = (0..groups).map(|g| text(100 + g as u64, prompt_words + 7 * g)).collect();
    (0..per_group)
        .flat_map(|r| {
            let prompts = &prompts;
            (0..groups).map(move |g| chat(&[prompts[g].clone(), text(1000 + 10 * g as u64 + r as u64, 5 + 3 * r)]))
        })
        .collect()
}

/// One conversation growing to `turns` assistant turns, every step a record.
fn growing(seed: u64, turns: usize) -> Vec<Value> {
    let mut history = Vec::new();
    (0..turns)
        .map(|t| {
            history.push(text(seed + 2 * t as u64, 8 + t));
            history.push(text(seed + 2 * t as u64 + 1, 12 + 2 * t));
            chat(&history)
        })
        .collect()
}

fn scorer(name: &str, cache_bytes: usize) -> Scorer {
    let s = Scorer::load(&ModelSource::Dir(fixture(name)), DType::F32, Device::Cpu).unwrap();
    s.set_prefix_cache_bytes(cache_bytes);
    s
}

/// Score `records` in calls of `per_call` records; the stats summed.
fn stream(s: &Scorer, records: &[Value], per_call: usize, budget: usize) -> (Vec<RecordScores>, ScoreStats) {
    let prepared = prepare(s, records);
    let mut all = Vec::new();
    let mut total = ScoreStats::default();
    for call in prepared.chunks(per_call) {
        let refs: Vec<&PreparedRecord> = call.iter().collect();
        let (results, stats) = s.score_with_stats(&refs, budget);
        all.extend(results.into_iter().map(Result::unwrap));
        total.tokens_requested += stats.tokens_requested;
        total.tokens_computed += stats.tokens_computed;
        total.tokens_cached += stats.tokens_cached;
        total.batches += stats.batches;
    }
    (all, total)
}

/// Every record scored alone, each in its own call, by a scorer without a cache.
fn alone(reference: &Scorer, records: &[Value]) -> Vec<RecordScores> {
    stream(reference, records, 1, 1 << 20).0
}

/// Largest difference of a turn's scores, relative to the turn's scale in `want`.
fn worst(got: &[RecordScores], want: &[RecordScores]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut worst: f64 = 0.0;
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.turns.len(), w.turns.len());
        for (a, b) in g.turns.iter().zip(&w.turns) {
            assert_eq!(a.turn, b.turn);
            worst = worst.max(close::rel_diff(&close::widen(&a.raw), &close::widen(&b.raw)));
        }
    }
    worst
}

const MIB: usize = 1 << 20;

#[test]
fn responses_arriving_one_per_call_score_as_if_alone_and_compute_each_prompt_once() {
    for name in ["tiny-gqa-odd-bias-legacy", "tiny-mha-rot025"] {
        let records = interleaved_groups(4, 5, 40);
        let reference = alone(&scorer(name, 0), &records);
        let s = scorer(name, 64 * MIB);
        let (got, stats) = stream(&s, &records, 1, 1 << 20);
        let diff = worst(&got, &reference);
        let unique = unique_tokens(&prepare(&s, &records));
        eprintln!("{name}: {stats:?}, unique {unique}, max relative diff {diff:.2e}");
        assert!(diff < close::SAME_MATH, "{name}: cached scoring differs from alone by {diff} (relative)");
        // every distinct token once, plus the read-out token of each record
        // (its hidden state is what is scored, so it is always computed)
        assert!(stats.tokens_computed <= unique + records.len(), "{name}: {stats:?}, unique {unique}");
        assert!(stats.tokens_cached > 0);
        let off = stream(&scorer(name, 0), &records, 1, 1 << 20).1;
        assert_eq!(off.tokens_cached, 0);
        assert!(off.tokens_computed > 2 * stats.tokens_computed, "off {off:?} vs on {stats:?}");
    }
}

#[test]
fn a_history_growing_across_calls_is_computed_once() {
    for name in ["tiny-gqa-odd-bias-legacy", "tiny-mha-rot025"] {
        let mut records = growing(7, 6);
        records.extend(growing(50, 4));
        // the two conversations take turns, one step per call
        let order: Vec<Value> =
            (0..6).flat_map(|t| [records.get(t).cloned(), records.get(6 + t).cloned()]).flatten().collect();
        let reference = alone(&scorer(name, 0), &order);
        let s = scorer(name, 64 * MIB);
        let (got, stats) = stream(&s, &order, 1, 1 << 20);
        let diff = worst(&got, &reference);
        let unique = unique_tokens(&prepare(&s, &order));
        eprintln!("{name}: {stats:?}, unique {unique}, max relative diff {diff:.2e}");
        assert!(diff < close::SAME_MATH, "{name}: {diff} (relative)");
        // every distinct token once, plus each read-out token again: a step
        // rates its earlier turns again, and a read-out's hidden state is always computed
        let readouts: usize = prepare(&s, &order).iter().map(PreparedRecord::turns).sum();
        assert!(stats.tokens_computed <= unique + readouts, "{stats:?}, unique {unique}, read-outs {readouts}");
    }
}

#[test]
fn a_group_cut_across_batches_of_one_call_reads_its_prompt() {
    let name = "tiny-gqa-odd-bias-legacy";
    let records = interleaved_groups(3, 6, 60);
    let reference = alone(&scorer(name, 0), &records);
    let off = stream(&scorer(name, 0), &records, records.len(), 150);
    let s = scorer(name, 64 * MIB);
    let (got, on) = stream(&s, &records, records.len(), 150);
    let diff = worst(&got, &reference);
    eprintln!("on {on:?}, off {:?}, max relative diff {diff:.2e}", off.1);
    assert!(diff < close::SAME_MATH, "{diff} (relative)");
    assert!(worst(&off.0, &reference) < close::SAME_MATH);
    assert!(off.1.batches > 3, "the budget must cut the groups: {:?}", off.1);
    // the cut repeats each group's prompt without the cache; with it, once
    assert!(on.tokens_computed < off.1.tokens_computed && on.tokens_cached > 0, "on {on:?}, off {:?}", off.1);
}

#[test]
fn evictions_in_the_middle_of_groups_stay_exact() {
    let name = "tiny-mha-rot025";
    let records = interleaved_groups(4, 4, 40);
    let reference = alone(&scorer(name, 0), &records);
    let probe = scorer(name, MIB);
    let per_token = probe.prefix_cache_stats().bytes_per_token;
    let record = prepare(&probe, &records[..1])[0].tokens();
    // room for about one or two records: every group evicts another's
    for tokens in [3 * record / 2, 5 * record / 2] {
        let s = scorer(name, per_token * tokens);
        let (got, stats) = stream(&s, &records, 1, 1 << 20);
        let cache = s.prefix_cache_stats();
        let diff = worst(&got, &reference);
        eprintln!("bound {tokens} tokens: {stats:?}, {cache:?}, max relative diff {diff:.2e}");
        assert!(diff < close::SAME_MATH, "{diff} (relative)");
        assert!(cache.evictions > 0 && cache.tokens_held <= tokens, "{cache:?}");
        assert!(cache.bytes_held <= cache.bound_bytes);
        // and in calls of several records with a budget that cuts them
        let (got, _) = stream(&s, &records, 5, 60);
        assert!(worst(&got, &reference) < close::SAME_MATH);
    }
}

#[test]
fn a_bound_too_small_for_anything_computes_everything_exactly() {
    let name = "tiny-gqa-odd-bias-legacy";
    let records = interleaved_groups(2, 3, 30);
    let reference = alone(&scorer(name, 0), &records);
    let per_token = scorer(name, MIB).prefix_cache_stats().bytes_per_token;
    let s = scorer(name, per_token * 3);
    let (got, stats) = stream(&s, &records, 1, 1 << 20);
    assert!(worst(&got, &reference) < close::SAME_MATH);
    assert_eq!(stats.tokens_cached, 0, "{stats:?}");
    assert_eq!(s.prefix_cache_stats().tokens_held, 0);
}

#[test]
fn records_that_bypass_the_cache_neither_read_nor_fill_it() {
    let name = "tiny-gqa-odd-bias-legacy";
    let records = interleaved_groups(2, 3, 30);
    let s = scorer(name, 64 * MIB);
    let bypass = ScoreOptions { bypass_prefix_cache: true, ..ScoreOptions::default() };
    let apart: Vec<PreparedRecord> = records.iter().map(|r| s.prepare(r, bypass).unwrap()).collect();
    for r in &apart {
        let (results, stats) = s.score_with_stats(&[r], 1 << 20);
        results[0].as_ref().unwrap();
        assert_eq!(stats.tokens_cached, 0);
    }
    assert_eq!(s.prefix_cache_stats().tokens_held, 0);
    // mixed in one call: the others use it, the bypassing ones do not
    let kept = prepare(&s, &records[..1]);
    s.score(&[&kept[0]], 1 << 20);
    let mut refs: Vec<&PreparedRecord> = apart.iter().collect();
    let same = prepare(&s, &records[..1]);
    refs.push(&same[0]);
    let (results, stats) = s.score_with_stats(&refs, 1 << 20);
    assert!(results.iter().all(Result::is_ok));
    let one = same[0].tokens();
    assert_eq!(stats.tokens_cached, one - 1, "{stats:?}");
}

#[test]
fn a_tp2_pp2_group_with_the_cache_matches_one_rank_alone() {
    let name = "tiny-nemotron-rm";
    let mut records = interleaved_groups(3, 3, 30);
    records.extend(growing(9, 4));
    let reference = alone(&scorer(name, 0), &records);
    let options = GroupOptions::new(ParallelLayout { tp: 2, pp: 2 }, CommBackend::Threads, DType::F32, Device::Cpu);
    let group = load_scorer(&ModelSource::Dir(fixture(name)), &options).unwrap();
    let per_token = group.prefix_cache_stats().bytes_per_token;
    let record = prepare(&group, &records[..1])[0].tokens();
    for (bound, per_call, budget) in [(64 * MIB, 1, 1 << 20), (per_token * 2 * record, 1, 1 << 20), (64 * MIB, 4, 80)] {
        group.set_prefix_cache_bytes(bound);
        let (got, stats) = stream(&group, &records, per_call, budget);
        let diff = worst(&got, &reference);
        eprintln!(
            "tp=2 pp=2, bound {bound}: {stats:?}, {:?}, max relative diff {diff:.2e}",
            group.prefix_cache_stats()
        );
        assert!(diff < close::SAME_MATH, "{diff} (relative)");
        assert!(stats.tokens_cached > 0);
    }
}

/// bf16 with the cache against f32 alone stays within `close::BF16_SHARED_FACTOR`
/// of bf16 alone (without the cache), as prefix sharing does (tests/prefix_sharing.rs).
#[test]
fn bf16_with_the_cache_stays_within_the_sharing_bound() {
    let name = "tiny-gqa-odd-bias-legacy";
    let mut records = interleaved_groups(2, 3, 40);
    records.extend(growing(3, 3));
    let reference = alone(&scorer(name, 0), &records);
    let bf16 = |cache: usize| {
        let s = Scorer::load(&ModelSource::Dir(fixture(name)), DType::Bf16, Device::Cpu).unwrap();
        s.set_prefix_cache_bytes(cache);
        s
    };
    let abs = |got: &[RecordScores]| -> f64 {
        let flat = |r: &[RecordScores]| -> Vec<f64> {
            r.iter().flat_map(|r| r.turns.iter().flat_map(|t| close::widen(&t.raw))).collect()
        };
        max_abs_diff(&flat(got), &flat(&reference))
    };
    let alone_diff = abs(&alone(&bf16(0), &records));
    let (cached, stats) = stream(&bf16(64 * MIB), &records, 1, 1 << 20);
    let diff = abs(&cached);
    let bound = alone_diff * close::BF16_SHARED_FACTOR;
    eprintln!("bf16 cached vs f32 alone {diff:.4}, bf16 alone {alone_diff:.4} (bound {bound:.4}), {stats:?}");
    assert!(stats.tokens_cached > 0);
    assert!(diff <= bound, "bf16 with the cache is {diff} from f32, bound {bound}");
}

#[test]
fn a_rank_failure_clears_the_cache_with_the_group() {
    use reward_worker::parallel::{Fault, FaultKind};
    let name = "tiny-nemotron-rm";
    let records = interleaved_groups(1, 3, 30);
    let mut options = GroupOptions::new(ParallelLayout { tp: 2, pp: 1 }, CommBackend::Threads, DType::F32, Device::Cpu);
    // 5 all-reduces per batch (embedding, then attention and MLP of 2 layers): the third call fails
    options.fault = Some(Fault { rank: 1, at_all_reduce: 12, kind: FaultKind::Error });
    options.timeout = std::time::Duration::from_secs(20);
    let group = load_scorer(&ModelSource::Dir(fixture(name)), &options).unwrap();
    group.set_prefix_cache_bytes(64 * MIB);
    let prepared = prepare(&group, &records);
    for r in &prepared[..2] {
        let (results, _) = group.score_with_stats(&[r], 1 << 20);
        results[0].as_ref().unwrap();
    }
    assert!(group.prefix_cache_stats().tokens_held > 0);
    let (results, _) = group.score_with_stats(&[&prepared[2]], 1 << 20);
    let err = results[0].as_ref().unwrap_err();
    assert!(err.message.contains("injected fault"), "{err:?}");
    assert!(!group.healthy());
    assert_eq!(group.prefix_cache_stats().tokens_held, 0, "{:?}", group.prefix_cache_stats());
}

// ---- the CLI ----

fn grpo_file(records: &[Value]) -> std::path::PathBuf {
    let path = scratch("prefix-cache-grpo").join("grpo.jsonl");
    std::fs::write(&path, records.iter().map(|r| format!("{r}\n")).collect::<String>()).unwrap();
    path
}

#[test]
fn score_across_chunks_with_the_cache_matches_without_and_bench_prints_the_hit_rate() {
    let model = fixture("tiny-gqa-odd-bias-legacy");
    let input = grpo_file(&interleaved_groups(3, 4, 40));
    let args = |cache: &'static str| {
        vec![
            "score",
            "--model",
            path_str(&model),
            "--input",
            path_str(&input),
            "--dtype",
            "f32",
            "--chunk",
            "2",
            "--prefix-cache-bytes",
            cache,
        ]
    };
    let on = run(&args("64MiB"));
    let off = run(&args("0"));
    assert!(on.status.success() && off.status.success(), "{}", stderr(&on));
    let (on, off) = (json_lines(&on), json_lines(&off));
    assert_eq!(on.len(), 12);
    for (a, b) in on.iter().zip(&off) {
        let (a, b) = (floats(&a["turns"][0]["raw"]), floats(&b["turns"][0]["raw"]));
        assert!(close::rel_diff(&a, &b) < close::SAME_MATH);
    }
    let bench = |cache: &'static str| {
        let out = run(&[
            "bench",
            "--model",
            path_str(&model),
            "--input",
            path_str(&input),
            "--dtype",
            "f32",
            "--warmup",
            "0",
            "--repeat",
            "2",
            "--batch-tokens",
            "100",
            "--prefix-cache-bytes",
            cache,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<Value>(stdout(&out).trim()).unwrap()
    };
    let (on, off) = (bench("64MiB"), bench("0"));
    eprintln!("bench on {on}\nbench off {off}");
    assert!(on["prefix_cache_hit_rate"].as_f64().unwrap() > 0.1, "{on}");
    assert_eq!(off["prefix_cache_hit_rate"].as_f64().unwrap(), 0.0);
    assert!(on["tokens_computed"].as_u64() < off["tokens_computed"].as_u64());
    let bad = run(&["score", "--model", path_str(&model), "--input", path_str(&input), "--prefix-cache-bytes", "lots"]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("--prefix-cache-bytes") && stderr(&bad).contains("lots"),
        "{}",
        stderr(&bad)
    );
}

// ---- the service ----

/// Keys and values of one token of tiny-nemotron-rm in f32: 2 layers x (k, v) x 2 kv heads x 16 x 4 bytes.
const PER_TOKEN: usize = 2 * 2 * 2 * 16 * 4;

fn server(cache_bytes: usize) -> ChildServer {
    let model = fixture("tiny-nemotron-rm");
    let bytes = cache_bytes.to_string();
    ChildServer::start(&[
        "serve",
        "--model",
        path_str(&model),
        "--port",
        "0",
        "--dtype",
        "f32",
        "--prefix-cache-bytes",
        &bytes,
    ])
}

fn record(prompt: usize, response: usize) -> Value {
    let words =
        |seed: usize, n: usize| (0..n).map(|i| format!("w{}", (seed * 31 + i * 7) % 97)).collect::<Vec<_>>().join(" ");
    json!({"messages": [{"role": "user", "content": words(prompt, 40)}, {"role": "assistant", "content": words(1000 + response, 6 + response)}]})
}

async fn rewards(client: &Client, base: &str, body: Value) -> (StatusCode, Value) {
    let response = client.post(format!("{base}/v1/rewards")).json(&body).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

fn raw(answer: &Value) -> Vec<f64> {
    floats(&answer["results"][0]["turns"][0]["raw"])
}

async fn metric(client: &Client, base: &str, name: &str) -> f64 {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let prefix = format!("{name} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// Every (group, response) of 3 groups x 4 responses, interleaved, one request each.
fn requests() -> Vec<Value> {
    (0..4).flat_map(|r| (0..3).map(move |g| record(g, 10 * g + r))).collect()
}

#[tokio::test]
async fn responses_sent_one_by_one_read_their_prompt_from_the_cache_and_score_as_without_it() {
    let client = Client::new();
    let off = server(0);
    let mut want = Vec::new();
    for body in requests() {
        let (status, answer) = rewards(&client, &off.url, json!({"conversations": [body]})).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        want.push(raw(&answer));
    }
    assert_eq!(metric(&client, &off.url, "reward_worker_prefix_cache_hit_tokens_total").await, 0.0);

    let on = server(64 << 20);
    assert!(on.stderr().contains("prefix cache on"), "{}", on.stderr());
    let mut computed_first = 0.0;
    for (i, body) in requests().into_iter().enumerate() {
        let before = metric(&client, &on.url, "reward_worker_batch_tokens_computed_total").await;
        let (status, answer) = rewards(&client, &on.url, json!({"conversations": [body]})).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let diff = close::rel_diff(&raw(&answer), &want[i]);
        assert!(diff < close::SAME_MATH, "request {i}: {diff} (relative)");
        let computed = metric(&client, &on.url, "reward_worker_batch_tokens_computed_total").await - before;
        if i == 0 {
            computed_first = computed;
        }
        if i >= 3 {
            // the group's prompt (and the system header) came from the cache
            assert!(computed < computed_first / 2.0, "request {i} computed {computed}, the first {computed_first}");
        }
    }
    let hit = metric(&client, &on.url, "reward_worker_prefix_cache_hit_tokens_total").await;
    let held = metric(&client, &on.url, "reward_worker_prefix_cache_bytes").await;
    let bound = metric(&client, &on.url, "reward_worker_prefix_cache_bound_bytes").await;
    assert!(
        hit > 0.0 && held > 0.0 && held <= bound && bound == (64 << 20) as f64,
        "hit {hit}, held {held}, bound {bound}"
    );

    // bypassing: no hit, nothing kept
    let fresh = record(77, 3);
    let hit_before = metric(&client, &on.url, "reward_worker_prefix_cache_hit_tokens_total").await;
    let held_before = metric(&client, &on.url, "reward_worker_prefix_cache_bytes").await;
    for _ in 0..2 {
        let (status, answer) =
            rewards(&client, &on.url, json!({"conversations": [fresh.clone()], "prefix_cache": false})).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    assert_eq!(metric(&client, &on.url, "reward_worker_prefix_cache_hit_tokens_total").await, hit_before);
    assert_eq!(metric(&client, &on.url, "reward_worker_prefix_cache_bytes").await, held_before);

    let (status, answer) = rewards(&client, &on.url, json!({"conversations": [fresh], "prefix_cache": "no"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"]["code"], "invalid_request");
    assert!(answer["error"]["message"].as_str().unwrap().contains("`prefix_cache` must be a boolean"), "{answer}");
}

#[tokio::test]
async fn a_small_bound_evicts_and_holds() {
    let client = Client::new();
    let bound = 400 * PER_TOKEN;
    let on = server(bound);
    let off = server(0);
    for (i, body) in requests().into_iter().enumerate() {
        let (_, got) = rewards(&client, &on.url, json!({"conversations": [body.clone()]})).await;
        let (_, want) = rewards(&client, &off.url, json!({"conversations": [body]})).await;
        let diff = close::rel_diff(&raw(&got), &raw(&want));
        assert!(diff < close::SAME_MATH, "request {i}: {diff} (relative)");
        let held = metric(&client, &on.url, "reward_worker_prefix_cache_bytes").await;
        assert!(held <= bound as f64, "{held} bytes held, bound {bound}");
    }
    assert!(metric(&client, &on.url, "reward_worker_prefix_cache_evictions_total").await > 0.0);
}
