//! Deterministic synthetic texts for the embedding benchmarks, so every run
//! and every encoder sees the same inputs.

const WORDS: &[&str] = &[
    "the",
    "new",
    "brand",
    "store",
    "price",
    "shoes",
    "coffee",
    "phone",
    "update",
    "app",
    "order",
    "delivery",
    "service",
    "customer",
    "quality",
    "great",
    "terrible",
    "love",
    "hate",
    "waited",
    "refund",
    "battery",
    "screen",
    "flight",
    "delayed",
    "luggage",
    "friendly",
    "staff",
    "manager",
    "subscription",
    "cancelled",
    "again",
    "finally",
    "because",
    "really",
    "never",
    "always",
    "today",
    "yesterday",
    "weekend",
    "morning",
    "line",
    "hours",
    "minutes",
    "cheap",
    "expensive",
    "launch",
    "campaign",
    "advert",
    "sponsor",
    "festival",
    "tickets",
    "sold",
    "out",
    "review",
    "stars",
    "recommend",
    "avoid",
    "switching",
    "loyal",
    "points",
    "reward",
    "discount",
    "code",
    "broken",
    "fixed",
    "support",
    "chat",
    "bot",
    "answer",
    "wrong",
    "right",
    "fast",
    "slow",
    "warehouse",
    "package",
    "tracking",
    "lost",
    "found",
    "taste",
    "flavour",
    "menu",
    "seasonal",
    "limited",
    "edition",
    "colour",
    "size",
    "fit",
    "return",
    "policy",
    "store",
    "credit",
    "and",
    "but",
    "so",
    "with",
    "for",
    "from",
    "my",
    "their",
    "our",
    "is",
    "was",
    "will",
    "not",
    "very",
];

/// A small xorshift generator: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn sentence(rng: &mut Rng, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[rng.below(WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// `count` social-post-sized texts of 8 to 30 words.
pub fn short_texts(count: usize) -> Vec<String> {
    let mut rng = Rng(0x5eed_0001);
    (0..count)
        .map(|_| {
            let words = 8 + rng.below(23);
            sentence(&mut rng, words)
        })
        .collect()
}

/// `count` texts long enough to fill a 256-token window after truncation.
pub fn long_texts(count: usize) -> Vec<String> {
    let mut rng = Rng(0x5eed_0002);
    (0..count).map(|_| sentence(&mut rng, 400)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_are_reproducible_and_sized() {
        assert_eq!(short_texts(5), short_texts(5));
        for text in short_texts(100) {
            let words = text.split(' ').count();
            assert!((8..=30).contains(&words), "{words}");
        }
        assert!(long_texts(3).iter().all(|t| t.split(' ').count() == 400));
    }
}
