//! The read routes of `/api/v1`: any valid key may call them; they never change state.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};

use super::ApiState;
use super::problem::{Kind, Problem};
use super::views::*;
use crate::config::Pipeline;
use crate::domain::ReleaseId;
use crate::store::browse::{EventFilter, Overview, ReleaseFilter};

/// Releases read per batch while filtering by status.
const SCAN_BATCH: i64 = 200;
/// The most releases one listing reads while filtering by status.
const SCAN_MAX: usize = 5_000;

type Answer<T> = Result<Json<T>, Problem>;

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    q.map(|Query(t)| t)
        .map_err(|e| Problem::new(Kind::InvalidRequest, e.body_text()))
}

/// Every pipeline with its stages.
#[utoipa::path(get, path = "/api/v1/pipelines", tag = "read",
    responses((status = 200, description = "Every pipeline, in the configuration's order", body = Vec<PipelineView>)))]
pub async fn pipelines(State(api): State<ApiState>) -> Answer<Vec<PipelineView>> {
    let config = api.engine.config();
    let overview = api
        .engine
        .reads()
        .overview()
        .await
        .map_err(Problem::internal)?;
    let now = api.engine.now();
    let views = config
        .pipelines
        .iter()
        .map(|p| pipeline_view(&overview, p, now));
    Ok(Json(views.collect()))
}

/// One pipeline with its stages.
#[utoipa::path(get, path = "/api/v1/pipelines/{pipeline}", tag = "read",
    params(("pipeline" = String, Path, description = "The pipeline's name")),
    responses((status = 200, description = "The pipeline", body = PipelineView)))]
pub async fn pipeline(
    State(api): State<ApiState>,
    Path(name): Path<String>,
) -> Answer<PipelineView> {
    let config = api.engine.config();
    let p = api.pipeline(&config, &name)?;
    let overview = api
        .engine
        .reads()
        .overview()
        .await
        .map_err(Problem::internal)?;
    Ok(Json(pipeline_view(&overview, p, api.engine.now())))
}

/// One pipeline's view from the store's overview, with reasons rendered as of `now` (also
/// what `tollgate status` shows).
pub fn pipeline_view(
    o: &Overview,
    p: &Pipeline,
    now: chrono::DateTime<chrono::Utc>,
) -> PipelineView {
    let stages = p.stages.iter().map(|s| {
        let key = (p.name.to_string(), s.name.to_string());
        let flight = o.in_flight.get(&key).and_then(|f| f.first());
        StageView {
            name: s.name.to_string(),
            paused: o.stage_paused.get(&key).cloned(),
            known_good: o.known_good.get(&key).map(ReleaseRef::of),
            current: flight.map(|(r, run)| StageRelease {
                release: ReleaseRef::of(r),
                run: RunView::of(run, now),
            }),
        }
    });
    PipelineView {
        name: p.name.to_string(),
        paused: o.pipeline_paused.get(p.name.as_str()).cloned(),
        stages: stages.collect(),
    }
}

/// Releases, newest first, filtered and paginated.
#[utoipa::path(get, path = "/api/v1/releases", tag = "read", params(ReleaseQuery),
    responses((status = 200, description = "A page of releases", body = ReleasePage)))]
pub async fn releases(
    State(api): State<ApiState>,
    q: Result<Query<ReleaseQuery>, QueryRejection>,
) -> Answer<ReleasePage> {
    let q = query(q)?;
    let limit = limit(q.limit, 20, 100)?;
    if let Some(sha) = &q.sha {
        if sha.len() < 4 || sha.len() > 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Problem::new(
                Kind::InvalidRequest,
                "`sha` is a commit sha or its first characters (4 to 64 hex digits)",
            ));
        }
    }
    let before = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<ReleaseId>().map_err(|_| {
            Problem::new(
                Kind::InvalidRequest,
                "`cursor` is a `next_cursor` of a page",
            )
        })?),
    };
    let mut filter = ReleaseFilter {
        pipeline: q.pipeline.clone(),
        sha_prefix: q.sha.clone(),
        before,
    };
    let reads = api.engine.reads();
    let (mut out, mut scanned, mut last_batch_full) = (Vec::new(), 0usize, true);
    while out.len() < limit as usize && last_batch_full && scanned < SCAN_MAX {
        let batch = if q.status.is_some() {
            SCAN_BATCH
        } else {
            limit
        };
        let page = reads
            .releases_page(&filter, batch)
            .await
            .map_err(Problem::internal)?;
        last_batch_full = page.len() as i64 == batch;
        scanned += page.len();
        for r in page {
            filter.before = Some(r.id);
            let runs = reads.stage_runs_of(r.id).await.map_err(Problem::internal)?;
            let view = ReleaseView::of(&r, &runs);
            if q.status.is_none_or(|s| s == view.status) {
                out.push(view);
                if out.len() == limit as usize {
                    break;
                }
            }
        }
    }
    let more = out.len() == limit as usize || (last_batch_full && q.status.is_some());
    let next_cursor = filter.before.filter(|_| more).map(|r| r.to_string());
    Ok(Json(ReleasePage {
        releases: out,
        next_cursor,
    }))
}

/// One release with its run in each stage.
#[utoipa::path(get, path = "/api/v1/releases/{release}", tag = "read",
    params(("release" = String, Path, description = "`r12` or `12`")),
    responses((status = 200, description = "The release and its runs", body = ReleaseDetail)))]
pub async fn release(State(api): State<ApiState>, Path(id): Path<String>) -> Answer<ReleaseDetail> {
    let id = release_id(&id)?;
    let reads = api.engine.reads();
    let Some(r) = reads.release(id).await.map_err(Problem::internal)? else {
        return Err(Problem::new(
            Kind::NotFound,
            format!("there is no release {id}"),
        ));
    };
    let mut runs = reads.stage_runs_of(id).await.map_err(Problem::internal)?;
    let config = api.engine.config();
    if let Some(p) = config.pipeline(&r.pipeline) {
        p.sort_runs(&mut runs);
    }
    let now = api.engine.now();
    let mut out = Vec::with_capacity(runs.len());
    for run in &runs {
        let decisions = reads
            .approvals_of(id, &run.stage)
            .await
            .map_err(Problem::internal)?;
        out.push(ReleaseRun {
            run: RunView::of(run, now),
            decisions: decisions.iter().map(DecisionView::of).collect(),
        });
    }
    Ok(Json(ReleaseDetail {
        release: ReleaseView::of(&r, &runs),
        runs: out,
    }))
}

/// The event log, oldest first, filtered.
#[utoipa::path(get, path = "/api/v1/events", tag = "read", params(EventQuery),
    responses((status = 200, description = "A page of events", body = EventPage)))]
pub async fn events(
    State(api): State<ApiState>,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Answer<EventPage> {
    let q = query(q)?;
    let limit = limit(q.limit, 100, 1000)?;
    let release = q.release.as_deref().map(release_id).transpose()?;
    let filter = EventFilter {
        pipeline: q.pipeline,
        after: q.after,
        since: q.since,
        kind: q.kind,
        release,
        stage: q.stage,
    };
    let page = api
        .engine
        .reads()
        .events_page(&filter, limit)
        .await
        .map_err(Problem::internal)?;
    let next_after = page
        .last()
        .map(|e| e.event.id)
        .filter(|_| page.len() as i64 == limit);
    let events = page
        .into_iter()
        .map(|e| EventView::of(e.pipeline, e.event))
        .collect();
    Ok(Json(EventPage { events, next_after }))
}

/// A pipeline's newest events, oldest first: what `tollgate history` shows. A pipeline no
/// longer in the configuration keeps its log, so any name is answered (an unknown one with
/// an empty list).
#[utoipa::path(get, path = "/api/v1/pipelines/{pipeline}/history", tag = "read",
    params(("pipeline" = String, Path, description = "The pipeline's name"), HistoryQuery),
    responses((status = 200, description = "The newest events, oldest first", body = Vec<EventView>)))]
pub async fn history(
    State(api): State<ApiState>,
    Path(pipeline): Path<String>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Answer<Vec<EventView>> {
    let limit = limit(query(q)?.limit, 200, 5_000)?;
    let rows = api
        .engine
        .reads()
        .events(&pipeline, limit)
        .await
        .map_err(Problem::internal)?;
    let events = rows.into_iter().map(|e| EventView::of(pipeline.clone(), e));
    Ok(Json(events.collect()))
}

/// The configuration in force, and whether its source validates.
///
/// The source is the one this controller runs: the file, or the commit it carries (the one
/// recorded, or an earlier one it keeps while it waits for the leader or keeps its
/// configuration over a commit refused). The file is read and validated again; the commit
/// recorded is answered as this controller found it when it loaded the commit (a commit never
/// changes), an earlier one from its files as written then; a read writes nothing.
#[utoipa::path(get, path = "/api/v1/config", tag = "read",
    responses((status = 200, description = "The configuration in force", body = ConfigView)))]
pub async fn config(State(api): State<ApiState>) -> Answer<ConfigView> {
    let config = api.engine.config();
    let applied = api
        .engine
        .reads()
        .applied_config()
        .await
        .map_err(Problem::internal)?
        // The commit recorded, if it is the one in force here (a standby waiting for the
        // leader, or a leader keeping its configuration over it, runs another).
        .filter(|a| config.applied_from.as_ref() == Some(&a.commit()));
    let validation = match &applied {
        Some(a) => match crate::github::commit_files::validation(a) {
            Ok(warnings) => Validation {
                valid: true,
                errors: vec![],
                warnings,
            },
            Err(e) => Validation {
                valid: false,
                errors: vec![e],
                warnings: vec![],
            },
        },
        None => match crate::config::load(&config.source_file) {
            Ok(l) => Validation {
                valid: true,
                errors: vec![],
                warnings: l.warnings.iter().map(ToString::to_string).collect(),
            },
            Err(e) => Validation {
                valid: false,
                errors: e.to_string().lines().map(str::to_owned).collect(),
                warnings: vec![],
            },
        },
    };
    // The commit this controller runs, when it runs one: the one recorded, or one it keeps
    // over it (its path and time of applying are no longer in the state).
    let commit = config.applied_from.as_ref();
    Ok(Json(ConfigView {
        source: if commit.is_some() {
            "repository"
        } else {
            "file"
        }
        .into(),
        leader: api
            .engine
            .reads()
            .lease()
            .await
            .map_err(Problem::internal)?
            .map(LeaderView::from),
        file: config.source_file.display().to_string(),
        repository: commit.map(|c| c.repository.clone()),
        commit: commit.map(|c| c.sha.to_string()),
        path: applied.as_ref().map(|a| a.path.clone()),
        applied_at: applied.as_ref().map(|a| a.applied_at),
        pipelines: config
            .pipelines
            .iter()
            .map(|p| p.name.to_string())
            .collect(),
        validation,
    }))
}

/// A page size: `given` within 1..=`max`, `default` when absent, or a 400.
fn limit(given: Option<i64>, default: i64, max: i64) -> Result<i64, Problem> {
    let limit = given.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        let why = format!("`limit` is 1 to {max}");
        return Err(Problem::new(Kind::InvalidRequest, why));
    }
    Ok(limit)
}

/// `r12` or `12`, or a 400.
pub fn release_id(text: &str) -> Result<ReleaseId, Problem> {
    text.parse::<ReleaseId>()
        .map_err(|e| Problem::new(Kind::InvalidRequest, e))
}

/// The controller's Prometheus metrics (the text `--metrics-listen` serves), for any valid key.
#[utoipa::path(get, path = "/metrics", tag = "read",
    responses((status = 200, description = "The metrics in the OpenMetrics text format",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
pub async fn metrics() -> impl axum::response::IntoResponse {
    crate::http::metrics::metrics().await
}
