//! SHA-256 whose running state can be saved and restored: an upload session on S3 is
//! continued by whichever gateway takes its next request, so the digest of the bytes
//! already stored travels with the session record instead of being recomputed by
//! reading them back. `sha2` provides the compression function; this adds the
//! buffering and the final padding (FIPS 180-4, 5.1.1).

use sha2::digest::generic_array::GenericArray;

/// The initial hash value (FIPS 180-4, 5.3.3).
pub const INITIAL: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

const BLOCK: usize = 64;

#[derive(Clone)]
pub struct Sha256 {
    state: [u32; 8],
    /// Bytes hashed so far, `buf` included.
    len: u64,
    /// The bytes of an incomplete block.
    buf: Vec<u8>,
}

impl Sha256 {
    /// Continues from `state` after `len` bytes; `len` must be a whole number of blocks
    /// (the state saved by [`Sha256::saved`]).
    pub fn resume(state: [u32; 8], len: u64) -> Sha256 {
        debug_assert_eq!(len % BLOCK as u64, 0);
        Sha256 {
            state,
            len,
            buf: Vec::with_capacity(BLOCK),
        }
    }

    pub fn new() -> Sha256 {
        Sha256::resume(INITIAL, 0)
    }

    /// The state to save, if the bytes so far are whole blocks.
    pub fn saved(&self) -> Option<[u32; 8]> {
        self.buf.is_empty().then_some(self.state)
    }

    /// Bytes hashed so far.
    pub fn hashed(&self) -> u64 {
        self.len
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.buf.is_empty() {
            let take = (BLOCK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < BLOCK {
                return;
            }
            compress(&mut self.state, &self.buf);
            self.buf.clear();
        }
        let whole = data.len() - data.len() % BLOCK;
        compress(&mut self.state, &data[..whole]);
        self.buf.extend_from_slice(&data[whole..]);
    }

    pub fn finish(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        self.buf.push(0x80);
        while self.buf.len() % BLOCK != BLOCK - 8 {
            self.buf.push(0);
        }
        self.buf.extend_from_slice(&bits.to_be_bytes());
        let buf = std::mem::take(&mut self.buf);
        compress(&mut self.state, &buf);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

/// Runs the compression function over whole blocks.
fn compress(state: &mut [u32; 8], data: &[u8]) {
    for block in data.chunks_exact(BLOCK) {
        sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    #[test]
    fn matches_sha2_across_splits_and_resumes() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 10_000] {
            let want: [u8; 32] = sha2::Sha256::digest(&data[..len]).into();
            for split in [0, 1, 3, 64, len / 2, len] {
                let split = split.min(len);
                let mut h = Sha256::new();
                h.update(&data[..split]);
                h.update(&data[split..len]);
                assert_eq!(h.finish(), want, "len {len} split {split}");
            }
            // Saved at a block boundary and resumed elsewhere.
            let cut = len - len % 128;
            let mut h = Sha256::new();
            h.update(&data[..cut]);
            let mut h = Sha256::resume(h.saved().unwrap(), cut as u64);
            h.update(&data[cut..len]);
            assert_eq!(h.finish(), want, "resumed at {cut} of {len}");
        }
    }
}
