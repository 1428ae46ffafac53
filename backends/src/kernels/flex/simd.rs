//! Vectorised inner loops for the flex kernels.
//!
//! The crate is compiled for baseline x86-64 (SSE2), where `f32::exp` is a libm call per
//! element. The loops here are plain Rust written so LLVM can vectorise them, and
//! [`vectorized!`] compiles each one a second and third time with AVX2+FMA and AVX-512 enabled
//! and picks the best at run time (`is_x86_feature_detected!` caches its answer).

/// Defines a function whose body is compiled for AVX-512, AVX2+FMA and the baseline, and
/// dispatches at run time to the best the CPU has.
macro_rules! vectorized {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use vectorized;

/// `exp(x)` to about 2 ulp, branch-free so loops over it vectorise (Cephes' `expf`: range
/// reduction by ln 2, a degree-6 polynomial, the exponent put in by bit manipulation).
/// Below -87.3 (where f32 underflows) it returns exactly 0, so `exp(-inf) = 0`; NaN stays NaN.
///
/// Written with `max`/`min` and an unchecked float-to-int conversion: `clamp` and the
/// saturating `as i32` keep LLVM from vectorising the loop (5x slower).
// Cephes' coefficients are kept as published; `clamp` would block vectorisation (above).
#[allow(clippy::manual_clamp, clippy::excessive_precision)]
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // `max` returns the other operand for NaN, so `clamped` is always a finite number.
    let clamped = x.max(-87.336_54).min(88.722_83);
    let n = (clamped * LOG2E + 0.5).floor();
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // SAFETY: n lies in [-126, 128] (from the clamp), well inside i32.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let scale = f32::from_bits(((n + 127) << 23) as u32);
    let value = if x < -87.336_54 { 0.0 } else { y * scale };
    // NaN in, NaN out (the clamp above would have turned it into a number).
    if x.is_nan() {
        x
    } else {
        value
    }
}

/// `1 / (1 + exp(-x))` with [`exp`].
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut worst = 0f32;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01 + 0.003;
            let (ours, std) = (exp(x), x.exp());
            worst = worst.max(((ours - std) / std).abs());
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }
}
