//! Linear prediction for FLAC subframes, the way the reference encoder does it: the block's
//! autocorrelation under a Tukey window, Levinson-Durbin for the predictors of every order up
//! to [`MAX_ORDER`], the order whose expected residual is cheapest, and its coefficients
//! quantised (with error feedback) to the integers a subframe carries.

/// Highest order tried (the reference encoder's default, `flac -5`).
pub const MAX_ORDER: usize = 8;

/// A quantised predictor: `sample[i] ≈ (Σ coefficients[j] × sample[i − 1 − j]) >> shift`.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictor {
    pub coefficients: Vec<i32>,
    /// Bits of each coefficient, sign included (1 to 15).
    pub precision: u32,
    pub shift: u32,
}

impl Predictor {
    pub fn order(&self) -> usize {
        self.coefficients.len()
    }
}

/// The predictor for `samples` (of `bits_per_sample`), if prediction can help: `None` for a
/// block shorter than the order or without energy.
pub fn predictor(samples: &[i32], bits_per_sample: u32, window: &mut Window) -> Option<Predictor> {
    let max_order = MAX_ORDER.min(samples.len().saturating_sub(1));
    if max_order == 0 {
        return None;
    }
    let autocorrelation = window.autocorrelation(samples, max_order);
    if autocorrelation[0] <= 0.0 {
        return None;
    }
    let precision = precision(bits_per_sample, samples.len());
    let (predictors, errors) = levinson_durbin(&autocorrelation);
    // Expected bits of each order's residual, plus its warm-up samples and coefficients.
    let error_scale = 0.5 / samples.len() as f64;
    let overhead_bits = f64::from(precision + bits_per_sample);
    let cost = |order: usize| {
        let error = errors[order - 1];
        let bits_per_sample = if error > 0.0 {
            (0.5 * (error_scale * error).log2()).max(0.0)
        } else {
            0.0
        };
        bits_per_sample * (samples.len() - order) as f64 + order as f64 * overhead_bits
    };
    let order = (1..=predictors.len()).min_by(|&a, &b| cost(a).total_cmp(&cost(b)))?;
    quantise(&predictors[order - 1], precision)
}

/// The residual of `predictor` over `samples` (after its warm-up), into `residual`. False if a
/// residual does not fit in 32 bits.
pub fn residual(samples: &[i32], predictor: &Predictor, residual: &mut Vec<i32>) -> bool {
    residual.clear();
    let order = predictor.order();
    for i in order..samples.len() {
        let prediction: i64 = predictor
            .coefficients
            .iter()
            .zip(samples[i - order..i].iter().rev())
            .map(|(&c, &s)| i64::from(c) * i64::from(s))
            .sum();
        match i32::try_from(i64::from(samples[i]) - (prediction >> predictor.shift)) {
            Ok(r) => residual.push(r),
            Err(_) => return false,
        }
    }
    true
}

/// The Tukey(0.5) window the autocorrelation is taken under, kept for the block length it was
/// last computed for (every block but a stream's last has the same), and its scratch.
#[derive(Default)]
pub struct Window {
    weights: Vec<f64>,
    windowed: Vec<f64>,
}

impl Window {
    /// Autocorrelation of `samples` under the window, lags 0 to `max_lag`.
    fn autocorrelation(&mut self, samples: &[i32], max_lag: usize) -> Vec<f64> {
        let n = samples.len();
        if self.weights.len() != n {
            // The window's cosine tapers cover a quarter of the block at each end.
            let taper = (n / 4).max(1);
            self.weights = (0..n)
                .map(|i| {
                    let from_edge = i.min(n - 1 - i);
                    if from_edge < taper {
                        0.5 - 0.5 * (std::f64::consts::PI * from_edge as f64 / taper as f64).cos()
                    } else {
                        1.0
                    }
                })
                .collect();
        }
        self.windowed.clear();
        self.windowed.extend(
            samples
                .iter()
                .zip(&self.weights)
                .map(|(&s, &weight)| f64::from(s) * weight),
        );
        let windowed = &self.windowed;
        (0..=max_lag)
            .map(|lag| {
                windowed[lag..]
                    .iter()
                    .zip(windowed)
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect()
    }
}

/// The predictors of orders 1 to `autocorrelation.len() - 1` (each `a` with
/// `x[n] ≈ Σ a[j] x[n − 1 − j]`) and the prediction error each leaves. Stops early at an order
/// that would be unstable.
fn levinson_durbin(autocorrelation: &[f64]) -> (Vec<Vec<f64>>, Vec<f64>) {
    let max_order = autocorrelation.len() - 1;
    let mut a: Vec<f64> = Vec::with_capacity(max_order);
    let mut error = autocorrelation[0];
    let (mut predictors, mut errors) = (Vec::new(), Vec::new());
    for m in 1..=max_order {
        let projected: f64 = (1..m).map(|j| a[j - 1] * autocorrelation[m - j]).sum();
        let reflection = (autocorrelation[m] - projected) / error;
        if !reflection.is_finite() || reflection.abs() >= 1.0 {
            break;
        }
        let previous = a.clone();
        for j in 1..m {
            a[j - 1] = previous[j - 1] - reflection * previous[m - j - 1];
        }
        a.push(reflection);
        error *= 1.0 - reflection * reflection;
        predictors.push(a.clone());
        errors.push(error);
    }
    (predictors, errors)
}

/// The reference encoder's coefficient precision for a block: more bits for deeper samples
/// and longer blocks.
fn precision(bits_per_sample: u32, block_len: usize) -> u32 {
    if bits_per_sample < 16 {
        (2 + bits_per_sample / 2).max(5)
    } else if bits_per_sample == 16 {
        match block_len {
            0..=192 => 7,
            193..=384 => 8,
            385..=576 => 9,
            577..=1152 => 10,
            1153..=2304 => 11,
            2305..=4608 => 12,
            _ => 13,
        }
    } else if block_len <= 384 {
        13
    } else if block_len <= 1152 {
        14
    } else {
        15
    }
}

/// `coefficients` as integers of `precision` bits and a shift, rounding with error feedback so
/// that the rounding errors do not add up. `None` when they are too large to shift.
fn quantise(coefficients: &[f64], precision: u32) -> Option<Predictor> {
    let largest = coefficients.iter().fold(0f64, |m, c| m.max(c.abs()));
    if largest <= 0.0 || !largest.is_finite() {
        return None;
    }
    // Room for the largest coefficient's integer part and the sign; FLAC's shift is 0 to 15.
    let integer_bits = largest.log2().floor() as i32 + 1;
    let shift = (precision as i32 - 1 - integer_bits).min(15);
    if shift < 0 {
        return None;
    }
    let limit = (1i64 << (precision - 1)) - 1;
    let scale = f64::from(1u32 << shift);
    let mut carried = 0.0;
    let coefficients = coefficients
        .iter()
        .map(|&c| {
            carried += c * scale;
            let q = (carried.round() as i64).clamp(-limit - 1, limit);
            carried -= q as f64;
            q as i32
        })
        .collect();
    Some(Predictor {
        coefficients,
        precision,
        shift: shift as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sine_is_predicted_to_almost_nothing() {
        let sine: Vec<i32> = (0..1024)
            .map(|i| ((i as f64 * 0.07).sin() * 4_000_000.0).round() as i32)
            .collect();
        let predictor = predictor(&sine, 24, &mut Window::default()).expect("a predictor");
        assert!(predictor.order() >= 2, "{predictor:?}");
        let mut r = Vec::new();
        assert!(residual(&sine, &predictor, &mut r));
        // Against 4 000 000 for the signal and 19 600 for its second difference (the best
        // fixed predictor): what is left is the coefficients' quantisation.
        let peak = r.iter().map(|r| r.unsigned_abs()).max().unwrap();
        assert!(peak < 1000, "residual up to {peak}, {predictor:?}");
    }

    #[test]
    fn coefficients_fit_their_precision() {
        let q = quantise(&[1.9, -0.95, 0.01], 12).unwrap();
        assert_eq!(q.shift, 10, "1.9 needs one integer bit and a sign");
        assert!(q.coefficients.iter().all(|&c| (-2048..2048).contains(&c)));
        assert_eq!(q.coefficients[0], (1.9f64 * 1024.0).round() as i32);
        assert_eq!(quantise(&[0.0, 0.0], 12), None);
        assert_eq!(quantise(&[70_000.0], 15), None, "too large to shift");
    }

    #[test]
    fn levinson_durbin_finds_an_ar2_process() {
        // x[n] = 1.6 x[n-1] - 0.8 x[n-2] has autocorrelation r[1] = r[0] 1.6/1.8,
        // r[2] = 1.6 r[1] - 0.8 r[0].
        let r0 = 1.0;
        let r1 = 1.6 / 1.8;
        let r2 = 1.6 * r1 - 0.8 * r0;
        let (predictors, errors) = levinson_durbin(&[r0, r1, r2]);
        let ar2 = &predictors[1];
        assert!(
            (ar2[0] - 1.6).abs() < 1e-12 && (ar2[1] + 0.8).abs() < 1e-12,
            "{ar2:?}"
        );
        assert!(errors[1] < errors[0]);
    }
}
