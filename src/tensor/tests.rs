use super::*;

#[test]
fn f16_rounding_reports_overflow_instead_of_infinity() {
    assert_eq!(Dtype::F16.round(65504.0), Some(65504.0));
    assert_eq!(Dtype::F16.round(70000.0), None);
    assert_eq!(Dtype::F32.round(1e300), None);
    assert_eq!(Dtype::F64.round(1e300), Some(1e300));
}

#[test]
fn f16_rounds_once_from_f64_not_through_f32() {
    // 1 + 2^-11 + 2^-40 lies just above the f16 midpoint between 1 and 1 + 2^-10; via f32 the
    // 2^-40 is lost, the midpoint ties to even (1.0), while one rounding gives 1 + 2^-10.
    let v = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
    let (below, above) = (1.0, 1.0 + 2f64.powi(-10));
    assert!(
        above - v < v - below,
        "the exact nearest f16 is the one above"
    );
    assert_eq!(Dtype::F16.round(v), Some(above));
    // Rounded to f32 first, v becomes the midpoint itself, which ties to even.
    assert_eq!((v as f32) as f64, 1.0 + 2f64.powi(-11));
    assert_eq!(Dtype::F16.round((v as f32) as f64), Some(below));
}

#[test]
fn half_precision_rounding_agrees_with_half_on_values_f32_holds_exactly() {
    for bits in (0u16..=0xffff).step_by(7) {
        let h = half::f16::from_bits(bits);
        let v = h.to_f64();
        if v.is_finite() {
            assert_eq!(Dtype::F16.round(v), Some(v));
            let mid = v + 2f64.powi(-30);
            assert_eq!(
                Dtype::F16.round(mid).unwrap_or(f64::INFINITY),
                half::f16::from_f32(mid as f32).to_f64()
            );
        }
        let b = half::bf16::from_bits(bits).to_f64();
        if b.is_finite() {
            assert_eq!(Dtype::Bf16.round(b), Some(b));
        }
    }
}

#[test]
fn raw_and_typed_storage_decode_to_the_same_values() {
    let store = ExternalStore::none();
    let t = Tensor::new(Dtype::F16, vec![3], vec![1.5, -2.0, 0.25]);
    let raw = t.to_proto("w");
    let typed = TensorProto {
        dims: vec![3],
        data_type: Some(10),
        name: Some("w".into()),
        int32_data: [1.5f32, -2.0, 0.25]
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits() as i32)
            .collect(),
        ..Default::default()
    };
    assert_eq!(decode(&raw, &store).unwrap(), t);
    assert_eq!(decode(&typed, &store).unwrap(), t);
}

#[test]
fn raw_data_of_the_wrong_length_is_an_error_naming_the_tensor() {
    let mut p = Tensor::new(Dtype::F32, vec![2], vec![1.0, 2.0]).to_proto("w");
    p.dims = vec![3];
    let err = decode(&p, &ExternalStore::none()).unwrap_err().to_string();
    assert!(
        err.contains("'w'") && err.contains("raw_data has 8 bytes"),
        "{err}"
    );
}
