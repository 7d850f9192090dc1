//! Tokenisation with the `tokenizers` crate from a `tokenizer.json`.

use std::path::Path;
use tokenizers::Tokenizer;

use crate::model::ModelError;

use super::template::SCORE_TOKEN;

/// The SteerLM special tokens a reward-model tokenizer must carry.
const SPECIALS: [&str; 3] = ["<extra_id_0>", "<extra_id_1>", SCORE_TOKEN];

pub struct ChatTokenizer {
    inner: Tokenizer,
    score_id: i64,
}

impl ChatTokenizer {
    pub fn from_file(path: &Path) -> Result<ChatTokenizer, ModelError> {
        if !path.exists() {
            return Err(ModelError::Tokenizer(format!("{} does not exist", path.display())));
        }
        let inner = Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{} is not a valid tokenizer.json: {e}", path.display())))?;
        Self::new(inner).map_err(|e| match e {
            ModelError::Tokenizer(m) => ModelError::Tokenizer(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<ChatTokenizer, ModelError> {
        let inner =
            Tokenizer::from_bytes(bytes).map_err(|e| ModelError::Tokenizer(format!("invalid tokenizer.json: {e}")))?;
        Self::new(inner)
    }

    fn new(inner: Tokenizer) -> Result<ChatTokenizer, ModelError> {
        for special in SPECIALS {
            let id = inner.token_to_id(special).ok_or_else(|| {
                ModelError::Tokenizer(format!("has no `{special}` token; SteerLM reward models need <extra_id_0..2>"))
            })?;
            let encoded = inner
                .encode(special, false)
                .map_err(|e| ModelError::Tokenizer(format!("cannot encode `{special}`: {e}")))?;
            if encoded.get_ids() != [id] {
                return Err(ModelError::Tokenizer(format!(
                    "`{special}` is in the vocabulary but not a special (added) token: it encodes to {:?}",
                    encoded.get_ids()
                )));
            }
        }
        let score_id = inner.token_to_id(SCORE_TOKEN).expect("checked above") as i64;
        Ok(ChatTokenizer { inner, score_id })
    }

    /// Id of `<extra_id_2>`, the token whose final hidden state is scored.
    pub fn score_id(&self) -> i64 {
        self.score_id
    }

    /// Largest token id this tokenizer can produce, plus one.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, with no BOS/EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        let enc = self.inner.encode(text, false).map_err(|e| e.to_string())?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }
}
