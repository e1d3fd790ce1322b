//! The allocator, and giving freed heap back to the kernel.
//!
//! tether allocates through mimalloc rather than glibc's malloc. A WebSocket handshake
//! makes about 60 allocations, several of them cache-line aligned (tokio's task cells
//! and I/O registrations), which glibc serves slowly (`posix_memalign` costs about
//! 830 instructions there); mimalloc cut tether's user-space instructions by 11%
//! per WebSocket connection and 6% per proxied HTTP request (README, Performance).
//! It is mimalloc v3, built not to ask for transparent huge pages (`no_thp`), and
//! the process opts out of them at start ([`no_huge_pages`]) so that a host whose THP
//! mode is `always` does not hand them out either: small, long-lived tunnel state
//! wants 4 KiB pages, not 2 MiB ones held resident for a few hundred bytes.
//!
//! A handshake borrows tens of KiB for a moment (both HTTP connections' buffers,
//! header maps); a tunnel keeps a few hundred bytes for hours. mimalloc purges freed
//! pages only from within later allocations, so after a burst of handshakes the
//! pages freed between long-lived tunnels stay resident until something allocates
//! again. [`trim`] purges them; with 5,000 idle tunnels opened 250 at a time (the
//! e2e bench's memory figure, measured by hand) that is the difference between 4.5
//! and 1.8 KiB per tunnel. HAProxy trims its pools for the same reason.
//!
//! Each thread owns its pages, and only it can give them back, so [`trim`] does so at
//! once on the calling thread and asks every other worker to do the same when it
//! next goes idle ([`on_park`], installed as the runtime's `on_thread_park`); a
//! worker that is already idle does so once it has had something to do.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many trims have been asked for; each thread remembers how many it has done.
static ASKED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static DONE: Cell<u64> = const { Cell::new(0) };
}

/// Returns the heap's free pages to the kernel: this thread's now, every other
/// worker's when it next parks. A forced collection walks the thread's pages (about
/// a millisecond with thousands of tunnels), so call it rarely: after churn has
/// stopped, or at most once a minute.
pub fn trim() {
    let asked = ASKED.fetch_add(1, Ordering::Relaxed) + 1;
    DONE.set(asked);
    collect();
}

/// For the runtime's `on_thread_park`: does a trim asked for since this thread last
/// did one. Otherwise one atomic load.
pub fn on_park() {
    let asked = ASKED.load(Ordering::Relaxed);
    if DONE.get() != asked {
        DONE.set(asked);
        collect();
    }
}

/// Opts the process out of transparent huge pages (`PR_SET_THP_DISABLE`), for the
/// allocator's memory mapped from now on. Called first thing by the binary.
#[cfg(target_os = "linux")]
pub fn no_huge_pages() {
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes plain integers and touches no memory of
    // ours. It fails only on kernels without the option; then nothing changes.
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// Other systems have no such switch.
#[cfg(not(target_os = "linux"))]
pub fn no_huge_pages() {}

fn collect() {
    // SAFETY: mi_collect takes no pointers and has no preconditions; it works on the
    // calling thread's own heap.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
