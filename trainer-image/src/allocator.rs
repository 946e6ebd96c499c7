//! glibc's allocator settings for libtorch's CPU tensors.
//!
//! A training step allocates and frees logits and their gradients of tens of MiB many times
//! (a micro-batch of 16 rows x 12 tokens x 50257 ids is 38 MiB). With glibc's defaults every
//! such block is a fresh `mmap` whose pages the kernel faults in and zeroes, and the freed top
//! of the heap goes back to the kernel at once: the quickstart's PPO stage spent a quarter of
//! its time in the kernel. Serving them from the heap and keeping freed memory for the next
//! step made 4 PPO rounds take 51 s instead of 88 s (same numbers; README.md: The trainer).
//! The cost: memory freed below a process's peak stays mapped to it.
#![allow(unsafe_code)] // mallopt: a libc call taking two integers

/// Blocks up to this size come from the heap, and this much freed memory is kept.
const KEEP_BYTES: i32 = 1 << 30;

/// Applies the settings to this process; call before the first tensor. Off glibc, nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only reads its two integer arguments; it returns 0 for a refused value,
    // which leaves glibc's defaults (slower, still correct).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_BYTES);
    }
}
