//! The process's allocator settings. The binaries allocate through mimalloc (see
//! `Cargo.toml`). By default it keeps freed pages for 10 ms (100 ms per arena) before it
//! gives them back to the OS, so the transient buffers of a checkpoint (an audit segment,
//! a day of billing hours, a checkpoint file) stay resident after they are freed, and the
//! peaks of several add up. `serve` under the import of a simulated fleet (1M records)
//! peaked at 549–603 MiB with the default and at 433–455 MiB with immediate purging; at
//! 10M records 636 MiB (653 in the report before). The price is page faults: the import was 5–8 % slower and
//! `project rebuild all` of 1M records took 12.65 s instead of 11.24 s (the same history,
//! one run each).
//!
//! mimalloc reads its options from the environment when the process starts, before
//! `main`, and the workspace forbids the `unsafe` its setter needs: so `fleetledger`
//! re-executes itself once, with `MIMALLOC_PURGE_DELAY=0` added, unless the variable is
//! set already (an operator's own value is kept). The process id, arguments, open files
//! and terminal stay the same across the exec.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;

/// The environment variable mimalloc reads its purge delay from (milliseconds).
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// The purge delay `fleetledger` runs with unless told otherwise: freed memory goes back
/// to the OS at once.
pub const PURGE_DELAY_MS: &str = "0";

/// Whether the process must re-execute itself to set the purge delay: only when
/// `current` (the variable's value now) is unset.
pub fn needs_reexec(current: Option<&OsStr>) -> bool {
    current.is_none()
}

/// Re-executes the running binary with [`PURGE_DELAY_ENV`] set to [`PURGE_DELAY_MS`] if
/// it is unset. Returns only if no exec was needed, or the exec failed (the process then
/// goes on with mimalloc's default, and says so on stderr).
pub fn return_freed_memory_promptly() {
    if !needs_reexec(std::env::var_os(PURGE_DELAY_ENV).as_deref()) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let err = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env(PURGE_DELAY_ENV, PURGE_DELAY_MS)
        .exec();
    eprintln!(
        "warning: cannot re-execute {} to set {PURGE_DELAY_ENV}={PURGE_DELAY_MS} ({err}); freed memory is returned to the OS after mimalloc's default delay",
        exe.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unset_purge_delay_is_set() {
        assert!(needs_reexec(None));
        assert!(!needs_reexec(Some(OsStr::new("10"))));
        assert!(!needs_reexec(Some(OsStr::new(""))));
    }
}
