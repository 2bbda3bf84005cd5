//! One channel of one FLAC frame: the cheapest of a constant, a verbatim, a fixed-predictor
//! (orders 0 to 4) or a linear-predictor ([`lpc`], orders up to 8) subframe, with wasted bits
//! shifted out and the residual Rice-coded in the best partitioning.
//!
//! Planning ([`Subframes::plan`]) and writing ([`Subframes::write`]) are separate so that a
//! stereo frame can plan left, right, mid and side and write only the cheapest pair.

use super::bits::{BitWriter, fold};
use super::lpc::{self, Predictor};

/// Highest fixed-predictor order FLAC defines.
const MAX_FIXED_ORDER: usize = 4;
/// Highest Rice partition order tried: 256 partitions.
const MAX_PARTITION_ORDER: u32 = 8;
/// Highest Rice parameter of the 4-bit and of the 5-bit coding method (the next is an escape).
const MAX_RICE4_PARAMETER: u32 = 14;
const MAX_RICE5_PARAMETER: u32 = 30;

/// How one channel's block will be written, and what it will cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    kind: Kind,
    /// Trailing zero bits common to every sample, shifted out before coding.
    wasted_bits: u32,
    pub bits: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Constant(i32),
    Verbatim,
    Fixed { order: usize, rice: Rice },
    Lpc { predictor: Predictor, rice: Rice },
}

/// A Rice-coded residual: the partition order and each partition's parameter.
#[derive(Clone, Debug, PartialEq)]
struct Rice {
    partition_order: u32,
    parameters: Vec<u32>,
}

/// Scratch buffers reused from frame to frame.
#[derive(Default)]
pub struct Subframes {
    shifted: Vec<i32>,
    residual: Vec<i32>,
    window: lpc::Window,
}

impl Subframes {
    /// Plans the cheapest subframe for `samples`, each of which fits in `bits_per_sample`.
    pub fn plan(&mut self, samples: &[i32], bits_per_sample: u32) -> Plan {
        let header_bits = 8;
        let first = samples[0];
        if samples.iter().all(|&s| s == first) {
            return Plan {
                kind: Kind::Constant(first),
                wasted_bits: 0,
                bits: header_bits + u64::from(bits_per_sample),
            };
        }
        // Not all equal, so not all zero: some bit is set.
        let wasted_bits = samples.iter().fold(0, |acc, &s| acc | s).trailing_zeros();
        let bits_per_sample = bits_per_sample - wasted_bits;
        let header_bits = header_bits + u64::from(wasted_bits);
        self.shift(samples, wasted_bits);
        let verbatim = Plan {
            kind: Kind::Verbatim,
            wasted_bits,
            bits: header_bits + samples.len() as u64 * u64::from(bits_per_sample),
        };
        let fixed = best_fixed_order(&self.shifted)
            .filter(|&order| fixed_residual(&self.shifted, order, &mut self.residual))
            .map(|order| {
                let (rice, rice_bits) = best_rice(&self.residual, samples.len(), order);
                let warm_up_bits = order as u64 * u64::from(bits_per_sample);
                (Kind::Fixed { order, rice }, warm_up_bits + rice_bits)
            });
        let linear = lpc::predictor(&self.shifted, bits_per_sample, &mut self.window)
            .filter(|predictor| lpc::residual(&self.shifted, predictor, &mut self.residual))
            .map(|predictor| {
                let order = predictor.order();
                let (rice, rice_bits) = best_rice(&self.residual, samples.len(), order);
                // Warm-up samples, precision (4 bits), shift (5 bits), coefficients.
                let header_bits =
                    order as u64 * u64::from(bits_per_sample + predictor.precision) + 4 + 5;
                (Kind::Lpc { predictor, rice }, header_bits + rice_bits)
            });
        [fixed, linear]
            .into_iter()
            .flatten()
            .map(|(kind, bits)| Plan {
                kind,
                wasted_bits,
                bits: header_bits + bits,
            })
            .chain([verbatim])
            .min_by_key(|plan| plan.bits)
            .expect("verbatim is always possible")
    }

    /// Writes the subframe `plan` (made from these `samples`) to `w`.
    pub fn write(&mut self, plan: &Plan, samples: &[i32], bits_per_sample: u32, w: &mut BitWriter) {
        let type_code = match plan.kind {
            Kind::Constant(_) => 0b000000,
            Kind::Verbatim => 0b000001,
            Kind::Fixed { order, .. } => 0b001000 | order as u32,
            Kind::Lpc { ref predictor, .. } => 0b100000 | (predictor.order() as u32 - 1),
        };
        w.write(type_code, 7);
        if plan.wasted_bits > 0 {
            w.write(1, 1);
            w.write_unary(plan.wasted_bits - 1);
        } else {
            w.write(0, 1);
        }
        let bits_per_sample = bits_per_sample - plan.wasted_bits;
        match &plan.kind {
            Kind::Constant(value) => w.write_signed(*value, bits_per_sample),
            Kind::Verbatim => {
                self.shift(samples, plan.wasted_bits);
                for &s in &self.shifted {
                    w.write_signed(s, bits_per_sample);
                }
            }
            Kind::Fixed { order, rice } => {
                self.shift(samples, plan.wasted_bits);
                for &s in &self.shifted[..*order] {
                    w.write_signed(s, bits_per_sample);
                }
                let fits = fixed_residual(&self.shifted, *order, &mut self.residual);
                debug_assert!(fits, "the plan checked the residual's range");
                write_rice(w, rice, &self.residual, samples.len(), *order);
            }
            Kind::Lpc { predictor, rice } => {
                self.shift(samples, plan.wasted_bits);
                let order = predictor.order();
                for &s in &self.shifted[..order] {
                    w.write_signed(s, bits_per_sample);
                }
                w.write(predictor.precision - 1, 4);
                w.write(predictor.shift, 5);
                for &c in &predictor.coefficients {
                    w.write_signed(c, predictor.precision);
                }
                let fits = lpc::residual(&self.shifted, predictor, &mut self.residual);
                debug_assert!(fits, "the plan checked the residual's range");
                write_rice(w, rice, &self.residual, samples.len(), order);
            }
        }
    }

    fn shift(&mut self, samples: &[i32], wasted_bits: u32) {
        self.shifted.clear();
        self.shifted
            .extend(samples.iter().map(|&s| s >> wasted_bits));
    }
}

/// The fixed-predictor order whose residual has the smallest sum of magnitudes, compared over
/// the samples every order predicts; `None` for blocks too short to predict.
fn best_fixed_order(samples: &[i32]) -> Option<usize> {
    if samples.len() <= MAX_FIXED_ORDER {
        return None;
    }
    let mut sums = [0u64; MAX_FIXED_ORDER + 1];
    for i in MAX_FIXED_ORDER..samples.len() {
        let window: [i64; 5] = std::array::from_fn(|k| i64::from(samples[i - k]));
        for (order, sum) in sums.iter_mut().enumerate() {
            *sum += fixed_prediction_error(&window, order).unsigned_abs();
        }
    }
    (0..=MAX_FIXED_ORDER).min_by_key(|&order| sums[order])
}

/// The error of the order-`order` fixed predictor at `window[0]`, given the samples before it
/// in `window[1..]` (newest first): the order-th difference.
fn fixed_prediction_error(window: &[i64; 5], order: usize) -> i64 {
    let [s0, s1, s2, s3, s4] = *window;
    match order {
        0 => s0,
        1 => s0 - s1,
        2 => s0 - 2 * s1 + s2,
        3 => s0 - 3 * s1 + 3 * s2 - s3,
        _ => s0 - 4 * s1 + 6 * s2 - 4 * s3 + s4,
    }
}

/// Fills `residual` with the order-`order` residual of `samples` (after the warm-up samples).
/// False if a residual does not fit in 32 bits, which FLAC decoders may assume.
fn fixed_residual(samples: &[i32], order: usize, residual: &mut Vec<i32>) -> bool {
    residual.clear();
    for i in order..samples.len() {
        let window: [i64; 5] = std::array::from_fn(|k| {
            if k <= order {
                i64::from(samples[i - k])
            } else {
                0
            }
        });
        match i32::try_from(fixed_prediction_error(&window, order)) {
            Ok(r) => residual.push(r),
            Err(_) => return false,
        }
    }
    true
}

/// The cheapest Rice partitioning of `residual` (a block of `block_len` samples whose first
/// `order` are warm-up) and its size in bits, coding method and partition order included.
fn best_rice(residual: &[i32], block_len: usize, order: usize) -> (Rice, u64) {
    // The finest partitioning allowed: the block divides evenly and every partition holds more
    // than the warm-up.
    let mut finest = 0;
    while finest < MAX_PARTITION_ORDER
        && block_len % (1 << (finest + 1)) == 0
        && (block_len >> (finest + 1)) > order
    {
        finest += 1;
    }
    // (sum of folded values, count) per partition at the finest order, merged pairwise for
    // each coarser one.
    let partition_len = block_len >> finest;
    let mut sums: Vec<(u64, u64)> = (0..1usize << finest)
        .map(|p| {
            let start = (p * partition_len).saturating_sub(order);
            let end = (p + 1) * partition_len - order;
            let part = &residual[start..end];
            (part.iter().map(|&r| fold(r)).sum(), part.len() as u64)
        })
        .collect();
    let mut best: Option<(Rice, u64)> = None;
    for partition_order in (0..=finest).rev() {
        let mut parameters = Vec::with_capacity(sums.len());
        let mut bits = 0;
        for &(sum, count) in &sums {
            let (k, cost) = best_parameter(sum, count);
            parameters.push(k);
            bits += cost;
        }
        let parameter_bits = if parameters.iter().any(|&k| k > MAX_RICE4_PARAMETER) {
            5
        } else {
            4
        };
        bits += 2 + 4 + parameter_bits * parameters.len() as u64;
        if best.as_ref().is_none_or(|(_, best_bits)| bits < *best_bits) {
            let rice = Rice {
                partition_order,
                parameters,
            };
            best = Some((rice, bits));
        }
        sums = sums
            .chunks(2)
            .map(|pair| {
                pair.iter()
                    .fold((0, 0), |(s, c), &(ps, pc)| (s + ps, c + pc))
            })
            .collect();
    }
    best.expect("partition order 0 is always possible")
}

/// The Rice parameter for `count` values summing to `sum`, and the bits they take with it:
/// each value costs its quotient (`value >> k`, in unary), a stop bit and `k` low bits.
/// The quotients sum to `sum >> k` less the values' dropped fractions, taken to average
/// (1 − 2^-k) / 2 each: within `count / 2` of the truth.
fn best_parameter(sum: u64, count: u64) -> (u32, u64) {
    let cost = |k: u32| {
        let fractions = (count << k).saturating_sub(count) >> (k + 1);
        count * (u64::from(k) + 1) + (sum >> k).saturating_sub(fractions)
    };
    let mean = sum / count.max(1);
    let guess = (64 - mean.leading_zeros()).min(MAX_RICE5_PARAMETER);
    let candidates = [
        guess.saturating_sub(1),
        guess,
        (guess + 1).min(MAX_RICE5_PARAMETER),
    ];
    candidates
        .into_iter()
        .map(|k| (k, cost(k)))
        .min_by_key(|&(_, c)| c)
        .expect("three candidates")
}

fn write_rice(w: &mut BitWriter, rice: &Rice, residual: &[i32], block_len: usize, order: usize) {
    let wide = rice.parameters.iter().any(|&k| k > MAX_RICE4_PARAMETER);
    let (method, parameter_bits) = if wide { (1, 5) } else { (0, 4) };
    w.write(method, 2);
    w.write(rice.partition_order, 4);
    let partition_len = block_len >> rice.partition_order;
    for (p, &k) in rice.parameters.iter().enumerate() {
        w.write(k, parameter_bits);
        let start = (p * partition_len).saturating_sub(order);
        let end = (p + 1) * partition_len - order;
        for &r in &residual[start..end] {
            w.write_rice(r, k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(samples: &[i32], bits: u32) -> Plan {
        Subframes::default().plan(samples, bits)
    }

    #[test]
    fn a_constant_block_is_one_value() {
        let p = plan(&[-5; 64], 24);
        assert_eq!(p.kind, Kind::Constant(-5));
        assert_eq!(p.bits, 8 + 24);
    }

    #[test]
    fn sixteen_bit_material_in_24_bits_loses_its_zero_bits() {
        let samples: Vec<i32> = (0..256).map(|i| ((i * 37) % 1000 - 500) << 8).collect();
        assert_eq!(plan(&samples, 24).wasted_bits, 8);
    }

    #[test]
    fn a_ramp_is_predicted_exactly_and_costs_little() {
        let ramp: Vec<i32> = (0..1024).map(|i| i * 3 - 1000).collect();
        let p = plan(&ramp, 24);
        let Kind::Fixed { order, .. } = p.kind else {
            panic!("{p:?}")
        };
        assert!(order >= 2, "a ramp's second difference is zero: {p:?}");
        assert!(p.bits < 1024 * 2 + 200, "{p:?}");
    }

    #[test]
    fn noise_that_does_not_compress_is_verbatim() {
        let mut state = 0x1234_5678u32;
        let noise: Vec<i32> = (0..64)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as i32) >> 8
            })
            .collect();
        assert_eq!(plan(&noise, 24).kind, Kind::Verbatim);
    }

    #[test]
    fn the_written_size_is_the_planned_size_give_or_take_the_estimate() {
        let sine: Vec<i32> = (0..1152)
            .map(|i| ((i as f64 * 0.05).sin() * 3_000_000.0) as i32)
            .collect();
        let mut subframes = Subframes::default();
        let p = subframes.plan(&sine, 24);
        let mut w = BitWriter::with_capacity(4096);
        subframes.write(&p, &sine, 24, &mut w);
        let written = w.into_bytes().len() as u64 * 8;
        // The estimate is within half a bit per value; writing pads to a whole byte.
        let (written, planned) = (written as i64, p.bits as i64);
        assert!(
            (written - planned).abs() < 1152 / 2 + 8,
            "{written} vs {p:?}"
        );
    }

    #[test]
    fn partitions_are_never_emptier_than_the_warm_up() {
        // 48 = 16 × 3: order 4 allows 3 halvings (6-sample partitions) only.
        let (rice, _) = best_rice(&[1; 44], 48, 4);
        assert!(48 >> rice.partition_order > 4);
        assert_eq!(rice.parameters.len(), 1 << rice.partition_order);
    }
}
