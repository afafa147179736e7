//! Little-endian element decoding to f32: F32 (copied when it cannot be used in place), F16 and
//! BF16 (through `half`), F64 (rounded).

use half::{bf16, f16};
use safetensors::Dtype;

/// Whether [`to_f32`] can decode `dtype`.
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Decodes little-endian `bytes` of `dtype` into f32 values, or `None` for a non-float dtype.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    let out = match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        _ => return None,
    };
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_formats_decode_exactly_representable_values() {
        let vals = [0.0f32, 1.0, -2.5, 0.15625, 65504.0];
        let f16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(to_f32(Dtype::F16, &f16b).unwrap(), vals);
        let bf = [0.0f32, 1.0, -2.5, 0.15625, 3.0e38];
        let bfb: Vec<u8> = bf
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        let back = to_f32(Dtype::BF16, &bfb).unwrap();
        for (a, b) in back.iter().zip(bf) {
            assert!((a - b).abs() <= b.abs() * 4e-3, "{a} vs {b}");
        }
        assert!(to_f32(Dtype::I64, &[0; 8]).is_none());
    }
}
