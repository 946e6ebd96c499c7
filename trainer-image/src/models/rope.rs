//! Rotary position embeddings (RoPE) and the scaled variants a config.json names in
//! `rope_scaling`: `linear` (positions divided by a factor) and `llama3` (Llama 3.1's
//! wavelength-dependent rescaling). Frequencies are computed in fp32 as transformers does.
use std::f64::consts::PI;
use std::path::Path;

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// How the inverse frequencies are rescaled.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// inv_freq / factor.
    Linear {
        factor: f64,
    },
    /// Long wavelengths divided by `factor`, short ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// config.json's `rope_scaling` object (older folders name the type `type`).
#[derive(Deserialize)]
struct ScalingJson {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
}

impl RopeScaling {
    /// Reads `rope_scaling` of the config at `origin`; an unsupported type or a missing
    /// parameter is an error naming the field.
    pub fn from_config(value: Option<&serde_json::Value>, origin: &Path) -> Result<Self> {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return Ok(Self::None);
        };
        let json: ScalingJson = serde_json::from_value(value.clone())
            .map_err(|e| Error::invalid(origin, format!("rope_scaling: {e}")))?;
        let kind = json.rope_type.or(json.legacy_type).unwrap_or_default();
        let need = |field: &str, v: Option<f64>| {
            v.ok_or_else(|| {
                Error::invalid(
                    origin,
                    format!("rope_scaling.{field} is required for rope_type {kind:?}"),
                )
            })
        };
        match kind.as_str() {
            "default" => Ok(Self::None),
            "linear" => Ok(Self::Linear {
                factor: need("factor", json.factor)?,
            }),
            "llama3" => Ok(Self::Llama3 {
                factor: need("factor", json.factor)?,
                low_freq_factor: need("low_freq_factor", json.low_freq_factor)?,
                high_freq_factor: need("high_freq_factor", json.high_freq_factor)?,
                original_max_position_embeddings: need(
                    "original_max_position_embeddings",
                    json.original_max_position_embeddings,
                )?,
            }),
            other => Err(Error::invalid(
                origin,
                format!(
                    "rope_scaling.rope_type {other:?} is not supported (default, linear, llama3)"
                ),
            )),
        }
    }

    /// Rescales one inverse frequency (radians per position).
    fn apply(&self, inv_freq: f64) -> f64 {
        match *self {
            Self::None => inv_freq,
            Self::Linear { factor } => inv_freq / factor,
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: context,
            } => {
                let wavelength = 2.0 * PI / inv_freq;
                if wavelength < context / high_freq_factor {
                    inv_freq
                } else if wavelength > context / low_freq_factor {
                    inv_freq / factor
                } else {
                    let smooth = (context / wavelength - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
                }
            }
        }
    }
}

/// One layer kind's rotary embedding: base frequency, rotated width and scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub head_dim: i64,
    pub scaling: RopeScaling,
}

impl Rope {
    /// The (hd/2) inverse frequencies, theta^(-2i/hd) in fp32, then rescaled.
    fn inv_freq(&self, device: tch::Device) -> Tensor {
        let exponents = Tensor::arange_start_step(0, self.head_dim, 2, (Kind::Float, device))
            / self.head_dim as f64;
        let base = Tensor::from(self.theta as f32)
            .to_device(device)
            .pow(&exponents)
            .reciprocal();
        if self.scaling == RopeScaling::None {
            return base;
        }
        let scaled: Vec<f32> = Vec::<f32>::try_from(&base)
            .expect("fp32 frequencies")
            .into_iter()
            .map(|f| self.scaling.apply(f64::from(f)) as f32)
            .collect();
        Tensor::from_slice(&scaled).to_device(device)
    }

    /// cos and sin (B, 1, T, hd) for `positions` (B, T), in `kind`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs =
            positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq(positions.device()); // (B, T, hd/2)
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1); // (B, 1, T, hd)
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

/// x rotated by the angles whose cos and sin are given: x cos + rotate_half(x) sin, where
/// rotate_half maps the last dimension's halves [x1, x2] to [-x2, x1].
pub fn rotate(x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Tensor {
    let half = x.size()[3] / 2;
    let rotated = Tensor::cat(&[-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
    x * cos + rotated * sin
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<RopeScaling> {
        RopeScaling::from_config(Some(&v), Path::new("config.json"))
    }

    #[test]
    fn llama3_keeps_short_wavelengths_and_divides_long_ones() {
        let s = parse(
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        )
        .unwrap();
        // wavelength 2pi/1 = 6.3 < 8192/4: unchanged.
        assert_eq!(s.apply(1.0), 1.0);
        // wavelength 2pi/1e-4 = 62832 > 8192: divided by the factor.
        assert!((s.apply(1e-4) - 1e-4 / 8.0).abs() < 1e-15);
        // In between: a blend, between the two.
        let f = 2.0 * PI / 4096.0;
        assert!(s.apply(f) < f && s.apply(f) > f / 8.0);
    }

    #[test]
    fn linear_divides_every_frequency() {
        assert_eq!(
            parse(json!({"type": "linear", "factor": 4.0}))
                .unwrap()
                .apply(2.0),
            0.5
        );
    }

    #[test]
    fn unknown_types_and_missing_fields_name_the_field() {
        let err = parse(json!({"rope_type": "yarn", "factor": 4.0})).unwrap_err();
        assert!(
            err.to_string()
                .contains("rope_scaling.rope_type \"yarn\" is not supported"),
            "{err}"
        );
        let err = parse(json!({"rope_type": "llama3", "factor": 8.0})).unwrap_err();
        assert!(
            err.to_string()
                .contains("rope_scaling.low_freq_factor is required"),
            "{err}"
        );
    }
}
