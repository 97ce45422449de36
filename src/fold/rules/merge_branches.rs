//! Re-parameterizable branches (RepVGG, MobileOne, RepGhost, ACNet in their training form),
//! behind `--merge-branches`.
//!
//! **Pattern**: `Add(B₁, …, Bₙ)` (nested binary Adds), each branch `Bᵢ` reading the same `x`:
//! a `Conv(x, Wᵢ, bᵢ)` (its BN already folded), a bare inference `BN(x)`, or `x` itself.
//!
//! **Preconditions**: every Conv, every intermediate Add and BN feeds the Adds alone; the Convs
//! share `group`, `strides`, `dilations` and output channels, have no `auto_pad`, and their
//! kernels centre-align once zero-padded to the largest (`K − kᵢ` even on every axis, and the
//! padding of each is the largest one's less `(K − kᵢ)/2·dilation` per side); an identity or BN
//! branch needs `C_out = C_in`, unit strides, an odd `K` and the padding `(K − 1)/2·dilation`
//! that keeps `x`'s size.
//!
//! **Rewrite**: one `Conv(x, W, b)` with the largest Conv's attributes takes over the Add's
//! output; the branches and Adds go.
//!
//! **Math**: `W = Σ pad(Wᵢ) + Σ_BN s·δ + Σ_x δ` and `b = Σ bᵢ + Σ_BN t`, with `δ` the centred
//! one-hot kernel (`δ[o, o mod (C/group), centre] = 1`, one per group block), in f64 from the
//! weights as they run (a branch's own folded BN included), rounded once.

/// A Conv branch's weight, as values in row-major order with its shape.
pub struct Branch<'a> {
    /// `[C_out, C_in/group, k…]`.
    pub dims: &'a [usize],
    /// Its values.
    pub values: &'a [f64],
}

/// Adds `branch`, zero-padded and centred in `kernel` (the merged kernel's spatial shape), to
/// `merged` (`[C_out, C_in/group, kernel…]`).
pub fn add_centred(merged: &mut [f64], kernel: &[usize], branch: &Branch) {
    let spatial = &branch.dims[2..];
    let offsets: Vec<usize> = kernel
        .iter()
        .zip(spatial)
        .map(|(k, s)| (k - s) / 2)
        .collect();
    let big: usize = kernel.iter().product();
    let small: usize = spatial.iter().product();
    for (slab, values) in branch.values.chunks_exact(small.max(1)).enumerate() {
        for (i, v) in values.iter().enumerate() {
            // The spatial position of element `i` in the small kernel, moved to the big one.
            let (mut rest, mut at, mut stride) = (i, 0, 1);
            for d in (0..spatial.len()).rev() {
                let p = rest % spatial[d] + offsets[d];
                rest /= spatial[d];
                at += p * stride;
                stride *= kernel[d];
            }
            merged[slab * big + at] += v;
        }
    }
}

/// Adds `scale[o]` at the centre of output channel `o`'s own input channel (`o mod
/// in_per_group` within its group block): an identity (`scale` 1) or a bare BN's scale.
pub fn add_identity(merged: &mut [f64], kernel: &[usize], in_per_group: usize, scale: &[f64]) {
    let big: usize = kernel.iter().product();
    let mut centre = 0;
    for &k in kernel {
        centre = centre * k + k / 2;
    }
    for (o, s) in scale.iter().enumerate() {
        let i = o % in_per_group;
        merged[(o * in_per_group + i) * big + centre] += s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1-D convolution with zero padding `pad`, stride 1, one group, computed directly.
    fn conv1d(x: &[f64], w: &[f64], k: usize, pad: usize, out: usize, inp: usize) -> Vec<f64> {
        let n = x.len() / inp;
        let mut y = vec![0.0; out * n];
        for o in 0..out {
            for p in 0..n {
                for i in 0..inp {
                    for t in 0..k {
                        let q = p as i64 + t as i64 - pad as i64;
                        if (0..n as i64).contains(&q) {
                            y[o * n + p] += w[(o * inp + i) * k + t] * x[i * n + q as usize];
                        }
                    }
                }
            }
        }
        y
    }

    #[test]
    fn a_merged_kernel_computes_the_sum_of_its_branches() {
        // Two channels, length 5: a k=3 branch (pad 1), a k=1 branch (pad 0), the identity.
        let x = [1.0, -2.0, 0.5, 3.0, 0.25, 2.0, 1.0, -1.0, 0.0, 4.0];
        let w3: Vec<f64> = (0..12).map(|v| v as f64 * 0.5 - 2.0).collect();
        let w1 = [0.5, -1.0, 2.0, 0.25];
        let mut merged = vec![0.0; 12];
        add_centred(
            &mut merged,
            &[3],
            &Branch {
                dims: &[2, 2, 3],
                values: &w3,
            },
        );
        add_centred(
            &mut merged,
            &[3],
            &Branch {
                dims: &[2, 2, 1],
                values: &w1,
            },
        );
        add_identity(&mut merged, &[3], 2, &[1.0, 1.0]);
        let branches: Vec<f64> = conv1d(&x, &w3, 3, 1, 2, 2)
            .iter()
            .zip(conv1d(&x, &w1, 1, 0, 2, 2))
            .zip(&x)
            .map(|((a, b), id)| a + b + id)
            .collect();
        assert_eq!(conv1d(&x, &merged, 3, 1, 2, 2), branches);
    }

    #[test]
    fn a_small_kernel_lands_at_the_centre_on_every_axis() {
        // [1, 1, 1, 3] into a 3x3 kernel: the middle row; [1, 1, 1, 1]: the centre.
        let mut merged = vec![0.0; 9];
        add_centred(
            &mut merged,
            &[3, 3],
            &Branch {
                dims: &[1, 1, 1, 3],
                values: &[1.0, 2.0, 3.0],
            },
        );
        assert_eq!(merged, [0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 0.0]);
        let mut centre = vec![0.0; 9];
        add_identity(&mut centre, &[3, 3], 1, &[5.0]);
        assert_eq!(centre[4], 5.0);
        assert_eq!(centre.iter().sum::<f64>(), 5.0);
    }

    #[test]
    fn a_grouped_identity_is_one_hot_per_group_block() {
        // Four channels in two groups: in_per_group 2; channel o reads its own input o mod 2.
        let mut merged = vec![0.0; 4 * 2];
        add_identity(&mut merged, &[1], 2, &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(merged, [1.0, 0.0, 0.0, 2.0, 3.0, 0.0, 0.0, 4.0]);
    }
}
