//! Randomness for kill delays, schedules and garbage: cheap, and reproducible from a seed that failing
//! tests print.

/// A seed from the clock and pid, printed by failing tests so a run can be replayed.
pub fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)) | 1
}

/// xorshift64*: enough randomness for kill delays and garbage, reproducible from the seed.
pub fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// A plain xorshift64 generator, for schedules fixed by their seed (the seed must not be 0).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
