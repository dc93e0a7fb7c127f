//! What the process asks of the C allocator before it starts: glibc's mmap threshold, fixed.
//!
//! glibc serves a block of at least the mmap threshold (128 KiB at start) with a mapping of its
//! own, returned to the system when freed. But each time such a block is freed, glibc raises
//! the threshold to the block's size (up to 32 MiB) and its trim threshold to twice that, so
//! that later blocks of that size come from the heap instead, and the heap is trimmed only
//! when 64 MiB of it is free at the top. A sweep frees large blocks (a page batch, the
//! findings of a commit, a project's stored snapshots), so after the first sweep every later
//! one kept what the first had freed and grew on top of it: 76–79 MiB of peak RSS at 100k keys
//! in every steady-state sweep, against 55 MiB with the threshold fixed (benches/README.md,
//! "Issue 15, seventh session"). Fixing it at glibc's own starting value stops the raising;
//! nothing else changes.
//!
//! The one file with `unsafe` code (a tidy test holds that): one FFI call that takes two
//! integers. It must never do more than ask the allocator for a setting.

/// glibc's own starting mmap threshold (`DEFAULT_MMAP_THRESHOLD_MIN`), kept from then on.
pub const MMAP_THRESHOLD: i32 = 128 * 1024;

/// The tunable by which an operator sets the threshold themselves; theirs is left alone.
const TUNABLE: &str = "glibc.malloc.mmap_threshold";

/// Whether a `GLIBC_TUNABLES` value sets the mmap threshold (`name=value` pairs, `:`-joined).
pub fn tunables_set_threshold(tunables: &str) -> bool {
    tunables.split(':').any(|pair| {
        pair.split_once('=')
            .is_some_and(|(name, _)| name == TUNABLE)
    })
}

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`], unless the operator set it in
/// `GLIBC_TUNABLES`. Call it first in `main`, before any thread starts (it is safe at any
/// time; earlier means no block was served under the old rule). Returns whether the setting
/// was made: false off glibc, where there is no such threshold, and when the operator's holds.
pub fn fix_mmap_threshold() -> bool {
    let operator = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| tunables_set_threshold(&t));
    !operator && set_threshold()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_threshold() -> bool {
    // SAFETY: `mallopt` takes two integers and no pointer; glibc takes the main arena's lock
    // for it, so a call from any thread at any time is sound. It returns 1 on success.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 }
}

/// Other C libraries (musl, macOS) have no raising threshold to fix.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_threshold() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_tunable_is_recognised_among_others() {
        assert!(tunables_set_threshold("glibc.malloc.mmap_threshold=65536"));
        assert!(tunables_set_threshold(
            "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=1048576"
        ));
        assert!(!tunables_set_threshold("glibc.malloc.arena_max=2"));
        assert!(!tunables_set_threshold("glibc.malloc.mmap_threshold_x=1"));
        assert!(!tunables_set_threshold(""));
    }

    /// glibc takes the setting (the value is within its limits).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_threshold() {
        assert!(set_threshold());
    }
}
