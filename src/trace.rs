//! Where the page allocator's steps would report to a tracer.
//!
//! Each call names the kernel function whose step it marks. They compile to
//! nothing today; the `trace` feature (a later issue) records them per thread.

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[allow(dead_code)]
pub(crate) enum Fn {
    Rmqueue,
    RmqueueBulk,
    FreePcppagesBulk,
    FreeOnePage,
    MergeBuddy,
}

#[inline(always)]
pub(crate) fn event(_f: Fn, _order: u32, _mt: u8) {}

#[inline(always)]
pub(crate) fn bulk(_f: Fn, _order: u32, _mt: u8, _count: usize) {}

#[inline(always)]
pub(crate) fn extfrag(_order: u32, _mt: u8, _fallback_order: u32, _fallback_mt: u8) {}
