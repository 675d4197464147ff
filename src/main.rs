//! The `fleetledger` command: parses the command line, runs it, and exits with its code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: see `Cargo.toml` for the profiles behind it. The
/// `system-allocator` feature keeps glibc malloc, which heap profilers (heaptrack)
/// intercept: `docs/profiling.md`.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Queries recurse over their expression trees: worker threads get 16 MiB of stack
    // (address space; only what is touched is memory), eight times tokio's default.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 << 20)
        .build();
    match runtime {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEETLEDGER_LOG")
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match fleetledger::cli::Cli::parse().run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
