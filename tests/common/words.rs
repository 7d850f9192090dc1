//! Deterministic word salad and chats made of it, for tests that need many
//! distinct conversations that share chosen prefixes.
use serde_json::{json, Value};

const WORDS: &[&str] = &[
    "the", "model", "reward", "answer", "question", "helpful", "water", "river", "energy", "plant", "light", "code",
    "batch", "token", "layer", "policy", "simple", "explain", "detail", "because", "number", "world", "time", "good",
];

/// `n` words, deterministic in `seed`.
pub fn text(seed: u64, n: usize) -> String {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            WORDS[(x >> 33) as usize % WORDS.len()]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A record whose messages alternate user, assistant, ... from `turns`.
pub fn chat(turns: &[String]) -> Value {
    let messages: Vec<Value> = turns
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": t}))
        .collect();
    json!({ "messages": messages })
}
