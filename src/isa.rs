//! The instruction sets a hot loop is compiled for, and the one place the processor is asked
//! which it has.
//!
//! The build targets baseline x86-64 (SSE2: two f64 lanes, no vector integer maximum), so a
//! loop that matters is compiled again for AVX2 and AVX-512F (the same source with
//! `#[target_feature]`) and the widest variant the processor runs is chosen at run time. Every
//! variant performs the same IEEE operations in the same order: Rust never contracts a
//! multiplication and an addition unasked, so the results are identical to the bit.

/// A variant of a loop for one instruction set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Isa {
    /// The build's own target.
    Baseline,
    /// x86-64 with AVX2.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// x86-64 with AVX-512F.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    /// Every variant, widest first.
    const ALL: &[Isa] = &[
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2,
        Isa::Baseline,
    ];

    /// Whether this processor runs the variant.
    pub fn runs(self) -> bool {
        match self {
            Isa::Baseline => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
        }
    }

    /// The variants this processor runs, widest first.
    #[cfg(test)]
    pub fn available() -> Vec<Isa> {
        Isa::ALL.iter().copied().filter(|isa| isa.runs()).collect()
    }

    /// The widest variant this processor runs.
    pub fn widest() -> Isa {
        Isa::ALL
            .iter()
            .copied()
            .find(|isa| isa.runs())
            .unwrap_or(Isa::Baseline)
    }
}

/// Whether the processor has AVX-512F, AVX-512DQ and AVX-512VL, which the hand-written loop of
/// the readiness sums uses.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512_dq_vl() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Defines `$name`, which runs the `#[inline(always)]` function `$body` compiled for the
/// variant it is given (a variant the processor lacks runs the baseline), from one source.
macro_rules! dispatch {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $body:path;) => {
        $(#[$doc])*
        #[allow(unsafe_code)]
        $vis fn $name(isa: $crate::isa::Isa, $($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn avx2($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            fn avx512($($arg: $ty),*) -> $ret {
                $body($($arg),*)
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the processor has AVX-512F, checked by `runs`.
                $crate::isa::Isa::Avx512 if isa.runs() => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the processor has AVX2, checked by `runs`.
                $crate::isa::Isa::Avx2 if isa.runs() => unsafe { avx2($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}
pub(crate) use dispatch;
