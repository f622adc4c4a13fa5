//! Formatting without allocating: messages written from inside the
//! allocator (bad page reports, the exit-time statistics) go through a
//! fixed buffer on the stack.

/// A `core::fmt::Write` sink over a fixed array; text past its end is dropped.
pub(crate) struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackBuf<N> {
    pub(crate) const fn new() -> Self {
        Self { buf: [0; N], len: 0 }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> core::fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// A `core::fmt::Write` sink that writes straight to standard error, for
/// reports longer than a stack buffer (`PCPALLOC_STATS=1` at exit).
pub(crate) struct Stderr;

impl core::fmt::Write for Stderr {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        crate::os::write_stderr(s.as_bytes());
        Ok(())
    }
}
