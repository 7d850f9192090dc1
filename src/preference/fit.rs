//! Fitting attribute weights to preferences: Bradley-Terry, i.e. logistic
//! regression of "chosen beats rejected" on the attribute differences, without
//! an intercept (swapping the sides must flip the probability):
//!
//! `P(chosen > rejected) = sigmoid(w . (a_chosen - a_rejected))`,
//! minimising `mean(softplus(-w . d)) + lambda/2 |w|^2` by Newton's method with
//! backtracking (nine parameters at most, so the Hessian is tiny).
//!
//! The regularisation strength is chosen by k-fold cross-validation over a
//! grid (best held-out accuracy, ties to the lower held-out log-loss, then to
//! the stronger lambda). A test split, cut off before any fitting, gives the
//! held-out accuracies of the baseline and the tuned weights that are reported.
//! The fitted weights are in logit units: a reward difference of 1 means odds
//! of e to 1 that the higher one is preferred.

use super::PreferenceError;
use crate::reward::AttributeWeights;

/// Held-out result of one lambda of the grid.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CvPoint {
    pub lambda: f64,
    /// Pooled accuracy over all held-out folds (a tie counts as wrong).
    pub accuracy: f64,
    /// Standard deviation of the per-fold accuracies.
    pub std: f64,
    pub log_loss: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TuneOptions {
    pub folds: usize,
    pub lambdas: Vec<f64>,
    pub test_fraction: f64,
    pub seed: u64,
    /// Indices of the attributes that get a weight; the others stay 0.
    pub attributes: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TuneResult {
    pub grid: Vec<CvPoint>,
    pub best_lambda: f64,
    /// Fitted on the training part (everything but the test split).
    pub weights: AttributeWeights,
    pub train: usize,
    pub test: usize,
    /// The baseline on the training part (it is not fitted, so all of it is held out).
    pub baseline_cv_accuracy: f64,
    pub tuned_cv_accuracy: f64,
    pub baseline_test_accuracy: Option<f64>,
    pub tuned_test_accuracy: Option<f64>,
}

/// Fraction of pairs whose difference `w . d` is strictly positive.
pub fn accuracy(weights: &[f64], diffs: &[&[f64]]) -> f64 {
    let correct = diffs.iter().filter(|d| dot(weights, d) > 0.0).count();
    correct as f64 / diffs.len().max(1) as f64
}

pub fn tune(
    diffs: &[[f64; 9]],
    baseline: &AttributeWeights,
    opts: &TuneOptions,
) -> Result<TuneResult, PreferenceError> {
    let bad = |m: String| Err(PreferenceError::Data(m));
    if opts.folds < 2 {
        return bad(format!("--folds must be at least 2, got {}", opts.folds));
    }
    if !(0.0..1.0).contains(&opts.test_fraction) {
        return bad(format!("--test-fraction must be in [0, 1), got {}", opts.test_fraction));
    }
    if opts.lambdas.is_empty() || opts.lambdas.iter().any(|l| !(l.is_finite() && *l > 0.0)) {
        return bad("--lambdas must be positive numbers".into());
    }
    if opts.attributes.is_empty() {
        return bad("no attributes to fit".into());
    }
    let order = shuffled(diffs.len(), opts.seed);
    let n_test = (opts.test_fraction * diffs.len() as f64).round() as usize;
    let (test, train) = order.split_at(n_test);
    if train.len() < 2 * opts.folds {
        return bad(format!(
            "{} training pairs are too few for {} folds (need at least {})",
            train.len(),
            opts.folds,
            2 * opts.folds
        ));
    }
    let project = |i: &usize| -> Vec<f64> { opts.attributes.iter().map(|&a| diffs[*i][a]).collect() };
    let x_train: Vec<Vec<f64>> = train.iter().map(project).collect();
    let folds: Vec<Vec<usize>> = (0..opts.folds).map(|f| (f..x_train.len()).step_by(opts.folds).collect()).collect();
    let grid =
        opts.lambdas.iter().map(|&lambda| cross_validate(&x_train, &folds, lambda)).collect::<Result<Vec<_>, _>>()?;
    let best = grid
        .iter()
        .max_by(|a, b| {
            a.accuracy
                .total_cmp(&b.accuracy)
                .then(b.log_loss.total_cmp(&a.log_loss))
                .then(a.lambda.total_cmp(&b.lambda))
        })
        .expect("the grid is not empty")
        .clone();
    let rows: Vec<&[f64]> = x_train.iter().map(Vec::as_slice).collect();
    let w = fit(&rows, best.lambda)?;
    let mut weights = [0.0; 9];
    for (k, &a) in opts.attributes.iter().enumerate() {
        weights[a] = w[k];
    }
    let full = |idx: &[usize]| -> Vec<&[f64]> { idx.iter().map(|&i| diffs[i].as_slice()).collect() };
    let on_test = |w: &[f64]| (!test.is_empty()).then(|| accuracy(w, &full(test)));
    Ok(TuneResult {
        best_lambda: best.lambda,
        tuned_cv_accuracy: best.accuracy,
        baseline_cv_accuracy: accuracy(&baseline.0, &full(train)),
        baseline_test_accuracy: on_test(&baseline.0),
        tuned_test_accuracy: on_test(&weights),
        weights: AttributeWeights(weights),
        train: train.len(),
        test: test.len(),
        grid,
    })
}

fn cross_validate(x: &[Vec<f64>], folds: &[Vec<usize>], lambda: f64) -> Result<CvPoint, PreferenceError> {
    let (mut correct, mut loss, mut per_fold) = (0usize, 0.0, Vec::new());
    for held in folds {
        let rows: Vec<&[f64]> = (0..x.len()).filter(|i| !held.contains(i)).map(|i| x[i].as_slice()).collect();
        let w = fit(&rows, lambda)?;
        let ok = held.iter().filter(|&&i| dot(&w, &x[i]) > 0.0).count();
        correct += ok;
        loss += held.iter().map(|&i| softplus(-dot(&w, &x[i]))).sum::<f64>();
        per_fold.push(ok as f64 / held.len() as f64);
    }
    let mean = per_fold.iter().sum::<f64>() / per_fold.len() as f64;
    let var = per_fold.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (per_fold.len() - 1) as f64;
    Ok(CvPoint { lambda, accuracy: correct as f64 / x.len() as f64, std: var.sqrt(), log_loss: loss / x.len() as f64 })
}

/// L2-regularised logistic regression without intercept, by Newton's method.
pub fn fit(rows: &[&[f64]], lambda: f64) -> Result<Vec<f64>, PreferenceError> {
    let d = rows.first().map_or(0, |r| r.len());
    let n = rows.len().max(1) as f64;
    let objective = |w: &[f64]| rows.iter().map(|x| softplus(-dot(w, x))).sum::<f64>() / n + 0.5 * lambda * dot(w, w);
    let mut w = vec![0.0; d];
    for _ in 0..100 {
        let mut grad: Vec<f64> = w.iter().map(|wi| lambda * wi).collect();
        let mut hess = vec![vec![0.0; d]; d];
        for (i, row) in hess.iter_mut().enumerate() {
            row[i] = lambda;
        }
        for x in rows {
            let p = sigmoid(dot(&w, x));
            for i in 0..d {
                grad[i] -= (1.0 - p) * x[i] / n;
                for j in 0..d {
                    hess[i][j] += p * (1.0 - p) * x[i] * x[j] / n;
                }
            }
        }
        if grad.iter().all(|g| g.abs() < 1e-10) {
            break;
        }
        let step = solve(hess, grad.clone())
            .ok_or_else(|| PreferenceError::Data(format!("the fit is singular at lambda {lambda}")))?;
        let (f0, slope) = (objective(&w), dot(&grad, &step));
        let mut t = 1.0;
        loop {
            let next: Vec<f64> = w.iter().zip(&step).map(|(wi, si)| wi - t * si).collect();
            if objective(&next) <= f0 - 1e-4 * t * slope || t < 1e-10 {
                w = next;
                break;
            }
            t *= 0.5;
        }
    }
    if w.iter().any(|v| !v.is_finite()) {
        return Err(PreferenceError::Data(format!("the fit diverged at lambda {lambda}")));
    }
    Ok(w)
}

/// Solve `a x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (top, below) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (offset, row) in below.iter_mut().enumerate() {
            let f = row[col] / pivot_row[col];
            for (x, p) in row.iter_mut().zip(pivot_row).skip(col) {
                *x -= f * p;
            }
            b[col + 1 + offset] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Some(x)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `ln(1 + e^z)` without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

/// `0..n` in a seeded random order (Fisher-Yates with splitmix64), the same on every platform.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dimension_has_a_closed_form() {
        // Differences 1, 1, -1: at the optimum mean((1 - sigmoid(w d)) d) = lambda w.
        let rows: Vec<&[f64]> = vec![&[1.0], &[1.0], &[-1.0]];
        let w = fit(&rows, 0.1).unwrap()[0];
        let grad = (2.0 * (1.0 - sigmoid(w)) - (1.0 - sigmoid(-w))) / 3.0 - 0.1 * w;
        assert!(grad.abs() < 1e-9 && w > 0.0, "w {w}, grad {grad}");
    }

    #[test]
    fn solve_and_shuffle() {
        let x = solve(vec![vec![2.0, 1.0], vec![1.0, 3.0]], vec![3.0, 5.0]).unwrap();
        assert!((x[0] - 0.8).abs() < 1e-12 && (x[1] - 1.4).abs() < 1e-12);
        let mut s = shuffled(10, 7);
        assert_ne!(s, (0..10).collect::<Vec<_>>());
        assert_eq!(s, shuffled(10, 7));
        s.sort();
        assert_eq!(s, (0..10).collect::<Vec<_>>());
    }
}
