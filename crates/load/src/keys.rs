//! The keys a load run sends: a fixed set of `"{prefix}-{index}"` strings made once before the
//! run, and the distribution that picks an index for each request.
//!
//! Keys are made up front so the request loop only copies bytes, and so that verification can
//! map every key back to what was sent. The prefix is unique per run by default, which keeps
//! the run's rows apart from everything else in the same `counters` table.

use anyhow::{Context, bail};
use rand::{Rng, RngExt};
use rand_distr::{Distribution as _, Zipf};

use super::Distribution;

/// The longest prefix accepted: with `-` and an index it stays far below Tally's 256-byte
/// key limit.
pub const MAX_PREFIX_LEN: usize = 64;

/// The keys of one run, indexed `0..len`.
pub struct KeySpace {
    prefix: String,
    keys: Vec<String>,
}

impl KeySpace {
    /// Makes the `count` keys `"{prefix}-0"` to `"{prefix}-{count - 1}"`.
    pub fn new(prefix: &str, count: u32) -> KeySpace {
        let keys = (0..count).map(|i| format!("{prefix}-{i}")).collect();
        KeySpace {
            prefix: prefix.to_owned(),
            keys,
        }
    }

    /// The key at `index`.
    pub fn key(&self, index: u32) -> &str {
        &self.keys[index as usize]
    }

    /// How many keys there are.
    pub fn len(&self) -> u32 {
        self.keys.len() as u32
    }

    /// Whether there are no keys (never, for a valid configuration).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// What every key of this run starts with, the `-` included; no other run's key does,
    /// unless its prefix itself starts with this one.
    pub fn key_start(&self) -> String {
        format!("{}-", self.prefix)
    }

    /// The run's prefix, as given or made.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// A prefix for a run that was given none: `load-` and six random lowercase letters or digits,
/// so that runs against the same database do not mix.
pub fn random_prefix<R: Rng + ?Sized>(rng: &mut R) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let tail: String = (0..6)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("load-{tail}")
}

/// Checks a `--key-prefix`: 1 to 64 ASCII letters, digits, `-`, `_`, `.` or `:`. The narrow
/// alphabet means a key never needs escaping in the JSON body, and means the same thing in
/// every key format a server might normalise.
pub fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_PREFIX_LEN {
        return Err(format!("must be 1 to {MAX_PREFIX_LEN} characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err("may hold only ASCII letters, digits, '-', '_', '.' and ':'".into());
    }
    Ok(s.to_owned())
}

/// Picks a key index for each request.
#[derive(Debug, Clone)]
pub enum KeyPicker {
    /// Every index equally likely.
    Uniform { keys: u32 },
    /// Index 0 the most frequent, then 1, and so on: a few hot keys and a long tail, as page
    /// views and API calls tend to be.
    Zipf { keys: u32, zipf: Zipf<f64> },
}

impl KeyPicker {
    /// A picker over `keys` indexes; `exponent` is used by the Zipf distribution only (0 makes
    /// it uniform, 1 is the classic Zipf law, higher is more skewed).
    pub fn new(distribution: Distribution, keys: u32, exponent: f64) -> anyhow::Result<Self> {
        if keys == 0 {
            bail!("at least one key is needed");
        }
        Ok(match distribution {
            Distribution::Uniform => KeyPicker::Uniform { keys },
            Distribution::Zipf => KeyPicker::Zipf {
                keys,
                zipf: Zipf::new(f64::from(keys), exponent)
                    .with_context(|| format!("invalid Zipf exponent {exponent}"))?,
            },
        })
    }

    /// The next index, in `0..keys`.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        match self {
            KeyPicker::Uniform { keys } => rng.random_range(0..*keys),
            KeyPicker::Zipf { keys, zipf } => {
                // `Zipf` yields ranks 1..=n as floats; rank 1 becomes index 0. The clamp only
                // guards against a float rounding past either end.
                let rank = zipf.sample(rng) as u32;
                rank.clamp(1, *keys) - 1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn frequencies(picker: &KeyPicker, keys: u32, samples: usize) -> Vec<u64> {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u64; keys as usize];
        for _ in 0..samples {
            counts[picker.pick(&mut rng) as usize] += 1;
        }
        counts
    }

    #[test]
    fn uniform_covers_every_key_evenly() {
        let picker = KeyPicker::new(Distribution::Uniform, 100, 1.0).unwrap();
        let counts = frequencies(&picker, 100, 100_000);
        assert!(counts.iter().all(|&c| c > 0), "every key is picked");
        // 1000 expected per key; 800..1200 is more than six standard deviations either side.
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn zipf_makes_key_0_the_hottest_and_frequencies_fall_with_the_index() {
        let picker = KeyPicker::new(Distribution::Zipf, 10, 1.0).unwrap();
        let counts = frequencies(&picker, 10, 200_000);
        assert!(
            counts.windows(2).all(|w| w[0] > w[1]),
            "frequencies decrease: {counts:?}"
        );
        // Zipf's law with exponent 1: key 0 is about twice as frequent as key 1.
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.8..2.2).contains(&ratio), "{counts:?}");
    }

    #[test]
    fn zipf_stays_within_the_key_range_for_many_keys() {
        let picker = KeyPicker::new(Distribution::Zipf, 100_000, 1.2).unwrap();
        let counts = frequencies(&picker, 100_000, 100_000);
        let max = counts
            .iter()
            .enumerate()
            .max_by_key(|(_, c)| **c)
            .unwrap()
            .0;
        assert_eq!(max, 0, "key 0 is the most frequent");
    }

    #[test]
    fn zipf_exponent_must_not_be_negative() {
        assert!(KeyPicker::new(Distribution::Zipf, 10, -1.0).is_err());
        assert!(KeyPicker::new(Distribution::Zipf, 10, 0.0).is_ok());
    }

    #[test]
    fn keys_are_prefix_dash_index() {
        let space = KeySpace::new("run1", 3);
        assert_eq!(space.len(), 3);
        assert_eq!(space.key(0), "run1-0");
        assert_eq!(space.key(2), "run1-2");
        assert_eq!(space.key_start(), "run1-");
    }

    #[test]
    fn prefixes_are_checked_and_random_ones_are_valid() {
        assert!(parse_prefix("bench.2026-11:a_b").is_ok());
        for bad in ["", "with space", "quote\"", "é", &"x".repeat(65)] {
            assert!(parse_prefix(bad).is_err(), "{bad:?}");
        }
        let mut rng = SmallRng::seed_from_u64(1);
        let a = random_prefix(&mut rng);
        let b = random_prefix(&mut rng);
        assert_ne!(a, b);
        assert!(parse_prefix(&a).is_ok(), "{a}");
        assert_eq!(a.len(), "load-".len() + 6);
    }
}
