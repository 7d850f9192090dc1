//! The benchmark's fixed, mixed set of requests: GRPO groups (one prompt, 8
//! responses, each response its own request) and multi-turn conversations with
//! 1-3 rated turns, 64..2048 tokens each, from a seeded generator.

use serde_json::{json, Value};

use reward_worker::engine::Preparer;

/// xorshift64*: deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in lo..=hi.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "reward",
    "policy",
    "gradient",
    "answer",
    "question",
    "because",
    "therefore",
    "however",
    "sunlight",
    "water",
    "energy",
    "system",
    "careful",
    "example",
    "number",
    "result",
    "simple",
    "language",
    "between",
    "people",
    "history",
    "science",
    "quickly",
    "slowly",
    "before",
    "after",
    "during",
    "while",
    "function",
    "variable",
    "memory",
    "network",
    "protocol",
    "server",
    "client",
    "request",
    "response",
    "batch",
    "mountain",
    "river",
    "ocean",
    "forest",
    "city",
    "village",
    "market",
    "garden",
    "kitchen",
    "library",
    "explain",
    "describe",
    "compare",
    "improve",
    "consider",
    "measure",
    "observe",
    "predict",
    "verify",
    "prove",
    "and",
    "or",
    "but",
    "with",
    "without",
    "under",
    "over",
    "into",
    "from",
    "about",
    "is",
    "are",
    "was",
    "were",
];

/// Text of about `tokens` tokens (`per_word` measured on this tokenizer).
pub fn text(rng: &mut Rng, tokens: usize, per_word: f64) -> String {
    let words = ((tokens as f64 / per_word).round() as usize).max(1);
    let mut out = String::new();
    for i in 0..words {
        if i > 0 {
            out.push(if rng.range(0, 11) == 0 { '\n' } else { ' ' });
        }
        out.push_str(WORDS[rng.range(0, WORDS.len() - 1)]);
    }
    out
}

/// Tokens per word of this tokenizer on the word list.
pub fn tokens_per_word(preparer: &Preparer) -> f64 {
    let mut rng = Rng::new(99);
    let sample = text(&mut rng, 4000, 1.0);
    let ids = preparer.tokenizer.encode(&sample).expect("the sample tokenises");
    ids.len() as f64 / sample.split_whitespace().count() as f64
}

/// The requests, one record each, in send order: the 8 requests of a GRPO
/// group are consecutive (a rollout engine finishes them close together).
pub fn requests(preparer: &Preparer, groups: usize, group_size: usize, conversations: usize, seed: u64) -> Vec<Value> {
    let per_word = tokens_per_word(preparer);
    let mut rng = Rng::new(seed);
    // ~70 tokens of template (system prompt and turn headers) come on top.
    let mut blocks: Vec<Vec<Value>> = Vec::new();
    for _ in 0..groups {
        let prompt_tokens = rng.range(32, 1000);
        let prompt = text(&mut rng, prompt_tokens, per_word);
        let block = (0..group_size)
            .map(|_| {
                let response_tokens = rng.range(16, 900);
                let response = text(&mut rng, response_tokens, per_word);
                json!({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]})
            })
            .collect();
        blocks.push(block);
    }
    for _ in 0..conversations {
        let rated = rng.range(1, 3);
        let total = rng.range(64, 1950).saturating_sub(70 + 20 * rated).max(2 * rated);
        let mut messages = Vec::new();
        for _ in 0..rated {
            let share = total / rated;
            let user = rng.range(share / 5, share / 2).max(1);
            messages.push(json!({"role": "user", "content": text(&mut rng, user, per_word)}));
            messages.push(
                json!({"role": "assistant", "content": text(&mut rng, share.saturating_sub(user).max(1), per_word)}),
            );
        }
        blocks.push(vec![json!({"messages": messages})]);
    }
    for i in (1..blocks.len()).rev() {
        blocks.swap(i, rng.range(0, i));
    }
    blocks.into_iter().flatten().collect()
}
