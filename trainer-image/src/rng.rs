//! splitmix64: a tiny seeded generator, so datasets and shuffles are the same on every machine.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough in 0..n for dataset shuffling (n is small next to 2^64).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in [0, 1) from the top 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A seed for item `index` of stream `seed`: distinct indices give unrelated streams.
    pub fn derive(seed: u64, index: u64) -> u64 {
        SplitMix64(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
    }
}
