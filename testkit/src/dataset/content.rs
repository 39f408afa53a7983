//! Deterministic file content: byte `o` of a file is a pure function of the file's
//! seed and `o`, so any range can be produced without generating what comes before
//! it, and a multi-GiB file never has to sit in memory.

/// SplitMix64's output function. Word `i` of a file is `mix64(seed + (i+1)·γ)`, which
/// is exactly SplitMix64's i-th output, so the stream has its statistical quality
/// (incompressible, no short cycles) while staying random-access.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn word(seed: u64, index: u64) -> [u8; 8] {
    mix64(seed.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA))).to_le_bytes()
}

/// Fills `buf` with the bytes at `offset..offset + buf.len()` of the stream `seed`.
pub(crate) fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut out = buf;
    // Unaligned head.
    let head = ((8 - pos % 8) % 8) as usize;
    if head > 0 {
        let n = head.min(out.len());
        let w = word(seed, pos / 8);
        let start = (pos % 8) as usize;
        out[..n].copy_from_slice(&w[start..start + n]);
        out = &mut out[n..];
        pos += n as u64;
    }
    let mut index = pos / 8;
    let mut chunks = out.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&word(seed, index));
        index += 1;
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let n = tail.len();
        tail.copy_from_slice(&word(seed, index)[..n]);
    }
}

/// A SplitMix64 sequence for layout decisions (sizes, directories).
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix64(self.0)
    }

    /// Uniform in `lo..=hi` (modulo bias is irrelevant here).
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.next_u64() % span,
            None => self.next_u64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_range_matches_the_whole_stream() {
        let mut whole = vec![0u8; 100_000];
        fill(42, 0, &mut whole);
        for (off, len) in [
            (0, 0),
            (0, 1),
            (3, 5),
            (7, 9),
            (8, 8),
            (13, 200),
            (65_533, 7),
            (99_993, 7),
            (0, 100_000),
        ] {
            let mut part = vec![0u8; len];
            fill(42, off as u64, &mut part);
            assert_eq!(part, whole[off..off + len], "offset {off} len {len}");
        }
    }

    #[test]
    fn seeds_give_different_streams() {
        let (mut a, mut b) = (vec![0u8; 64], vec![0u8; 64]);
        fill(1, 0, &mut a);
        fill(2, 0, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn split_mix_range_stays_in_bounds() {
        let mut r = SplitMix::new(7);
        for _ in 0..1000 {
            let v = r.range(10, 20);
            assert!((10..=20).contains(&v));
        }
        assert_eq!(r.range(5, 5), 5);
        r.range(0, u64::MAX);
    }
}
