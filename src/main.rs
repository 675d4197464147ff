//! The `fleetledger` command: parses the command line, runs it, and exits with its code.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: see `Cargo.toml` for the profiles behind it. The
/// `system-allocator` feature keeps glibc malloc, which heap profilers (heaptrack)
/// intercept: `docs/profiling.md`.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long mimalloc keeps freed memory before it gives it back to the OS, in ms, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise. Its default (1,000 ms in mimalloc v3) keeps a
/// second's worth of every query's and checkpoint's transient memory resident: serve's
/// peak RSS at 10M records went from 585–665 to 475 MiB with 0 (`docs/profiling.md`).
#[cfg(all(unix, not(feature = "system-allocator")))]
const PURGE_DELAY_MS: &str = "0";

/// The glibc malloc setting of `serve`, unless `GLIBC_TUNABLES` says otherwise. The C code
/// (librdkafka) allocates with glibc malloc, whose threshold for mapping a block of its own
/// grows with the blocks freed (up to 32 MiB): fetch and produce buffers then stay in
/// glibc's heaps, fragmented, once freed. A fixed 64 KiB threshold maps each such buffer
/// and unmaps it when freed. glibc's share of serve's peak during the 10M import was
/// 40 MiB in one import without it, 31 and 38 MiB in two with it: a few MiB, within what
/// glibc's choice of heap moves from run to run (`docs/profiling.md`).
#[cfg(all(unix, not(feature = "system-allocator")))]
const GLIBC_TUNABLES: &str = "glibc.malloc.mmap_threshold=65536";

/// mimalloc and glibc read their options from the environment once, as the process
/// starts, and `unsafe_code` is forbidden here (no `mi_option_set`, no `mallopt`): when
/// `MIMALLOC_PURGE_DELAY` or `GLIBC_TUNABLES` is not set, `serve` runs itself again with
/// it set ([`PURGE_DELAY_MS`], [`GLIBC_TUNABLES`]; one set already is kept), by `exec`: the
/// same process id, arguments, standard streams and signal handling. If that fails it
/// runs on with the defaults, and says so.
///
/// Only `serve`: it is the process that lives with its memory. Giving memory back at once
/// costs page faults when it is taken again, about 15% of a `project rebuild` (a command
/// that ends, whose peak the purge hardly lowers), so other commands keep the default.
#[cfg(all(unix, not(feature = "system-allocator")))]
fn apply_allocator_settings() {
    use std::os::unix::process::CommandExt;
    let settings = [
        ("MIMALLOC_PURGE_DELAY", PURGE_DELAY_MS),
        ("GLIBC_TUNABLES", GLIBC_TUNABLES),
    ];
    let unset: Vec<(&str, &str)> = settings
        .into_iter()
        .filter(|(name, _)| std::env::var_os(name).is_none())
        .collect();
    if unset.is_empty() || !runs_serve(std::env::args_os()) {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "fleetledger".into());
    let err = match std::env::current_exe() {
        Ok(exe) => std::process::Command::new(exe)
            .arg0(arg0)
            .args(args)
            .envs(unset.iter().copied())
            .exec(),
        Err(e) => e,
    };
    let wanted: Vec<String> = unset.iter().map(|(n, v)| format!("{n}={v}")).collect();
    eprintln!(
        "warning: running with the allocators' defaults (could not run again with {}: {err})",
        wanted.join(" ")
    );
}

#[cfg(not(all(unix, not(feature = "system-allocator"))))]
fn apply_allocator_settings() {}

/// Whether the command line `args` (the program first) runs `serve`, as the command line
/// parser reads it. A line it refuses runs nothing: the parse in `run` reports it.
#[cfg_attr(not(all(unix, not(feature = "system-allocator"))), allow(dead_code))]
fn runs_serve(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    fleetledger::cli::Cli::try_parse_from(args).is_ok_and(|c| c.runs_serve())
}

fn main() -> ExitCode {
    apply_allocator_settings();
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

#[cfg(test)]
mod tests {
    use super::runs_serve;

    #[test]
    fn serve_is_found_after_global_flags_and_not_in_other_commands() {
        let line = |s: &str| {
            s.split(' ')
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
        };
        assert!(runs_serve(line(
            "fleetledger serve --listen 127.0.0.1:7171"
        )));
        assert!(runs_serve(line("fleetledger --config f.toml serve")));
        assert!(runs_serve(line("fleetledger --config=f.toml serve")));
        assert!(!runs_serve(line("fleetledger project rebuild all")));
        assert!(!runs_serve(line("fleetledger history serve")));
        assert!(!runs_serve(line(
            "fleetledger --config serve project rebuild all"
        )));
        assert!(!runs_serve(line("fleetledger")));
    }
}
