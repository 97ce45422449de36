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
