//! Device and dtype choice: `auto|cpu|cuda[:N]` and `auto|f32|f16|bf16|int8`.

use crate::error::{ModelError, Result};
use candle_core::{DType, Device};
use pulse_kernels::transformer::WeightPrecision;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// CUDA device 0 when pulse is built with `cuda` and one is present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => lower
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| ModelError::InvalidDevice(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    pub fn select(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto => {
                if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                    Ok(Device::new_cuda(0)?)
                } else {
                    Ok(Device::Cpu)
                }
            }
            DeviceSpec::Cuda(ordinal) => {
                if cfg!(feature = "cuda") {
                    Ok(Device::new_cuda(ordinal)?)
                } else {
                    Err(ModelError::CudaNotBuilt(self.to_string()))
                }
            }
        }
    }
}

/// Names a device the way `--device` takes it.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Memory of the GPU a device lives on, as its driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    pub used_bytes: u64,
    pub total_bytes: u64,
}

/// The GPU memory in use on `device`, the whole card's (every process's);
/// `None` on the CPU or where the driver cannot say.
pub fn gpu_memory(device: &Device) -> Option<GpuMemory> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(gpu) => {
            let (free, total) = gpu.cuda_stream().context().mem_get_info().ok()?;
            Some(GpuMemory {
                used_bytes: total.saturating_sub(free) as u64,
                total_bytes: total as u64,
            })
        }
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeSpec {
    /// f32 on the CPU, f16 on CUDA.
    #[default]
    Auto,
    F32,
    F16,
    /// bf16 on CUDA; on the CPU, f32 with the dense layers in bfloat16
    /// (CPUs with AVX-512 BF16 only).
    BF16,
    /// f32 with the dense layers' weights in int8 (CPU only).
    Int8,
}

/// What a dtype choice runs in: the dtype Candle loads the weights in and
/// runs its tensors in, and how the CPU layer holds its dense weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    pub dtype: DType,
    pub dense_weights: WeightPrecision,
}

impl Precision {
    pub fn name(&self) -> &'static str {
        match self.dense_weights {
            WeightPrecision::F32 => self.dtype.as_str(),
            reduced => reduced.name(),
        }
    }
}

impl FromStr for DTypeSpec {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DTypeSpec::Auto),
            "f32" | "float32" => Ok(DTypeSpec::F32),
            "f16" | "float16" | "half" => Ok(DTypeSpec::F16),
            "bf16" | "bfloat16" => Ok(DTypeSpec::BF16),
            "int8" | "i8" => Ok(DTypeSpec::Int8),
            _ => Err(ModelError::InvalidDType(s.to_string())),
        }
    }
}

impl DTypeSpec {
    pub fn select(self, device: &Device) -> Result<Precision> {
        let unsupported = |dtype: &str| ModelError::UnsupportedDType {
            dtype: dtype.to_string(),
            device: if device.is_cpu() { "cpu" } else { "cuda" }.to_string(),
        };
        let dtype = match (self, device.is_cpu()) {
            (DTypeSpec::Auto, true) | (DTypeSpec::F32, _) => DType::F32,
            (DTypeSpec::Auto, false) | (DTypeSpec::F16, _) => DType::F16,
            (DTypeSpec::BF16, false) => DType::BF16,
            // On the CPU, bf16 and int8 weights live in pulse-kernels' CPU
            // layer (the rest stays f32); on a GPU, f16 and bf16 are the
            // reduced precisions.
            (DTypeSpec::BF16, true) => {
                if !pulse_kernels::matmul::bf16_runs_fast() {
                    return Err(ModelError::UnsupportedDType {
                        dtype: "bf16".into(),
                        device: "a CPU without AVX-512 BF16 (use int8 there)".into(),
                    });
                }
                return Ok(Precision {
                    dtype: DType::F32,
                    dense_weights: WeightPrecision::Bf16,
                });
            }
            (DTypeSpec::Int8, true) => {
                return Ok(Precision {
                    dtype: DType::F32,
                    dense_weights: WeightPrecision::Int8,
                });
            }
            (DTypeSpec::Int8, false) => return Err(unsupported("int8")),
        };
        // Candle's generic f16 CPU path is slower than f32, not faster;
        // bf16 and int8 weights are the CPU's reduced precisions.
        if device.is_cpu() && dtype != DType::F32 {
            return Err(unsupported(dtype.as_str()));
        }
        Ok(Precision {
            dtype,
            dense_weights: WeightPrecision::F32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        for bad in ["cuda:x", "tpu", "cuda:-1", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_always_works_and_runs_f32() {
        let device = DeviceSpec::Cpu.select().unwrap();
        assert!(device.is_cpu());
        let auto = DTypeSpec::Auto.select(&device).unwrap();
        assert_eq!(auto.dtype, DType::F32);
        assert_eq!(auto.dense_weights, WeightPrecision::F32);
        assert_eq!(auto.name(), "f32");
        let int8 = DTypeSpec::Int8.select(&device).unwrap();
        assert_eq!(int8.dtype, DType::F32);
        assert_eq!(int8.dense_weights, WeightPrecision::Int8);
        assert_eq!(int8.name(), "int8");
        assert!(matches!(
            DTypeSpec::F16.select(&device),
            Err(ModelError::UnsupportedDType { .. })
        ));
        // bf16 runs where the CPU has the instructions for it, and says
        // what is missing where it has not.
        match DTypeSpec::BF16.select(&device) {
            Ok(bf16) => {
                assert!(pulse_kernels::matmul::bf16_runs_fast());
                assert_eq!(bf16.dtype, DType::F32);
                assert_eq!(bf16.dense_weights, WeightPrecision::Bf16);
                assert_eq!(bf16.name(), "bf16");
            }
            Err(err) => {
                assert!(!pulse_kernels::matmul::bf16_runs_fast());
                assert!(err.to_string().contains("AVX-512 BF16"), "{err}");
            }
        }
        assert_eq!(device_name(&device), "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = DeviceSpec::Cuda(1).select().unwrap_err();
        assert!(err.to_string().contains("`cuda` feature"), "{err}");
        assert!(DeviceSpec::Auto.select().unwrap().is_cpu());
    }

    #[test]
    fn parses_dtypes() {
        assert_eq!("bf16".parse::<DTypeSpec>().unwrap(), DTypeSpec::BF16);
        assert_eq!("float16".parse::<DTypeSpec>().unwrap(), DTypeSpec::F16);
        assert_eq!("INT8".parse::<DTypeSpec>().unwrap(), DTypeSpec::Int8);
        assert!("int4".parse::<DTypeSpec>().is_err());
    }
}
