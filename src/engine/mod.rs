//! The scoring engine: records in, nine raw attribute scores per assistant turn out.
//!
//! The engine interface is [`Scorer`]: `prepare` turns a record into token
//! sequences (cheap, per record, on any thread through [`Scorer::preparer`];
//! errors stay with their record) and `score` packs the sequences of many
//! records into batches by a token budget and runs them on a [`Forward`]
//! backend: one local rank, or a worker group. Everything above (the CLI, the
//! service) talks to this interface only.

pub mod backend;
pub mod device_memory;
pub mod prepare;
pub mod sleep;
pub mod source;

pub use backend::{BatchScores, Forward, LocalModel};
pub use prepare::{PreparedRecord, Preparer, ScoreOptions};
pub use sleep::{ReloadableModel, SleepLevel};
pub use source::ModelSource;

use serde_json::Value;
use std::cell::{Ref, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use tch::Device;

use crate::batching::{CacheStats, PrefixCache, PrefixTree, ReadoutId};
use crate::chat::RecordError;
use crate::model::flops::forward_flops;
use crate::model::{BatchLayout, Config, DType, ModelError, NemotronRewardModel};
use crate::parallel::SingleRank;

/// The nine raw outputs for one assistant turn.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnScore {
    /// Index of the turn in the record's turn list.
    pub turn: usize,
    pub raw: [f32; 9],
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecordScores {
    pub turns: Vec<TurnScore>,
    pub tokens: usize,
}

impl RecordScores {
    pub fn truncated(&self) -> bool {
        self.turns.iter().any(|t| t.truncated)
    }
}

/// What one `score` call cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScoreStats {
    /// Tokens of the records as laid out alone (what a client asked for).
    pub tokens_requested: usize,
    /// Tokens the forward passes computed.
    pub tokens_computed: usize,
    /// Tokens the forward passes read from the prefix cache instead.
    pub tokens_cached: usize,
    /// Forward batches.
    pub batches: usize,
    /// Floating-point operations of the forward passes ([`crate::model::flops`]).
    pub flops: f64,
}

/// A loaded model with its tokenizer, behind a forward backend.
pub struct Scorer {
    preparer: Arc<Preparer>,
    backend: Box<dyn Forward>,
    pub config: Config,
    pub name: String,
    /// What the ranks keep across batches ([`crate::batching::prefix_cache`]);
    /// off until [`Scorer::set_prefix_cache_bytes`]. A call nested in another
    /// (the scheduler's `between`) finds it borrowed and runs without it.
    cache: RefCell<PrefixCache>,
}

impl Scorer {
    /// One rank on `device`.
    pub fn load(source: &ModelSource, dtype: DType, device: Device) -> Result<Scorer, ModelError> {
        let (config, tokenizer, weights) = source.load()?;
        check_vocab(&config, tokenizer.vocab_size())?;
        let model = NemotronRewardModel::load(&config, &weights, dtype.kind(), device, Arc::new(SingleRank))?;
        let backend = ReloadableModel::new(LocalModel { model }, source.clone());
        Ok(Scorer::from_parts(source.name(), config, tokenizer, Box::new(backend)))
    }

    /// A scorer over any backend (a worker group builds its own).
    pub fn from_parts(
        name: String,
        config: Config,
        tokenizer: crate::chat::ChatTokenizer,
        backend: Box<dyn Forward>,
    ) -> Scorer {
        let preparer = Preparer {
            tokenizer,
            context: config.max_position_embeddings as usize,
            vocab_size: config.vocab_size as usize,
        };
        let cache = RefCell::new(PrefixCache::new(0, kv_bytes_per_token(&config, backend.as_ref())));
        Scorer { preparer: Arc::new(preparer), backend, config, name, cache }
    }

    /// Keys and values of one token, every layer and kv head, as the ranks keep
    /// them (the attention dtype).
    pub fn kv_bytes_per_token(&self) -> usize {
        kv_bytes_per_token(&self.config, self.backend.as_ref())
    }

    /// Bound the prefix cache to `bytes` of keys and values (the whole model's:
    /// each rank holds its slice of it); `0` turns it off. Whatever was kept is
    /// dropped.
    pub fn set_prefix_cache_bytes(&self, bytes: usize) {
        let mut cache = self.cache.borrow_mut();
        *cache = PrefixCache::new(bytes, self.kv_bytes_per_token());
        cache.invalidate();
    }

    /// The prefix cache's counters (zeros while a call holds it).
    pub fn prefix_cache_stats(&self) -> CacheStats {
        self.cache.try_borrow().map(|c| c.stats()).unwrap_or_default()
    }

    /// The tokenizer side, for threads that prepare records while this one scores.
    pub fn preparer(&self) -> Arc<Preparer> {
        Arc::clone(&self.preparer)
    }

    /// The model's context length (`max_position_embeddings`).
    pub fn context(&self) -> usize {
        self.preparer.context
    }

    /// False once the backend (a worker group) has lost a rank.
    pub fn healthy(&self) -> bool {
        self.backend.healthy()
    }

    /// The backend, for logs: device, dtype and parallel layout.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Parse, render and tokenise one record.
    pub fn prepare(&self, record: &Value, opts: ScoreOptions) -> Result<PreparedRecord, RecordError> {
        self.preparer.prepare(record, opts)
    }

    /// Score prepared records, batching their sequences by `batch_tokens`.
    /// A failed batch fails only the records that had a sequence in it.
    pub fn score(&self, records: &[&PreparedRecord], batch_tokens: usize) -> Vec<Result<RecordScores, RecordError>> {
        self.score_with_stats(records, batch_tokens).0
    }

    /// [`Scorer::score`], and what it cost.
    ///
    /// All scored prefixes of all records go into one prefix tree, so whatever
    /// they share (a system header, a GRPO prompt, a conversation history) is
    /// computed once; the tree is cut into batches of at most `batch_tokens`
    /// computed tokens (split further over a pipeline's stages).
    pub fn score_with_stats(
        &self,
        records: &[&PreparedRecord],
        batch_tokens: usize,
    ) -> (Vec<Result<RecordScores, RecordError>>, ScoreStats) {
        self.score_while(records, batch_tokens, &|_| true, &mut || {})
    }

    /// [`Scorer::score_with_stats`], asking `wanted(record)` before each group of
    /// forward batches: a batch whose every read-out belongs to records no longer
    /// wanted (their deadline passed, their client left) is not computed, and
    /// those records get `cancelled`. So an abandoned request stops costing the
    /// engine within one group of batches. `between` runs between two groups (a
    /// scheduler serves other requests there, so a long call cannot starve them).
    pub fn score_while(
        &self,
        records: &[&PreparedRecord],
        batch_tokens: usize,
        wanted: &dyn Fn(usize) -> bool,
        between: &mut dyn FnMut(),
    ) -> (Vec<Result<RecordScores, RecordError>>, ScoreStats) {
        let bypass: Vec<usize> = (0..records.len()).filter(|&r| records[r].bypass_cache).collect();
        if bypass.is_empty() || bypass.len() == records.len() {
            return self.score_part(records, batch_tokens, wanted, between, bypass.is_empty());
        }
        // Records that bypass the cache are scored apart, after the others.
        let cached: Vec<usize> = (0..records.len()).filter(|&r| !records[r].bypass_cache).collect();
        let mut results: Vec<Option<Result<RecordScores, RecordError>>> = vec![None; records.len()];
        let mut stats = ScoreStats::default();
        for (part, use_cache) in [(cached, true), (bypass, false)] {
            let recs: Vec<&PreparedRecord> = part.iter().map(|&r| records[r]).collect();
            let (got, s) = self.score_part(&recs, batch_tokens, &|r| wanted(part[r]), between, use_cache);
            for (&r, result) in part.iter().zip(got) {
                results[r] = Some(result);
            }
            stats.tokens_requested += s.tokens_requested;
            stats.tokens_computed += s.tokens_computed;
            stats.tokens_cached += s.tokens_cached;
            stats.batches += s.batches;
            stats.flops += s.flops;
        }
        (results.into_iter().map(|r| r.expect("every record is in one part")).collect(), stats)
    }

    /// [`Scorer::score_while`] over records that all use the prefix cache, or
    /// none of them. Nodes the cache holds cost nothing in the plan; each batch
    /// is laid out against the cache just before it runs, so it also reads what
    /// the batches before it kept, and a batch that is skipped keeps nothing.
    fn score_part(
        &self,
        records: &[&PreparedRecord],
        batch_tokens: usize,
        wanted: &dyn Fn(usize) -> bool,
        between: &mut dyn FnMut(),
        use_cache: bool,
    ) -> (Vec<Result<RecordScores, RecordError>>, ScoreStats) {
        let mut cache = match use_cache {
            true => self.cache.try_borrow_mut().ok().filter(|c| c.enabled()),
            false => None,
        };
        let mut tree = PrefixTree::new();
        // Who reads each read-out: (record, turn, truncated).
        let mut readers: HashMap<ReadoutId, Vec<(usize, usize, bool)>> = HashMap::new();
        for (r, rec) in records.iter().enumerate() {
            for seq in &rec.sequences {
                for (id, &turn) in tree.insert_sequence(&seq.tokens, &seq.probes).into_iter().zip(&seq.turns) {
                    readers.entry(id).or_default().push((r, turn, seq.truncated));
                }
            }
        }
        let pins = cache.as_mut().map(|c| c.cover(&mut tree));
        let budget = (batch_tokens / self.backend.micro_batches().max(1)).max(1);
        let planned = tree.plan(budget);
        let mut stats =
            ScoreStats { tokens_requested: records.iter().map(|r| r.tokens()).sum(), ..ScoreStats::default() };
        let mut turns: Vec<Vec<TurnScore>> = vec![Vec::new(); records.len()];
        let mut failed: Vec<Option<RecordError>> = vec![None; records.len()];
        // Groups of batches that keep a pipeline's stages busy; between groups the
        // records still wanted are asked again.
        let group = self.backend.micro_batches().max(1) * 4;
        let mut results = Vec::with_capacity(planned.len());
        for (g, chunk) in planned.chunks(group).enumerate() {
            if g > 0 {
                between();
            }
            let live: Vec<_> = chunk
                .iter()
                .filter(|b| b.readouts.iter().any(|id| readers[id].iter().any(|&(r, _, _)| wanted(r))))
                .collect();
            for b in chunk.iter().filter(|b| !live.iter().any(|l| std::ptr::eq(*l, *b))) {
                for &(r, _, _) in b.readouts.iter().flat_map(|id| readers[id].iter()) {
                    failed[r] = Some(RecordError::new("cancelled", "not computed: nobody waits for it any more"));
                }
            }
            if live.is_empty() {
                continue;
            }
            let layouts: Vec<BatchLayout> = live
                .iter()
                .map(|b| match cache.as_mut() {
                    Some(c) => {
                        let (layout, hits) = c.lay_out(&tree, b);
                        stats.tokens_cached += hits;
                        layout
                    }
                    None => b.layout.clone(),
                })
                .collect();
            stats.tokens_computed += layouts.iter().map(BatchLayout::rows).sum::<usize>();
            stats.batches += layouts.len();
            stats.flops += layouts.iter().map(|l| forward_flops(&self.config, l)).sum::<f64>();
            let outcomes = self.backend.forward(&layouts);
            if let Some(c) = cache.as_mut() {
                // What a failed batch was to keep may be missing or partial on some
                // rank: start again from nothing.
                let kept =
                    outcomes.iter().zip(&live).all(|(o, b)| o.as_ref().is_ok_and(|s| s.len() == b.readouts.len()));
                if !kept || !self.backend.healthy() {
                    c.invalidate();
                }
            }
            results.extend(live.into_iter().zip(outcomes));
        }
        if let (Some(c), Some(pins)) = (cache.as_mut(), pins) {
            c.release(pins);
        }
        drop(cache);
        for (batch, result) in results {
            let readers_of = batch.readouts.iter().flat_map(|id| readers[id].iter().map(move |&who| (id, who)));
            match result {
                Ok(scores) if scores.len() == batch.readouts.len() => {
                    for (raw, id) in scores.into_iter().zip(&batch.readouts) {
                        for &(r, turn, truncated) in &readers[id] {
                            turns[r].push(TurnScore { turn, raw, truncated });
                        }
                    }
                }
                Ok(scores) => {
                    let e =
                        format!("the backend returned {} scores for {} read-outs", scores.len(), batch.readouts.len());
                    tracing::error!("{e}: this is a bug");
                    for (_, (r, _, _)) in readers_of {
                        failed[r] = Some(RecordError::new("model_error", e.clone()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "batch failed");
                    for (_, (r, _, _)) in readers_of {
                        failed[r] = Some(RecordError::new("model_error", e.to_string()));
                    }
                }
            }
        }
        let results = turns
            .into_iter()
            .zip(failed)
            .zip(records)
            .map(|((mut turns, failed), rec)| match failed {
                Some(e) => Err(e),
                None => {
                    turns.sort_by_key(|t| t.turn);
                    Ok(RecordScores { turns, tokens: rec.tokens() })
                }
            })
            .collect();
        (results, stats)
    }
}

/// Tokens a set of records computes together, shared prefixes once, grown
/// record by record: what a scheduler fills a batch by, so that requests that
/// share a prompt are charged for what they add. From [`Scorer::shared_tokens`],
/// what the prefix cache holds is not charged either.
#[derive(Default)]
pub struct SharedTokens<'a> {
    tree: PrefixTree,
    /// The cached part of every path added.
    cached: PrefixTree,
    cache: Option<Ref<'a, PrefixCache>>,
}

impl SharedTokens<'_> {
    /// Add `record`; returns the tokens it adds to the set.
    pub fn add(&mut self, record: &PreparedRecord) -> usize {
        let before = self.tree.tokens() - self.cached.tokens();
        for seq in &record.sequences {
            self.tree.insert_sequence(&seq.tokens, &seq.probes);
            let Some(cache) = self.cache.as_ref().filter(|_| !record.bypass_cache) else { continue };
            for &(probe, prefix) in &seq.probes {
                let path: Vec<i64> = seq.tokens[..prefix as usize].iter().copied().chain([probe]).collect();
                // The read-out token is always computed.
                let hit = cache.cached_prefix(&path).min(path.len() - 1);
                if hit > 0 {
                    self.cached.insert(&path[..hit - 1], path[hit - 1]);
                }
            }
        }
        (self.tree.tokens() - self.cached.tokens()).saturating_sub(before)
    }
}

impl Scorer {
    /// A [`SharedTokens`] that knows what the prefix cache holds now (a plain
    /// one while a call holds the cache).
    pub fn shared_tokens(&self) -> SharedTokens<'_> {
        let cache = self.cache.try_borrow().ok().filter(|c| c.enabled());
        SharedTokens { cache, ..SharedTokens::default() }
    }
}

fn kv_bytes_per_token(c: &Config, backend: &dyn Forward) -> usize {
    (c.num_layers * 2 * c.num_kv_heads * c.head_dim) as usize * backend.kv_kind().elt_size_in_bytes()
}

/// The tokenizer must not produce ids past the embedding table.
pub fn check_vocab(config: &Config, tokenizer_vocab: usize) -> Result<(), ModelError> {
    if tokenizer_vocab > config.vocab_size as usize {
        return Err(ModelError::Config(format!(
            "the tokenizer has {tokenizer_vocab} tokens but the model's vocab_size is {}",
            config.vocab_size
        )));
    }
    Ok(())
}
