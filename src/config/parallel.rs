//! The parallel layout of the worker group: how many tensor-parallel ranks,
//! how many pipeline stages, and which collective backend connects them.

/// Tensor-parallel x pipeline-parallel layout. `tp = pp = 1` is one rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelLayout {
    /// Tensor-parallel ranks per pipeline stage.
    pub tp: usize,
    /// Pipeline stages.
    pub pp: usize,
}

impl Default for ParallelLayout {
    fn default() -> Self {
        ParallelLayout { tp: 1, pp: 1 }
    }
}

impl ParallelLayout {
    /// Ranks in the whole group.
    pub fn world(&self) -> usize {
        self.tp * self.pp
    }
}

/// How the ranks of a group talk to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CommBackend {
    /// Ranks as OS threads of one process sharing memory (CPU, tests).
    Threads,
    /// NCCL through cudarc (GPUs, one or more nodes).
    Nccl,
}

impl ParallelLayout {
    /// Whether the model's shapes allow this layout. The message names the numbers:
    /// heads, kv heads and the FFN width must split evenly over `tp` (kv heads may
    /// instead be replicated when `tp` is a multiple of them), and every one of the
    /// `pp` stages needs at least one layer.
    pub fn validate(&self, cfg: &super::Config) -> Result<(), super::ConfigError> {
        let (tp, pp) = (self.tp as i64, self.pp as i64);
        let fail =
            |what: String| Err(super::ConfigError::Invalid(format!("layout tp={} pp={}: {what}", self.tp, self.pp)));
        if tp < 1 || pp < 1 {
            return fail("tp and pp must be at least 1".into());
        }
        if cfg.num_heads % tp != 0 {
            return fail(format!("{} attention heads do not divide into {tp} tensor-parallel ranks", cfg.num_heads));
        }
        if cfg.intermediate_size % tp != 0 {
            return fail(format!(
                "intermediate_size {} does not divide into {tp} tensor-parallel ranks",
                cfg.intermediate_size
            ));
        }
        let kv = cfg.num_kv_heads;
        if kv >= tp && kv % tp != 0 {
            return fail(format!("{kv} kv heads do not divide into {tp} tensor-parallel ranks"));
        }
        if kv < tp && tp % kv != 0 {
            return fail(format!("{kv} kv heads cannot be replicated evenly over {tp} tensor-parallel ranks"));
        }
        if pp > cfg.num_layers {
            return fail(format!("{pp} pipeline stages but the model has only {} layers", cfg.num_layers));
        }
        Ok(())
    }
}
