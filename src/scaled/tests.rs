use super::*;

fn scaled(dtype: Dtype, dims: Vec<usize>, data: Vec<f64>, scalings: Vec<Scaling>) -> ScaledTensor {
    let mut t = ScaledTensor::values("w", Arc::new(Tensor::new(dtype, dims, data)));
    t.scalings = scalings;
    t
}

#[test]
fn runs_and_cycles_follow_the_row_major_layout() {
    // [2, 3]: per row (run 3) then per column (run 1, cycling).
    let t = scaled(
        Dtype::F64,
        vec![2, 3],
        vec![1.0; 6],
        vec![
            Scaling::new(3, vec![2.0, 3.0]),
            Scaling::new(1, vec![1.0, 10.0, 100.0]),
        ],
    );
    let store = ExternalStore::none();
    assert_eq!(
        t.decode(&store).unwrap().data,
        vec![2.0, 20.0, 200.0, 3.0, 30.0, 300.0]
    );
}

#[test]
fn two_scalings_round_once() {
    // Scaled by 1.1 then by 1/1.1, the f16 weight 1.0 must stay 1.0. Rounded after each
    // factor it would not: 1.1 rounds to 1.0996 in f16, and 1.0996 / 1.1 to 0.99951.
    let t = scaled(
        Dtype::F16,
        vec![1],
        vec![1.0],
        vec![Scaling::new(1, vec![1.1]), Scaling::new(1, vec![1.0 / 1.1])],
    );
    assert_eq!(t.decode(&ExternalStore::none()).unwrap().data, vec![1.0]);
    let twice = Dtype::F16
        .round(Dtype::F16.round(1.1).unwrap() / 1.1)
        .unwrap();
    assert_eq!(twice, 0.99951171875);
}

#[test]
fn overflow_is_found_by_the_bound_and_confirmed_element_wise() {
    let store = ExternalStore::none();
    // The bound (60000 · 2) overflows f16, but the large value sits in the channel scaled
    // by 0.5: every product fits.
    let fits = scaled(
        Dtype::F16,
        vec![2, 1],
        vec![60000.0, 1.0],
        vec![Scaling::new(1, vec![0.5, 2.0])],
    );
    assert!(fits.fits(&store).unwrap());
    let overflows = scaled(
        Dtype::F16,
        vec![2, 1],
        vec![60000.0, 1.0],
        vec![Scaling::new(1, vec![2.0, 0.5])],
    );
    assert!(!overflows.fits(&store).unwrap());
    let err = overflows.to_bytes(&store).unwrap_err().to_string();
    assert!(err.contains("'w'") && err.contains("float16"), "{err}");
}

#[test]
fn a_large_stored_source_is_checked_in_two_halves_and_the_first_bad_element_wins() {
    // A stored f32 weight long enough to be read in two halves at once: a NaN or an infinity
    // in either half is found, and with one in each, the one in the first half is reported.
    let numel = SPLIT_CHECK + 3 * CHUNK + 5;
    let stored = |bad: &[(usize, f32)]| {
        let mut values: Vec<f32> = (0..numel).map(|i| (i % 97) as f32 * 0.25).collect();
        for &(at, v) in bad {
            values[at] = v;
        }
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = TensorProto {
            name: Some("w".into()),
            data_type: Some(Dtype::F32.code()),
            dims: vec![numel as i64],
            raw_data: Some(raw.into()),
            ..Default::default()
        };
        ScaledTensor::stored(&t).unwrap()
    };
    let store = ExternalStore::none();
    let (early, late) = (7, numel / 2 + CHUNK + 1);
    let first = |bad: &[(usize, f32)]| stored(bad).first_not_finite(&store).unwrap();
    assert_eq!(first(&[]), None);
    assert_eq!(
        first(&[(late, f32::NEG_INFINITY)]),
        Some((late, f64::NEG_INFINITY))
    );
    assert_eq!(
        first(&[(early, f32::INFINITY)]),
        Some((early, f64::INFINITY))
    );
    assert_eq!(
        first(&[(late, f32::NAN), (early, f32::INFINITY)]),
        Some((early, f64::INFINITY))
    );
    assert_eq!(
        first(&[(numel - 1, f32::INFINITY)]),
        Some((numel - 1, f64::INFINITY))
    );
}

/// A deterministic stream of 64-bit patterns (xorshift) for test data.
pub(super) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// A deterministic spread of values over many binades, both signs, exact zeros among them.
fn spread(len: usize, seed: u64) -> Vec<f64> {
    let mut next = xorshift(seed);
    (0..len)
        .map(|i| {
            let state = next();
            let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
            match i % 11 {
                0 => 0.0,
                _ => (unit - 0.5) * 2f64.powi((state % 17) as i32 - 8),
            }
        })
        .collect()
}

#[test]
fn run_maxima_are_the_largest_written_magnitudes() {
    // Against the written bytes themselves, run by run: every dtype, factors of both signs
    // and many magnitudes (products that round up, to even, to a subnormal), one scaling or
    // two (a per-channel factor and a forward fold's per-9-element factor, which cycles), and
    // a tensor longer than a read chunk so runs cross chunk boundaries.
    let store = ExternalStore::none();
    let factors: Vec<f64> = spread(64, 7).iter().map(|f| f * 0.05 + 1e-3).collect();
    let cases: Vec<(Vec<usize>, Vec<Scaling>)> = vec![
        (vec![64, 3, 3, 3], vec![Scaling::new(27, factors.clone())]),
        (
            vec![8, 4, 3, 3],
            vec![
                Scaling::new(36, factors[..8].to_vec()),
                Scaling::new(9, factors[8..12].to_vec()),
            ],
        ),
        (
            vec![3, CHUNK / 2 + 5],
            vec![Scaling::new(CHUNK / 2 + 5, vec![-0.7, 1.3e-3, 2.5])],
        ),
        (vec![5, 7], vec![]),
    ];
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::F64] {
        for (dims, scalings) in &cases {
            let numel: usize = dims.iter().product();
            let data: Vec<f64> = spread(numel, numel as u64)
                .into_iter()
                .map(|v| dtype.round(v).unwrap())
                .collect();
            // The same tensor as values and as stored bytes (read chunk by chunk).
            let mut raw = Vec::new();
            let _ = tensor::encode_le_into(dtype, &data, &mut raw);
            let proto = TensorProto {
                name: Some("w".into()),
                dims: dims.iter().map(|&d| d as i64).collect(),
                data_type: Some(dtype.code()),
                raw_data: Some(raw.into()),
                ..Default::default()
            };
            let mut stored = ScaledTensor::stored(&proto).unwrap();
            stored.scalings = scalings.clone();
            let t = scaled(dtype, dims.clone(), data, scalings.clone());
            let run = numel / dims[0];
            for t in [t, stored] {
                assert!(t.has_run_maxima(run), "{dtype:?} {dims:?}");
                let written = t.decode(&store).unwrap().data;
                let want: Vec<f64> = written
                    .chunks(run)
                    .map(|r| r.iter().fold(0.0, |m: f64, v| m.max(v.abs())))
                    .collect();
                let got = t.run_maxima(&store, run).unwrap();
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{dtype:?} {dims:?}");
            }
        }
    }
}

#[test]
fn run_maxima_decline_factors_that_change_every_few_elements() {
    // A forward fold into a 1×1 convolution changes the factor at every element: reading the
    // maxima would cost what scaling does. A run that does not divide the tensor is refused.
    let t = scaled(
        Dtype::F32,
        vec![4, 6, 1, 1],
        vec![1.0; 24],
        vec![Scaling::new(1, vec![2.0; 6])],
    );
    assert!(!t.has_run_maxima(6));
    let t = scaled(Dtype::F32, vec![4, 6], vec![1.0; 24], vec![]);
    assert!(t.has_run_maxima(6));
    assert!(!t.has_run_maxima(5));
    assert!(!t.has_run_maxima(0));
}

#[test]
fn a_chunk_buffer_swapped_by_the_sink_is_written_over_whatever_it_held() {
    // A sink that keeps each chunk and hands back a buffer of stale bytes, longer or shorter
    // than a chunk: the chunks are still the scaled values, as `to_bytes` gives them.
    let numel = 3 * CHUNK + 5;
    let values: Vec<f32> = spread(numel, 11).iter().map(|&v| v as f32).collect();
    let stored = TensorProto {
        name: Some("w".into()),
        data_type: Some(Dtype::F32.code()),
        dims: vec![numel as i64],
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    };
    let factors = [0.7, -1.3, 2.9];
    let t = ScaledTensor::stored(&stored)
        .unwrap()
        .then(Scaling::new(CHUNK / 3, factors.to_vec()));
    let store = ExternalStore::none();
    // The formula, element by element: widened, scaled in f64, rounded once.
    let want: Vec<u8> = (0..numel)
        .flat_map(|i| ((values[i] as f64 * factors[i / (CHUNK / 3) % 3]) as f32).to_le_bytes())
        .collect();
    assert_eq!(t.to_bytes(&store).unwrap(), want);
    for read in [SourceRead::Copied, SourceRead::InPlace] {
        for stale in [0, 7, 4 * CHUNK - 4, 4 * CHUNK, 8 * CHUNK + 3] {
            let mut got = Vec::new();
            t.stream_chunks(&store, read, &mut |chunk| {
                got.extend_from_slice(chunk);
                *chunk = vec![0xee; stale];
                Ok(())
            })
            .unwrap();
            assert_eq!(got, want, "{read:?}, stale buffers of {stale} bytes");
        }
    }
}
