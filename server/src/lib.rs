//! The pulse service: gRPC and HTTP APIs over a dynamic batcher per model.

pub mod auth;
pub mod batcher;
pub mod config;
pub mod grpc;
pub mod http;
pub mod models;
mod rate;
pub mod signals;
pub mod summaries;
pub mod tls;
pub mod trends;

use crate::batcher::BatcherConfig;
use crate::config::ServeArgs;
use crate::grpc::{EmbeddingApi, Limits, ModelApi};
use crate::models::{EmbedOptions, Registry, ServedModel};
use crate::signals::{SignalApi, SignalLimits};
use crate::trends::{Jobs, TrendApi};
use anyhow::Context;
use axum::serve::ListenerExt;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pulse_proto::v1::embedding_service_server::EmbeddingServiceServer;
use pulse_proto::v1::model_service_server::ModelServiceServer;
use pulse_proto::v1::signal_service_server::SignalServiceServer;
use pulse_proto::v1::trend_service_server::TrendServiceServer;
use pulse_store::{EmbeddedStore, RemoteStore, VectorStore};
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

/// The process-wide Prometheus recorder (the `metrics` facade has one).
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))
}

/// A running server.
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Loads the models, binds both addresses and starts serving. Health says
    /// NOT_SERVING (and `/ready` 503) until every model has warmed up.
    pub async fn start(args: &ServeArgs) -> anyhow::Result<Server> {
        let metrics = metrics_handle()?;
        let specs = args.model_specs()?;
        // Checked before the models load: a bad LLM setting should not cost
        // a minute of loading first.
        let llm_provider = args.llm.provider()?;
        let summary_config = args.llm.summary_config()?;
        let prompt_template =
            summaries::prompt::PromptTemplate::load(args.llm.llm_prompt_file.as_deref())?;
        let key_limits = args.key_limits()?;
        let api_keys = args
            .api_key_file
            .as_deref()
            .map(|path| auth::ApiKeys::load(path, key_limits))
            .transpose()?
            .map(Arc::new);
        let with_key = auth::interceptor(api_keys.clone());
        let tls = tls::Tls::load(&args.tls)?;
        let embedder_options = args.engine.embedder_options();
        let batching = BatcherConfig {
            max_batch_tokens: args.max_batch_tokens.get(),
            max_batch_texts: args.max_batch_texts.get(),
            max_wait: Duration::from_millis(args.max_wait_ms),
            max_queue_tokens: args.max_queue_tokens.get(),
        };
        let cache_capacity = args.cache_capacity;
        let (models, workers) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut models = Vec::new();
            let mut workers = Vec::new();
            for (i, spec) in specs.iter().enumerate() {
                let (model, worker) =
                    ServedModel::load(&spec.name, &spec.source, i == 0, &embedder_options, batching.clone(), cache_capacity)
                        .with_context(|| format!("cannot load model `{}`", spec.name))?;
                tracing::info!(model = %spec.name, source = %spec.source, device = %model.info().device, "model loaded");
                models.push(model);
                workers.push(worker);
            }
            Ok((models, workers))
        })
        .await??;
        let registry = Arc::new(Registry::new(models));
        let store = open_store(args).await?;
        for model in registry.all() {
            // A remote store may be down at start: the service still starts,
            // and ingestion retries (and reports UNAVAILABLE) on its own.
            let collection = signals::collection_name(&model.name);
            if let Err(err) = store
                .ensure_collection(&collection, model.info().dimension)
                .await
            {
                if args.qdrant.qdrant_url.is_none() {
                    return Err(err)
                        .with_context(|| format!("cannot prepare collection `{collection}`"));
                }
                tracing::warn!(%collection, error = %err, "the Qdrant server is not ready; signals wait for it");
            }
        }

        let grpc_listener = TcpListener::bind(args.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.grpc_addr))?;
        let http_listener = TcpListener::bind(args.http_addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.http_addr))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        let limits = Limits {
            max_inputs: args.max_inputs.get(),
            interactive_inputs: args.interactive_inputs,
            stream_window: args.stream_window.get(),
        };
        let max_message = args.max_message_bytes.get();
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, tonic_health::ServingStatus::NotServing).await;
        // Reflection in both versions: grpcurl speaks v1, while Python's
        // grpcio-reflection client and older tools still ask v1alpha.
        let reflection_builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pulse_proto::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection = reflection_builder()
            .build_v1()
            .context("cannot build the reflection service")?;
        let reflection_v1alpha = reflection_builder()
            .build_v1alpha()
            .context("cannot build the v1alpha reflection service")?;
        let embedding = EmbeddingServiceServer::new(EmbeddingApi {
            registry: registry.clone(),
            limits: limits.clone(),
        })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let model_service = ModelServiceServer::new(ModelApi {
            registry: registry.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let maintenance = (args.optimize_idle_secs > 0).then(|| {
            tokio::spawn(maintain_store(
                store.clone(),
                Duration::from_secs(args.optimize_idle_secs),
                stopped.clone(),
            ))
        });
        let (summariser, summary_workers) = match llm_provider.map(|provider| {
            tracing::info!(provider = provider.name(), model = provider.model(), prompt = %prompt_template.version, "LLM summaries on");
            summaries::Summariser::start(
                provider,
                prompt_template,
                store.clone(),
                summary_config,
                stopped.clone(),
            )
        }) {
            Some((summariser, workers)) => (Some(summariser), workers),
            None => (None, Vec::new()),
        };
        let trend_service = TrendServiceServer::new(TrendApi {
            registry: registry.clone(),
            store: store.clone(),
            jobs: Jobs::new(store.clone(), args.cluster_jobs.get(), summariser),
        })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let signal_service = SignalServiceServer::new(SignalApi {
            registry: registry.clone(),
            store,
            limits: SignalLimits {
                max_signals: args.max_inputs.get(),
                max_text_bytes: args.max_text_bytes.get(),
            },
        })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
        let ready = Arc::new(AtomicBool::new(false));
        let router = http::router(
            http::HttpState {
                registry: registry.clone(),
                limits,
                ready: ready.clone(),
                metrics,
                api_keys,
            },
            max_message,
        );

        let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let mut grpc = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            grpc = grpc
                .tls_config(tls.grpc.clone())
                .context("cannot use the TLS certificate for gRPC")?;
            tracing::info!(mutual = tls.mutual, "TLS on gRPC and HTTP");
        }
        let grpc = grpc
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(InterceptedService::new(embedding, with_key.clone()))
            .add_service(InterceptedService::new(model_service, with_key.clone()))
            .add_service(InterceptedService::new(signal_service, with_key.clone()))
            .add_service(InterceptedService::new(trend_service, with_key))
            .serve_with_incoming_shutdown(
                // Small replies must not wait for the peer's delayed ACK.
                TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                until_stopped(stopped.clone()),
            );
        let http: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> = match &tls {
            Some(tls) => {
                let handle = axum_server::Handle::new();
                let on_stop = handle.clone();
                let stopping = until_stopped(stopped.clone());
                tokio::spawn(async move {
                    stopping.await;
                    on_stop.graceful_shutdown(None);
                });
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls.http.clone())
                    .acceptor(axum_server::accept::NoDelayAcceptor::new());
                let server = axum_server::from_tcp(http_listener.into_std()?)?
                    .acceptor(acceptor)
                    .handle(handle)
                    .serve(router.into_make_service());
                Box::pin(server)
            }
            None => {
                let http_listener = http_listener.tap_io(|stream| {
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                    }
                });
                let server = axum::serve(http_listener, router)
                    .with_graceful_shutdown(until_stopped(stopped.clone()));
                Box::pin(server.into_future())
            }
        };

        let warm_registry = registry.clone();
        let task = tokio::spawn(async move {
            let warm_up = async move {
                for model in warm_registry.all() {
                    let options = EmbedOptions {
                        normalize: None,
                        truncate: true,
                        priority: batcher::Priority::Interactive,
                        deadline: None,
                        quota: None,
                        prompt: None,
                    };
                    if let Err(err) = model.embed(vec!["warm-up".to_string()], &options).await {
                        tracing::error!(model = %model.name, error = %err, "warm-up failed");
                        return;
                    }
                }
                set_health(&health, tonic_health::ServingStatus::Serving).await;
                ready.store(true, Ordering::Release);
                tracing::info!("serving");
            };
            let (grpc_result, http_result, ()) = tokio::join!(grpc, http, warm_up);
            if let Some(maintenance) = maintenance {
                let _ = maintenance.await;
            }
            // Summary workers stop at once (a pending summary stays pending);
            // they hold the store, which must be closed before we return.
            for worker in summary_workers {
                let _ = worker.await;
            }
            // Both servers have answered what they accepted; dropping the last
            // handles lets each model worker finish its queue and stop.
            drop(registry);
            tokio::task::spawn_blocking(move || {
                for worker in workers {
                    let _ = worker.join();
                }
            })
            .await?;
            grpc_result.context("gRPC server failed")?;
            http_result.context("HTTP server failed")?;
            Ok(())
        });
        Ok(Server {
            grpc_addr,
            http_addr,
            stop,
            task,
        })
    }

    /// Stops accepting, answers what was accepted, then returns.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await?
    }

    /// Runs until `signal` completes, then shuts down gracefully.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        signal.await;
        tracing::info!("shutting down: finishing accepted work");
        self.shutdown().await
    }
}

/// Lets the store tidy up (the embedded one builds indexes) while the
/// service runs, checking every half idle period until told to stop.
async fn maintain_store(
    store: Arc<dyn VectorStore>,
    idle: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(idle / 2) => {}
        }
        if let Err(err) = store.maintain(idle).await {
            tracing::warn!(error = %err, "store maintenance failed");
        }
    }
}

async fn open_store(args: &ServeArgs) -> anyhow::Result<Arc<dyn VectorStore>> {
    if let Some(options) = args.qdrant.remote_options() {
        let url = options.url.clone();
        let store = RemoteStore::connect(options)
            .with_context(|| format!("invalid Qdrant address {url}"))?;
        tracing::info!(%url, "storing signals in a Qdrant server");
        // Once per start, in pulse's log rather than on standard output.
        match store.server_version().await {
            Ok(server) if pulse_store::compatible_server(&server) => {
                tracing::info!(%server, client = pulse_store::CLIENT_VERSION, "Qdrant versions");
            }
            Ok(server) => tracing::warn!(
                %server,
                client = pulse_store::CLIENT_VERSION,
                tested = pulse_store::TESTED_QDRANT,
                "the Qdrant server's version is outside the client's range (same major, minor at most one apart); pulse's tests run against the tested version"
            ),
            Err(err) => tracing::warn!(error = %err, "cannot ask the Qdrant server its version"),
        }
        return Ok(Arc::new(store));
    }
    let data_dir = args.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&data_dir))
        .await?
        .with_context(|| format!("cannot open the store in {}", args.data_dir.display()))?;
    Ok(Arc::new(store))
}

async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    reporter.set_service_status("", status).await;
    for service in [
        "pulse.v1.EmbeddingService",
        "pulse.v1.ModelService",
        "pulse.v1.SignalService",
        "pulse.v1.TrendService",
    ] {
        reporter.set_service_status(service, status).await;
    }
}
