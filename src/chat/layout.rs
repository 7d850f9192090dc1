//! One-pass layout: a conversation becomes as few sequences as possible whose
//! probe tokens score every assistant turn (see `model::nemotron`).
//!
//! Normally that is one sequence: header + turns up to the last assistant turn,
//! with one `<extra_id_2>` probe per assistant turn at the position that ends its
//! prefix. A prefix longer than the context is an error, or with
//! [`Truncate::Left`] the oldest turns are dropped (never the system prompt or
//! the scored turn), which can split the conversation into several sequences.

use super::RecordError;

/// What to do with a scored prefix longer than the model's context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Truncate {
    /// A per-record error.
    #[default]
    None,
    /// Drop the oldest turns, keeping the system prompt and the scored turn.
    Left,
}

/// Tokens for one forward sequence and the turns its probes score.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub tokens: Vec<i64>,
    /// `(score token id, prefix length)` per probe.
    pub probes: Vec<(i64, i64)>,
    /// Index into the conversation's turns of each probe's assistant turn.
    pub turns: Vec<usize>,
    /// Whether older turns were dropped to fit.
    pub truncated: bool,
}

impl Sequence {
    /// Tokens the forward pass processes for this sequence (real + probes).
    pub fn len(&self) -> usize {
        self.tokens.len() + self.probes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Lay out `header` + `turns` (token ids per turn) so that every turn in `scored`
/// gets a probe. `context` is the model's `max_position_embeddings`.
pub fn layout_conversation(
    header: &[i64],
    turns: &[Vec<i64>],
    scored: &[usize],
    score_id: i64,
    context: usize,
    truncate: Truncate,
) -> Result<Vec<Sequence>, RecordError> {
    // ends[k]: length of header + turns[..=k]
    let mut ends = Vec::with_capacity(turns.len());
    let mut total = header.len();
    for t in turns {
        total += t.len();
        ends.push(total);
    }
    // First turn kept for each scored turn (0 unless truncating).
    let mut starts = Vec::with_capacity(scored.len());
    for &k in scored {
        let needed = ends[k] + 1;
        if needed <= context {
            starts.push(0);
            continue;
        }
        if truncate == Truncate::None {
            return Err(RecordError::new(
                "context_length_exceeded",
                format!(
                    "scoring turn {k} needs {needed} tokens, the model's context is {context} (truncate = \"left\" drops the oldest turns)"
                ),
            ));
        }
        let mut start = 0;
        let mut kept = needed;
        while kept > context && start < k {
            kept -= turns[start].len();
            start += 1;
        }
        if kept > context {
            return Err(RecordError::new(
                "context_length_exceeded",
                format!("turn {k} alone with the system prompt needs {kept} tokens, the model's context is {context}"),
            ));
        }
        starts.push(start);
    }
    // Scored turns that keep the same first turn share one sequence.
    let mut out: Vec<Sequence> = Vec::new();
    let mut current: Option<(usize, usize)> = None; // (start, index into out)
    let mut built_to = 0; // turns[..built_to] of the current sequence are in it
    for (&k, &start) in scored.iter().zip(&starts) {
        if current.map(|(s, _)| s) != Some(start) {
            out.push(Sequence { tokens: header.to_vec(), probes: vec![], turns: vec![], truncated: start > 0 });
            current = Some((start, out.len() - 1));
            built_to = start;
        }
        let seq = &mut out[current.expect("set above").1];
        for t in &turns[built_to..=k] {
            seq.tokens.extend_from_slice(t);
        }
        built_to = k + 1;
        seq.probes.push((score_id, seq.tokens.len() as i64));
        seq.turns.push(k);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 99;

    fn turns() -> Vec<Vec<i64>> {
        vec![vec![10, 11], vec![20, 21, 22], vec![30], vec![40, 41]]
    }

    #[test]
    fn one_sequence_with_a_probe_per_assistant_turn() {
        let seqs = layout_conversation(&[1, 2], &turns(), &[1, 3], S, 4096, Truncate::None).unwrap();
        assert_eq!(seqs.len(), 1);
        assert_eq!(seqs[0].tokens, vec![1, 2, 10, 11, 20, 21, 22, 30, 40, 41]);
        assert_eq!(seqs[0].probes, vec![(S, 7), (S, 10)]);
        assert_eq!(seqs[0].turns, vec![1, 3]);
        assert!(!seqs[0].truncated);
    }

    #[test]
    fn trailing_user_turns_are_not_laid_out() {
        let seqs = layout_conversation(&[1], &turns(), &[1], S, 4096, Truncate::None).unwrap();
        assert_eq!(seqs[0].tokens, vec![1, 10, 11, 20, 21, 22]);
    }

    #[test]
    fn too_long_is_an_error_by_default() {
        let err = layout_conversation(&[1, 2], &turns(), &[1, 3], S, 10, Truncate::None).unwrap_err();
        assert_eq!(err.code, "context_length_exceeded");
        assert!(err.message.contains("turn 3 needs 11 tokens"), "{}", err.message);
    }

    #[test]
    fn left_truncation_drops_oldest_turns_and_splits() {
        // context 8: turn 1 needs 2+2+3+1 = 8 (fits); turn 3 needs 11 -> drop turns 0 and 1 -> 2+1+2+1 = 6
        let seqs = layout_conversation(&[1, 2], &turns(), &[1, 3], S, 8, Truncate::Left).unwrap();
        assert_eq!(seqs.len(), 2);
        assert_eq!((seqs[0].tokens.clone(), seqs[0].truncated), (vec![1, 2, 10, 11, 20, 21, 22], false));
        assert_eq!(seqs[1].tokens, vec![1, 2, 30, 40, 41]);
        assert_eq!((seqs[1].probes.clone(), seqs[1].truncated), (vec![(S, 5)], true));
    }

    #[test]
    fn a_scored_turn_that_cannot_fit_is_an_error_even_when_truncating() {
        let err = layout_conversation(&[1, 2], &[vec![5; 20]], &[0], S, 8, Truncate::Left).unwrap_err();
        assert!(err.message.contains("alone with the system prompt"), "{}", err.message);
    }
}
