//! Exact conversion of every sample format a capture device can deliver to f32 in [-1, 1]:
//! a signed integer `s` of `b` bits becomes `s / 2^(b-1)`, an unsigned one `(u - 2^(b-1)) /
//! 2^(b-1)`, floats pass through (f64 rounded to the nearest f32). Each conversion is a pure
//! function of one sample: no allocation, no lock, fit for the audio callback.

use cpal::{I24, U24};

/// A sample type the capture callback can receive.
pub trait CaptureSample: Copy + Send + 'static {
    fn to_f32(self) -> f32;
}

/// `value / 2^(bits-1)`, computed in f64 (exact for up to 53 bits) and rounded once to f32.
fn scaled(value: i64, bits: u32) -> f32 {
    (value as f64 / (1u64 << (bits - 1)) as f64) as f32
}

macro_rules! signed {
    ($($t:ty => $bits:expr),*) => {$(
        impl CaptureSample for $t {
            fn to_f32(self) -> f32 {
                scaled(i64::from(self), $bits)
            }
        }
    )*};
}

macro_rules! unsigned {
    ($($t:ty => $bits:expr),*) => {$(
        impl CaptureSample for $t {
            fn to_f32(self) -> f32 {
                scaled(i64::from(self) - (1i64 << ($bits - 1)), $bits)
            }
        }
    )*};
}

signed!(i8 => 8, i16 => 16, i32 => 32);
unsigned!(u8 => 8, u16 => 16, u32 => 32);

impl CaptureSample for i64 {
    fn to_f32(self) -> f32 {
        // i64 does not fit f64 exactly; the division by a power of two still rounds once.
        (self as f64 / 2f64.powi(63)) as f32
    }
}

impl CaptureSample for u64 {
    fn to_f32(self) -> f32 {
        ((self as f64 - 2f64.powi(63)) / 2f64.powi(63)) as f32
    }
}

impl CaptureSample for I24 {
    fn to_f32(self) -> f32 {
        scaled(i64::from(self.inner()), 24)
    }
}

impl CaptureSample for U24 {
    fn to_f32(self) -> f32 {
        scaled(i64::from(self.inner()) - (1 << 23), 24)
    }
}

impl CaptureSample for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

impl CaptureSample for f64 {
    fn to_f32(self) -> f32 {
        self as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn extremes_map_to_full_scale() {
        assert_eq!(i8::MIN.to_f32(), -1.0);
        assert_eq!(i16::MIN.to_f32(), -1.0);
        assert_eq!(i32::MIN.to_f32(), -1.0);
        assert_eq!(i64::MIN.to_f32(), -1.0);
        assert_eq!(u8::MIN.to_f32(), -1.0);
        assert_eq!(u16::MIN.to_f32(), -1.0);
        assert_eq!(u32::MIN.to_f32(), -1.0);
        assert_eq!(u64::MIN.to_f32(), -1.0);
        assert_eq!(I24::new(-(1 << 23)).unwrap().to_f32(), -1.0);
        assert_eq!(U24::new(0).unwrap().to_f32(), -1.0);
        assert_eq!(i16::MAX.to_f32(), 32767.0 / 32768.0);
        assert_eq!(u8::MAX.to_f32(), 127.0 / 128.0);
        assert_eq!(U24::new((1 << 23) + 1).unwrap().to_f32(), 1.0 / 8_388_608.0);
        assert_eq!(0i32.to_f32(), 0.0);
        assert_eq!(128u8.to_f32(), 0.0);
        assert_eq!(32768u16.to_f32(), 0.0);
        assert_eq!(0.25f64.to_f32(), 0.25);
    }

    proptest! {
        #[test]
        fn narrow_integers_convert_exactly(s in any::<i16>(), b in any::<i8>(), x in -(1i32 << 23)..(1 << 23)) {
            // Up to 24 bits every value is exactly representable in f32.
            prop_assert_eq!(f64::from(s.to_f32()), f64::from(s) / 32768.0);
            prop_assert_eq!(f64::from(b.to_f32()), f64::from(b) / 128.0);
            prop_assert_eq!(f64::from(I24::new(x).unwrap().to_f32()), f64::from(x) / 8_388_608.0);
            let u = (x + (1 << 23)) as u32;
            prop_assert_eq!(U24::new(u as i32).unwrap().to_f32(), I24::new(x).unwrap().to_f32());
            prop_assert_eq!(((s as i32 + 32768) as u16).to_f32(), s.to_f32());
        }

        #[test]
        fn wide_integers_round_to_nearest(s in any::<i32>()) {
            let exact = f64::from(s) / 2f64.powi(31);
            prop_assert_eq!(s.to_f32(), exact as f32);
            prop_assert_eq!(((i64::from(s) + (1 << 31)) as u32).to_f32(), s.to_f32());
            prop_assert_eq!((i64::from(s) << 32).to_f32(), s.to_f32());
        }
    }
}
