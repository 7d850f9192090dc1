use clap::Parser;
use std::io::IsTerminal;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "reward_worker=info".into()),
        )
        .init();
    let cli = reward_worker::cli::Cli::parse();
    std::process::exit(reward_worker::cli::run(cli));
}
