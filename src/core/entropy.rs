//! Where the random bits of device tokens come from.
//!
//! A server takes them from the operating system ([`Entropy::Os`], `getrandom`), one call per
//! token. The simulator, the transcripts and the fuzzers need the same run to issue the same
//! tokens, so with the `testing` feature a fixed seed gives a fixed sequence instead
//! (`Entropy::Seeded`); a server binary is built without that feature and cannot be given one.
//! The core takes its source as a setting, like its clock and its store.

/// The source of random bits, chosen when the core is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entropy {
    /// The operating system's generator.
    Os,
    /// A fixed sequence from this seed (splitmix64). Predictable by design: tests only.
    #[cfg(feature = "testing")]
    Seeded(u64),
}

/// A failure of the operating system's generator.
#[derive(Debug)]
pub struct EntropyError(String);

impl std::fmt::Display for EntropyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no random bits from the operating system: {}", self.0)
    }
}

/// The core's generator.
#[derive(Debug)]
pub(super) enum Rng {
    Os,
    #[cfg(feature = "testing")]
    Seeded(u64),
}

impl Rng {
    pub(super) fn new(entropy: Entropy) -> Rng {
        match entropy {
            Entropy::Os => Rng::Os,
            #[cfg(feature = "testing")]
            Entropy::Seeded(seed) => Rng::Seeded(seed),
        }
    }

    /// Fills `buf` with random bytes.
    pub(super) fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        match self {
            Rng::Os => getrandom::fill(buf).map_err(|e| EntropyError(e.to_string())),
            #[cfg(feature = "testing")]
            Rng::Seeded(state) => {
                for chunk in buf.chunks_mut(8) {
                    // splitmix64 (Steele, Lea, Flood 2014): every seed gives a full-period stream.
                    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = *state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    z ^= z >> 31;
                    chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
                }
                Ok(())
            }
        }
    }

    /// A random u64.
    pub(super) fn u64(&mut self) -> Result<u64, EntropyError> {
        let mut b = [0u8; 8];
        self.fill(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operating_system_gives_different_bits_each_time() {
        let mut rng = Rng::new(Entropy::Os);
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        rng.fill(&mut a).unwrap();
        rng.fill(&mut b).unwrap();
        // 2^-256 to fail by chance.
        assert_ne!(a, b);
        assert_ne!(a, [0; 32]);
    }

    #[cfg(feature = "testing")]
    #[test]
    fn a_seed_gives_the_same_sequence() {
        let (mut x, mut y) = (Rng::new(Entropy::Seeded(7)), Rng::new(Entropy::Seeded(7)));
        let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
        x.fill(&mut a).unwrap();
        y.fill(&mut b).unwrap();
        assert_eq!(a, b);
        assert_ne!(
            x.u64().unwrap(),
            Rng::new(Entropy::Seeded(8)).u64().unwrap()
        );
    }
}
