//! Scripted stub servers speaking AWS wire protocols for what moto cannot produce.
//!
//! Owns the stand-ins for moto's documented gaps (CloudWatch over RPCv2 CBOR, CloudFormation
//! and CodePipeline behaviour moto does not model, ECR's answer for a tag in use in a
//! repository with immutable tags, SNS email subscriptions pending confirmation). Each stub
//! follows the service's documented rules, not only its wire format, and says in a comment
//! which gap it covers. Must never: be linked into the controller's binary (this crate is a
//! dev-dependency), or listen beyond loopback.

pub mod cloudwatch {
    //! A scripted CloudWatch server on loopback: alarm states (`DescribeAlarms`) and metric
    //! data (`GetMetricData`).
    //!
    //! Covers two moto 5.2.5 gaps: the current AWS SDK for Rust calls CloudWatch over RPCv2
    //! CBOR, which moto does not serve, and moto cannot be told to throttle.
    //!
    //! `DescribeAlarms` describes each metric alarm with what it watches (`Namespace`,
    //! `MetricName`, `Dimensions`, `Period`, `Statistic` or `ExtendedStatistic`), or with its
    //! `Metrics` for a metric-math alarm, and each composite alarm with its `AlarmRule`. With
    //! `ChildrenOfAlarmName` it follows the API reference
    //! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_DescribeAlarms.html>):
    //! the alarms the composite's rule names, not the composite itself, with only their name,
    //! ARN, `StateValue` and `StateUpdatedTimestamp`; any other parameter but `MaxRecords` and
    //! `NextToken` beside it is a `ValidationError`. `GetMetricData` follows the API reference
    //! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_GetMetricData.html>):
    //! 1 to 500 queries, each `Id` unique and starting with a lowercase letter, each query
    //! either a `MetricStat` or an `Expression`; `EndTime` after `StartTime` (else
    //! `ValidationError`); `StartTime` inclusive and `EndTime` exclusive; a `Period` of 1, 5,
    //! 10, 30 or a multiple of 60; the start rounded down as documented for recent data (to a
    //! whole minute for periods of 60 s or more, to the period's division of a minute below);
    //! one data point per period that has samples, stamped with the period's start and
    //! aggregated with the query's statistic (`SampleCount`, `Sum`, `Average`, `Minimum`,
    //! `Maximum`, `pNN`); only queries with `ReturnData` (default true) answered;
    //! `TimestampDescending` unless `ScanBy` says `TimestampAscending`. Not modelled: paging
    //! (`MaxDatapoints`, `NextToken`: every data point comes in one page), data retention, and
    //! metric math beyond an id alone or two ids joined by `+ - * /` (computed at the
    //! timestamps both have; anything else is a `ValidationError` naming the stub's limit).
    //!
    //! Speaks RPCv2 CBOR: `POST /service/GraniteServiceVersion20100801/operation/DescribeAlarms`
    //! with `Content-Type: application/cbor`; answers with `smithy-protocol: rpc-v2-cbor` (the SDK
    //! rejects a response without it), timestamps as CBOR tag 1 (epoch seconds), and errors as
    //! HTTP 400 with a map holding `__type` and `message` plus CloudWatch's query-compatible
    //! `x-amzn-query-error` header. It also answers the awsQuery form of the same calls (`POST
    //! /`, `Action=DescribeAlarms` or `Action=GetMetricData`, answered in XML), which SDK
    //! releases for older compilers still send, so one script serves whichever the resolved SDK
    //! speaks: a query request is read into the value its CBOR form would carry, and the same
    //! output value is written as CBOR or XML.
    //!
    //! Tests set alarm states by name, make the next N calls throttle, and read back every call
    //! with the access key and region of its SigV4 credential scope. Never used by the controller
    //! at run time; binds 127.0.0.1 only.

    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::{Arc, Mutex};
    use std::time::{SystemTime, UNIX_EPOCH};

    use anyhow::Context as _;
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use ciborium::Value;

    const CBOR_PATH: &str = "/service/GraniteServiceVersion20100801/operation/{op}";
    const ACCOUNT: &str = "123456789012";

    /// One request the stub received.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Call {
        /// `DescribeAlarms`, or whatever else was asked.
        pub operation: String,
        /// `cbor` or `query`.
        pub protocol: &'static str,
        /// From the SigV4 `Authorization` header: which credentials (account) signed it.
        pub access_key_id: Option<String>,
        /// The region of the SigV4 credential scope.
        pub region: Option<String>,
        pub alarm_names: Vec<String>,
        /// `DescribeAlarms` `ChildrenOfAlarmName`.
        pub children_of: Option<String>,
        /// `GetMetricData`: the query ids, and `StartTime` in epoch milliseconds.
        pub query_ids: Vec<String>,
        pub start_ms: Option<i64>,
    }

    /// A metric, one statistic of it, over one period: what a metric alarm watches.
    #[derive(Debug, Clone, PartialEq)]
    pub struct MetricSpec {
        pub namespace: String,
        pub name: String,
        pub dimensions: Vec<(String, String)>,
        /// Seconds.
        pub period: i64,
        /// `Sum`, `Average`, `SampleCount`, `Minimum`, `Maximum` or `pNN`.
        pub stat: String,
    }

    impl MetricSpec {
        /// `Sum` over 60 s of `Tollgate/Stub` `name`, no dimensions.
        pub fn sum(name: &str) -> MetricSpec {
            MetricSpec {
                namespace: "Tollgate/Stub".into(),
                name: name.into(),
                dimensions: Vec::new(),
                period: 60,
                stat: "Sum".into(),
            }
        }

        fn key(&self) -> MetricKey {
            let mut dims = self.dimensions.clone();
            dims.sort();
            (self.namespace.clone(), self.name.clone(), dims)
        }
    }

    /// One query of a metric-math alarm: a metric, or an expression over other ids.
    #[derive(Debug, Clone, PartialEq)]
    pub struct MathQuery {
        pub id: String,
        pub metric: Option<MetricSpec>,
        pub expression: Option<String>,
        pub return_data: bool,
    }

    /// What an alarm watches.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Watches {
        Metric(MetricSpec),
        Math(Vec<MathQuery>),
        /// A composite alarm: the alarms its `AlarmRule` names (served as `ALARM("a") OR
        /// ALARM("b")`), no metric.
        Alarms(Vec<String>),
    }

    impl Watches {
        fn composite(&self) -> bool {
            matches!(self, Watches::Alarms(_))
        }
    }

    #[derive(Debug, Clone)]
    struct Alarm {
        state: String,
        since: f64,
        watches: Watches,
        /// `EvaluationPeriods` and `DatapointsToAlarm` (unset: the same as `EvaluationPeriods`).
        evaluation: (i64, Option<i64>),
    }

    /// (namespace, metric name, dimensions).
    type MetricKey = (String, String, Vec<(String, String)>);

    #[derive(Debug, Default)]
    struct Script {
        alarms: BTreeMap<String, Alarm>,
        /// Raw samples per metric: (epoch seconds, value).
        samples: BTreeMap<MetricKey, Vec<(f64, f64)>>,
        throttles: u32,
        /// The next this many `ChildrenOfAlarmName` calls throttle.
        children_throttles: u32,
        calls: Vec<Call>,
    }

    type Shared = Arc<Mutex<Script>>;

    /// What one call gets.
    enum Reply {
        Alarms(Vec<(String, Alarm)>),
        /// `ChildrenOfAlarmName`: name, ARN, state and its time only.
        Children(Vec<(String, Alarm)>),
        Data(Value),
        Invalid(String),
        Throttled,
        UnknownOperation(String),
    }

    /// The running stub; stops when dropped.
    #[derive(Debug)]
    pub struct CloudWatchStub {
        addr: SocketAddr,
        script: Shared,
        server: tokio::task::JoinHandle<()>,
    }

    impl CloudWatchStub {
        /// Starts on a free loopback port, in the current tokio runtime.
        pub async fn start() -> anyhow::Result<Self> {
            let script = Shared::default();
            let app = Router::new()
                .route(CBOR_PATH, post(cbor_call))
                .route("/", post(query_call))
                .with_state(script.clone());
            let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .context("binding the CloudWatch stub")?;
            let addr = listener.local_addr()?;
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Ok(Self {
                addr,
                script,
                server,
            })
        }

        /// `http://127.0.0.1:<port>`.
        pub fn endpoint(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// Creates or changes an alarm: `OK`, `ALARM` or `INSUFFICIENT_DATA`. A new alarm
        /// watches [`MetricSpec::sum`] of its own name; an existing one keeps what it watches.
        pub fn set_alarm(&self, name: &str, state: &str) {
            let watches = self
                .lock()
                .alarms
                .get(name)
                .map(|a| a.watches.clone())
                .unwrap_or_else(|| Watches::Metric(MetricSpec::sum(name)));
            self.set_alarm_watching(name, state, watches);
        }

        /// Creates or changes an alarm watching `watches`.
        pub fn set_alarm_watching(&self, name: &str, state: &str, watches: Watches) {
            let mut script = self.lock();
            let evaluation = script.alarms.get(name).map_or((1, None), |a| a.evaluation);
            let alarm = Alarm {
                state: state.to_owned(),
                since: epoch_now(),
                watches,
                evaluation,
            };
            script.alarms.insert(name.to_owned(), alarm);
        }

        /// Sets a metric alarm's `EvaluationPeriods` and `DatapointsToAlarm` (default 1 and
        /// unset), as `PutMetricAlarm` would.
        pub fn set_evaluation(&self, name: &str, periods: i64, datapoints_to_alarm: Option<i64>) {
            if let Some(alarm) = self.lock().alarms.get_mut(name) {
                alarm.evaluation = (periods, datapoints_to_alarm);
            }
        }

        /// Records raw samples of a metric: (epoch seconds, value), as `PutMetricData` would.
        pub fn put_samples(&self, metric: &MetricSpec, samples: &[(f64, f64)]) {
            let mut script = self.lock();
            let series = script.samples.entry(metric.key()).or_default();
            series.extend_from_slice(samples);
        }

        /// Records one sample of value 1 on the metric alarm `alarm` watches, at each of
        /// `times` (epoch seconds).
        pub fn put_alarm_samples(&self, alarm: &str, times: &[f64]) {
            let watched = self.lock().alarms.get(alarm).map(|a| a.watches.clone());
            let Some(Watches::Metric(metric)) = watched else {
                panic!("alarm {alarm} watches no single metric");
            };
            let samples: Vec<(f64, f64)> = times.iter().map(|t| (*t, 1.0)).collect();
            self.put_samples(&metric, &samples);
        }

        /// A handle on this stub's alarm states, for another stub in the same test to read
        /// (the CloudFormation stub's rollback triggers); it sees every later `set_alarm`.
        pub fn states(&self) -> AlarmStates {
            AlarmStates(self.script.clone())
        }

        /// The next `times` calls fail with a throttling error.
        pub fn throttle(&self, times: u32) {
            self.lock().throttles = times;
        }

        /// The next `times` `DescribeAlarms` calls with `ChildrenOfAlarmName` fail with a
        /// throttling error (the others are answered).
        pub fn throttle_children(&self, times: u32) {
            self.lock().children_throttles = times;
        }

        /// Every call so far, oldest first.
        pub fn calls(&self) -> Vec<Call> {
            self.lock().calls.clone()
        }

        /// Calls so far per signing access key id (one key per emulated account).
        pub fn calls_by_access_key(&self) -> BTreeMap<String, usize> {
            let mut counts = BTreeMap::new();
            for call in self.lock().calls.iter() {
                let key = call.access_key_id.clone().unwrap_or_default();
                *counts.entry(key).or_default() += 1;
            }
            counts
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
            self.script.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// Read-only view of a [`CloudWatchStub`]'s alarms, shared with it.
    #[derive(Debug, Clone)]
    pub struct AlarmStates(Shared);

    impl AlarmStates {
        /// `OK`, `ALARM` or `INSUFFICIENT_DATA`; `None` for an alarm that does not exist.
        pub fn state(&self, name: &str) -> Option<String> {
            let script = self.0.lock().unwrap_or_else(|e| e.into_inner());
            script.alarms.get(name).map(|a| a.state.clone())
        }

        /// Whether the alarm is a composite alarm; `None` for an alarm that does not exist.
        pub fn composite(&self, name: &str) -> Option<bool> {
            let script = self.0.lock().unwrap_or_else(|e| e.into_inner());
            script.alarms.get(name).map(|a| a.watches.composite())
        }
    }

    impl Drop for CloudWatchStub {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    fn epoch_now() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// Records the call and decides its reply from the script; `body` is a CBOR request's.
    fn answer(script: &Shared, call: Call, body: Option<&Value>) -> Reply {
        let mut script = script.lock().unwrap_or_else(|e| e.into_inner());
        script.calls.push(call.clone());
        if !matches!(call.operation.as_str(), "DescribeAlarms" | "GetMetricData")
            || (call.operation == "GetMetricData" && body.is_none())
        {
            return Reply::UnknownOperation(call.operation);
        }
        if script.throttles > 0 {
            script.throttles -= 1;
            return Reply::Throttled;
        }
        if let Some(body) = body.filter(|_| call.operation == "GetMetricData") {
            return match metric_data::answer(&script.samples, body) {
                Ok(v) => Reply::Data(v),
                Err(e) => Reply::Invalid(e),
            };
        }
        if let Some(parent) = &call.children_of {
            if script.children_throttles > 0 {
                script.children_throttles -= 1;
                return Reply::Throttled;
            }
            return children(&script, parent, body);
        }
        let wanted = |name: &String| call.alarm_names.is_empty() || call.alarm_names.contains(name);
        let found = script.alarms.iter().filter(|(name, _)| wanted(name));
        Reply::Alarms(found.map(|(n, a)| (n.clone(), a.clone())).collect())
    }

    /// `DescribeAlarms` with `ChildrenOfAlarmName`, as API_DescribeAlarms documents it: the
    /// alarms the composite alarm's `AlarmRule` names (not the composite itself; none for a
    /// metric alarm or a name that does not exist), and a `ValidationError` when the request
    /// has any parameter but `MaxRecords` and `NextToken` besides.
    fn children(script: &Script, parent: &str, body: Option<&Value>) -> Reply {
        let allowed = ["ChildrenOfAlarmName", "MaxRecords", "NextToken"];
        let others: Vec<&str> = body
            .and_then(Value::as_map)
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.as_text())
            .filter(|k| !allowed.contains(k))
            .collect();
        if !others.is_empty() {
            return Reply::Invalid(format!(
                "ChildrenOfAlarmName cannot be combined with {}",
                others.join(", ")
            ));
        }
        let named = match script.alarms.get(parent).map(|a| &a.watches) {
            Some(Watches::Alarms(names)) => names.clone(),
            _ => Vec::new(),
        };
        let found = named
            .iter()
            .filter_map(|n| script.alarms.get(n).map(|a| (n.clone(), a.clone())));
        Reply::Children(found.collect())
    }

    /// `AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/monitoring/aws4_request, …`
    /// → (`AKID`, `us-east-1`).
    fn signer(headers: &HeaderMap) -> (Option<String>, Option<String>) {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let scope = auth
            .and_then(|a| a.split_once("Credential="))
            .map(|(_, c)| c);
        let mut parts = scope.unwrap_or_default().split('/');
        let key = parts.next().filter(|k| !k.is_empty()).map(str::to_owned);
        let region = parts.nth(1).map(str::to_owned);
        (key, region)
    }

    fn alarm_arn(region: Option<&str>, name: &str) -> String {
        let region = region.unwrap_or("us-east-1");
        format!("arn:aws:cloudwatch:{region}:{ACCOUNT}:alarm:{name}")
    }

    fn reason(state: &str) -> String {
        format!("Threshold Crossed: scripted state {state}")
    }

    // ---- RPCv2 CBOR ----

    async fn cbor_call(
        State(script): State<Shared>,
        Path(op): Path<String>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let protocol = headers.get("smithy-protocol").and_then(|v| v.to_str().ok());
        if protocol != Some("rpc-v2-cbor") {
            return cbor_error(
                "ValidationError",
                "smithy-protocol must be rpc-v2-cbor",
                "Sender",
            );
        }
        let input = match cbor_input(&body) {
            Ok(input) => input,
            Err(e) => return cbor_error("SerializationException", &e, "Sender"),
        };
        let (access_key_id, region) = signer(&headers);
        let call = Call {
            operation: op,
            protocol: "cbor",
            access_key_id,
            region: region.clone(),
            alarm_names: texts(field(&input, "AlarmNames")),
            children_of: field(&input, "ChildrenOfAlarmName")
                .and_then(Value::as_text)
                .map(str::to_owned),
            query_ids: metric_data::query_ids(&input),
            start_ms: field(&input, "StartTime")
                .and_then(metric_data::epoch)
                .map(|t| (t * 1000.0).round() as i64),
        };
        match answer(&script, call, Some(&input)) {
            Reply::Alarms(alarms) => cbor_alarms(region.as_deref(), &alarms, false),
            Reply::Children(alarms) => cbor_alarms(region.as_deref(), &alarms, true),
            Reply::Data(v) => cbor_response(StatusCode::OK, &v, None),
            Reply::Invalid(e) => cbor_error("ValidationError", &e, "Sender"),
            Reply::Throttled => cbor_error("ThrottlingException", "Rate exceeded", "Sender"),
            Reply::UnknownOperation(op) => cbor_error(
                "UnknownOperationException",
                &format!("the stub does not serve {op}"),
                "Sender",
            ),
        }
    }

    /// A CBOR request body as a map (an empty body is an empty input).
    fn cbor_input(body: &[u8]) -> Result<Value, String> {
        if body.is_empty() {
            return Ok(Value::Map(Vec::new()));
        }
        let value: Value = ciborium::from_reader(body).map_err(|e| format!("bad CBOR: {e}"))?;
        match value {
            Value::Map(_) => Ok(value),
            _ => Err("the request body is not a CBOR map".into()),
        }
    }

    /// The member `name` of a CBOR map.
    fn field<'a>(map: &'a Value, name: &str) -> Option<&'a Value> {
        map.as_map()?
            .iter()
            .find(|(k, _)| k.as_text() == Some(name))
            .map(|(_, v)| v)
    }

    /// The strings of a CBOR array (none when absent).
    fn texts(v: Option<&Value>) -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_text().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    /// The statistics `Statistic` names; anything else (`p99`) is an `ExtendedStatistic`.
    const STATISTICS: [&str; 5] = ["SampleCount", "Average", "Sum", "Minimum", "Maximum"];

    fn cbor_metric(m: &MetricSpec) -> Value {
        let dims = m
            .dimensions
            .iter()
            .map(|(n, v)| Value::Map(vec![(text("Name"), text(n)), (text("Value"), text(v))]));
        Value::Map(vec![
            (text("Namespace"), text(&m.namespace)),
            (text("MetricName"), text(&m.name)),
            (text("Dimensions"), Value::Array(dims.collect())),
        ])
    }

    /// What a metric alarm watches, as `DescribeAlarms` describes it.
    fn cbor_watches(m: &Watches) -> Vec<(Value, Value)> {
        match m {
            Watches::Metric(m) => {
                let mut fields = match cbor_metric(m) {
                    Value::Map(f) => f,
                    _ => Vec::new(),
                };
                let stat_key = if STATISTICS.contains(&m.stat.as_str()) {
                    "Statistic"
                } else {
                    "ExtendedStatistic"
                };
                fields.push((text(stat_key), text(&m.stat)));
                fields.push((text("Period"), Value::Integer(m.period.into())));
                fields
            }
            Watches::Math(queries) => {
                let queries = queries.iter().map(|q| {
                    let mut f = vec![(text("Id"), text(&q.id))];
                    if let Some(m) = &q.metric {
                        let stat = Value::Map(vec![
                            (text("Metric"), cbor_metric(m)),
                            (text("Period"), Value::Integer(m.period.into())),
                            (text("Stat"), text(&m.stat)),
                        ]);
                        f.push((text("MetricStat"), stat));
                    }
                    if let Some(e) = &q.expression {
                        f.push((text("Expression"), text(e)));
                    }
                    f.push((text("ReturnData"), Value::Bool(q.return_data)));
                    Value::Map(f)
                });
                vec![(text("Metrics"), Value::Array(queries.collect()))]
            }
            Watches::Alarms(names) => {
                let rule: Vec<String> = names.iter().map(|n| format!("ALARM(\"{n}\")")).collect();
                vec![(text("AlarmRule"), text(&rule.join(" OR ")))]
            }
        }
    }

    fn cbor_alarms(region: Option<&str>, alarms: &[(String, Alarm)], brief: bool) -> Response {
        cbor_response(StatusCode::OK, &alarms_value(region, alarms, brief), None)
    }

    /// The `DescribeAlarms` output, in either protocol's shape; `brief`: name, ARN, state and
    /// its time only (what `ChildrenOfAlarmName` returns).
    fn alarms_value(region: Option<&str>, alarms: &[(String, Alarm)], brief: bool) -> Value {
        let one = |name: &String, alarm: &Alarm| {
            let since = Value::Tag(1, Box::new(Value::Float(alarm.since)));
            let mut fields = vec![
                (text("AlarmName"), text(name)),
                (text("AlarmArn"), text(&alarm_arn(region, name))),
                (text("StateValue"), text(&alarm.state)),
                (text("StateUpdatedTimestamp"), since),
            ];
            if brief {
                return Value::Map(fields);
            }
            fields.push((text("StateReason"), text(&reason(&alarm.state))));
            fields.extend(cbor_watches(&alarm.watches));
            if !alarm.watches.composite() {
                let (periods, to_alarm) = alarm.evaluation;
                fields.push((text("EvaluationPeriods"), Value::Integer(periods.into())));
                if let Some(n) = to_alarm {
                    fields.push((text("DatapointsToAlarm"), Value::Integer(n.into())));
                }
                fields.push((text("Threshold"), Value::Float(0.0)));
                fields.push((text("ComparisonOperator"), text("GreaterThanThreshold")));
            }
            Value::Map(fields)
        };
        let (composite, metric): (Vec<_>, Vec<_>) =
            alarms.iter().partition(|(_, a)| a.watches.composite());
        let metric_alarms = metric.iter().map(|(n, a)| one(n, a));
        let composite_alarms = composite.iter().map(|(n, a)| one(n, a));
        Value::Map(vec![
            (text("MetricAlarms"), Value::Array(metric_alarms.collect())),
            (
                text("CompositeAlarms"),
                Value::Array(composite_alarms.collect()),
            ),
        ])
    }

    /// An RPCv2 CBOR error: HTTP 400, `__type` and `message`, and the awsQuery code and fault
    /// in `x-amzn-query-error` as CloudWatch (a query-compatible service) sends them.
    fn cbor_error(code: &str, message: &str, fault: &str) -> Response {
        let body = Value::Map(vec![
            (
                text("__type"),
                text(&format!("com.amazonaws.cloudwatch#{code}")),
            ),
            (text("message"), text(message)),
        ]);
        let query_code = code.strip_suffix("Exception").unwrap_or(code);
        let query_error = format!("{query_code};{fault}");
        cbor_response(StatusCode::BAD_REQUEST, &body, Some(query_error))
    }

    fn cbor_response(status: StatusCode, body: &Value, query_error: Option<String>) -> Response {
        let mut bytes = Vec::new();
        if let Err(e) = ciborium::into_writer(body, &mut bytes) {
            return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
        }
        let mut response = (
            status,
            [
                (header::CONTENT_TYPE, "application/cbor"),
                (
                    header::HeaderName::from_static("smithy-protocol"),
                    "rpc-v2-cbor",
                ),
            ],
            bytes,
        )
            .into_response();
        if let Some(value) = query_error.and_then(|v| v.parse().ok()) {
            response.headers_mut().insert("x-amzn-query-error", value);
        }
        response
    }

    // ---- awsQuery ----

    async fn query_call(State(script): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
        let action = form
            .iter()
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let input = match query_input(&form) {
            Ok(input) => input,
            Err(e) => return query_error("ValidationError", &e),
        };
        let (access_key_id, region) = signer(&headers);
        let call = Call {
            operation: action.clone(),
            protocol: "query",
            access_key_id,
            region: region.clone(),
            alarm_names: texts(field(&input, "AlarmNames")),
            children_of: field(&input, "ChildrenOfAlarmName")
                .and_then(Value::as_text)
                .map(str::to_owned),
            query_ids: metric_data::query_ids(&input),
            start_ms: field(&input, "StartTime")
                .and_then(metric_data::epoch)
                .map(|t| (t * 1000.0).round() as i64),
        };
        match answer(&script, call, Some(&input)) {
            Reply::Alarms(alarms) => {
                let result = alarms_value(region.as_deref(), &alarms, false);
                xml_response(StatusCode::OK, query_result("DescribeAlarms", &result))
            }
            Reply::Children(alarms) => {
                let result = alarms_value(region.as_deref(), &alarms, true);
                xml_response(StatusCode::OK, query_result("DescribeAlarms", &result))
            }
            Reply::Data(v) => xml_response(StatusCode::OK, query_result("GetMetricData", &v)),
            Reply::Invalid(e) => query_error("ValidationError", &e),
            Reply::Throttled => query_error("Throttling", "Rate exceeded"),
            Reply::UnknownOperation(op) => {
                query_error("InvalidAction", &format!("the stub does not serve {op}"))
            }
        }
    }

    /// An awsQuery request as the CBOR input the same call would carry: `A.member.N.B` become
    /// arrays of maps; `Period` and `MaxDatapoints` integers, `ReturnData` booleans,
    /// `StartTime` and `EndTime` timestamps (tag 1).
    fn query_input(form: &[(String, String)]) -> Result<Value, String> {
        let mut root = Node::Map(BTreeMap::new());
        for (key, value) in form.iter().filter(|(k, _)| k != "Action" && k != "Version") {
            let parts: Vec<&str> = key.split('.').collect();
            insert(
                &mut root,
                &parts,
                leaf(parts.last().copied().unwrap_or_default(), value)?,
            );
        }
        Ok(root.into_value())
    }

    enum Node {
        Leaf(Value),
        Map(BTreeMap<String, Node>),
        List(BTreeMap<usize, Node>),
    }

    impl Node {
        fn into_value(self) -> Value {
            match self {
                Node::Leaf(v) => v,
                Node::Map(m) => Value::Map(
                    m.into_iter()
                        .map(|(k, n)| (text(&k), n.into_value()))
                        .collect(),
                ),
                Node::List(l) => Value::Array(l.into_values().map(Node::into_value).collect()),
            }
        }
    }

    fn insert(node: &mut Node, path: &[&str], value: Value) {
        match (node, path) {
            (Node::Map(m), [key]) => {
                m.insert((*key).to_owned(), Node::Leaf(value));
            }
            (Node::Map(m), [key, "member", rest @ ..]) if !rest.is_empty() => {
                let list = m
                    .entry((*key).to_owned())
                    .or_insert_with(|| Node::List(BTreeMap::new()));
                insert(list, rest, value);
            }
            (Node::Map(m), [key, rest @ ..]) => {
                let child = m
                    .entry((*key).to_owned())
                    .or_insert_with(|| Node::Map(BTreeMap::new()));
                insert(child, rest, value);
            }
            (Node::List(l), [index, rest @ ..]) => {
                let i = index.parse().unwrap_or(0);
                if rest.is_empty() {
                    l.insert(i, Node::Leaf(value));
                } else {
                    let child = l.entry(i).or_insert_with(|| Node::Map(BTreeMap::new()));
                    insert(child, rest, value);
                }
            }
            _ => {}
        }
    }

    fn leaf(key: &str, value: &str) -> Result<Value, String> {
        Ok(match key {
            "Period" | "MaxDatapoints" => Value::Integer(
                value
                    .parse::<i64>()
                    .map_err(|_| format!("{key} `{value}` is not an integer"))?
                    .into(),
            ),
            "ReturnData" => Value::Bool(value == "true"),
            "StartTime" | "EndTime" => {
                let t = chrono::DateTime::parse_from_rfc3339(value)
                    .map_err(|_| format!("{key} `{value}` is not a timestamp"))?;
                Value::Tag(
                    1,
                    Box::new(Value::Float(t.timestamp_millis() as f64 / 1000.0)),
                )
            }
            _ => text(value),
        })
    }

    /// `<ActionResponse><ActionResult>…</ActionResult>…</ActionResponse>` from an output value.
    fn query_result(action: &str, result: &Value) -> String {
        format!(
            "<{action}Response xmlns=\"http://monitoring.amazonaws.com/doc/2010-08-01/\">\
             <{action}Result>{}</{action}Result><ResponseMetadata><RequestId>stub</RequestId>\
             </ResponseMetadata></{action}Response>",
            xml_fields(result)
        )
    }

    /// A value as awsQuery XML: map members as elements, list items as `<member>`,
    /// timestamps in ISO 8601.
    fn xml_fields(v: &Value) -> String {
        match v {
            Value::Map(fields) => fields
                .iter()
                .map(|(k, v)| {
                    let k = k.as_text().unwrap_or_default();
                    format!("<{k}>{}</{k}>", xml_fields(v))
                })
                .collect(),
            Value::Array(items) => items
                .iter()
                .map(|v| format!("<member>{}</member>", xml_fields(v)))
                .collect(),
            Value::Text(t) => xml_escape(t),
            Value::Integer(i) => i128::from(*i).to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Tag(1, t) => {
                let secs = metric_data::epoch(&Value::Tag(1, t.clone())).unwrap_or_default();
                let at = chrono::DateTime::from_timestamp_millis((secs * 1000.0).round() as i64)
                    .unwrap_or_default();
                at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
            }
            _ => String::new(),
        }
    }

    fn query_error(code: &str, message: &str) -> Response {
        let body = format!(
            "<ErrorResponse xmlns=\"http://monitoring.amazonaws.com/doc/2010-08-01/\"><Error>\
             <Type>Sender</Type><Code>{code}</Code><Message>{}</Message></Error>\
             <RequestId>stub</RequestId></ErrorResponse>",
            xml_escape(message)
        );
        xml_response(StatusCode::BAD_REQUEST, body)
    }

    fn xml_response(status: StatusCode, body: String) -> Response {
        (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
    }

    fn xml_escape(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    }

    /// `GetMetricData` as the API reference describes it (see the module doc).
    mod metric_data {
        use std::collections::BTreeMap;

        use ciborium::Value;

        use super::{MetricKey, field, text};

        const MAX_QUERIES: usize = 500;

        type Series = Vec<(f64, f64)>;

        struct Query {
            id: String,
            label: Option<String>,
            source: Source,
            return_data: bool,
        }

        enum Source {
            Stat {
                key: MetricKey,
                period: i64,
                stat: String,
            },
            Expression(String),
        }

        /// A CBOR timestamp (tag 1, epoch seconds as an integer or a float).
        pub(super) fn epoch(v: &Value) -> Option<f64> {
            let v = match v {
                Value::Tag(1, inner) => inner.as_ref(),
                other => other,
            };
            match v {
                Value::Float(f) => Some(*f),
                Value::Integer(i) => Some(i128::from(*i) as f64),
                _ => None,
            }
        }

        pub(super) fn query_ids(input: &Value) -> Vec<String> {
            let Some(items) = field(input, "MetricDataQueries").and_then(Value::as_array) else {
                return Vec::new();
            };
            items
                .iter()
                .filter_map(|q| field(q, "Id").and_then(Value::as_text).map(str::to_owned))
                .collect()
        }

        /// The response to one request, or the `ValidationError` message.
        pub(super) fn answer(
            samples: &BTreeMap<MetricKey, Series>,
            input: &Value,
        ) -> Result<Value, String> {
            let queries = parse_queries(input)?;
            let start = field(input, "StartTime")
                .and_then(epoch)
                .ok_or("The parameter StartTime is required.")?;
            let end = field(input, "EndTime")
                .and_then(epoch)
                .ok_or("The parameter EndTime is required.")?;
            if end <= start {
                return Err("The parameter EndTime must be greater than StartTime.".into());
            }
            let ascending =
                field(input, "ScanBy").and_then(Value::as_text) == Some("TimestampAscending");
            let mut series: BTreeMap<String, Series> = BTreeMap::new();
            for q in &queries {
                if let Source::Stat { key, period, stat } = &q.source {
                    let points = aggregate(samples.get(key), start, end, *period, stat)?;
                    series.insert(q.id.clone(), points);
                }
            }
            for q in &queries {
                if let Source::Expression(e) = &q.source {
                    let points = evaluate(e, &series)?;
                    series.insert(q.id.clone(), points);
                }
            }
            let results = queries.iter().filter(|q| q.return_data).map(|q| {
                let mut points = series.get(&q.id).cloned().unwrap_or_default();
                if !ascending {
                    points.reverse();
                }
                let stamps = points
                    .iter()
                    .map(|(t, _)| Value::Tag(1, Box::new(Value::Float(*t))));
                let values = points.iter().map(|(_, v)| Value::Float(*v));
                Value::Map(vec![
                    (text("Id"), text(&q.id)),
                    (text("Label"), text(q.label.as_deref().unwrap_or(&q.id))),
                    (text("Timestamps"), Value::Array(stamps.collect())),
                    (text("Values"), Value::Array(values.collect())),
                    (text("StatusCode"), text("Complete")),
                ])
            });
            Ok(Value::Map(vec![
                (text("MetricDataResults"), Value::Array(results.collect())),
                (text("Messages"), Value::Array(Vec::new())),
            ]))
        }

        fn parse_queries(input: &Value) -> Result<Vec<Query>, String> {
            let items = field(input, "MetricDataQueries")
                .and_then(Value::as_array)
                .ok_or("The parameter MetricDataQueries is required.")?;
            if items.is_empty() || items.len() > MAX_QUERIES {
                return Err(format!(
                    "MetricDataQueries must hold 1 to {MAX_QUERIES} queries, not {}.",
                    items.len()
                ));
            }
            let mut out: Vec<Query> = Vec::new();
            for q in items {
                let id = field(q, "Id")
                    .and_then(Value::as_text)
                    .ok_or("Every MetricDataQuery needs an Id.")?
                    .to_owned();
                let valid = id.starts_with(|c: char| c.is_ascii_lowercase())
                    && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(format!(
                        "Invalid id `{id}`: it must start with a lowercase letter and hold only \
                         letters, digits and underscores."
                    ));
                }
                if out.iter().any(|o| o.id == id) {
                    return Err(format!("The value {id} for the field Id must be unique."));
                }
                let expression = field(q, "Expression").and_then(Value::as_text);
                let source = match (field(q, "MetricStat"), expression) {
                    (Some(stat), None) => metric_stat(stat)?,
                    (None, Some(e)) => Source::Expression(e.to_owned()),
                    _ => {
                        return Err(format!(
                            "Query {id} must have exactly one of MetricStat and Expression."
                        ));
                    }
                };
                out.push(Query {
                    id,
                    label: field(q, "Label")
                        .and_then(Value::as_text)
                        .map(str::to_owned),
                    source,
                    return_data: !matches!(field(q, "ReturnData"), Some(Value::Bool(false))),
                });
            }
            Ok(out)
        }

        fn metric_stat(s: &Value) -> Result<Source, String> {
            let m = field(s, "Metric").ok_or("The parameter MetricStat.Metric is required.")?;
            let part = |k: &str| {
                field(m, k)
                    .and_then(Value::as_text)
                    .unwrap_or_default()
                    .to_owned()
            };
            let mut dims: Vec<(String, String)> = field(m, "Dimensions")
                .and_then(Value::as_array)
                .map(|ds| {
                    ds.iter()
                        .filter_map(|d| {
                            let name = field(d, "Name")?.as_text()?.to_owned();
                            Some((name, field(d, "Value")?.as_text()?.to_owned()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            dims.sort();
            let period = field(s, "Period")
                .and_then(Value::as_integer)
                .map(i128::from)
                .ok_or("The parameter MetricStat.Period is required.")?;
            let period = i64::try_from(period).unwrap_or(0);
            if !(matches!(period, 1 | 5 | 10 | 30) || (period >= 60 && period % 60 == 0)) {
                return Err(format!(
                    "The parameter MetricStat.Period must be 1, 5, 10, 30 or a multiple of 60, \
                     not {period}."
                ));
            }
            let stat = field(s, "Stat")
                .and_then(Value::as_text)
                .ok_or("The parameter MetricStat.Stat is required.")?
                .to_owned();
            Ok(Source::Stat {
                key: (part("Namespace"), part("MetricName"), dims),
                period,
                stat,
            })
        }

        /// One data point per period with samples, from the rounded start until `end`.
        fn aggregate(
            samples: Option<&Series>,
            start: f64,
            end: f64,
            period: i64,
            stat: &str,
        ) -> Result<Series, String> {
            let p = period as f64;
            let round = if period >= 60 { 60.0 } else { p };
            let first = (start / round).floor() * round;
            let mut buckets: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
            for (t, v) in samples.into_iter().flatten() {
                if *t < first || *t >= end {
                    continue;
                }
                let bucket = first + ((t - first) / p).floor() * p;
                buckets
                    .entry((bucket * 1000.0) as i64)
                    .or_default()
                    .push(*v);
            }
            buckets
                .into_iter()
                .map(|(ms, mut values)| Ok((ms as f64 / 1000.0, statistic(stat, &mut values)?)))
                .collect()
        }

        fn statistic(stat: &str, values: &mut [f64]) -> Result<f64, String> {
            let n = values.len() as f64;
            let sum: f64 = values.iter().sum();
            Ok(match stat {
                "SampleCount" => n,
                "Sum" => sum,
                "Average" => sum / n,
                "Minimum" => values.iter().copied().fold(f64::INFINITY, f64::min),
                "Maximum" => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                p if p.starts_with('p') => {
                    let q: f64 = p[1..]
                        .parse()
                        .map_err(|_| format!("`{p}` is not a statistic."))?;
                    values.sort_by(f64::total_cmp);
                    let rank = ((q / 100.0) * n).ceil().max(1.0) as usize;
                    values[rank.min(values.len()) - 1]
                }
                other => return Err(format!("`{other}` is not a statistic.")),
            })
        }

        /// `id`, or `id OP id` with OP one of `+ - * /`, at the timestamps both have.
        fn evaluate(expr: &str, series: &BTreeMap<String, Series>) -> Result<Series, String> {
            let get = |id: &str| {
                series
                    .get(id)
                    .cloned()
                    .ok_or_else(|| format!("Unknown id `{id}` in the expression `{expr}`."))
            };
            let parts: Vec<&str> = expr.split_whitespace().collect();
            let (a, op, b) = match parts.as_slice() {
                [id] => return get(id),
                [a, op, b] => (get(a)?, *op, get(b)?),
                _ => {
                    return Err(format!(
                        "The stub evaluates only `id` or `id OP id`, not `{expr}`."
                    ));
                }
            };
            let f: fn(f64, f64) -> f64 = match op {
                "+" => |x, y| x + y,
                "-" => |x, y| x - y,
                "*" => |x, y| x * y,
                "/" => |x, y| x / y,
                _ => return Err(format!("The stub does not evaluate `{op}` in `{expr}`.")),
            };
            Ok(a.iter()
                .filter_map(|(t, x)| b.iter().find(|(u, _)| u == t).map(|(_, y)| (*t, f(*x, *y))))
                .collect())
        }
    }
}

pub mod codepipeline {
    //! A scripted CodePipeline server on loopback (JSON 1.1: `X-Amz-Target:
    //! CodePipeline_20150709.<Op>`, `application/x-amz-json-1.1`).
    //!
    //! Covers moto 5.2.5 gaps: moto's executions succeed instantly (no `InProgress`, no failed
    //! action to report), and `GetPipelineState` and `RollbackStage` are not implemented.
    //!
    //! Serves `StartPipelineExecution` (honouring `clientRequestToken` like AWS: the same token
    //! returns the same execution id), `GetPipelineExecution`, `ListPipelineExecutions`,
    //! `ListActionExecutions`, `GetPipelineState` and `RollbackStage`. Each new execution (a
    //! start or a rollback) takes the next scripted [`Run`] for its pipeline, or succeeds at
    //! once when none is scripted: it reports `InProgress` to that many `GetPipelineExecution`
    //! calls, then its outcome. Every call is recorded. Never used by the controller at run
    //! time; binds 127.0.0.1 only.

    use std::collections::{BTreeMap, VecDeque};
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::{Arc, Mutex};
    use std::time::{SystemTime, UNIX_EPOCH};

    use anyhow::Context as _;
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use serde_json::{Value, json};

    const TARGET_PREFIX: &str = "CodePipeline_20150709.";

    /// How a scripted execution ends.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Outcome {
        Succeeded,
        /// The named action of the deploy stage fails with this summary.
        Failed {
            action: String,
            summary: String,
        },
        /// A newer execution took its place.
        Superseded,
    }

    /// One scripted execution: `InProgress` for `polls` status reads, then `outcome`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Run {
        pub polls: u32,
        pub outcome: Outcome,
    }

    /// One request the stub received.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Call {
        /// The part of `X-Amz-Target` after the dot, e.g. `StartPipelineExecution`.
        pub operation: String,
        /// From the SigV4 `Authorization` header: which credentials (account) signed it.
        pub access_key_id: Option<String>,
        pub body: Value,
    }

    /// A `RollbackStage` request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Rollback {
        pub pipeline: String,
        pub stage: String,
        pub target_execution_id: String,
        /// The execution the rollback started.
        pub execution_id: String,
    }

    #[derive(Debug, Clone)]
    struct Execution {
        id: String,
        token: Option<String>,
        variables: Vec<(String, String)>,
        run: Run,
        /// `Some(target)` for a rollback execution.
        rollback_of: Option<String>,
        started: f64,
    }

    impl Execution {
        fn status(&self) -> &'static str {
            match (&self.run.outcome, self.run.polls) {
                (_, 1..) => "InProgress",
                (Outcome::Succeeded, 0) => "Succeeded",
                (Outcome::Failed { .. }, 0) => "Failed",
                (Outcome::Superseded, 0) => "Superseded",
            }
        }
    }

    #[derive(Debug, Default)]
    struct Pipeline {
        stages: Vec<String>,
        /// Oldest first.
        executions: Vec<Execution>,
        script: VecDeque<Run>,
    }

    #[derive(Debug, Default)]
    struct World {
        pipelines: BTreeMap<String, Pipeline>,
        calls: Vec<Call>,
        rollbacks: Vec<Rollback>,
        throttles: u32,
        next_id: u64,
    }

    type Shared = Arc<Mutex<World>>;

    /// A JSON 1.1 error: code and message.
    struct Fault(&'static str, String);

    type Answer = Result<Value, Fault>;

    /// The running stub; stops when dropped.
    #[derive(Debug)]
    pub struct CodePipelineStub {
        addr: SocketAddr,
        world: Shared,
        server: tokio::task::JoinHandle<()>,
    }

    impl CodePipelineStub {
        /// Starts on a free loopback port, in the current tokio runtime.
        pub async fn start() -> anyhow::Result<Self> {
            let world = Shared::default();
            let app = Router::new()
                .route("/", post(call))
                .with_state(world.clone());
            let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .context("binding the CodePipeline stub")?;
            let addr = listener.local_addr()?;
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Ok(Self {
                addr,
                world,
                server,
            })
        }

        /// `http://127.0.0.1:<port>`.
        pub fn endpoint(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// Creates a pipeline with these stages, the first its source stage (a pipeline not
        /// created here does not exist).
        pub fn create_pipeline(&self, name: &str, stages: &[&str]) {
            let stages = stages.iter().map(|s| s.to_string()).collect();
            let pipeline = Pipeline {
                stages,
                ..Pipeline::default()
            };
            self.lock().pipelines.insert(name.to_owned(), pipeline);
        }

        /// Queues how the next new execution of `pipeline` behaves.
        pub fn script(&self, pipeline: &str, run: Run) {
            let mut world = self.lock();
            let p = world.pipelines.entry(pipeline.to_owned()).or_default();
            p.script.push_back(run);
        }

        /// The next `times` calls fail with `ThrottlingException`.
        pub fn throttle(&self, times: u32) {
            self.lock().throttles = times;
        }

        /// Every call so far, oldest first.
        pub fn calls(&self) -> Vec<Call> {
            self.lock().calls.clone()
        }

        /// How many calls of `operation` were made.
        pub fn count(&self, operation: &str) -> usize {
            self.lock()
                .calls
                .iter()
                .filter(|c| c.operation == operation)
                .count()
        }

        /// Every `RollbackStage` that started a rollback, oldest first.
        pub fn rollbacks(&self) -> Vec<Rollback> {
            self.lock().rollbacks.clone()
        }

        /// Execution ids of `pipeline`, oldest first.
        pub fn execution_ids(&self, pipeline: &str) -> Vec<String> {
            let world = self.lock();
            let executions = world
                .pipelines
                .get(pipeline)
                .map(|p| p.executions.as_slice());
            executions
                .unwrap_or_default()
                .iter()
                .map(|e| e.id.clone())
                .collect()
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, World> {
            self.world.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl Drop for CodePipelineStub {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    async fn call(State(world): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
        let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok());
        let operation = target
            .and_then(|t| t.strip_prefix(TARGET_PREFIX))
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut world = world.lock().unwrap_or_else(|e| e.into_inner());
        world.calls.push(Call {
            operation: operation.to_owned(),
            access_key_id: access_key_id(&headers),
            body: body.clone(),
        });
        match dispatch(&mut world, operation, &body) {
            Ok(value) => json_response(StatusCode::OK, &value),
            Err(Fault(code, message)) => json_response(
                StatusCode::BAD_REQUEST,
                &json!({"__type": code, "message": message}),
            ),
        }
    }

    fn dispatch(world: &mut World, operation: &str, body: &Value) -> Answer {
        if world.throttles > 0 {
            world.throttles -= 1;
            return Err(Fault("ThrottlingException", "Rate exceeded".into()));
        }
        match operation {
            "StartPipelineExecution" => start_execution(world, body),
            "GetPipelineExecution" => get_execution(world, body),
            "ListPipelineExecutions" => list_executions(world, body),
            "ListActionExecutions" => list_actions(world, body),
            "GetPipelineState" => pipeline_state(world, body),
            "RollbackStage" => rollback_stage(world, body),
            other => Err(Fault(
                "UnknownOperationException",
                format!("the stub does not serve `{other}`"),
            )),
        }
    }

    fn access_key_id(headers: &HeaderMap) -> Option<String> {
        let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (_, credential) = auth.split_once("Credential=")?;
        credential.split('/').next().map(str::to_owned)
    }

    fn json_response(status: StatusCode, value: &Value) -> Response {
        let content_type = [(header::CONTENT_TYPE, "application/x-amz-json-1.1")];
        (status, content_type, value.to_string()).into_response()
    }

    fn field<'a>(body: &'a Value, name: &str) -> Result<&'a str, Fault> {
        body.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| Fault("ValidationException", format!("`{name}` is required")))
    }

    fn pipeline<'a>(world: &'a mut World, name: &str) -> Result<&'a mut Pipeline, Fault> {
        let found = world
            .pipelines
            .get_mut(name)
            .filter(|p| !p.stages.is_empty());
        found.ok_or_else(|| {
            Fault(
                "PipelineNotFoundException",
                format!("pipeline `{name}` does not exist"),
            )
        })
    }

    fn now() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    fn new_execution_id(world: &mut World) -> String {
        world.next_id += 1;
        format!("00000000-0000-4000-8000-{:012}", world.next_id)
    }

    fn start_execution(world: &mut World, body: &Value) -> Answer {
        let name = field(body, "name")?.to_owned();
        let token = body
            .get("clientRequestToken")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let existing = pipeline(world, &name)?
            .executions
            .iter()
            .find(|e| token.is_some() && e.token == token)
            .map(|e| e.id.clone());
        if let Some(id) = existing {
            return Ok(json!({"pipelineExecutionId": id}));
        }
        let variables = body.get("variables").and_then(Value::as_array).map(|vars| {
            let pair = |v: &Value| {
                Some((
                    v.get("name")?.as_str()?.to_owned(),
                    v.get("value")?.as_str()?.to_owned(),
                ))
            };
            vars.iter().filter_map(pair).collect()
        });
        let id = new_execution_id(world);
        let p = pipeline(world, &name)?;
        let run = p.script.pop_front().unwrap_or(Run {
            polls: 0,
            outcome: Outcome::Succeeded,
        });
        let execution = Execution {
            id: id.clone(),
            token,
            variables: variables.unwrap_or_default(),
            run,
            rollback_of: None,
            started: now(),
        };
        p.executions.push(execution);
        Ok(json!({"pipelineExecutionId": id}))
    }

    fn execution<'a>(p: &'a mut Pipeline, id: &str) -> Result<&'a mut Execution, Fault> {
        let found = p.executions.iter_mut().find(|e| e.id == id);
        found.ok_or_else(|| {
            Fault(
                "PipelineExecutionNotFoundException",
                format!("execution `{id}` does not exist"),
            )
        })
    }

    /// Reading the status is what moves an execution on.
    fn get_execution(world: &mut World, body: &Value) -> Answer {
        let p = pipeline(world, field(body, "pipelineName")?)?;
        let name = field(body, "pipelineName")?;
        let e = execution(p, field(body, "pipelineExecutionId")?)?;
        let view = execution_view(name, e);
        e.run.polls = e.run.polls.saturating_sub(1);
        Ok(json!({"pipelineExecution": view}))
    }

    fn execution_view(pipeline: &str, e: &Execution) -> Value {
        let variables: Vec<Value> = e
            .variables
            .iter()
            .map(|(n, v)| json!({"name": n, "resolvedValue": v}))
            .collect();
        let mut view = json!({
            "pipelineName": pipeline,
            "pipelineVersion": 1,
            "pipelineExecutionId": e.id,
            "status": e.status(),
            "variables": variables,
            "executionMode": "SUPERSEDED",
            "executionType": if e.rollback_of.is_some() { "ROLLBACK" } else { "STANDARD" },
        });
        if let Some(target) = &e.rollback_of {
            view["rollbackMetadata"] = json!({"rollbackTargetPipelineExecutionId": target});
        }
        if let Outcome::Failed { action, .. } = &e.run.outcome {
            if e.status() == "Failed" {
                view["statusSummary"] = json!(format!("action `{action}` failed"));
            }
        }
        view
    }

    fn list_executions(world: &mut World, body: &Value) -> Answer {
        let p = pipeline(world, field(body, "pipelineName")?)?;
        let summaries: Vec<Value> = p.executions.iter().rev().map(summary_view).collect();
        Ok(json!({"pipelineExecutionSummaries": summaries}))
    }

    fn summary_view(e: &Execution) -> Value {
        let rollback = e.rollback_of.is_some();
        let mut view = json!({
            "pipelineExecutionId": e.id,
            "status": e.status(),
            "startTime": e.started,
            "lastUpdateTime": e.started,
            "executionMode": "SUPERSEDED",
            "executionType": if rollback { "ROLLBACK" } else { "STANDARD" },
            "trigger": {"triggerType": if rollback { "ManualRollback" } else { "StartPipelineExecution" }},
        });
        if let Some(target) = &e.rollback_of {
            view["rollbackMetadata"] = json!({"rollbackTargetPipelineExecutionId": target});
        }
        view
    }

    /// A source action that succeeded, then the deploy stage's action with the outcome.
    fn list_actions(world: &mut World, body: &Value) -> Answer {
        let name = field(body, "pipelineName")?.to_owned();
        let p = pipeline(world, &name)?;
        let id = body
            .pointer("/filter/pipelineExecutionId")
            .and_then(Value::as_str);
        let stages = p.stages.clone();
        let details: Vec<Value> = p
            .executions
            .iter()
            .filter(|e| id.is_none_or(|id| id == e.id))
            .flat_map(|e| action_views(&stages, e))
            .collect();
        Ok(json!({"actionExecutionDetails": details}))
    }

    fn action_views(stages: &[String], e: &Execution) -> Vec<Value> {
        let first = stages.first().cloned().unwrap_or_default();
        let last = stages.last().cloned().unwrap_or_default();
        let source = action_view(e, &first, "Source", "Succeeded", "source fetched");
        let (action, status, summary) = match (&e.run.outcome, e.status()) {
            (Outcome::Failed { action, summary }, "Failed") => {
                (action.as_str(), "Failed", summary.as_str())
            }
            (_, "InProgress") => ("Deploy", "InProgress", ""),
            (_, status) => ("Deploy", status, "deployed"),
        };
        vec![action_view(e, &last, action, status, summary), source]
    }

    fn action_view(e: &Execution, stage: &str, action: &str, status: &str, summary: &str) -> Value {
        let mut result = json!({"externalExecutionSummary": summary});
        if status == "Failed" {
            result["errorDetails"] = json!({"code": "JobFailed", "message": summary});
        }
        json!({
            "pipelineExecutionId": e.id,
            "actionExecutionId": format!("{}-{action}", e.id),
            "stageName": stage,
            "actionName": action,
            "status": status,
            "startTime": e.started,
            "lastUpdateTime": e.started,
            "output": {"executionResult": result},
        })
    }

    fn pipeline_state(world: &mut World, body: &Value) -> Answer {
        let name = field(body, "name")?.to_owned();
        let p = pipeline(world, &name)?;
        let latest = p.executions.last();
        let stages: Vec<Value> = p
            .stages
            .iter()
            .map(|s| {
                let latest =
                    latest.map(|e| json!({"pipelineExecutionId": e.id, "status": e.status()}));
                json!({"stageName": s, "latestExecution": latest})
            })
            .collect();
        Ok(json!({"pipelineName": name, "pipelineVersion": 1, "stageStates": stages}))
    }

    /// Follows the `RollbackStage` API reference
    /// (<https://docs.aws.amazon.com/codepipeline/latest/APIReference/API_RollbackStage.html>):
    /// `stageName` is 1-100 of `[A-Za-z0-9.@\-_]` (else `ValidationException`) and must be a
    /// stage of the pipeline (else `StageNotFoundException`); and "Configuring stage rollback"
    /// (<https://docs.aws.amazon.com/codepipeline/latest/userguide/stage-rollback.html>): a
    /// source stage (here the first) cannot be rolled back, and the target must be a succeeded
    /// execution of the same pipeline (else `UnableToRollbackStageException`).
    fn rollback_stage(world: &mut World, body: &Value) -> Answer {
        let name = field(body, "pipelineName")?.to_owned();
        let stage = field(body, "stageName")?.to_owned();
        let target = field(body, "targetPipelineExecutionId")?.to_owned();
        let valid = (1..=100).contains(&stage.len())
            && (stage.chars()).all(|c| c.is_ascii_alphanumeric() || ".@-_".contains(c));
        if !valid {
            return Err(Fault(
                "ValidationException",
                format!(
                    "1 validation error detected: Value '{stage}' at 'stageName' failed to satisfy constraint: Member must satisfy regular expression pattern: [A-Za-z0-9.@\\-_]+"
                ),
            ));
        }
        let id = new_execution_id(world);
        let p = pipeline(world, &name)?;
        if !p.stages.contains(&stage) {
            return Err(Fault(
                "StageNotFoundException",
                format!("stage `{stage}` does not exist"),
            ));
        }
        if p.stages.first() == Some(&stage) {
            let msg = format!("stage `{stage}` is a source stage and cannot be rolled back");
            return Err(Fault("UnableToRollbackStageException", msg));
        }
        let target_execution = execution(p, &target)?;
        if target_execution.status() != "Succeeded" {
            let msg = format!("execution `{target}` did not succeed");
            return Err(Fault("UnableToRollbackStageException", msg));
        }
        let variables = target_execution.variables.clone();
        let run = p.script.pop_front().unwrap_or(Run {
            polls: 0,
            outcome: Outcome::Succeeded,
        });
        p.executions.push(Execution {
            id: id.clone(),
            token: None,
            variables,
            run,
            rollback_of: Some(target.clone()),
            started: now(),
        });
        let rollback = Rollback {
            pipeline: name,
            stage,
            target_execution_id: target,
            execution_id: id.clone(),
        };
        world.rollbacks.push(rollback);
        Ok(json!({"pipelineExecutionId": id}))
    }
}

pub mod cloudformation {
    //! A scripted CloudFormation server (query protocol) on loopback.
    //!
    //! Covers these moto 5.2.5 gaps (each test says which one it uses):
    //! - transitions are instant: no `*_IN_PROGRESS` to wait on;
    //! - no `*ROLLBACK*` states, so no `UPDATE_ROLLBACK_FAILED` and no failure events;
    //! - `CancelUpdateStack` and `ContinueUpdateRollback` are not implemented;
    //! - moto cannot be told to throttle;
    //! - moto accepts a `RollbackConfiguration` and ignores it.
    //!
    //! Rollback triggers follow what AWS documents in "Roll back your CloudFormation stack on
    //! alarm breach with rollback triggers"
    //! (<https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/using-cfn-rollback-triggers.html>)
    //! and the `RollbackConfiguration` / `RollbackTrigger` API reference: if a trigger's alarm is
    //! in `ALARM` during the operation, CloudFormation rolls the whole operation back (an update
    //! ends in `UPDATE_ROLLBACK_COMPLETE`, the stack keeping its previous parameters); a trigger
    //! whose alarm does not exist fails and rolls back the operation too (and so does one whose
    //! `Type` names the other kind of alarm: `AWS::CloudWatch::Alarm` for a composite alarm or
    //! the reverse, since the type says which alarm to look for); the stack keeps the
    //! triggers of its last operation, a change set without `RollbackTriggers` reuses them and an
    //! empty list removes them. Alarm states come from a [`CloudWatchStub`](super::cloudwatch)
    //! through [`Script::alarms`], read when the change set is executed and at every
    //! `DescribeStacks` until the operation completes. Not modelled: `MonitoringTimeInMinutes`
    //! (the controller sends none, so the monitoring period is AWS's default of 0).
    //!
    //! `ExecuteChangeSet` follows its API reference
    //! (<https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_ExecuteChangeSet.html>):
    //! a change set that cannot be used to update the stack — already executed, or `OBSOLETE`
    //! because the stack changed after it was made — is refused with `InvalidChangeSetStatus`
    //! (HTTP 400). [`Script::foreign_update`] models someone else's update landing just before
    //! our `ExecuteChangeSet` (or the action [`Script::foreign_update_before`] names): the stack
    //! takes its parameters and every change set not executed yet becomes `OBSOLETE`, as
    //! "Update your stack with change sets" in the user guide
    //! describes (<https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/using-cfn-updating-stacks-changesets.html>).
    //! [`Script::lost_replies`] models a request that took effect but whose answer never came
    //! back (HTTP 500): the SDK's retry meets the state the first request left.
    //! `CreateChangeSet` with the `ClientToken` of a change set it made is answered as that
    //! request was (API_CreateChangeSet: the token lets CloudFormation know a retry is "not
    //! attempting to create another change set with the same name"); without one, a change set
    //! of the same name is `AlreadyExistsException`.
    //!
    //! Timed operations (moto's are instant) follow the API reference and the user guide's
    //! stack status codes: with [`Script::change_set_takes`], `DescribeChangeSet` reports
    //! `CREATE_PENDING` with `ExecutionStatus` `UNAVAILABLE` until that long after
    //! `CreateChangeSet`, then `CREATE_COMPLETE`/`AVAILABLE`, and `ExecuteChangeSet` before then
    //! is refused with `InvalidChangeSetStatus`
    //! (<https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_DescribeChangeSet.html>);
    //! with [`Script::update_takes`], `DescribeStacks` reports `UPDATE_IN_PROGRESS` (or
    //! `CREATE_IN_PROGRESS`) from `ExecuteChangeSet` until that long after it, then
    //! `UPDATE_COMPLETE` (`CREATE_COMPLETE`)
    //! (<https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/view-stack-events.html>,
    //! "Stack status codes"). [`CloudFormationStub::complete_now`] ends the update early.
    //! While an executed change set's operation is in flight, `DescribeChangeSet` reports its
    //! `ExecutionStatus` as `EXECUTE_IN_PROGRESS` (API_DescribeChangeSet). `CancelUpdateStack`
    //! during an update in flight rolls it back: `UPDATE_ROLLBACK_IN_PROGRESS`, then
    //! `UPDATE_ROLLBACK_COMPLETE` with the previous parameters, and the change set ends
    //! `EXECUTE_FAILED` (API_CancelUpdateStack). A
    //! timed update's start and end are the stack's own events (`LogicalResourceId` the stack
    //! name, `AWS::CloudFormation::Stack`, the execute's `ClientRequestToken`, the time they
    //! happened), listed newest first by `DescribeStackEvents`.
    //!
    //! `DescribeStackEvents` lists the stack's events newest first and, with
    //! [`Script::events_per_page`], in pages as its API reference describes
    //! (<https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_DescribeStackEvents.html>):
    //! a response carries a `NextToken` when more events follow, and a request with that
    //! `NextToken` gets the next page; the last page carries none.
    //!
    //! A change set's `Parameters` are resolved when it is made, as the `Parameter` API
    //! reference describes (<https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_Parameter.html>):
    //! a `ParameterValue` is used; `UsePreviousValue` ("During a stack update, use the existing
    //! parameter value that the stack is using for a given parameter key. If you specify true,
    //! do not specify a parameter value.") takes the stack's value; a parameter the template
    //! declares with a `Default` and the request leaves out takes that default ("If you don't
    //! specify a key and value for a particular parameter, CloudFormation uses the default
    //! value that's specified in your template"). `UsePreviousValue` is refused with AWS's
    //! `ValidationError`s: with a value, on a `CREATE` change set, for a key the stack does not
    //! have, and for a key the new template does not declare. Templates are read as JSON only
    //! (another body declares nothing and sets no defaults), and a `ParameterValue` for an
    //! undeclared key is not refused (the tests' templates are minimal).
    //!
    //! Stack notifications: a change set's `NotificationARNs` are kept by the stack when it is
    //! executed (CreateChangeSet, `NotificationARNs`:
    //! <https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_CreateChangeSet.html>),
    //! and with [`Script::notifications`] each stack event of a timed update (the stack's
    //! `*_IN_PROGRESS` when it starts, its `*_COMPLETE` when it ends) is published to every
    //! one of them as SNS would deliver it to an HTTPS subscription: a `Notification` signed by
    //! the testkit's [`TestSigner`], subject `AWS CloudFormation Notification`, whose message
    //! is the lines `Key='value'` CloudFormation writes (`StackId`, `Timestamp`, `EventId`,
    //! `LogicalResourceId`, `Namespace`, `PhysicalResourceId`, `ResourceProperties`,
    //! `ResourceStatus`, `ResourceStatusReason`, `ResourceType`, `StackName`,
    //! `ClientRequestToken`; "Setting AWS CloudFormation stack options", Notification options:
    //! <https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cfn-console-add-tags.html>).
    //!
    //! Speaks what the AWS SDK sends: `POST /` with a form-encoded `Action=…` body, answered in
    //! XML in the `http://cloudformation.amazonaws.com/doc/2010-05-15/` namespace, errors as
    //! `ErrorResponse` with HTTP 400. Serves `DescribeStacks`, `CreateChangeSet`,
    //! `DescribeChangeSet`, `DeleteChangeSet`, `ExecuteChangeSet`, `DescribeStackEvents`,
    //! `CancelUpdateStack` and `ContinueUpdateRollback` for one stack. Never used by the
    //! controller at run time; binds 127.0.0.1 only.

    use std::collections::{BTreeMap, VecDeque};
    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use anyhow::Context as _;
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;

    use super::cloudwatch::AlarmStates;
    use crate::sns::TestSigner;

    const NS: &str = "http://cloudformation.amazonaws.com/doc/2010-05-15/";
    const STACK_ID: &str = "arn:aws:cloudformation:us-east-1:123456789012:stack/stub/1";
    /// In scripted events, replaced by the token of the last accepted `ExecuteChangeSet`.
    pub const TOKEN: &str = "$TOKEN";

    /// One scripted stack event (newest first in [`Script::events`]).
    #[derive(Debug, Clone, Default)]
    pub struct Event {
        pub logical_id: String,
        pub resource_type: String,
        pub status: String,
        pub reason: String,
        /// [`TOKEN`] for "this attempt", another string for an earlier one.
        pub token: String,
        /// When it happened (`None`: a fixed time in the past).
        pub at: Option<chrono::DateTime<chrono::Utc>>,
    }

    /// What the stack does.
    #[derive(Debug, Clone, Default)]
    pub struct Script {
        /// `DescribeStacks` answers these in turn, the last one repeating; empty: no stack.
        pub statuses: Vec<String>,
        /// Once an action (e.g. `ExecuteChangeSet`) is accepted, the statuses become these.
        pub after: Vec<(String, Vec<String>)>,
        /// How many `Throttling` errors an action gets before it is answered.
        pub throttle: Vec<(String, u32)>,
        pub outputs: Vec<(String, String)>,
        pub events: Vec<Event>,
        /// The stack's parameters from its last operation (answered by `DescribeStacks`).
        pub parameters: Vec<(String, String)>,
        /// Rollback trigger ARNs saved on the stack by its last operation.
        pub triggers: Vec<String>,
        /// Where trigger alarms are looked up; `None`: triggers are kept but never fire.
        pub alarms: Option<AlarmStates>,
        /// Someone else's update, applied just before the next `ExecuteChangeSet` (or
        /// [`Script::foreign_update_before`]) is handled: the stack's parameters become these
        /// and unexecuted change sets become `OBSOLETE`.
        pub foreign_update: Option<Vec<(String, String)>>,
        /// The action the foreign update lands just before (`None`: `ExecuteChangeSet`); on a
        /// deploy, `DescribeChangeSet` makes it land while our change set is being made, so
        /// that it is seen `OBSOLETE`.
        pub foreign_update_before: Option<String>,
        /// Actions that take effect once but answer HTTP 500 `InternalFailure` (a lost reply).
        pub lost_replies: Vec<String>,
        /// How long a change set takes to become ready (`None`: at once).
        pub change_set_takes: Option<Duration>,
        /// How long an executed change set takes to complete (`None`: the scripted statuses).
        pub update_takes: Option<Duration>,
        /// Where the stack events of timed updates are posted, when the stack has
        /// notification ARNs.
        pub notifications: Option<Notifications>,
        /// The stack's id (default: a fixed stack `stub` in account 123456789012, us-east-1).
        pub stack_id: Option<String>,
        /// The topics the stack publishes its events to at the start (`NotificationARNs`).
        pub notification_arns: Vec<String>,
        /// How many events one `DescribeStackEvents` page holds (`None`: all, one page).
        pub events_per_page: Option<usize>,
    }

    /// An HTTPS subscription of the stack's notification topics: the endpoint SNS posts to
    /// and the signer standing in for SNS's.
    #[derive(Debug, Clone)]
    pub struct Notifications {
        pub endpoint: String,
        pub signer: Arc<TestSigner>,
    }

    /// One stack notification posted, and the answer it got (0: none, the post failed).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Published {
        pub topic: String,
        pub status: String,
        pub answer: u16,
    }

    /// One request received, throttled or not.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Call {
        pub action: String,
        pub throttled: bool,
        pub form: BTreeMap<String, String>,
    }

    #[derive(Debug, Default)]
    struct World {
        statuses: VecDeque<String>,
        after: BTreeMap<String, Vec<String>>,
        throttle: BTreeMap<String, u32>,
        outputs: Vec<(String, String)>,
        events: Vec<Event>,
        parameters: BTreeMap<String, String>,
        triggers: Vec<String>,
        alarms: Option<AlarmStates>,
        foreign_update: Option<Vec<(String, String)>>,
        foreign_update_before: String,
        lost_replies: Vec<String>,
        /// How many `ExecuteChangeSet` requests took effect.
        executed: usize,
        change_sets: BTreeMap<String, ChangeSet>,
        /// The `ClientToken` of each change set made with one: token → change set name.
        client_tokens: BTreeMap<String, String>,
        /// The executed change set, watched until the stack reaches a final state.
        operation: Option<Operation>,
        /// The name of the change set whose operation is in flight (`EXECUTE_IN_PROGRESS`).
        executing: Option<String>,
        token: String,
        calls: Vec<Call>,
        change_set_takes: Option<Duration>,
        update_takes: Option<Duration>,
        notifications: Option<Notifications>,
        stack_id: String,
        /// The topics the stack publishes its events to (from its last executed change set).
        notification_arns: Vec<String>,
        events_per_page: Option<usize>,
        /// Counts executed operations, so a timer ends only its own.
        operations: u64,
        /// When the last timed update completed.
        completed_at: Option<Instant>,
        published: Vec<Published>,
    }

    /// What a change set asks for.
    #[derive(Debug)]
    struct ChangeSet {
        execution: String,
        create: bool,
        parameters: BTreeMap<String, String>,
        /// `None`: the request named no triggers (the stack's saved ones apply).
        triggers: Option<Vec<String>>,
        /// Each named trigger's `Type`, by ARN.
        trigger_types: BTreeMap<String, String>,
        /// When it is ready to execute (`None`: at once).
        ready_at: Option<Instant>,
        /// `NotificationARNs` of the request (empty: the stack keeps its own).
        notification_arns: Vec<String>,
    }

    /// An executed change set in flight.
    #[derive(Debug)]
    struct Operation {
        create: bool,
        parameters: BTreeMap<String, String>,
        triggers: Vec<String>,
        /// The `Type` the change set gave each trigger, by ARN (none for saved triggers).
        trigger_types: BTreeMap<String, String>,
    }

    type Shared = Arc<Mutex<World>>;

    /// The running stub; stops when dropped.
    #[derive(Debug)]
    pub struct CloudFormationStub {
        addr: SocketAddr,
        world: Shared,
        server: tokio::task::JoinHandle<()>,
    }

    impl CloudFormationStub {
        /// Starts on a free loopback port, in the current tokio runtime.
        pub async fn start(script: Script) -> anyhow::Result<Self> {
            let world = Shared::new(Mutex::new(World {
                statuses: script.statuses.into(),
                after: script.after.into_iter().collect(),
                throttle: script.throttle.into_iter().collect(),
                outputs: script.outputs,
                events: script.events,
                parameters: script.parameters.into_iter().collect(),
                triggers: script.triggers,
                alarms: script.alarms,
                foreign_update: script.foreign_update,
                foreign_update_before: script
                    .foreign_update_before
                    .unwrap_or_else(|| "ExecuteChangeSet".into()),
                lost_replies: script.lost_replies,
                change_set_takes: script.change_set_takes,
                update_takes: script.update_takes,
                notifications: script.notifications,
                stack_id: script.stack_id.unwrap_or_else(|| STACK_ID.to_string()),
                notification_arns: script.notification_arns,
                events_per_page: script.events_per_page,
                ..World::default()
            }));
            let app = Router::new()
                .route("/", post(call))
                .with_state(world.clone());
            let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .context("binding the CloudFormation stub")?;
            let addr = listener.local_addr()?;
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Ok(Self {
                addr,
                world,
                server,
            })
        }

        /// `http://127.0.0.1:<port>`.
        pub fn endpoint(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// Every request so far, oldest first.
        pub fn calls(&self) -> Vec<Call> {
            self.lock().calls.clone()
        }

        /// The actions answered (not throttled), oldest first.
        pub fn accepted(&self) -> Vec<String> {
            let calls = self.lock().calls.clone();
            calls
                .into_iter()
                .filter(|c| !c.throttled)
                .map(|c| c.action)
                .collect()
        }

        /// How many `action` requests were answered (not throttled).
        pub fn count(&self, action: &str) -> usize {
            self.accepted().iter().filter(|a| *a == action).count()
        }

        /// How many `ExecuteChangeSet` requests took effect (ran a change set).
        pub fn executed(&self) -> usize {
            self.lock().executed
        }

        /// The stack's parameters now.
        pub fn parameters(&self) -> BTreeMap<String, String> {
            self.lock().parameters.clone()
        }

        /// The topics the stack publishes its events to now.
        pub fn notification_arns(&self) -> Vec<String> {
            self.lock().notification_arns.clone()
        }

        /// When the last timed update completed (`None`: none did yet).
        pub fn completed_at(&self) -> Option<Instant> {
            self.lock().completed_at
        }

        /// The stack notifications posted so far, oldest first.
        pub fn published(&self) -> Vec<Published> {
            self.lock().published.clone()
        }

        /// Ends the timed update in flight now (and publishes its completion).
        pub async fn complete_now(&self) {
            let operation = self.lock().operations;
            complete(self.world.clone(), operation).await;
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, World> {
            self.world.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl Drop for CloudFormationStub {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    type Answer = Result<String, (&'static str, String)>;

    async fn call(State(shared): State<Shared>, body: Bytes) -> Response {
        let form: BTreeMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let action = form.get("Action").cloned().unwrap_or_default();
        let mut world = shared.lock().unwrap_or_else(|e| e.into_inner());
        let throttled = take_throttle(&mut world, &action);
        world.calls.push(Call {
            action: action.clone(),
            throttled,
            form: form.clone(),
        });
        if throttled {
            return error("Throttling", "Rate exceeded");
        }
        if action == world.foreign_update_before {
            if let Some(parameters) = world.foreign_update.take() {
                foreign_update(&mut world, parameters);
            }
        }
        let answer = dispatch(&mut world, &action, &form);
        if action == "ExecuteChangeSet" && answer.is_ok() {
            if let Some(takes) = world.update_takes {
                start_timed(&shared, &mut world, takes);
            }
        }
        let lost = answer
            .is_ok()
            .then(|| world.lost_replies.iter().position(|a| *a == action));
        if let Some(i) = lost.flatten() {
            world.lost_replies.remove(i);
            let body = format!(
                "<ErrorResponse xmlns=\"{NS}\"><Error><Type>Receiver</Type><Code>InternalFailure</Code>\
                 <Message>the reply was lost</Message></Error><RequestId>stub</RequestId></ErrorResponse>"
            );
            let xml = [(header::CONTENT_TYPE, "text/xml")];
            return (StatusCode::INTERNAL_SERVER_ERROR, xml, body).into_response();
        }
        match answer {
            Ok(result) => ok(&action, &result),
            Err((code, message)) => error(code, &message),
        }
    }

    /// A timed update starts: in progress until `takes` has passed (or
    /// [`CloudFormationStub::complete_now`]), its start published.
    fn start_timed(shared: &Shared, world: &mut World, takes: Duration) {
        world.operations += 1;
        let operation = world.operations;
        let create = world.operation.as_ref().is_some_and(|o| o.create);
        let verb = if create { "CREATE" } else { "UPDATE" };
        world.statuses = [format!("{verb}_IN_PROGRESS")].into();
        record_event(world, &format!("{verb}_IN_PROGRESS"), "User Initiated");
        let started = event_posts(world, &format!("{verb}_IN_PROGRESS"), "User Initiated");
        let shared = shared.clone();
        tokio::spawn(async move {
            post_all(&shared, started).await;
            tokio::time::sleep(takes).await;
            complete(shared, operation).await;
        });
    }

    /// Ends timed update `operation` if it is still the one in flight.
    async fn complete(shared: Shared, operation: u64) {
        let posts = {
            let mut world = shared.lock().unwrap_or_else(|e| e.into_inner());
            if world.operation.is_none() || world.operations != operation {
                return;
            }
            let create = world.operation.as_ref().is_some_and(|o| o.create);
            let done = if create {
                "CREATE_COMPLETE"
            } else {
                "UPDATE_COMPLETE"
            };
            world.statuses = [done.to_string()].into();
            finish(&mut world, done);
            world.completed_at = Some(Instant::now());
            record_event(&mut world, done, "");
            event_posts(&world, done, "")
        };
        post_all(&shared, posts).await;
    }

    /// The stack's own event, now, under the token of the operation in flight (newest first,
    /// as `DescribeStackEvents` lists them).
    fn record_event(world: &mut World, status: &str, reason: &str) {
        let name = world
            .stack_id
            .split('/')
            .nth(1)
            .unwrap_or("stub")
            .to_string();
        let event = Event {
            logical_id: name,
            resource_type: "AWS::CloudFormation::Stack".into(),
            status: status.into(),
            reason: reason.into(),
            token: world.token.clone(),
            at: Some(chrono::Utc::now()),
        };
        world.events.insert(0, event);
    }

    /// The SNS deliveries of one stack event, one per notification topic (none without a
    /// subscription or topics): (topic, status, body).
    fn event_posts(world: &World, status: &str, reason: &str) -> Vec<(String, String, String)> {
        let Some(n) = &world.notifications else {
            return Vec::new();
        };
        let name = world.stack_id.split('/').nth(1).unwrap_or("stub");
        let account = world.stack_id.split(':').nth(4).unwrap_or_default();
        let message = format!(
            "StackId='{id}'\nTimestamp='{at}'\nEventId='{event}'\nLogicalResourceId='{name}'\n\
             Namespace='{account}'\nPhysicalResourceId='{id}'\nPrincipalId='AIDAEXAMPLE'\n\
             ResourceProperties='null'\nResourceStatus='{status}'\nResourceStatusReason='{reason}'\n\
             ResourceType='AWS::CloudFormation::Stack'\nStackName='{name}'\nClientRequestToken='{token}'\n",
            id = world.stack_id,
            at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            event = format_args!("{}-{status}", world.operations),
            token = world.token,
        );
        let subject = Some("AWS CloudFormation Notification");
        world
            .notification_arns
            .iter()
            .map(|topic| {
                let body = n.signer.notification(topic, subject, &message);
                (topic.clone(), status.to_string(), body)
            })
            .collect()
    }

    /// Posts each delivery to the subscription's endpoint and records the answer.
    async fn post_all(shared: &Shared, posts: Vec<(String, String, String)>) {
        let endpoint = {
            let world = shared.lock().unwrap_or_else(|e| e.into_inner());
            world.notifications.as_ref().map(|n| n.endpoint.clone())
        };
        let Some(endpoint) = endpoint else { return };
        let client = reqwest::Client::new();
        for (topic, status, body) in posts {
            let sent = client
                .post(&endpoint)
                .header("content-type", "text/plain; charset=UTF-8")
                .header("x-amz-sns-message-type", "Notification")
                .body(body)
                .send()
                .await;
            let answer = sent.map_or(0, |r| r.status().as_u16());
            let mut world = shared.lock().unwrap_or_else(|e| e.into_inner());
            world.published.push(Published {
                topic,
                status,
                answer,
            });
        }
    }

    /// Someone else's update completed: the stack runs their parameters, and change sets made
    /// before it can no longer be executed.
    fn foreign_update(world: &mut World, parameters: Vec<(String, String)>) {
        world.parameters = parameters.into_iter().collect();
        for cs in world.change_sets.values_mut() {
            if cs.execution == "AVAILABLE" {
                cs.execution = "OBSOLETE".into();
            }
        }
    }

    fn take_throttle(world: &mut World, action: &str) -> bool {
        match world.throttle.get_mut(action) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    fn dispatch(world: &mut World, action: &str, form: &BTreeMap<String, String>) -> Answer {
        let name = form.get("ChangeSetName").cloned().unwrap_or_default();
        let answer = match action {
            "DescribeStacks" => describe_stacks(world),
            "CreateChangeSet" => create_change_set(world, &name, form),
            "DescribeChangeSet" => describe_change_set(world, &name),
            "DeleteChangeSet" => {
                world.change_sets.remove(&name);
                Ok(String::new())
            }
            "ExecuteChangeSet" => execute_change_set(world, &name, form),
            "DescribeStackEvents" => events(world, form),
            "CancelUpdateStack" => {
                cancel_update(world);
                Ok(String::new())
            }
            "ContinueUpdateRollback" => Ok(String::new()),
            other => Err(("InvalidAction", format!("the stub does not serve {other}"))),
        }?;
        if let Some(next) = world.after.get(action) {
            world.statuses = next.clone().into();
        } else if action == "ExecuteChangeSet" {
            world.statuses = progress(world.operation.as_ref()).into();
        }
        if action == "ExecuteChangeSet" {
            watch(world);
        }
        Ok(answer)
    }

    /// `CancelUpdateStack` during an update in flight: "the stack rolls back the update and
    /// reverts to the previous stack configuration"
    /// (<https://docs.aws.amazon.com/AWSCloudFormation/latest/APIReference/API_CancelUpdateStack.html>);
    /// the change set that started it ends `EXECUTE_FAILED`. With no operation in flight
    /// (a scripted status), only a scripted [`Script::after`] changes anything.
    fn cancel_update(world: &mut World) {
        let Some(op) = &world.operation else { return };
        if op.create {
            return;
        }
        world.operation = None;
        if let Some(cs) = world
            .executing
            .take()
            .and_then(|name| world.change_sets.get_mut(&name))
        {
            cs.execution = "EXECUTE_FAILED".into();
        }
        world.statuses = ["UPDATE_ROLLBACK_IN_PROGRESS", "UPDATE_ROLLBACK_COMPLETE"]
            .map(String::from)
            .into();
        record_event(world, "UPDATE_ROLLBACK_IN_PROGRESS", "User Initiated");
    }

    /// Unscripted, an executed change set is in progress for one look, then complete.
    fn progress(op: Option<&Operation>) -> Vec<String> {
        let verb = if op.is_some_and(|o| o.create) {
            "CREATE"
        } else {
            "UPDATE"
        };
        vec![format!("{verb}_IN_PROGRESS"), format!("{verb}_COMPLETE")]
    }

    /// Rolls the operation in flight back if one of its triggers' alarms is in `ALARM` or does
    /// not exist, as AWS documents (see the module doc): the parameters and triggers the stack
    /// had stay, and a stack event says which trigger fired.
    fn watch(world: &mut World) {
        let (Some(op), Some(alarms)) = (&world.operation, &world.alarms) else {
            return;
        };
        let fired = op.triggers.iter().find_map(|arn| {
            let name = arn.rsplit_once(":alarm:").map_or(arn.as_str(), |(_, n)| n);
            // The trigger's `Type` says which kind of alarm to look for: one of the other kind
            // is not found under it, so the trigger is missing.
            let composite = op
                .trigger_types
                .get(arn)
                .map(|t| t == "AWS::CloudWatch::CompositeAlarm");
            let found = alarms.composite(name);
            if composite.is_some() && found.is_some() && composite != found {
                return Some(format!("Rollback trigger {arn} does not exist"));
            }
            match alarms.state(name).as_deref() {
                Some("ALARM") => Some(format!("Rollback trigger {arn} is in ALARM state")),
                None => Some(format!("Rollback trigger {arn} does not exist")),
                Some(_) => None,
            }
        });
        let Some(reason) = fired else { return };
        let (rolling, done) = if op.create {
            ("ROLLBACK_IN_PROGRESS", "ROLLBACK_COMPLETE")
        } else {
            ("UPDATE_ROLLBACK_IN_PROGRESS", "UPDATE_ROLLBACK_COMPLETE")
        };
        let event = Event {
            logical_id: "stub".into(),
            resource_type: "AWS::CloudFormation::Stack".into(),
            status: rolling.into(),
            reason,
            token: TOKEN.into(),
            at: None,
        };
        world.events.insert(0, event);
        world.statuses = [rolling, done].map(String::from).into();
        world.operation = None;
    }

    /// Once the operation reached a final state: a success keeps what it asked for.
    fn finish(world: &mut World, status: &str) {
        if status.ends_with("_IN_PROGRESS") {
            return;
        }
        let Some(op) = world.operation.take() else {
            return;
        };
        if status.ends_with("_COMPLETE") && !status.contains("ROLLBACK") {
            world.parameters = op.parameters;
            world.triggers = op.triggers;
        }
    }

    /// `{prefix}.member.N.{field}` for N = 1, 2, … as long as there is one.
    fn members(form: &BTreeMap<String, String>, prefix: &str, field: &str) -> Vec<String> {
        (1..)
            .map_while(|n| form.get(&format!("{prefix}.member.{n}.{field}")).cloned())
            .collect()
    }

    fn current(world: &mut World) -> Option<String> {
        if world.statuses.len() > 1 {
            return world.statuses.pop_front();
        }
        world.statuses.front().cloned()
    }

    fn describe_stacks(world: &mut World) -> Answer {
        watch(world);
        let Some(status) = current(world) else {
            return Err((
                "ValidationError",
                "Stack with id stub does not exist".into(),
            ));
        };
        finish(world, &status);
        let parameters: String = world
            .parameters
            .iter()
            .map(|(k, v)| {
                format!(
                    "<member><ParameterKey>{}</ParameterKey><ParameterValue>{}</ParameterValue></member>",
                    esc(k),
                    esc(v)
                )
            })
            .collect();
        let outputs: String = world
            .outputs
            .iter()
            .map(|(k, v)| {
                format!(
                    "<member><OutputKey>{}</OutputKey><OutputValue>{}</OutputValue></member>",
                    esc(k),
                    esc(v)
                )
            })
            .collect();
        let topics: String = world
            .notification_arns
            .iter()
            .map(|t| format!("<member>{}</member>", esc(t)))
            .collect();
        Ok(format!(
            "<Stacks><member><StackName>stub</StackName><StackId>{STACK_ID}</StackId>\
             <CreationTime>2026-01-01T00:00:00Z</CreationTime><StackStatus>{status}</StackStatus>\
             <Parameters>{parameters}</Parameters><Outputs>{outputs}</Outputs>\
             <NotificationARNs>{topics}</NotificationARNs></member></Stacks>"
        ))
    }

    fn create_change_set(world: &mut World, name: &str, form: &BTreeMap<String, String>) -> Answer {
        let token = form.get("ClientToken");
        let retried = token.and_then(|t| world.client_tokens.get(t)) == Some(&name.to_string());
        if retried && world.change_sets.contains_key(name) {
            return Ok(format!(
                "<Id>{STACK_ID}/changeSet/{}</Id><StackId>{STACK_ID}</StackId>",
                esc(name)
            ));
        }
        if world.change_sets.contains_key(name) {
            return Err((
                "AlreadyExistsException",
                format!("ChangeSet {name} already exists"),
            ));
        }
        let create = form.get("ChangeSetType").map(String::as_str) == Some("CREATE");
        let parameters = resolve_parameters(world, create, form)?;
        let list = "RollbackConfiguration.RollbackTriggers";
        let arns = members(form, list, "Arn");
        let types = members(form, list, "Type");
        let trigger_types = arns.iter().cloned().zip(types).collect();
        let named = form.contains_key(list) || !arns.is_empty();
        let notification_arns = (1..)
            .map_while(|n| form.get(&format!("NotificationARNs.member.{n}")).cloned())
            .collect();
        let change_set = ChangeSet {
            execution: "AVAILABLE".into(),
            create,
            parameters,
            triggers: named.then_some(arns),
            trigger_types,
            ready_at: world.change_set_takes.map(|t| Instant::now() + t),
            notification_arns,
        };
        world.change_sets.insert(name.to_string(), change_set);
        if let Some(token) = token {
            world.client_tokens.insert(token.clone(), name.to_string());
        }
        Ok(format!(
            "<Id>{STACK_ID}/changeSet/{}</Id><StackId>{STACK_ID}</StackId>",
            esc(name)
        ))
    }

    /// The parameters a change set asks for, resolved as the module doc says, or AWS's error.
    fn resolve_parameters(
        world: &World,
        create: bool,
        form: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, (&'static str, String)> {
        let template = form.get("TemplateBody").map_or("", String::as_str);
        let declared = declared_parameters(template);
        let mut resolved: BTreeMap<String, String> = declared
            .iter()
            .filter_map(|(k, default)| Some((k.clone(), default.clone()?)))
            .collect();
        let invalid = |key: &str, why: &str| {
            let message = format!("Invalid input for parameter key {key}. {why}");
            Err(("ValidationError", message))
        };
        for n in 1.. {
            let field = |f: &str| form.get(&format!("Parameters.member.{n}.{f}"));
            let Some(key) = field("ParameterKey") else {
                break;
            };
            let value = field("ParameterValue");
            if field("UsePreviousValue").map(String::as_str) != Some("true") {
                resolved.insert(key.clone(), value.cloned().unwrap_or_default());
                continue;
            }
            if value.is_some_and(|v| !v.is_empty()) {
                return invalid(
                    key,
                    "Cannot specify usePreviousValue as true and non empty value for a parameter",
                );
            }
            if create {
                return Err((
                    "ValidationError",
                    "Cannot specify UsePreviousValue on Parameters when ChangeSetType is CREATE"
                        .into(),
                ));
            }
            let Some(previous) = world.parameters.get(key) else {
                return invalid(
                    key,
                    "Cannot specify usePreviousValue as true for a parameter key not in the \
                     previous template",
                );
            };
            if !declared.contains_key(key) {
                let message = format!("Parameters: [{key}] do not exist in the template");
                return Err(("ValidationError", message));
            }
            resolved.insert(key.clone(), previous.clone());
        }
        Ok(resolved)
    }

    /// The parameters a JSON template declares, with their `Default`s (none for another body).
    fn declared_parameters(template: &str) -> BTreeMap<String, Option<String>> {
        let parsed: Option<serde_json::Value> = serde_json::from_str(template).ok();
        let Some(serde_json::Value::Object(declared)) =
            parsed.as_ref().and_then(|t| t.get("Parameters"))
        else {
            return BTreeMap::new();
        };
        let default = |p: &serde_json::Value| match p.get("Default")? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        declared
            .iter()
            .map(|(k, p)| (k.clone(), default(p)))
            .collect()
    }

    /// A change set still being made (`CREATE_PENDING`, not executable).
    fn pending(cs: &ChangeSet) -> bool {
        cs.ready_at.is_some_and(|at| Instant::now() < at)
    }

    fn describe_change_set(world: &mut World, name: &str) -> Answer {
        let Some(cs) = world.change_sets.get(name) else {
            return Err((
                "ChangeSetNotFound",
                format!("ChangeSet [{name}] does not exist"),
            ));
        };
        let running = world.operation.is_some() && world.executing.as_deref() == Some(name);
        let (status, execution) = if pending(cs) {
            ("CREATE_PENDING", "UNAVAILABLE")
        } else if running {
            ("CREATE_COMPLETE", "EXECUTE_IN_PROGRESS")
        } else {
            ("CREATE_COMPLETE", cs.execution.as_str())
        };
        Ok(format!(
            "<ChangeSetName>{}</ChangeSetName><StackName>stub</StackName><StackId>{STACK_ID}</StackId>\
             <Status>{status}</Status><ExecutionStatus>{execution}</ExecutionStatus><Changes/>",
            esc(name)
        ))
    }

    fn execute_change_set(
        world: &mut World,
        name: &str,
        form: &BTreeMap<String, String>,
    ) -> Answer {
        match world.change_sets.get_mut(name) {
            None => Err((
                "ChangeSetNotFound",
                format!("ChangeSet [{name}] does not exist"),
            )),
            Some(cs) if pending(cs) => Err((
                "InvalidChangeSetStatus",
                format!(
                    "ChangeSet [{name}] cannot be executed in its current status of [CREATE_PENDING]"
                ),
            )),
            Some(cs) if cs.execution == "AVAILABLE" => {
                cs.execution = "EXECUTE_COMPLETE".into();
                if !cs.notification_arns.is_empty() {
                    world.notification_arns = cs.notification_arns.clone();
                }
                let triggers = cs.triggers.clone();
                let operation = Operation {
                    create: cs.create,
                    parameters: cs.parameters.clone(),
                    triggers: triggers.unwrap_or_else(|| world.triggers.clone()),
                    trigger_types: cs.trigger_types.clone(),
                };
                world.operation = Some(operation);
                world.executing = Some(name.to_string());
                world.token = form.get("ClientRequestToken").cloned().unwrap_or_default();
                world.executed += 1;
                Ok(String::new())
            }
            Some(cs) => Err((
                "InvalidChangeSetStatus",
                format!(
                    "ChangeSet [{name}] cannot be executed in its current execution status of [{}]",
                    cs.execution
                ),
            )),
        }
    }

    /// One page of the stack's events, newest first, from the request's `NextToken` (the index
    /// of the page's first event).
    fn events(world: &World, form: &BTreeMap<String, String>) -> Answer {
        let start = match form.get("NextToken") {
            None => 0,
            Some(token) => token
                .strip_prefix("events-")
                .and_then(|i| i.parse::<usize>().ok())
                .filter(|i| *i < world.events.len())
                .ok_or(("ValidationError", format!("Invalid NextToken {token}")))?,
        };
        let end = world
            .events_per_page
            .map_or(world.events.len(), |n| (start + n).min(world.events.len()));
        let next = if end < world.events.len() {
            format!("<NextToken>events-{end}</NextToken>")
        } else {
            String::new()
        };
        let members: String = world.events[start..end]
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let i = start + i;
                let token = if e.token == TOKEN { world.token.as_str() } else { e.token.as_str() };
                let at = e.at.map_or("2026-01-01T00:00:00Z".to_string(), |t| {
                    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
                });
                format!(
                    "<member><StackId>{STACK_ID}</StackId><EventId>e{i}</EventId><StackName>stub</StackName>\
                     <LogicalResourceId>{}</LogicalResourceId><ResourceType>{}</ResourceType>\
                     <Timestamp>{at}</Timestamp><ResourceStatus>{}</ResourceStatus>\
                     <ResourceStatusReason>{}</ResourceStatusReason><ClientRequestToken>{}</ClientRequestToken></member>",
                    esc(&e.logical_id),
                    esc(&e.resource_type),
                    esc(&e.status),
                    esc(&e.reason),
                    esc(token)
                )
            })
            .collect();
        Ok(format!("<StackEvents>{members}</StackEvents>{next}"))
    }

    fn ok(action: &str, result: &str) -> Response {
        let body = format!(
            "<{action}Response xmlns=\"{NS}\"><{action}Result>{result}</{action}Result>\
             <ResponseMetadata><RequestId>stub</RequestId></ResponseMetadata></{action}Response>"
        );
        (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
    }

    fn error(code: &str, message: &str) -> Response {
        let body = format!(
            "<ErrorResponse xmlns=\"{NS}\"><Error><Type>Sender</Type><Code>{code}</Code>\
             <Message>{}</Message></Error><RequestId>stub</RequestId></ErrorResponse>",
            esc(message)
        );
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/xml")],
            body,
        )
            .into_response()
    }

    fn esc(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    }
}

pub mod ecr {
    //! A loopback proxy in front of moto that answers ECR's `PutImage` into a repository with
    //! immutable tags as ECR does.
    //!
    //! Covers a moto 5.2.5 gap. In a repository whose `imageTagMutability` is `IMMUTABLE`,
    //! moto refuses a tag already in use with `ImageAlreadyExistsException`. ECR refuses it with
    //! `ImageTagAlreadyExistsException` ("The specified image is tagged with a tag that already
    //! exists. The repository is configured for tag immutability.": `PutImage`'s errors in the
    //! API reference, <https://docs.aws.amazon.com/AmazonECR/latest/APIReference/API_PutImage.html>),
    //! and it does so when the tag already holds the very image being put, too
    //! (<https://github.com/aws/containers-roadmap/issues/2179>: "when pushing an image to an
    //! IMMUTABLE registry, even when the digest has not changed, it fails with
    //! `ImageTagAlreadyExistsException`"). `ImageAlreadyExistsException` is left to mutable
    //! repositories, where it means the same image was put under the same tag.
    //!
    //! So the proxy forwards every request to moto unchanged. When moto answers a `PutImage`
    //! with `ImageAlreadyExistsException`, it asks moto for the repository
    //! (`DescribeRepositories`, with the caller's credentials, so in the caller's account) and,
    //! if its tags are immutable, answers `ImageTagAlreadyExistsException` instead. moto
    //! already refuses every tag in use in such a repository, so nothing else changes.
    //!
    //! Replication lag, on request ([`EcrProxy::missing_layers`]): ECR takes a manifest only when
    //! its layers are already in the registry, and answers `LayersNotFoundException` otherwise
    //! (`PutImage`'s errors, same page); replication copies them asynchronously
    //! (<https://docs.aws.amazon.com/AmazonECR/latest/userguide/replication.html>). moto does not
    //! check layers, so the proxy answers the next `PutImage` calls that way itself, without
    //! forwarding them.
    //!
    //! Throttling, on request ([`EcrProxy::throttle`]): the next calls of one operation are
    //! answered `ThrottlingException`, which moto cannot be told to do. Never used by the
    //! controller at run time; binds 127.0.0.1 only, forwards to loopback only.

    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use anyhow::ensure;
    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};

    use super::proxy::{Upstream, listen};

    const TARGET: &str = "x-amz-target";
    const PREFIX: &str = "AmazonEC2ContainerRegistry_V20150921.";

    struct Shared {
        upstream: Upstream,
        rewritten: AtomicUsize,
        /// `PutImage` calls still to be answered `LayersNotFoundException`.
        missing_layers: AtomicUsize,
        /// How many were.
        refused_layers: AtomicUsize,
        /// An operation (`DescribeImages`) and how many of its next calls are throttled.
        throttle: std::sync::Mutex<Option<(String, usize)>>,
    }

    /// The proxy; stopped when dropped.
    pub struct EcrProxy {
        addr: SocketAddr,
        shared: Arc<Shared>,
        server: tokio::task::JoinHandle<()>,
    }

    impl EcrProxy {
        /// Listens on a free loopback port, in the current tokio runtime, and forwards to
        /// `upstream` (`http://127.0.0.1:<port>`, moto).
        pub async fn start(upstream: &str) -> anyhow::Result<Self> {
            let shared = Arc::new(Shared {
                upstream: Upstream::new(upstream)?,
                rewritten: AtomicUsize::new(0),
                missing_layers: AtomicUsize::new(0),
                refused_layers: AtomicUsize::new(0),
                throttle: std::sync::Mutex::new(None),
            });
            let app = Router::new().fallback(forward).with_state(shared.clone());
            let (addr, server) = listen(app, "ECR").await?;
            Ok(Self {
                addr,
                shared,
                server,
            })
        }

        /// `http://127.0.0.1:<port>`.
        pub fn endpoint(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// How many of moto's answers were rewritten to `ImageTagAlreadyExistsException`.
        pub fn rewritten(&self) -> usize {
            self.shared.rewritten.load(Ordering::SeqCst)
        }

        /// The next `n` `PutImage` calls are answered `LayersNotFoundException`, as while
        /// replication has not copied the image's layers yet.
        pub fn missing_layers(&self, n: usize) {
            self.shared.missing_layers.store(n, Ordering::SeqCst);
        }

        /// How many `PutImage` calls were answered `LayersNotFoundException`.
        pub fn refused_layers(&self) -> usize {
            self.shared.refused_layers.load(Ordering::SeqCst)
        }

        /// The next `n` calls of `operation` (`DescribeImages`) are answered
        /// `ThrottlingException` (HTTP 400), without being forwarded.
        pub fn throttle(&self, operation: &str, n: usize) {
            *self.shared.throttle.lock().unwrap() = Some((operation.to_owned(), n));
        }
    }

    impl Drop for EcrProxy {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    async fn forward(
        State(shared): State<Arc<Shared>>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        match answer(&shared, method, &uri, &headers, body).await {
            Ok(response) => response,
            Err(e) => (StatusCode::BAD_GATEWAY, format!("ECR proxy: {e:#}")).into_response(),
        }
    }

    /// Whether this call of `target` is one of the throttled ones (and counts it).
    fn throttled(shared: &Shared, target: &str) -> bool {
        let mut throttle = shared.throttle.lock().unwrap();
        match throttle.as_mut() {
            Some((operation, n)) if *n > 0 && target == format!("{PREFIX}{operation}") => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    async fn answer(
        shared: &Shared,
        method: Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> anyhow::Result<Response> {
        let target = headers
            .get(TARGET)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if throttled(shared, &target) {
            let body = serde_json::json!({
                "__type": "ThrottlingException",
                "message": "Rate exceeded",
            });
            let headers = [
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amzn-errortype", "ThrottlingException"),
            ];
            return Ok((StatusCode::BAD_REQUEST, headers, body.to_string()).into_response());
        }
        let lagging = target == format!("{PREFIX}PutImage")
            && shared
                .missing_layers
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if lagging {
            shared.refused_layers.fetch_add(1, Ordering::SeqCst);
            let body = serde_json::json!({
                "__type": "LayersNotFoundException",
                "message": "The specified layers could not be found, or the specified layer isn't valid for this repository.",
            });
            let headers = [
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amzn-errortype", "LayersNotFoundException"),
            ];
            return Ok((StatusCode::BAD_REQUEST, headers, body.to_string()).into_response());
        }
        let (status, answer_headers, answer) = shared
            .upstream
            .send(method, uri, headers, body.clone())
            .await?;
        let refused = status == StatusCode::BAD_REQUEST
            && target == format!("{PREFIX}PutImage")
            && error_type(&answer_headers, &answer).ends_with("ImageAlreadyExistsException");
        if refused && let Some(message) = immutable_refusal(shared, uri, headers, &body).await? {
            shared.rewritten.fetch_add(1, Ordering::SeqCst);
            let mut out = answer_headers;
            out.insert(
                "x-amzn-errortype",
                "ImageTagAlreadyExistsException".parse()?,
            );
            let body = serde_json::json!({
                "__type": "ImageTagAlreadyExistsException",
                "message": message,
            });
            return Ok((status, out, body.to_string()).into_response());
        }
        Ok((status, answer_headers, answer).into_response())
    }

    /// ECR's message when `PutImage`'s repository has immutable tags; `None` when it has not.
    async fn immutable_refusal(
        shared: &Shared,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> anyhow::Result<Option<String>> {
        let put: serde_json::Value = serde_json::from_slice(body)?;
        let repository = put["repositoryName"].as_str().unwrap_or_default();
        let tag = put["imageTag"].as_str().unwrap_or_default();
        let mut ask = serde_json::json!({ "repositoryNames": [repository] });
        if let Some(registry) = put["registryId"].as_str() {
            ask["registryId"] = registry.into();
        }
        let mut ask_headers = headers.clone();
        ask_headers.insert(TARGET, format!("{PREFIX}DescribeRepositories").parse()?);
        let (status, _, described) = shared
            .upstream
            .send(
                Method::POST,
                uri,
                &ask_headers,
                Bytes::from(ask.to_string()),
            )
            .await?;
        ensure!(
            status.is_success(),
            "DescribeRepositories {repository}: {status}"
        );
        let described: serde_json::Value = serde_json::from_slice(&described)?;
        let immutable = described["repositories"][0]["imageTagMutability"] == "IMMUTABLE";
        Ok(immutable.then(|| {
            format!(
                "The image tag '{tag}' already exists in the '{repository}' repository and cannot be overwritten because the repository is immutable."
            )
        }))
    }

    /// The error code of a JSON-protocol answer: its `x-amzn-errortype` header, else `__type`.
    fn error_type(headers: &HeaderMap, body: &[u8]) -> String {
        let code = headers
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| {
                let body: serde_json::Value = serde_json::from_slice(body).ok()?;
                body["__type"].as_str().map(str::to_owned)
            })
            .unwrap_or_default();
        // Either may carry a namespace (`…#Code`) or a suffix (`Code:http://…`).
        let code = code.split(':').next().unwrap_or_default();
        code.rsplit('#').next().unwrap_or_default().to_owned()
    }
}

mod proxy;
pub mod sns;
