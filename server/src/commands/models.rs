use super::ModelArgs;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Load a model and describe it.
    Info {
        /// Local directory or Hugging Face id; overrides --model.
        name: Option<String>,
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: ModelsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelsCommand::Info {
            name,
            mut model,
            json,
        } => {
            if let Some(name) = name {
                model.model = name;
            }
            let embedder = model.load()?;
            let info = embedder.info();
            let described = serde_json::json!({
                "name": info.name,
                "architecture": info.architecture.to_string(),
                "model_type": info.model_type,
                "dimension": info.dimension,
                "pooling": info.pooling.to_string(),
                "normalize": info.normalize,
                "max_seq_length": info.max_seq_length,
                "prompts": info.prompts,
                "default_prompt": info.default_prompt_name,
                "parameters": info.parameters,
                "loaded_from": info.dir,
                "origin": info.origin.to_string(),
                "revision": info.revision,
                "device": info.device,
                "dtype": info.dtype,
                "encoder": info.encoder.to_string(),
                "kernels": info.kernels,
                "threads": info.threads,
                "load_ms": info.load_time.as_millis() as u64,
            });
            if json {
                println!("{described}");
            } else if let serde_json::Value::Object(fields) = described {
                for (key, value) in fields {
                    match value {
                        serde_json::Value::String(text) => println!("{key:<15} {text}"),
                        serde_json::Value::Null => println!("{key:<15} -"),
                        other => println!("{key:<15} {other}"),
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
