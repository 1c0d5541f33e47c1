//! The process heap: large blocks go back to the system when they are freed.
//!
//! Each password hash works in a block of `128 * r * 2^log_n` bytes (1 MiB at `--scrypt-log-n 10`,
//! 32 MiB at the default cost), allocated and freed once per hash on a hashing thread. glibc's
//! malloc serves a block that large with a mapping of its own and unmaps it when it is freed, but it
//! also moves its threshold for that up to the size of the freed block (up to 32 MiB) the first time
//! one is freed, so that every later hash's block comes from a thread's heap instead, where it stays
//! after the hash: a server that has hashed once keeps about a hash's memory per hashing thread for
//! the rest of its life, and a machine counting its idle connections counts that too.
//! [`give_back_large_blocks`] fixes the threshold at [`config::HEAP_MMAP_THRESHOLD`], glibc's own
//! starting value, so that it never moves: a hash's block is mapped for the hash and unmapped after
//! it, whatever the cost and however many hashing threads there are.
//!
//! Only glibc needs it. musl's malloc maps every block above about 128 KiB and unmaps it when freed,
//! with no moving threshold; other systems' allocators are left as they are. An operator who sets
//! glibc's threshold in `GLIBC_TUNABLES` keeps it.
//!
//! What else the fixed threshold touches: any other block of 128 KiB or more is mapped and unmapped
//! too, as in a process that never freed one. The server's steady paths allocate nothing that large
//! (a line is at most a few KiB, an outbox chunk at most 64 KiB); the database's cache is bounded by
//! [`config::STORE_CACHE_BYTES`] either way.
//!
//! [`config::HEAP_MMAP_THRESHOLD`]: crate::config::HEAP_MMAP_THRESHOLD
//! [`config::STORE_CACHE_BYTES`]: crate::config::STORE_CACHE_BYTES

/// Fixes glibc's mmap threshold (see the module's documentation). Called once at start-up, before
/// the first hash; calling it again does nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn give_back_large_blocks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold")) {
            return;
        }
        let threshold = libc::c_int::try_from(crate::config::HEAP_MMAP_THRESHOLD)
            .expect("the threshold fits a C int");
        // SAFETY: mallopt takes two integers and sets one of malloc's parameters under malloc's own
        // lock; no memory is passed or returned, and blocks already allocated are freed as before
        // (glibc marks each mapped block in its header, whatever the threshold was when it was made).
        #[allow(unsafe_code)]
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) };
        if ok != 1 {
            log::warn!(
                "could not fix malloc's mmap threshold; hashes' memory may stay in the heap"
            );
        }
    });
}

/// Nothing to do with this allocator (see the module's documentation).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn give_back_large_blocks() {}
