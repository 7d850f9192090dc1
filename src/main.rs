use clap::Parser;
use std::io::IsTerminal;

fn main() {
    short_openmp_spin();
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "reward_worker=info".into()),
        )
        .init();
    tracing::debug!(
        spin = std::env::var("GOMP_SPINCOUNT").as_deref().unwrap_or("libgomp's default"),
        "OpenMP spin count"
    );
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

/// libgomp, libtorch's OpenMP runtime, keeps its idle threads spinning for
/// 300,000 rounds after every parallel op, milliseconds on a busy core. The CPU
/// attention kernel (`model::cpu_flash`) runs on threads of its own right after
/// such ops, and where there are as many threads as cores the spinning threads
/// hold the cores it needs: a bf16 forward ran 2-3% slower. libgomp reads its
/// settings when it loads, before `main`, so unless the user chose them
/// (`GOMP_SPINCOUNT` or `OMP_WAIT_POLICY`), the process starts itself again
/// with a short spin. That loads libtorch twice, about 0.2 s of start-up, which
/// a run of more than a few seconds wins back. If `exec` fails the process goes
/// on with libgomp's defaults.
fn short_openmp_spin() {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("GOMP_SPINCOUNT").is_some() || std::env::var_os("OMP_WAIT_POLICY").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let mut again = std::process::Command::new(exe);
        if let Some(name) = std::env::args_os().next() {
            again.arg0(name);
        }
        // `exec` returns only if it failed.
        let _ = again.args(std::env::args_os().skip(1)).env("GOMP_SPINCOUNT", "10000").exec();
    }
}
