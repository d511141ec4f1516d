//! Fixed-capacity storage the caller provides for a capture: no allocation
//! while vCPUs are paused, and overflow is counted instead of panicking.

/// A caller-provided slice filled front to back; pushes past its end are
/// counted as dropped.
#[derive(Debug)]
pub struct Slots<'a, T> {
    items: &'a mut [T],
    len: usize,
    dropped: u64,
}

impl<'a, T: Copy> Slots<'a, T> {
    /// Empty slots over `items` (their contents are overwritten).
    pub fn new(items: &'a mut [T]) -> Self {
        Self {
            items,
            len: 0,
            dropped: 0,
        }
    }

    /// Append `v`; returns its index, or `None` (and counts a drop) when full.
    pub fn push(&mut self, v: T) -> Option<usize> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = v;
                self.len += 1;
                Some(self.len - 1)
            }
            None => {
                self.dropped = self.dropped.saturating_add(1);
                None
            }
        }
    }

    /// Append the value `fill` writes into the next slot, over whatever it
    /// held before (what `fill` leaves alone stays as it was); returns its
    /// index, or `None` (and counts a drop) when full. Building a large
    /// record in place spares a copy of it per push.
    #[inline]
    pub fn push_with(&mut self, fill: impl FnOnce(&mut T)) -> Option<usize> {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                fill(slot);
                self.len += 1;
                Some(self.len - 1)
            }
            None => {
                self.dropped = self.dropped.saturating_add(1);
                None
            }
        }
    }

    /// The filled part.
    pub fn as_slice(&self) -> &[T] {
        self.items.get(..self.len).unwrap_or_default()
    }

    /// The filled item at `i`, mutably.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(..self.len)?.get_mut(i)
    }

    /// Slots in all, filled or not.
    pub fn capacity(&self) -> usize {
        self.items.len()
    }

    /// Number of filled slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pushes refused for lack of room.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Forget the contents (capacity stays).
    pub fn clear(&mut self) {
        self.len = 0;
        self.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_is_counted_not_fatal() {
        let mut store = [0u32; 2];
        let mut s = Slots::new(&mut store);
        assert_eq!(s.push(1), Some(0));
        assert_eq!(s.push(2), Some(1));
        assert_eq!(s.push(3), None);
        assert_eq!(s.push(4), None);
        assert_eq!((s.as_slice(), s.dropped()), (&[1, 2][..], 2));
        *s.get_mut(1).unwrap() = 9;
        assert_eq!(s.get_mut(2), None);
        s.clear();
        assert!(s.is_empty());
        let mut none: [u32; 0] = [];
        let mut z = Slots::new(&mut none);
        assert_eq!(z.push(1), None);
        assert_eq!(z.as_slice(), &[] as &[u32]);
    }
}
