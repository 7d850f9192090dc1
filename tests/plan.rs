//! `reward-worker plan` on the real Nemotron-4-340B architecture, checked
//! against arithmetic done by hand here (not by the code under test).

mod common;

use common::*;
use serde_json::Value;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/nemotron-4-340b");

fn plan_json(args: &[&str]) -> (Value, i32) {
    let mut all = vec!["plan", "--config", CONFIG, "--json"];
    all.extend_from_slice(args);
    let out = run(&all);
    (
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out))),
        out.status.code().unwrap(),
    )
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

// Nemotron-4-340B: hidden 18432, ffn 73728, 96 heads, 8 kv heads, head_dim 192, vocab 256000.
const H: u64 = 18432;

/// bf16 bytes of one layer on one of 8 tensor-parallel ranks, by hand:
/// q and o: 12 heads x 192 x 18432 each; k and v: 1 kv head x 192 x 18432 each;
/// up and down: 9216 x 18432 each; 2 bytes each; plus 2 LayerNorms (gamma, beta) in fp32.
const LAYER_TP8_BF16: u64 = (2 * 12 * 192 * H + 2 * 192 * H + 2 * 9216 * H) * 2 + 4 * H * 4;

#[test]
fn tp8_pp2_on_80gb_matches_hand_arithmetic() {
    let (p, code) =
        plan_json(&["--tp", "8", "--pp", "2", "--dtype", "bf16", "--gpu-memory", "80", "--batch-tokens", "8192"]);
    assert_eq!(code, 0);
    assert_eq!(LAYER_TP8_BF16, 863_797_248);
    let s0 = &p["stages"][0];
    let s1 = &p["stages"][1];
    assert_eq!(
        (u(&s0["first_layer"]), u(&s0["last_layer"]), u(&s1["first_layer"]), u(&s1["last_layer"])),
        (0, 47, 48, 95)
    );
    assert_eq!(u(&s0["layer_weight_bytes"]), 48 * LAYER_TP8_BF16);
    // The embedding is split by vocabulary: 256000 / 8 = 32000 rows of 18432 bf16, on stage 0 only.
    assert_eq!(u(&s0["embedding_weight_bytes"]), 32000 * H * 2);
    assert_eq!(u(&s1["embedding_weight_bytes"]), 0);
    // Final norm (gamma, beta) and the 9 x 18432 head + bias in fp32, on the last stage only.
    assert_eq!(u(&s1["head_weight_bytes"]), (2 * H + 9 * H + 9) * 4);
    assert_eq!(u(&s0["head_weight_bytes"]), 0);
    let per_rank = [u(&s0["weight_bytes"]), u(&s1["weight_bytes"])];
    assert_eq!(per_rank, [48 * LAYER_TP8_BF16 + 32000 * H * 2, 48 * LAYER_TP8_BF16 + (11 * H + 9) * 4]);
    // About 42.5 GB of bf16 weights per rank: 42.64 GB on stage 0, 41.46 GB on stage 1.
    assert_eq!(per_rank.map(|b| (b as f64 / 1e7).round() / 100.0), [42.64, 41.46]);
    // The whole model, 336.3B parameters, is 672.6 GB; 16 ranks hold it once.
    assert_eq!((u(&p["model_weight_bytes"]) as f64 / 1e8).round() / 10.0, 672.6);
    // TP traffic: 2 all-reduces of 18432 bf16 per layer and token (+1 for the embedding on stage 0);
    // a ring sends 2 * 7/8 of that; the pipeline sends one hidden state per token.
    assert_eq!(u(&s0["tp_all_reduce_bytes_per_token"]), (2 * 48 + 1) * H * 2);
    assert_eq!(u(&s1["tp_all_reduce_bytes_per_token"]), 2 * 48 * H * 2);
    assert_eq!(u(&s0["tp_ring_sent_bytes_per_token"]), (2 * 48 + 1) * H * 2 * 14 / 8);
    assert_eq!((u(&s0["pp_send_bytes_per_token"]), u(&s1["pp_send_bytes_per_token"])), (H * 2, 0));
    assert_eq!(u(&p["micro_batch_tokens"]), 4096);
    assert!(p["fits"].as_bool().unwrap());
    assert!(
        p["verdict"].as_str().unwrap().starts_with("fits: the fullest rank (stage 0) needs 45."),
        "{}",
        p["verdict"]
    );
}

#[test]
fn tp8_on_141gb_fits_and_on_80gb_does_not() {
    let (p, code) = plan_json(&["--tp", "8", "--gpu-memory", "141"]);
    assert_eq!((code, p["fits"].as_bool()), (0, Some(true)));
    assert_eq!(u(&p["stages"][0]["layer_weight_bytes"]), 96 * LAYER_TP8_BF16);
    let (p, code) = plan_json(&["--tp", "8", "--gpu-memory", "80"]);
    assert_eq!((code, p["fits"].as_bool()), (1, Some(false)));
    let verdict = p["verdict"].as_str().unwrap();
    assert!(verdict.starts_with("does not fit: a rank of stage 0 needs 87."), "{verdict}");
    assert!(
        verdict.contains("but a GPU has 80.0 GB: weights 84.1 GB (82.9 GB of layers, 1.2 GB of embedding"),
        "{verdict}"
    );
    assert!(verdict.contains("the weights alone exceed the GPU by 4.1 GB"), "{verdict}");
    assert!(verdict.ends_with("With tp=8 the smallest pipeline that fits is pp=2 (16 GPUs)"), "{verdict}");
}

#[test]
fn fp8_halves_the_weights_and_text_output_names_the_units() {
    let (bf16, _) = plan_json(&["--tp", "8", "--pp", "2", "--gpu-memory", "80"]);
    let (fp8, _) = plan_json(&["--tp", "8", "--pp", "2", "--dtype", "fp8", "--gpu-memory", "80"]);
    let layers = |p: &Value| u(&p["stages"][1]["layer_weight_bytes"]);
    assert_eq!(layers(&bf16) - layers(&fp8), 48 * (LAYER_TP8_BF16 - 4 * H * 4) / 2);
    assert_eq!(fp8["activation_bytes_per_element"], 2);
    let out = run(&["plan", "--config", CONFIG, "--tp", "8", "--pp", "2", "--gpu-memory", "80"]);
    let text = stdout(&out);
    assert!(
        text.contains("layout: tp=8 x pp=2 = 16 GPUs of 80.0 GB; 8192 tokens per batch, 4096 per micro-batch"),
        "{text}"
    );
    assert!(text.contains("0-47     0-7      41.5 GB   1.2 GB"), "{text}");
}

#[test]
fn layouts_the_shapes_refuse_name_the_numbers() {
    let out = run(&["plan", "--config", CONFIG, "--tp", "5", "--gpu-memory", "80"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("layout tp=5 pp=1: 96 attention heads do not divide into 5 tensor-parallel ranks"));
    let out = run(&["plan", "--config", CONFIG, "--tp", "12", "--gpu-memory", "80"]);
    assert!(
        stderr(&out).contains("layout tp=12 pp=1: 8 kv heads cannot be replicated evenly over 12"),
        "{}",
        stderr(&out)
    );
    let out = run(&["plan", "--config", CONFIG, "--pp", "97", "--gpu-memory", "80"]);
    assert!(stderr(&out).contains("97 pipeline stages but the model has only 96 layers"), "{}", stderr(&out));
}
