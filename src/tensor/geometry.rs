//! Convolution and pooling geometry.
//!
//! Output side: `out = floor((n + 2P - k) / S) + 1` (PyTorch's floor rule, which every layer uses).
//! The strict rule of the lecture also asks that `S` divide `n + 2P - k` exactly, so that the
//! kernel's last placement ends on the padded border; [`strict_output_size`] checks it.

use crate::error::{Error, Result};

/// Output side of a convolution or pooling window under PyTorch's floor rule.
///
/// # Panics
/// Panics if `stride` is zero or the padded input is smaller than the kernel.
pub fn output_size(n: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    assert!(stride > 0, "stride must be positive");
    assert!(
        n + 2 * padding >= kernel,
        "kernel {kernel} is larger than the padded input {}",
        n + 2 * padding
    );
    (n + 2 * padding - kernel) / stride + 1
}

/// The outputs `lo..hi` (of `out`) along a side of `n` inputs whose input `o·S + kk − P`, for
/// kernel offset `kk`, lies inside `[0, n)`; `lo == hi` when there is none.
pub fn valid_outputs(
    n: usize,
    out: usize,
    kk: usize,
    stride: usize,
    padding: usize,
) -> (usize, usize) {
    let (s, p) = (stride as isize, padding as isize);
    let off = kk as isize - p;
    // o·s + off >= 0  =>  o >= ceil(-off / s)
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    // o·s + off <= n - 1  =>  o <= floor((n - 1 - off) / s)
    let hi_num = n as isize - 1 - off;
    let hi = if hi_num < 0 { -1 } else { hi_num / s };
    let lo = lo.min(out as isize) as usize;
    let hi = (hi + 1).clamp(lo as isize, out as isize) as usize;
    (lo, hi)
}

/// Output side under the strict rule: the stride must divide `n + 2P - k`.
///
/// # Errors
/// [`Error::Config`] when the geometry is invalid, with the numbers that make it so.
pub fn strict_output_size(n: usize, kernel: usize, stride: usize, padding: usize) -> Result<usize> {
    let name = format!("conv geometry (n={n}, k={kernel}, S={stride}, P={padding})");
    if stride == 0 {
        return Err(Error::config(name, "stride must be positive"));
    }
    if n + 2 * padding < kernel {
        return Err(Error::config(
            name,
            "the kernel is larger than the padded input",
        ));
    }
    let span = n + 2 * padding - kernel;
    if !span.is_multiple_of(stride) {
        return Err(Error::config(
            name,
            format!("stride {stride} does not divide n + 2P - k = {span}"),
        ));
    }
    Ok(span / stride + 1)
}

/// The smallest padding `P` for which the strict rule gives an output side equal to `target`.
///
/// # Errors
/// [`Error::Config`] when no padding (up to the kernel size plus the stride times the input)
/// gives exactly `target` under the strict rule, e.g. 224 with k = 5, S = 2 and target 112.
pub fn padding_for_output(n: usize, kernel: usize, stride: usize, target: usize) -> Result<usize> {
    let limit = kernel + stride * n;
    (0..=limit)
        .find(|&p| strict_output_size(n, kernel, stride, p).ok() == Some(target))
        .ok_or_else(|| {
            Error::config(
                format!("conv geometry (n={n}, k={kernel}, S={stride})"),
                format!("no valid padding gives an output of {target}"),
            )
        })
}

/// The padding that keeps the size: the output side equals the input side `n` under the strict
/// rule (5x5 input, k = 3, S = 2 needs P = 3).
///
/// # Errors
/// As [`padding_for_output`]: "no valid padding" when none exists.
pub fn same_padding(n: usize, kernel: usize, stride: usize) -> Result<usize> {
    if stride == 0 {
        return Err(Error::config(
            format!("conv geometry (n={n}, k={kernel}, S={stride})"),
            "stride must be positive",
        ));
    }
    padding_for_output(n, kernel, stride, n)
}

/// Parameters of a 2-D convolution: `C_out * (C_in * k * k + 1)` with a bias, without the `+ 1`
/// otherwise.
pub fn conv2d_param_count(c_in: usize, c_out: usize, kernel: usize, bias: bool) -> usize {
    c_out * (c_in * kernel * kernel + usize::from(bias))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_rule_matches_pytorch() {
        assert_eq!(output_size(224, 7, 2, 3), 112);
        assert_eq!(output_size(112, 3, 2, 1), 56);
        assert_eq!(output_size(7, 2, 2, 0), 3);
    }

    #[test]
    fn strict_rule_rejects_remainders() {
        assert_eq!(strict_output_size(28, 7, 1, 0).unwrap(), 22);
        let err = strict_output_size(224, 7, 2, 3).unwrap_err().to_string();
        assert!(err.contains("does not divide"), "{err}");
    }
}
