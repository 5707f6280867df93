//! Keywords per cluster by class-based TF-IDF, the weighting BERTopic uses:
//! the texts of a class count as one document, a term's frequency in it is
//! divided by the class's term count, and weighed by `ln(1 + A / f)` where
//! `A` is the average term count per class and `f` the term's count over
//! all classes. Terms are words of two or more letters or digits, lower-cased,
//! English stop words and pure numbers removed, as uni- and bi-grams of what
//! is left (the way scikit-learn's `CountVectorizer` builds them).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use stopwords::{Language, SkLearn, Stopwords};

#[derive(Debug, Clone, PartialEq)]
pub struct Keyword {
    pub term: String,
    pub score: f64,
}

/// scikit-learn's English list, the one BERTopic's vectoriser is usually
/// given.
static STOP_WORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    SkLearn::stopwords(Language::English)
        .unwrap_or_default()
        .iter()
        .copied()
        .collect()
});

/// The uni- and bi-grams of `text`.
pub fn terms(text: &str) -> Vec<String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(w.as_str()) && !w.chars().all(|c| c.is_numeric()))
        .collect();
    let bigrams = words
        .windows(2)
        .map(|pair| format!("{} {}", pair[0], pair[1]));
    let mut out: Vec<String> = words.to_vec();
    out.extend(bigrams);
    out
}

/// The `top` keywords of each class `0..classes` among `texts`, where
/// `labels[i]` is the class of `texts[i]` and −1 marks texts of no class
/// (noise): those form one more class, so that what the whole window talks
/// about weighs less in every cluster.
pub fn class_keywords(
    texts: &[&str],
    labels: &[i32],
    classes: usize,
    top: usize,
) -> Vec<Vec<Keyword>> {
    // Slot `classes` holds the noise.
    let slot = |label: i32| usize::try_from(label).map_or(classes, |l| l.min(classes));
    let mut counts: Vec<HashMap<String, u64>> = vec![HashMap::new(); classes + 1];
    for (text, &label) in texts.iter().zip(labels) {
        let class = &mut counts[slot(label)];
        for term in terms(text) {
            *class.entry(term).or_insert(0) += 1;
        }
    }
    let mut total_per_term: HashMap<&str, u64> = HashMap::new();
    let mut class_totals = Vec::with_capacity(counts.len());
    for class in &counts {
        class_totals.push(class.values().sum::<u64>());
        for (term, &count) in class {
            *total_per_term.entry(term.as_str()).or_insert(0) += count;
        }
    }
    let non_empty = class_totals.iter().filter(|&&t| t > 0).count().max(1);
    let average = class_totals.iter().sum::<u64>() as f64 / non_empty as f64;
    counts[..classes]
        .iter()
        .zip(&class_totals)
        .map(|(class, &total)| {
            let mut keywords: Vec<Keyword> = class
                .iter()
                .map(|(term, &count)| {
                    let tf = count as f64 / total as f64;
                    let idf = (1.0 + average / total_per_term[term.as_str()] as f64).ln();
                    Keyword {
                        term: term.clone(),
                        score: tf * idf,
                    }
                })
                .collect();
            keywords.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.term.cmp(&b.term)));
            keywords.truncate(top);
            keywords
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_drop_stop_words_and_numbers_and_pair_what_is_left() {
        assert_eq!(
            terms("The battery of the Phone dies in 2 hours, 2024!"),
            vec![
                "battery",
                "phone",
                "dies",
                "hours",
                "battery phone",
                "phone dies",
                "dies hours"
            ]
        );
    }

    #[test]
    fn a_clusters_own_words_outrank_words_the_whole_window_uses() {
        let texts = [
            "battery drains fast phone",
            "battery drains overnight phone",
            "battery life poor phone",
            "camera blurry photos phone",
            "camera night photos phone",
            "camera lens scratched phone",
            "phone shipping late",
        ];
        let labels = [0, 0, 0, 1, 1, 1, -1];
        let keywords = class_keywords(&texts, &labels, 2, 3);
        assert_eq!(keywords.len(), 2);
        assert_eq!(keywords[0][0].term, "battery");
        assert_eq!(keywords[1][0].term, "camera");
        for class in &keywords {
            assert!(class.iter().all(|k| k.term != "phone"), "{class:?}");
            assert!(class.windows(2).all(|w| w[0].score >= w[1].score));
        }
    }

    #[test]
    fn empty_classes_have_no_keywords() {
        let keywords = class_keywords(&["", "the of"], &[0, 1], 2, 5);
        assert_eq!(keywords, vec![Vec::new(), Vec::new()]);
    }
}
