//! A buffer that many tasks write at once, each in its own region.

pub(crate) struct DisjointWrites(*mut f32);

// SAFETY: users write through the pointer only into regions no other task
// touches, while the buffer it came from is borrowed for the whole parallel
// loop (see each user).
unsafe impl Send for DisjointWrites {}
unsafe impl Sync for DisjointWrites {}

impl DisjointWrites {
    pub(crate) fn new(buffer: &mut [f32]) -> Self {
        DisjointWrites(buffer.as_mut_ptr())
    }

    /// The value `offset` places into the buffer. A method, so closures
    /// capture the whole (`Sync`) wrapper rather than its raw pointer.
    pub(crate) fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}
