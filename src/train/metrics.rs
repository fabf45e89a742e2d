//! Training and evaluation metrics.
//!
//! [`Running`] averages what the training step already computed (its mean loss and count of
//! correct predictions) between two log points. [`Evaluation`] recomputes everything from
//! the logits in f64 instead of averaging per-batch f32 losses, so the validation loss does
//! not depend on the eval batch size or on padding, and it can give a confusion matrix.

/// Loss and accuracy of the training batches since the last [`Running::reset`].
#[derive(Clone, Debug, Default)]
pub struct Running {
    /// Σ batch mean loss × batch size: the total loss, so batches of different sizes (the
    /// last, short one) weigh by their samples.
    loss_sum: f64,
    correct: u64,
    count: u64,
}

impl Running {
    pub fn new() -> Running {
        Running::default()
    }

    /// Adds one batch: its mean loss, how many of its `n` samples were predicted right.
    pub fn add(&mut self, mean_loss: f64, correct: usize, n: usize) {
        self.loss_sum += mean_loss * n as f64;
        self.correct += correct as u64;
        self.count += n as u64;
    }

    /// Mean loss per sample (None before the first sample).
    pub fn mean_loss(&self) -> Option<f64> {
        (self.count > 0).then(|| self.loss_sum / self.count as f64)
    }

    /// Fraction of samples predicted right, in [0, 1] (None before the first sample).
    pub fn accuracy(&self) -> Option<f64> {
        (self.count > 0).then(|| self.correct as f64 / self.count as f64)
    }

    /// Samples added since the last reset.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn reset(&mut self) {
        *self = Running::default();
    }
}

/// Logits and labels of a whole evaluation pass, and what they give: mean cross-entropy,
/// top-1 accuracy, the confusion matrix and per-class accuracy.
#[derive(Clone, Debug)]
pub struct Evaluation {
    classes: usize,
    /// Row-major [samples, classes], the real rows of every batch in order.
    logits: Vec<f32>,
    labels: Vec<usize>,
    /// Σ cross-entropy in f64.
    loss_sum: f64,
    correct: u64,
    /// [true][predicted] counts.
    confusion: Vec<Vec<u64>>,
}

impl Evaluation {
    pub fn new(classes: usize) -> Evaluation {
        Evaluation {
            classes,
            logits: Vec::new(),
            labels: Vec::new(),
            loss_sum: 0.0,
            correct: 0,
            confusion: vec![vec![0; classes]; classes],
        }
    }

    /// Adds the first `len` rows of a batch: `logits` row-major [batch, classes], `labels`
    /// one class index per row. Rows past `len` are padding of a short last batch (a static
    /// graph has one batch size) and are ignored. Errors on short inputs or a label out of
    /// range, adding nothing.
    pub fn add_batch(&mut self, logits: &[f32], labels: &[i32], len: usize) -> Result<(), String> {
        let c = self.classes;
        if c == 0 {
            return Err("an evaluation needs at least one class".into());
        }
        if logits.len() < len * c || labels.len() < len {
            return Err(format!(
                "batch of {len} rows needs {} logits and {len} labels, got {} and {}",
                len * c,
                logits.len(),
                labels.len()
            ));
        }
        let mut classes = Vec::with_capacity(len);
        for &l in &labels[..len] {
            match usize::try_from(l) {
                Ok(l) if l < c => classes.push(l),
                _ => return Err(format!("label {l} is not a class in 0..{c}")),
            }
        }
        for (row, &label) in logits[..len * c].chunks_exact(c).zip(&classes) {
            self.loss_sum += cross_entropy(row, label);
            let pred = argmax(row);
            self.correct += u64::from(pred == label);
            self.confusion[label][pred] += 1;
        }
        self.logits.extend_from_slice(&logits[..len * c]);
        self.labels.extend_from_slice(&classes);
        Ok(())
    }

    /// Samples added.
    pub fn count(&self) -> usize {
        self.labels.len()
    }

    /// Mean cross-entropy over all samples (None when empty).
    pub fn loss(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.loss_sum / self.count() as f64)
    }

    /// Top-1 accuracy in [0, 1] (None when empty).
    pub fn accuracy(&self) -> Option<f64> {
        (self.count() > 0).then(|| self.correct as f64 / self.count() as f64)
    }

    /// `confusion()[true][predicted]`: how many samples of each class got each prediction.
    pub fn confusion(&self) -> &[Vec<u64>] {
        &self.confusion
    }

    /// Accuracy on each true class (None for a class with no samples).
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let n: u64 = row.iter().sum();
                (n > 0).then(|| row[i] as f64 / n as f64)
            })
            .collect()
    }

    /// The logits of sample `i`, in the order added.
    pub fn logits_of(&self, i: usize) -> Option<&[f32]> {
        self.logits.get(i * self.classes..(i + 1) * self.classes)
    }

    /// The labels, in the order added.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }
}

/// `log Σ exp(row) − row[label]` in f64, with the maximum subtracted first so no exp
/// overflows (log-sum-exp). A row holding +inf or NaN gives NaN or inf, as PyTorch does.
fn cross_entropy(row: &[f32], label: usize) -> f64 {
    log_sum_exp(row) - f64::from(row[label])
}

fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row
        .iter()
        .map(|&x| f64::from(x))
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        // All −inf gives −inf; +inf gives +inf (f64::max skips NaN).
        return max;
    }
    let sum: f64 = row.iter().map(|&x| (f64::from(x) - max).exp()).sum();
    max + sum.ln()
}

/// The first index of the largest value (torch.argmax's tie rule); NaNs are never chosen.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] || (row[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best
}

/// The `k` most probable classes of one row of logits as (class, probability), most
/// probable first (ties: lower class first); softmax in f64. Fewer when the row is shorter.
pub fn top_k(logits_row: &[f32], k: usize) -> Vec<(usize, f64)> {
    let lse = log_sum_exp(logits_row);
    let mut probs: Vec<(usize, f64)> = logits_row
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, (f64::from(x) - lse).exp()))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    probs.truncate(k);
    probs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn assert_close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn running_weighs_by_batch_size() {
        let mut r = Running::new();
        assert_eq!(r.mean_loss(), None);
        r.add(1.0, 3, 4);
        r.add(2.0, 1, 2);
        // (1×4 + 2×2) / 6, 4 / 6
        assert_close(r.mean_loss().unwrap(), 8.0 / 6.0);
        assert_close(r.accuracy().unwrap(), 4.0 / 6.0);
        assert_eq!(r.count(), 6);
        r.reset();
        assert_eq!(r.accuracy(), None);
    }

    #[test]
    fn evaluation_hand_computed() {
        let mut e = Evaluation::new(3);
        // Row 0: [0, 0, 0], label 1 → CE ln 3, pred 0 (first of ties): wrong.
        // Row 1: [ln 1, ln 2, ln 7] = probs 0.1, 0.2, 0.7, label 2 → CE −ln 0.7, right.
        // Row 2: padding, must not count.
        let logits = [0.0, 0.0, 0.0, 0.0, 2f32.ln(), 7f32.ln(), 9.0, 9.0, 9.0];
        e.add_batch(&logits, &[1, 2, 0], 2).unwrap();
        // Row 3: [5, 1, 1], label 0 → right; CE = ln(e^5 + 2e) − 5.
        e.add_batch(&[5.0, 1.0, 1.0], &[0], 1).unwrap();
        assert_eq!(e.count(), 3);
        let ce0 = 3f64.ln();
        let ce1 = -(f64::from(7f32.ln()).exp()
            / (1.0 + f64::from(2f32.ln()).exp() + f64::from(7f32.ln()).exp()))
        .ln();
        let ce2 = (5f64.exp() + 2.0 * 1f64.exp()).ln() - 5.0;
        assert!((ce1 + 0.7f64.ln()).abs() < 1e-6);
        assert_close(e.loss().unwrap(), (ce0 + ce1 + ce2) / 3.0);
        assert_close(e.accuracy().unwrap(), 2.0 / 3.0);
        assert_eq!(
            e.confusion(),
            &[vec![1, 0, 0], vec![1, 0, 0], vec![0, 0, 1]]
        );
        assert_eq!(
            e.per_class_accuracy(),
            vec![Some(1.0), Some(0.0), Some(1.0)]
        );
        assert_eq!(e.labels(), &[1, 2, 0]);
        assert_eq!(e.logits_of(2), Some(&[5.0f32, 1.0, 1.0][..]));
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let mut e = Evaluation::new(2);
        e.add_batch(&[1000.0, 0.0], &[1], 1).unwrap();
        assert_close(e.loss().unwrap(), 1000.0);
    }

    #[test]
    fn bad_batches_are_errors_and_add_nothing() {
        let mut e = Evaluation::new(2);
        assert!(e.add_batch(&[0.0; 3], &[0, 1], 2).is_err());
        assert!(e.add_batch(&[0.0; 4], &[0, 2], 2).is_err());
        assert!(e.add_batch(&[0.0; 4], &[-1, 0], 2).is_err());
        assert_eq!(e.count(), 0);
        assert_eq!(e.loss(), None);
        assert_eq!(e.per_class_accuracy(), vec![None, None]);
    }

    #[test]
    fn top_k_softmax() {
        let row = [0.0, 2f32.ln(), 7f32.ln()];
        let t = top_k(&row, 2);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].0, t[1].0), (2, 1));
        assert!((t[0].1 - 0.7).abs() < 1e-6 && (t[1].1 - 0.2).abs() < 1e-6);
        let all = top_k(&[1.0, 1.0], 5);
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].0, all[1].0), (0, 1));
        assert_close(all[0].1, 0.5);
        assert_close(all[1].1, 0.5);
    }
}
