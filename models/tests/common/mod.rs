//! Helpers shared by the model tests.

use pulse_models::{DeviceSpec, EmbedderOptions, EncoderKind, ResolveOptions};

/// CPU, the given encoder, and nothing fetched from the network.
pub fn offline_cpu_options(encoder: EncoderKind) -> EmbedderOptions {
    EmbedderOptions {
        device: DeviceSpec::Cpu,
        encoder,
        resolve: ResolveOptions {
            offline: true,
            progress: false,
            ..ResolveOptions::from_env()
        },
        ..EmbedderOptions::default()
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}
