//! The process's allocator: mimalloc, asked for a plain block whenever a plain block is aligned
//! enough.
//!
//! The `mimalloc` crate's allocator sends every request through `mi_malloc_aligned`, which in
//! mimalloc v3 leaves its fast path for any block over 1 KiB and for sizes whose bin is not a
//! power of two, and then costs hundreds of instructions (the crate has an open pull request
//! for this, purpleprotocol/mimalloc_rust#170). A gateway request allocates several such blocks
//! (the request's future, the read buffer), so this module asks for plain `mi_malloc` blocks
//! when that is safe, and for aligned ones only when it is not.
#![allow(unsafe_code)] // a GlobalAlloc is unsafe by definition; it only forwards to mimalloc

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc,
    mi_zalloc_aligned,
};

/// mimalloc's `MI_MAX_ALIGN_SIZE`. Its size classes are whole multiples of 8 bytes up to 64
/// and of 16 beyond, laid out from 16-aligned page starts; so a plain block of a size that is
/// a multiple of an alignment up to this is aligned to it.
const PLAIN_ALIGN: usize = 16;

/// mimalloc as the global allocator.
pub(crate) struct Mimalloc;

/// Whether a plain block of `size` bytes is aligned as `layout` asks.
fn plain(layout: Layout, size: usize) -> bool {
    layout.align() <= PLAIN_ALIGN && size.is_multiple_of(layout.align())
}

// SAFETY: every block comes from mimalloc, aligned as its layout asks (plain blocks only where
// `plain` holds; see `PLAIN_ALIGN`), and goes back to it through `mi_free` or `mi_realloc*`,
// which take any block mimalloc handed out.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C allocation calls; a null return is passed on as failure.
        unsafe {
            if plain(layout, layout.size()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(layout, layout.size()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, pointer: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a block this allocator handed out.
        unsafe { mi_free(pointer.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller passes a block this allocator handed out; mimalloc keeps the
        // contents up to the smaller size.
        unsafe {
            if plain(layout, new_size) {
                mi_realloc(pointer.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(pointer.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes up to 64 KiB at alignments from 1 byte to 4 KiB, allocated, zeroed, grown and
    /// shrunk: every block is aligned as asked and keeps its contents.
    #[test]
    fn every_block_is_aligned_as_asked() {
        for size in (1..=1024_usize).chain((1025..=65_536).step_by(97)) {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).expect("a valid layout");
                let grown = size * 3;
                let shrunk = (size / 2).max(1);
                let aligned =
                    |block: *mut u8| !block.is_null() && block.addr().is_multiple_of(align);
                // SAFETY: sizes are not zero, every block is used within its size and freed with
                // the layout it has.
                unsafe {
                    let zeroed = Mimalloc.alloc_zeroed(layout);
                    assert!(aligned(zeroed), "{layout:?} zeroed");
                    assert!((0..size).all(|i| *zeroed.add(i) == 0), "{layout:?} zeroed");
                    Mimalloc.dealloc(zeroed, layout);

                    let block = Mimalloc.alloc(layout);
                    assert!(aligned(block), "{layout:?}");
                    block.write_bytes(0xa5, size);
                    let block = Mimalloc.realloc(block, layout, grown);
                    assert!(aligned(block), "{layout:?} grown");
                    assert!((0..size).all(|i| *block.add(i) == 0xa5), "{layout:?} grown");
                    let layout = Layout::from_size_align(grown, align).expect("a valid layout");
                    let block = Mimalloc.realloc(block, layout, shrunk);
                    assert!(aligned(block), "{layout:?} shrunk");
                    assert!(
                        (0..shrunk).all(|i| *block.add(i) == 0xa5),
                        "{layout:?} shrunk"
                    );
                    let layout = Layout::from_size_align(shrunk, align).expect("a valid layout");
                    Mimalloc.dealloc(block, layout);
                }
            }
        }
    }
}
