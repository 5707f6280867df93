//! Deterministic synthetic inputs for the benchmarks (texts for the
//! embedding ones, embedding-like vectors for clustering), so every run and
//! every implementation sees the same data.

/// Words of brand chatter the synthetic texts are made of.
pub const WORDS: &[&str] = &[
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

fn sentence(rng: &mut Rng, vocabulary: &[&str], words: usize) -> String {
    (0..words)
        .map(|_| vocabulary[rng.below(vocabulary.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// `count` texts of exactly `words` words drawn from `vocabulary`.
pub fn texts_of(vocabulary: &[&str], count: usize, words: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed | 1);
    (0..count)
        .map(|_| sentence(&mut rng, vocabulary, words))
        .collect()
}

/// `count` social-post-sized texts of 8 to 30 words.
pub fn short_texts(count: usize) -> Vec<String> {
    let mut rng = Rng(0x5eed_0001);
    (0..count)
        .map(|_| {
            let words = 8 + rng.below(23);
            sentence(&mut rng, WORDS, words)
        })
        .collect()
}

/// `count` texts long enough to fill a 256-token window after truncation.
pub fn long_texts(count: usize) -> Vec<String> {
    let mut rng = Rng(0x5eed_0002);
    (0..count).map(|_| sentence(&mut rng, WORDS, 400)).collect()
}

/// Unit vectors shaped like sentence embeddings of a stream of signals:
/// `n / 250` topics of Zipf-like sizes whose centres share a common direction
/// (cosine ≈ 0.2 between topics, as real embeddings of one brand's posts),
/// each point within cosine 0.7–0.87 of its topic centre, and 15 % noise.
/// Returns the points (`n × dim`) and each point's topic (−1 for noise).
pub fn embedding_like(n: usize, dim: usize, seed: u64) -> (Vec<f32>, Vec<i32>) {
    let mut rng = Rng(seed | 1);
    let mut gaussian = move || {
        // Box–Muller on two uniforms in (0, 1].
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        let v = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    };
    let unit = |gaussian: &mut dyn FnMut() -> f32| -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|_| gaussian()).collect();
        normalised(v)
    };
    let shared = unit(&mut gaussian);
    let topics = (n / 250).max(1);
    let centres: Vec<Vec<f32>> = (0..topics)
        .map(|_| {
            let u = unit(&mut gaussian);
            normalised(shared.iter().zip(&u).map(|(s, x)| 0.45 * s + x).collect())
        })
        .collect();
    let spread: Vec<f32> = (0..topics)
        .map(|t| 0.55 + 0.45 * (t as f32 / topics as f32))
        .collect();
    let weights: Vec<f64> = (0..topics)
        .map(|t| 1.0 / (1.0 + t as f64).powf(0.6))
        .collect();
    let total: f64 = weights.iter().sum();
    let clustered = n - n * 15 / 100;
    let mut topic_of: Vec<i32> = Vec::with_capacity(n);
    for (t, w) in weights.iter().enumerate() {
        let count = if t + 1 == topics {
            clustered - topic_of.len()
        } else {
            ((w / total) * clustered as f64) as usize
        };
        topic_of.extend(std::iter::repeat_n(t as i32, count));
    }
    topic_of.resize(n, -1);
    let mut points = Vec::with_capacity(n * dim);
    for &topic in &topic_of {
        let point = if topic < 0 {
            let u = unit(&mut gaussian);
            normalised(shared.iter().zip(&u).map(|(s, x)| 0.45 * s + x).collect())
        } else {
            let t = topic as usize;
            let scale = spread[t] / (dim as f32).sqrt();
            normalised(centres[t].iter().map(|c| c + scale * gaussian()).collect())
        };
        points.extend(point);
    }
    (points, topic_of)
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    v
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
        let texts = texts_of(WORDS, 4, 7, 1);
        assert_eq!(texts.len(), 4);
        assert!(texts.iter().all(|t| t.split(' ').count() == 7));
        assert_ne!(texts[0], texts[1]);
    }

    #[test]
    fn embedding_like_points_are_unit_vectors_with_topics_and_noise() {
        let (points, topics) = embedding_like(1000, 16, 3);
        assert_eq!(points.len(), 1000 * 16);
        assert_eq!(topics.iter().filter(|t| **t == -1).count(), 150);
        assert_eq!(topics.iter().max(), Some(&3));
        for row in points.chunks_exact(16) {
            let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        assert_eq!(embedding_like(50, 4, 9), embedding_like(50, 4, 9));
    }
}
