//! The CUDA twin of [`knn`](super::knn): every point's k nearest other
//! points, computed tile by tile on the GPU (kernels/cuda/distance.cu), with
//! only the `n × k` lists coming back.

use super::{DistanceError, Neighbours, Rows};
use crate::ptx;
use candle_core::CudaDevice;
use candle_core::cuda::WrapErr;
use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};

/// Rows a block of the kernel owns, and its threads.
const TILE: usize = 64;
const THREADS: u32 = 256;

pub(super) fn knn(
    points: Rows<'_>,
    k: usize,
    device: &CudaDevice,
) -> Result<Neighbours, DistanceError> {
    let n = points.len();
    let k = k.min(n.saturating_sub(1));
    if k == 0 {
        return Ok(Neighbours {
            k,
            indices: Vec::new(),
            distances: Vec::new(),
        });
    }
    let (indices, squared) = run(points, k, device).map_err(device_error)?;
    let distances = squared.iter().map(|d| d.max(0.0).sqrt()).collect();
    Ok(Neighbours {
        k,
        indices,
        distances,
    })
}

fn run(
    points: Rows<'_>,
    k: usize,
    device: &CudaDevice,
) -> candle_core::Result<(Vec<u32>, Vec<f32>)> {
    let n = points.len();
    let data = device.clone_htod(points.data)?;
    let indices = device.alloc_zeros::<u32>(n * k)?;
    let squared = device.alloc_zeros::<f32>(n * k)?;
    let (n_u32, dim, k_u32) = (n as u32, points.dim as u32, k as u32);
    let function = ptx::DISTANCE.function(device, "knn_f32")?;
    let stream = device.cuda_stream();
    let mut args = stream.launch_builder(&function);
    args.arg(&data)
        .arg(&n_u32)
        .arg(&dim)
        .arg(&k_u32)
        .arg(&indices)
        .arg(&squared);
    let config = LaunchConfig {
        grid_dim: (n.div_ceil(TILE) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the arguments match the kernel's parameters; it reads n × dim
    // points and writes n × k list entries, each row's by one thread.
    unsafe { args.launch(config) }.w()?;
    Ok((device.clone_dtoh(&indices)?, device.clone_dtoh(&squared)?))
}

fn device_error(error: candle_core::Error) -> DistanceError {
    DistanceError::Device(error.to_string())
}
