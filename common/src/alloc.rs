//! The memory allocator of the node binaries (jemalloc, handing freed memory back to the
//! system within about a second), and a counting one for tests that measure memory.
//!
//! A tier's cache is long-lived small allocations; bulk writes, batch answers and change
//! sets pass through it as short-lived buffers of megabytes. With glibc's malloc the two
//! share heap arenas, and the freed buffers stay in the process between cached entries: an
//! edge whose cache held 134 MB (its configured 128 MiB) used 232 MB after a bulk load of a
//! million keys (211 MB with `MALLOC_ARENA_MAX=2`). jemalloc keeps large buffers in
//! extents of their own and, with a background thread, purges freed pages after
//! `dirty_decay_ms`; `muzzy_decay_ms:0` returns them with `MADV_DONTNEED`, so the resident
//! size shows it (`MADV_FREE`d pages stay resident until the kernel needs them).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (as `malloc_conf`; the `MALLOC_CONF`-like variable
/// `_RJEM_MALLOC_CONF` overrides them at run time).
pub const OPTIONS: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Makes jemalloc, with `OPTIONS`, the allocator of the binary whose root invokes it.
#[macro_export]
macro_rules! node_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::alloc::Jemalloc = $crate::alloc::Jemalloc;

        /// Read by jemalloc as its `malloc_conf` (a C string), before `main` runs.
        #[allow(non_upper_case_globals)]
        #[export_name = "_rjem_malloc_conf"]
        static malloc_conf: &u8 = &$crate::alloc::OPTIONS[0];
    };
}

/// The system allocator, counting the heap bytes live through it as glibc's malloc lays
/// them out (each block is the request plus an 8-byte header, rounded up to 16, at least
/// 32). Tests make it their binary's allocator to measure what a structure really costs,
/// against what a cache's weigher charges for it.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

impl Counting {
    /// Heap bytes live now, through this allocator.
    pub fn live() -> usize {
        LIVE.load(Ordering::Relaxed)
    }
}

fn block(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

// SAFETY: every call is forwarded unchanged to the system allocator; only counts are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(block(layout.size()), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which got it from the system one.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(block(layout.size()), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(block(new_size), Ordering::Relaxed);
            LIVE.fetch_sub(block(layout.size()), Ordering::Relaxed);
        }
        p
    }
}
