//! The CUDA twin of `pool_cpu` + `l2_normalize_cpu`: one kernel launch pools
//! and normalises encoder output where it already is, in f32, f16 or bf16,
//! so only `batch × dim` f32 values ever leave the GPU.

use super::{Pooling, PoolingError};
use crate::ptx;
use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda::{CudaStorageSlice, WrapErr};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Shape, Tensor};

const THREADS: u32 = 128;

/// `pool` for tensors on a CUDA device: `batch × dim` f32 on that device.
pub(super) fn pool(
    hidden: &Tensor,
    mask: &Tensor,
    pooling: Pooling,
    normalize: bool,
) -> Result<Tensor, PoolingError> {
    let hidden = hidden.contiguous()?;
    let mask = mask.to_dtype(DType::U32)?.contiguous()?;
    Ok(hidden.apply_op2_no_bwd(&mask, &PoolNormalize { pooling, normalize })?)
}

/// The codes kernels/cuda/pooling.cu switches on.
fn pooling_code(pooling: Pooling) -> u32 {
    match pooling {
        Pooling::Cls => 0,
        Pooling::Mean => 1,
        Pooling::Max => 2,
        Pooling::MeanSqrtLen => 3,
        Pooling::LastToken => 4,
    }
}

struct PoolNormalize {
    pooling: Pooling,
    normalize: bool,
}

impl CustomOp2 for PoolNormalize {
    fn name(&self) -> &'static str {
        "pulse-pool-normalize"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("pulse-pool-normalize is the CUDA path; CPU tensors use pool_cpu")
    }

    fn cuda_fwd(
        &self,
        hidden: &CudaStorage,
        hidden_layout: &Layout,
        mask: &CudaStorage,
        mask_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (batch, seq, dim) = hidden_layout.shape().dims3()?;
        let device = hidden.device.clone();
        let out = device.alloc_zeros::<f32>(batch * dim)?;
        let CudaStorageSlice::U32(mask) = &mask.slice else {
            candle_core::bail!("pulse-pool-normalize takes a u32 mask");
        };
        let mask = mask.slice(mask_layout.start_offset()..);
        let (seq, dim_u32) = (seq as u32, dim as u32);
        let (pooling, normalize) = (pooling_code(self.pooling), u32::from(self.normalize));
        let config = LaunchConfig {
            grid_dim: (batch as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let stream = device.cuda_stream();
        let offset = hidden_layout.start_offset();
        macro_rules! launch {
            ($slice:expr, $entry:literal) => {{
                let hidden = $slice.slice(offset..);
                let function = ptx::POOLING.function(&device, $entry)?;
                let mut args = stream.launch_builder(&function);
                args.arg(&hidden)
                    .arg(&mask)
                    .arg(&out)
                    .arg(&seq)
                    .arg(&dim_u32)
                    .arg(&pooling)
                    .arg(&normalize);
                // SAFETY: the arguments match the kernel's parameters, and the
                // kernel reads batch × seq × dim states and batch × seq mask
                // values and writes batch × dim outputs, all within bounds.
                unsafe { args.launch(config) }.w()?;
            }};
        }
        match &hidden.slice {
            CudaStorageSlice::F32(s) => launch!(s, "pool_normalize_f32"),
            CudaStorageSlice::F16(s) => launch!(s, "pool_normalize_f16"),
            CudaStorageSlice::BF16(s) => launch!(s, "pool_normalize_bf16"),
            _ => candle_core::bail!(
                "pulse-pool-normalize takes f32, f16 or bf16 states, not {:?}",
                hidden.dtype()
            ),
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, device),
            Shape::from((batch, dim)),
        ))
    }
}
