//! The OpenAPI 3.1 document of `/api/v1`, generated from the handlers' and views'
//! annotations (`utoipa`), served at [`super::OPENAPI_PATH`] and kept in `docs/openapi.json`.
//!
//! Every operation but the document itself needs a bearer key and may answer 401, 403 or
//! 429 with a problem; those, the rate-limit headers and `Idempotency-Key` on POSTs are added
//! to every operation here rather than repeated on each handler.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::acts;
use super::problem::{Kind, Problem};
use super::reads;
use super::views::*;

#[derive(OpenApi)]
#[openapi(
    info(title = "tollgate", description = "The operators' API of tollgate: pipelines, releases, the event log, and the acts of approvers and operators. Authenticate with `Authorization: Bearer <key>` (keys are made with `tollgate keys create`)."),
    paths(
        reads::pipelines, reads::pipeline, reads::releases, reads::release, reads::events, reads::config,
        reads::history, reads::metrics,
        acts::approve, acts::reject, acts::pause, acts::resume, acts::rollback, acts::retry,
        acts::override_rule, acts::promote
    ),
    components(schemas(Problem, PipelineView, StageView, StageRelease, RunView, ReleaseRef, ReleaseStatus,
        ReleaseView, ReleasePage, ReleaseRun, DecisionView, ReleaseDetail, EventView, EventPage,
        ConfigView, LeaderView, Validation, Done, DecideBody, PauseBody, OverrideBody, OverrideWhich, PromoteBody, ReasonBody)),
    modifiers(&Common),
    security(("bearer" = [])),
    tags((name = "read", description = "Any valid key"), (name = "act", description = "Roles as documented per operation"))
)]
pub struct ApiDoc;

/// Adds what every operation shares.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key: `tg_…`"))
                    .build(),
            ),
        );
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                let post = op.request_body.is_some()
                    || op
                        .tags
                        .as_ref()
                        .is_some_and(|t| t.iter().any(|t| t == "act"));
                common(op, post);
            }
        }
    }
}

fn problem(description: &str, limited: bool) -> utoipa::openapi::Response {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Problem")))
        .build();
    let mut r = ResponseBuilder::new()
        .description(description)
        .content(super::problem::PROBLEM_JSON, content);
    if limited {
        r = r.header("Retry-After", header("Seconds to wait"));
    }
    r.build()
}

fn header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(utoipa::openapi::schema::Object::with_type(
            utoipa::openapi::schema::Type::Integer,
        ))
        .description(Some(description))
        .build()
}

fn common(op: &mut Operation, post: bool) {
    let kinds = |ks: &[Kind]| {
        ks.iter()
            .map(|k| format!("`{}`", k.uri()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let answers = [
        (
            "400",
            format!("Invalid request ({})", kinds(&[Kind::InvalidRequest])),
        ),
        (
            "401",
            format!(
                "Missing, unknown, revoked or expired key ({}); with `WWW-Authenticate: Bearer`",
                kinds(&[Kind::Unauthorized])
            ),
        ),
        (
            "403",
            format!(
                "The key's role may not ({})",
                kinds(&[Kind::Forbidden, Kind::OwnChange, Kind::NotAnApprover])
            ),
        ),
        (
            "404",
            format!(
                "No such pipeline, stage or release ({})",
                kinds(&[Kind::NotFound])
            ),
        ),
        (
            "429",
            format!(
                "Over the key's or the address's rate ({})",
                kinds(&[Kind::RateLimited])
            ),
        ),
        (
            "500",
            format!("The controller failed ({})", kinds(&[Kind::Internal])),
        ),
    ];
    for (code, text) in answers {
        if code == "403" && !post {
            continue;
        }
        op.responses
            .responses
            .insert(code.into(), problem(&text, code == "429").into());
    }
    if post {
        let conflict = kinds(&[
            Kind::Refused,
            Kind::Superseded,
            Kind::ApprovalClosed,
            Kind::AlreadyDecided,
            Kind::StaleCommit,
            Kind::IdempotencyInProgress,
        ]);
        op.responses.responses.insert(
            "409".into(),
            problem(
                &format!("The state refuses it; nothing changed ({conflict})"),
                false,
            )
            .into(),
        );
        let unprocessable = kinds(&[Kind::IdempotencyKeyReused, Kind::ImageNotFound]);
        op.responses.responses.insert(
            "422".into(),
            problem(&format!("Unprocessable ({unprocessable})"), false).into(),
        );
        op.responses.responses.insert(
            "503".into(),
            problem(
                &format!(
                    "A service the answer needs did not answer ({})",
                    kinds(&[Kind::Unavailable])
                ),
                false,
            )
            .into(),
        );
        let param = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "A repeat with the same key gets the first answer and changes nothing",
            ))
            .schema(Some(utoipa::openapi::schema::Object::with_type(
                utoipa::openapi::schema::Type::String,
            )))
            .build();
        op.parameters.get_or_insert_with(Vec::new).push(param);
    }
    for (_, response) in op.responses.responses.iter_mut() {
        if let utoipa::openapi::RefOr::T(r) = response {
            for (name, text) in [
                ("X-RateLimit-Limit", "Requests the tighter bucket holds"),
                ("X-RateLimit-Remaining", "Requests left in it now"),
                ("X-RateLimit-Reset", "Seconds until it is full again"),
            ] {
                r.headers.insert(name.into(), header(text));
            }
        }
    }
}

/// The document, as served and as committed in `docs/openapi.json`.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.to_pretty_json().unwrap_or_default() + "\n"
}

/// `GET /api/v1/openapi.json`.
pub async fn serve() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
}
