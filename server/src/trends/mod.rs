//! `pulse.v1.TrendService`: re-clustering jobs for schedulers, and the
//! trends they stored for dashboards and the summary path.

pub(crate) mod jobs;
pub(crate) mod records;

pub use jobs::{JobSpec, Jobs};

use crate::auth::Access;
use crate::models::{Registry, ServedModel};
use crate::signals::{store_status, stored_signal};
use pulse_proto::v1 as pb;
use pulse_proto::validate::{self, timestamp};
use pulse_store::{FieldValue, SignalFilter, VectorStore};
use pulse_trends::pipeline::{AssignBy, AssignmentParams, MergeParams, PipelineParams};
use pulse_trends::reduce::ReductionParams;
use pulse_trends::{Params, Selection};
use records::{LlmRecord, LlmStatus, ParamsRecord, RunRecord, TrendRecord};
use serde_json::Value;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

const MAX_IDEMPOTENCY_KEY: usize = 256;
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

#[derive(Clone)]
pub struct TrendApi {
    pub registry: Arc<Registry>,
    pub store: Arc<dyn VectorStore>,
    pub jobs: Jobs,
}

fn required<'a>(value: &'a str, name: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("`{name}` is required")))
    } else {
        Ok(value)
    }
}

/// A request's clustering parameters: the trend pipeline's defaults
/// (`PipelineParams::default`, the best measured on short texts) where a
/// field is unset, and what the run records it was asked for.
pub fn params_of(
    params: Option<pb::ClusterParams>,
) -> Result<(PipelineParams, ParamsRecord), Status> {
    let params = params.unwrap_or_default();
    let invalid = |message: String| Status::invalid_argument(message);
    let defaults = PipelineParams::default();
    let min_cluster_size = match params.min_cluster_size {
        0 => defaults.hdbscan.min_cluster_size as u32,
        1 => return Err(invalid("`min_cluster_size` must be at least 2".into())),
        n => n,
    };
    let selection = if params.selection.is_empty() {
        defaults.hdbscan.selection
    } else {
        params
            .selection
            .parse::<Selection>()
            .map_err(|e| invalid(format!("`selection`: {e}")))?
    };
    if !(params.epsilon.is_finite() && params.epsilon >= 0.0) {
        return Err(invalid("`epsilon` must be a finite number ≥ 0".into()));
    }
    let hdbscan = Params {
        min_cluster_size: min_cluster_size as usize,
        min_samples: (params.min_samples > 0)
            .then_some(params.min_samples as usize)
            .or(defaults.hdbscan.min_samples),
        selection,
        epsilon: params.epsilon,
        allow_single_cluster: params.allow_single_cluster,
        approximate: params.approximate,
        ..defaults.hdbscan
    };
    let reduction_defaults = ReductionParams::default();
    let reduction = params
        .reduce
        .unwrap_or(defaults.reduction.is_some())
        .then(|| ReductionParams {
            dimensions: match params.reduce_dimensions {
                0 => reduction_defaults.dimensions,
                n => n as usize,
            },
            neighbours: match params.reduce_neighbours {
                0 => reduction_defaults.neighbours,
                n => n as usize,
            },
            seed: params.seed.unwrap_or(reduction_defaults.seed),
            ..reduction_defaults
        });
    let assignment = match params.assign.as_str() {
        "" => defaults.assignment,
        "off" | "none" => None,
        name => {
            let by = name
                .parse::<AssignBy>()
                .map_err(|e| invalid(format!("`assign`: {e} or off")))?;
            Some(AssignmentParams {
                by,
                threshold: AssignmentParams::default_threshold(by),
            })
        }
    }
    .map(|a| AssignmentParams {
        threshold: params.assign_threshold.unwrap_or(a.threshold),
        ..a
    });
    let pipeline = PipelineParams {
        hdbscan,
        reduction,
        assignment,
        merging: MergeParams {
            threshold: params.merge_threshold.or(defaults.merging.threshold),
            max_trends: match params.max_trends {
                0 => defaults.merging.max_trends,
                n => Some(n as usize),
            },
        },
    };
    pipeline
        .validate()
        .map_err(|e| invalid(format!("`params`: {e}")))?;
    let requested = ParamsRecord {
        min_cluster_size,
        min_samples: params.min_samples,
        selection: selection.to_string(),
        epsilon: params.epsilon,
        allow_single_cluster: params.allow_single_cluster,
        approximate: params.approximate,
        reduce: pipeline.reduction.is_some(),
        reduce_dimensions: pipeline
            .reduction
            .as_ref()
            .map_or(0, |r| r.dimensions as u32),
        reduce_neighbours: pipeline
            .reduction
            .as_ref()
            .map_or(0, |r| r.neighbours as u32),
        seed: pipeline.reduction.as_ref().map_or(0, |r| r.seed),
        assign: pipeline
            .assignment
            .map_or_else(|| "off".to_string(), |a| a.by.to_string()),
        assign_threshold: pipeline.assignment.map_or(0.0, |a| a.threshold),
        merge_threshold: pipeline.merging.threshold,
        max_trends: pipeline.merging.max_trends.map_or(0, |m| m as u32),
    };
    Ok((pipeline, requested))
}

fn params_message(params: &ParamsRecord) -> pb::ClusterParams {
    pb::ClusterParams {
        min_cluster_size: params.min_cluster_size,
        min_samples: params.min_samples,
        selection: params.selection.clone(),
        epsilon: params.epsilon,
        allow_single_cluster: params.allow_single_cluster,
        approximate: params.approximate,
        reduce: Some(params.reduce),
        reduce_dimensions: params.reduce_dimensions,
        reduce_neighbours: params.reduce_neighbours,
        seed: params.reduce.then_some(params.seed),
        assign: params.assign.clone(),
        assign_threshold: (params.assign != "off").then_some(params.assign_threshold),
        merge_threshold: params.merge_threshold,
        max_trends: params.max_trends,
    }
}

fn run_message(run: &RunRecord) -> pb::Run {
    pb::Run {
        id: run.run_id.clone(),
        job_id: run.job_id.clone(),
        finished: Some(timestamp(run.finished_ms)),
        window_from: Some(timestamp(run.window_from)),
        window_to: Some(timestamp(run.window_to)),
        signals: run.signals,
        noise: run.noise,
        params: Some(params_message(&run.params)),
    }
}

fn origin_message(origin: &str) -> pb::TrendOrigin {
    match origin {
        "new" => pb::TrendOrigin::New,
        "continued" => pb::TrendOrigin::Continued,
        "split" => pb::TrendOrigin::Split,
        "merged" => pb::TrendOrigin::Merged,
        _ => pb::TrendOrigin::Unspecified,
    }
}

fn trend_message(trend: TrendRecord) -> pb::Trend {
    pb::Trend {
        id: trend.trend_id,
        brand: trend.brand,
        model: trend.model,
        run_id: trend.run_id,
        size: trend.size,
        centroid: trend.centroid,
        representatives: trend
            .representatives
            .into_iter()
            .map(|r| pb::Representative {
                signal_id: r.signal_id,
                point_id: r.point_id.to_string(),
                text: r.text,
                probability: r.probability,
                similarity: r.similarity,
            })
            .collect(),
        keywords: trend
            .keywords
            .into_iter()
            .map(|(term, score)| pb::Keyword { term, score })
            .collect(),
        sources: trend
            .sources
            .into_iter()
            .map(|(source, count)| pb::SourceCount { source, count })
            .collect(),
        first_seen: Some(timestamp(trend.first_seen)),
        last_seen: Some(timestamp(trend.last_seen)),
        buckets: trend.buckets,
        bucket_width: Some(prost_types::Duration {
            seconds: trend.bucket_width_ms.div_euclid(1000),
            nanos: (trend.bucket_width_ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
        growth: trend.growth,
        origin: origin_message(&trend.origin) as i32,
        parents: trend.parents,
        llm_summary: Some(llm_message(trend.llm)),
        assigned: trend.assigned,
    }
}

impl TrendApi {
    fn model(&self, name: &str) -> Result<Arc<ServedModel>, Status> {
        self.registry
            .find(name)
            .map_err(|e| Status::not_found(e.to_string()))
    }

    fn job_id<'a>(&self, request: &'a pb::JobRequest) -> Result<&'a str, Status> {
        required(&request.job_id, "job_id")
    }

    /// A stored trend, from `run_id` or (empty) the latest run holding it.
    async fn find_trend(
        &self,
        brand: &str,
        model: &ServedModel,
        trend_id: i64,
        run_id: &str,
    ) -> Result<TrendRecord, Status> {
        let run_id = (!run_id.is_empty()).then_some(run_id);
        records::trend(
            self.store.as_ref(),
            &model.name,
            model.info().dimension,
            brand,
            trend_id,
            run_id,
        )
        .await
        .map_err(store_status)?
        .ok_or_else(|| {
            Status::not_found(format!(
                "brand `{brand}` has no trend {trend_id}{}",
                run_id.map(|r| format!(" in run `{r}`")).unwrap_or_default()
            ))
        })
    }
}

fn llm_message(llm: Option<LlmRecord>) -> pb::LlmSummary {
    let Some(llm) = llm else {
        return pb::LlmSummary {
            status: pb::LlmSummaryStatus::NotConfigured as i32,
            reason: "stored before LLM summaries existed".into(),
            ..Default::default()
        };
    };
    let status = match llm.status {
        LlmStatus::NotConfigured => pb::LlmSummaryStatus::NotConfigured,
        LlmStatus::Pending => pb::LlmSummaryStatus::Pending,
        LlmStatus::Done => pb::LlmSummaryStatus::Done,
        LlmStatus::Failed => pb::LlmSummaryStatus::Failed,
    };
    pb::LlmSummary {
        status: status as i32,
        title: llm.title,
        summary: llm.summary,
        sentiment: llm.sentiment,
        suggested_action: llm.suggested_action,
        provider: llm.provider,
        model: llm.model,
        prompt_version: llm.prompt_version,
        tokens_in: llm.tokens_in,
        tokens_out: llm.tokens_out,
        attempts: llm.attempts,
        reason: llm.reason,
        raw_response: llm.raw_response,
        updated: Some(timestamp(llm.updated_ms)),
        reused_from_run: llm.reused_from_run,
    }
}

fn no_job(id: &str) -> Status {
    Status::not_found(format!(
        "no job `{id}` (jobs are kept in memory until the server restarts)"
    ))
}

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::Job, Status>> + Send>>;

#[tonic::async_trait]
impl pb::trend_service_server::TrendService for TrendApi {
    async fn recluster(
        &self,
        request: Request<pb::ReclusterRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let access = Access::of(&request);
        let request = request.into_inner();
        let brand = required(&request.brand, "brand")?.to_string();
        access.allow(&brand)?;
        let model = self.model(&request.model)?;
        let window = validate::window(&request, jobs::now_ms())?;
        let (params, requested) = params_of(request.params)?;
        if request.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(Status::invalid_argument(format!(
                "`idempotency_key` is {} bytes; the limit is {MAX_IDEMPOTENCY_KEY}",
                request.idempotency_key.len()
            )));
        }
        let job = self.jobs.submit(JobSpec {
            brand,
            model: model.name.clone(),
            dimension: model.info().dimension,
            window,
            params,
            device: model.device().clone(),
            requested,
            idempotency_key: request.idempotency_key,
        });
        Ok(Response::new(job))
    }

    async fn get_job(&self, request: Request<pb::JobRequest>) -> Result<Response<pb::Job>, Status> {
        let request = request.into_inner();
        let id = self.job_id(&request)?;
        self.jobs
            .get(id)
            .map(Response::new)
            .ok_or_else(|| no_job(id))
    }

    type WatchJobStream = JobStream;

    async fn watch_job(
        &self,
        request: Request<pb::JobRequest>,
    ) -> Result<Response<JobStream>, Status> {
        let request = request.into_inner();
        let id = self.job_id(&request)?;
        let updates = self.jobs.watch(id).ok_or_else(|| no_job(id))?;
        // The job now, then every change, ending with the one that ends it.
        let stream = futures::stream::unfold(
            (updates, true, false),
            |(mut updates, first, done)| async move {
                if done || (!first && updates.changed().await.is_err()) {
                    return None;
                }
                let job = updates.borrow_and_update().clone();
                let ended = jobs::ended(job.state);
                Some((Ok(job), (updates, false, ended)))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::JobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let request = request.into_inner();
        let id = self.job_id(&request)?;
        self.jobs
            .cancel(id)
            .await
            .map(Response::new)
            .ok_or_else(|| no_job(id))
    }

    async fn regenerate_summary(
        &self,
        request: Request<pb::RegenerateSummaryRequest>,
    ) -> Result<Response<pb::Trend>, Status> {
        let access = Access::of(&request);
        let request = request.into_inner();
        let brand = required(&request.brand, "brand")?;
        access.allow(brand)?;
        let model = self.model(&request.model)?;
        let Some(summariser) = self.jobs.summaries() else {
            return Err(Status::failed_precondition(
                "no LLM provider is configured (start the server with --llm-base-url and --llm-model)",
            ));
        };
        let mut trend = self
            .find_trend(brand, &model, request.trend_id, &request.run_id)
            .await?;
        let pending = summariser.pending();
        records::set_llm(
            self.store.as_ref(),
            &model.name,
            &trend.run_id,
            trend.trend_id,
            &pending,
        )
        .await
        .map_err(store_status)?;
        summariser
            .enqueue(crate::summaries::Task {
                brand: brand.to_string(),
                model: model.name.clone(),
                dimension: model.info().dimension,
                run_id: trend.run_id.clone(),
                trend_id: trend.trend_id,
                forced: true,
            })
            .await;
        trend.llm = Some(pending);
        Ok(Response::new(trend_message(trend)))
    }

    async fn list_trends(
        &self,
        request: Request<pb::ListTrendsRequest>,
    ) -> Result<Response<pb::ListTrendsResponse>, Status> {
        let access = Access::of(&request);
        let request = request.into_inner();
        let brand = required(&request.brand, "brand")?;
        access.allow(brand)?;
        let model = self.model(&request.model)?;
        let dimension = model.info().dimension;
        let store = self.store.as_ref();
        let run = if request.run_id.is_empty() {
            records::latest_run(store, &model.name, dimension, brand)
                .await
                .map_err(store_status)?
                .ok_or_else(|| {
                    Status::not_found(format!("brand `{brand}` has no finished run yet"))
                })?
        } else {
            records::run(store, &model.name, dimension, brand, &request.run_id)
                .await
                .map_err(store_status)?
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "no finished run `{}` for brand `{brand}`",
                        request.run_id
                    ))
                })?
        };
        let trends = records::trends_of(store, &run, dimension)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListTrendsResponse {
            run: Some(run_message(&run)),
            trends: trends.into_iter().map(trend_message).collect(),
        }))
    }

    async fn get_trend(
        &self,
        request: Request<pb::GetTrendRequest>,
    ) -> Result<Response<pb::GetTrendResponse>, Status> {
        let access = Access::of(&request);
        let request = request.into_inner();
        let brand = required(&request.brand, "brand")?;
        access.allow(brand)?;
        let model = self.model(&request.model)?;
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size {n} is over the maximum of {MAX_PAGE}"
                )));
            }
            n => n,
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            Some(Uuid::parse_str(&request.page_token).map_err(|_| {
                Status::invalid_argument("`page_token` is not one this service handed out")
            })?)
        };
        let trend = self
            .find_trend(brand, &model, request.trend_id, &request.run_id)
            .await?;
        // Members are the signals the trend's run labelled with it (and no
        // later run relabelled).
        let filter = SignalFilter {
            brand: Some(brand.to_string()),
            fields: vec![
                ("cluster".into(), FieldValue::Integer(trend.trend_id)),
                (
                    "cluster_run".into(),
                    FieldValue::Keyword(trend.run_id.clone()),
                ),
            ],
            ..Default::default()
        };
        let collection = crate::signals::collection_name(&model.name);
        let (page, next) = self
            .store
            .scroll(&collection, &filter, after, page_size as usize, false)
            .await
            .map_err(store_status)?;
        let members = page
            .iter()
            .map(|point| pb::Member {
                signal: Some(stored_signal(&point.payload)),
                point_id: point.id.to_string(),
                probability: point
                    .payload
                    .get("cluster_prob")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0) as f32,
                assigned: point
                    .payload
                    .get("cluster_assigned")
                    .is_some_and(Value::is_number),
                assignment_score: point
                    .payload
                    .get("cluster_assigned")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0) as f32,
            })
            .collect();
        Ok(Response::new(pb::GetTrendResponse {
            trend: Some(trend_message(trend)),
            members,
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_default_to_the_pipelines_and_refuse_nonsense() {
        let (params, requested) = params_of(None).unwrap();
        assert_eq!(params, PipelineParams::default());
        assert_eq!(requested.selection, "eom");
        assert!(requested.reduce && requested.assign == "neighbours");
        let message = params_message(&requested);
        assert_eq!(message.reduce, Some(true));
        assert_eq!(
            params_of(Some(message)).unwrap().0,
            params,
            "a run's params, sent again, ask for the same"
        );
        let leaf = pb::ClusterParams {
            min_cluster_size: 5,
            min_samples: 3,
            selection: "leaf".into(),
            approximate: true,
            reduce: Some(false),
            assign: "neighbours".into(),
            merge_threshold: Some(0.9),
            max_trends: 20,
            ..Default::default()
        };
        let (params, requested) = params_of(Some(leaf)).unwrap();
        assert_eq!(
            (params.hdbscan.min_samples, params.hdbscan.selection),
            (Some(3), Selection::Leaf)
        );
        assert!(params.hdbscan.approximate && requested.approximate);
        assert_eq!(params.reduction, None);
        assert_eq!(
            params.assignment,
            Some(AssignmentParams {
                by: AssignBy::Neighbours,
                threshold: AssignmentParams::default_threshold(AssignBy::Neighbours)
            })
        );
        assert_eq!(
            params.merging,
            MergeParams {
                threshold: Some(0.9),
                max_trends: Some(20)
            }
        );
        assert!(
            params_message(&requested).approximate,
            "a run says it was approximate"
        );
        let off = pb::ClusterParams {
            assign: "off".into(),
            ..Default::default()
        };
        assert_eq!(params_of(Some(off)).unwrap().0.assignment, None);
        for bad in [
            pb::ClusterParams {
                min_cluster_size: 1,
                ..Default::default()
            },
            pb::ClusterParams {
                selection: "kmeans".into(),
                ..Default::default()
            },
            pb::ClusterParams {
                epsilon: f64::NAN,
                ..Default::default()
            },
            pb::ClusterParams {
                epsilon: -1.0,
                ..Default::default()
            },
            pb::ClusterParams {
                assign: "kmeans".into(),
                ..Default::default()
            },
            pb::ClusterParams {
                assign_threshold: Some(2.0),
                ..Default::default()
            },
            pb::ClusterParams {
                reduce_dimensions: 17,
                ..Default::default()
            },
            pb::ClusterParams {
                reduce_neighbours: 1,
                ..Default::default()
            },
            pb::ClusterParams {
                merge_threshold: Some(f32::NAN),
                ..Default::default()
            },
        ] {
            assert_eq!(
                params_of(Some(bad)).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
