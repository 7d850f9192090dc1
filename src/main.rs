use clap::Parser;
use std::io::IsTerminal;

fn main() {
    keep_freed_memory();
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

/// libtorch frees and reallocates activation-sized buffers on every batch. With
/// glibc's defaults those are mmap'd and returned to the OS each time, and every
/// batch pays for page faults again (a tenth of a forward's time on CPU). A
/// worker that lives for a whole training run keeps them: large blocks come from
/// the heap and the heap is not trimmed.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
