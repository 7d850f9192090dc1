//! The static-padded peer: how NeMo-Aligner's reward server and OpenRLHF's
//! `serve_rm` batch. One HTTP request at a time (the model behind a lock, no
//! batching across requests); each rated turn of a conversation is its own
//! prefix sequence (no one-pass scoring of all turns); the request's prefixes
//! go in static micro-batches, each padded to its longest sequence.
//!
//! Padding is laid out after each prefix's scored position, so the padded
//! tokens are computed while the scores stay exact. Each padded sequence runs
//! as its own `score` call: the engine would otherwise share the common
//! prefixes of one conversation's turns, which a padded server cannot do (on
//! CPU, stacking the sequences of a micro-batch into one GEMM changes little).
//! What the engine really computed is reported from its own statistics.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use reward_worker::chat::Sequence;
use reward_worker::engine::{PreparedRecord, ScoreOptions, Scorer};

pub struct Peer {
    scorer: Mutex<Scorer>,
    micro_batch: usize,
    pub padded_tokens: AtomicUsize,
    pub computed_tokens: AtomicUsize,
    pub forwards: AtomicUsize,
}

impl Peer {
    pub fn new(scorer: Scorer, micro_batch: usize) -> Arc<Peer> {
        Arc::new(Peer {
            scorer: Mutex::new(scorer),
            micro_batch: micro_batch.max(1),
            padded_tokens: AtomicUsize::new(0),
            computed_tokens: AtomicUsize::new(0),
            forwards: AtomicUsize::new(0),
        })
    }

    pub fn router(self: &Arc<Peer>) -> Router {
        Router::new().route("/score", post(score)).with_state(Arc::clone(self))
    }

    /// Raw scores per rated turn of each record, padded-batch style.
    fn score_records(&self, records: &[Value]) -> Result<Vec<Vec<[f32; 9]>>, String> {
        let scorer = self.scorer.lock().expect("the peer's lock is never poisoned"); // one request at a time
                                                                                     // (record, tokens of the prefix, score token id, prefix length) per rated turn.
        let mut prefixes = Vec::new();
        for (r, record) in records.iter().enumerate() {
            let prepared = scorer.prepare(record, ScoreOptions::default()).map_err(|e| e.to_string())?;
            for seq in &prepared.sequences {
                for &(id, p) in &seq.probes {
                    prefixes.push((r, seq.tokens[..p as usize].to_vec(), id));
                }
            }
        }
        let mut out = vec![Vec::new(); records.len()];
        for micro in prefixes.chunks(self.micro_batch) {
            let longest = micro.iter().map(|(_, t, _)| t.len() + 1).max().unwrap_or(0);
            for (r, tokens, id) in micro {
                let mut padded = tokens.clone();
                padded.resize(longest - 1, 0); // pad id 0 after the scored position
                let seq = Sequence {
                    tokens: padded,
                    probes: vec![(*id, tokens.len() as i64)],
                    turns: vec![0],
                    truncated: false,
                };
                let record = PreparedRecord { sequences: vec![seq] };
                let (scores, stats) = scorer.score_with_stats(&[&record], usize::MAX);
                let scores = scores.into_iter().next().expect("one record").map_err(|e| e.to_string())?;
                out[*r].push(scores.turns[0].raw);
                self.padded_tokens.fetch_add(longest, Ordering::Relaxed);
                self.computed_tokens.fetch_add(stats.tokens_computed, Ordering::Relaxed);
                self.forwards.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(out)
    }
}

async fn score(State(peer): State<Arc<Peer>>, Json(body): Json<Value>) -> Json<Value> {
    let records = body["conversations"].as_array().cloned().unwrap_or_default();
    let result =
        tokio::task::spawn_blocking(move || peer.score_records(&records)).await.expect("the peer does not panic");
    Json(match result {
        Ok(raw) => json!({"results": raw}),
        Err(e) => json!({"error": e}),
    })
}
