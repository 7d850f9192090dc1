//! `reward-worker rendezvous-check` (hidden): run the group's rendezvous from
//! the launcher environment with random 128-byte ids in place of NCCL's, and
//! print what this rank received. Checks a multi-node launch's networking
//! before loading any weights; the tests use it to run the exchange between
//! real processes.

use clap::Args;
use std::io::Read;
use std::time::Duration;

use crate::config::ParallelLayout;
use crate::parallel::rendezvous::{exchange_group_ids, LaunchEnv};

#[derive(Args, Debug)]
pub struct RendezvousArgs {
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    #[arg(long, default_value_t = 1)]
    pub pp: usize,
    /// Seconds to wait for every rank.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

pub fn run(args: RendezvousArgs) -> Result<i32, String> {
    let env = LaunchEnv::from_env()
        .map_err(|e| e.to_string())?
        .ok_or("no launcher environment (RANK/WORLD_SIZE/MASTER_ADDR or SLURM_PROCID/SLURM_NTASKS)")?;
    if !(args.timeout > 0.0 && args.timeout.is_finite()) || args.tp == 0 || args.pp == 0 {
        return Err("--tp, --pp and --timeout must be positive".into());
    }
    let layout = ParallelLayout { tp: args.tp, pp: args.pp };
    let random_id = || {
        let mut id = vec![0u8; 128];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut id)).map_err(|e| e.to_string())?;
        Ok(id)
    };
    let ids = exchange_group_ids(&env, layout, Duration::from_secs_f64(args.timeout), random_id)
        .map_err(|e| e.to_string())?;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let report = serde_json::json!({
        "rank": env.rank,
        "world": env.world,
        "local_rank": env.local_rank,
        "launcher": env.launcher,
        "master": format!("{}:{}", env.master_addr, env.master_port),
        "world_id": hex(&ids.world),
        "stage_id": hex(&ids.stages[env.rank / layout.tp]),
        "stage_ids": ids.stages.iter().map(|s| hex(s)).collect::<Vec<_>>(),
    });
    println!("{report}");
    Ok(0)
}
