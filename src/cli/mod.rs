//! The `reward-worker` command line.

mod annotate;
mod annotate_output;
mod bench;
mod common;
mod eval;
mod launch;
mod overlap;
mod plan;
mod progress;
mod rendezvous;
mod reward_args;
mod score;
mod serve;
mod tune;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "reward-worker", version, about = "Nemotron-4 multi-attribute reward models for RLAIF training loops")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Score every assistant turn of JSONL conversations (one JSON line out per line in).
    Score(score::ScoreArgs),
    /// SteerLM labelling of a seed-format JSONL file (resumable; progress bar).
    Annotate(annotate::AnnotateArgs),
    /// Preference pairs -> accuracy per subset and RewardBench section (raw attributes cached).
    Eval(eval::EvalArgs),
    /// Fit attribute weights on cached preference pairs (Bradley-Terry, cross-validated L2).
    TuneWeights(tune::TuneArgs),
    /// Serve the model over HTTP (rewards, OpenAI, OpenRLHF, KServe v2) until SIGTERM.
    Serve(serve::ServeArgs),
    /// Start `serve` from a training recipe (TOML); flags after it override the recipe.
    Launch(launch::LaunchArgs),
    /// Time scoring of a JSONL workload (model load excluded) and print tokens/s as JSON.
    Bench(bench::BenchArgs),
    /// Per-rank memory and traffic of a tensor x pipeline parallel layout, and whether it fits.
    Plan(plan::PlanArgs),
    /// Run the worker group's rendezvous with random ids and print what arrived (diagnostics, tests).
    #[command(hide = true)]
    RendezvousCheck(rendezvous::RendezvousArgs),
}

/// Exit status: 0 all good, 1 some records failed, 2 the run could not start or finish.
pub fn run(cli: Cli) -> i32 {
    crate::files::ignore_file_size_signal();
    let result = match cli.command {
        Command::Score(args) => score::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Annotate(args) => annotate::run(args),
        Command::Eval(args) => eval::run(args),
        Command::TuneWeights(args) => tune::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Launch(args) => launch::run(args),
        Command::Plan(args) => plan::run(args),
        Command::RendezvousCheck(args) => rendezvous::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reward-worker: error: {e}");
            2
        }
    }
}
