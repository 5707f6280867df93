//! Agreement between two labelings of the same points: adjusted Rand index
//! and V-measure, as scikit-learn defines them. Noise (−1) counts as a label
//! of its own, as it does there.
//!
//! Written here rather than pulled in: they are a contingency table and a
//! few sums, and the crates that have them bring a whole ML framework.

use std::collections::HashMap;

struct Contingency {
    n: f64,
    /// (row, column, count) of every non-empty cell.
    cells: Vec<(usize, usize, f64)>,
    rows: Vec<f64>,
    cols: Vec<f64>,
}

impl Contingency {
    fn new(truth: &[i64], predicted: &[i64]) -> Self {
        assert_eq!(truth.len(), predicted.len(), "labelings differ in length");
        let index = |labels: &[i64]| {
            let mut ids: HashMap<i64, usize> = HashMap::new();
            let mapped: Vec<usize> = labels
                .iter()
                .map(|l| {
                    let next = ids.len();
                    *ids.entry(*l).or_insert(next)
                })
                .collect();
            (mapped, ids.len())
        };
        let (t, nt) = index(truth);
        let (p, np) = index(predicted);
        let mut table: HashMap<(usize, usize), f64> = HashMap::new();
        let mut rows = vec![0.0; nt];
        let mut cols = vec![0.0; np];
        for (a, b) in t.iter().zip(&p) {
            *table.entry((*a, *b)).or_default() += 1.0;
            rows[*a] += 1.0;
            cols[*b] += 1.0;
        }
        Self {
            n: truth.len() as f64,
            cells: table.into_iter().map(|((a, b), c)| (a, b, c)).collect(),
            rows,
            cols,
        }
    }
}

fn pairs(x: f64) -> f64 {
    x * (x - 1.0) / 2.0
}

/// Adjusted Rand index: 1 for identical partitions, about 0 for random ones.
pub fn adjusted_rand_index<A, B>(truth: &[A], predicted: &[B]) -> f64
where
    A: Copy + Into<i64>,
    B: Copy + Into<i64>,
{
    let table = contingency(truth, predicted);
    if table.n < 2.0 {
        return 1.0;
    }
    let index: f64 = table.cells.iter().map(|&(_, _, c)| pairs(c)).sum();
    let row_pairs: f64 = table.rows.iter().map(|&c| pairs(c)).sum();
    let col_pairs: f64 = table.cols.iter().map(|&c| pairs(c)).sum();
    let expected = row_pairs * col_pairs / pairs(table.n);
    let max = (row_pairs + col_pairs) / 2.0;
    if max == expected {
        // Both partitions trivial in the same way (all one cluster or all
        // singletons): scikit-learn calls that perfect agreement.
        return 1.0;
    }
    (index - expected) / (max - expected)
}

/// V-measure: the harmonic mean of homogeneity and completeness.
pub fn v_measure<A, B>(truth: &[A], predicted: &[B]) -> f64
where
    A: Copy + Into<i64>,
    B: Copy + Into<i64>,
{
    let table = contingency(truth, predicted);
    if table.n == 0.0 {
        return 1.0;
    }
    let entropy = |counts: &[f64]| -> f64 {
        counts
            .iter()
            .filter(|&&c| c > 0.0)
            .map(|&c| -(c / table.n) * (c / table.n).ln())
            .sum()
    };
    let (h_truth, h_pred) = (entropy(&table.rows), entropy(&table.cols));
    let mi: f64 = table
        .cells
        .iter()
        .map(|&(a, b, c)| (c / table.n) * (c * table.n / (table.rows[a] * table.cols[b])).ln())
        .sum();
    let homogeneity = if h_truth == 0.0 { 1.0 } else { mi / h_truth };
    let completeness = if h_pred == 0.0 { 1.0 } else { mi / h_pred };
    if homogeneity + completeness == 0.0 {
        0.0
    } else {
        2.0 * homogeneity * completeness / (homogeneity + completeness)
    }
}

fn contingency<A, B>(truth: &[A], predicted: &[B]) -> Contingency
where
    A: Copy + Into<i64>,
    B: Copy + Into<i64>,
{
    let t: Vec<i64> = truth.iter().map(|&v| v.into()).collect();
    let p: Vec<i64> = predicted.iter().map(|&v| v.into()).collect();
    Contingency::new(&t, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_partitions_score_one_whatever_the_names() {
        let a = [0, 0, 1, 1, 2, -1];
        let b = [5, 5, 3, 3, 9, 7];
        assert!((adjusted_rand_index(&a, &b) - 1.0).abs() < 1e-12);
        assert!((v_measure(&a, &b) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn values_match_scikit_learn() {
        // sklearn.metrics.adjusted_rand_score([0,0,1,1],[0,0,1,2]) = 0.5714285714
        // sklearn.metrics.v_measure_score([0,0,1,1],[0,0,1,2]) = 0.8
        let (a, b) = ([0, 0, 1, 1], [0, 0, 1, 2]);
        assert!((adjusted_rand_index(&a, &b) - 0.571_428_571_4).abs() < 1e-9);
        assert!((v_measure(&a, &b) - 0.8).abs() < 1e-9);
        // adjusted_rand_score([0,0,0,1,1,1],[0,1,2,0,1,2]) = -0.3636363636
        let (a, b) = ([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2]);
        assert!((adjusted_rand_index(&a, &b) + 0.363_636_363_6).abs() < 1e-9);
        assert!(v_measure(&a, &b).abs() < 1e-9);
    }
}
