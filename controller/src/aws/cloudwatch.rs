//! CloudWatch: the pull side of the [`Alarms`] port (the backstop to SNS alarm pushes).
//!
//! Owns asking `DescribeAlarms` which of a stage's alarms are in `ALARM` in the stage's
//! account and region, at most 100 names per call, metric and composite alarms alike; and,
//! for a bake, counting with `GetMetricData` the data points each alarm's metric has had
//! since the deploy finished: the metric the alarm watches (`Namespace`, `MetricName`,
//! `Dimensions`, `Period`, `Statistic` or `ExtendedStatistic`, `Unit`), or the alarm's own
//! metric-math queries (`Metrics`, counting the one it returns).
//!
//! # Guarantees
//! - An alarm name that does not exist is an error ([`PortError::NotFound`] naming it), never
//!   "all clear": a typo in `stages.toml` must not let a bad release bake unwatched.
//! - No names, no call; no data window, no `GetMetricData`.
//! - Only data points stamped at or after the window's start count: CloudWatch rounds a
//!   request's `StartTime` down, so the period the deploy finished in (old code's data) may
//!   come back, and is left out.
//! - One read makes one `DescribeAlarms` per 100 names and one `GetMetricData` per 500
//!   single-metric alarms plus one per metric-math alarm (its query ids are its own); a bake
//!   read of a composite alarm also reads, once per 15 minutes, the alarms under it (a level at
//!   a time: one `ChildrenOfAlarmName` call per composite alarm, one `DescribeAlarms` per 100
//!   alarms under them) for how long it may take to report a breach.
//!
//! # Caveats
//! - The current SDK speaks RPCv2 CBOR to CloudWatch; tests use the stub in
//!   `tollgate_testkit::aws_stubs::cloudwatch`, reached through [`CloudWatchAlarms::with_endpoint_url`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::primitives::DateTime as AwsTime;
use aws_sdk_cloudwatch::types::{
    AlarmType, Metric, MetricAlarm, MetricDataQuery, MetricStat, ScanBy, StateValue, StatusCode,
};
use chrono::{DateTime, Utc};

use super::errors::{context, sdk};
use super::observe::CallMetrics;
use super::retry::Limiter;
use super::sts::Credentials;
use crate::config::Account;
use crate::domain::{AlarmReading, AlarmState};
use crate::engine::ports::{Alarms, BakeRead, PortError, PortResult};

/// `DescribeAlarms` takes at most 100 names and returns at most 100 records per page.
const NAMES_PER_CALL: usize = 100;
/// `GetMetricData` takes at most 500 queries per call.
const QUERIES_PER_CALL: usize = 500;
/// Bounds the pages read for one chunk of names (each type pages separately).
const MAX_PAGES: usize = 10;
const SESSION_NAME: &str = "tollgate-alarms";
/// How often CloudWatch evaluates an alarm whose period is a minute or more.
const EVALUATION_EVERY_SECS: i64 = 60;
/// How deep composite alarms nested in composite alarms are followed for their delay.
const MAX_NESTING: usize = 4;
/// How long a composite alarm's delay, read from its children, is used before it is read
/// again (a `PutCompositeAlarm` can change the rule).
const COMPOSITE_DELAY_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// (account id, region, alarm name).
type AlarmKey = (String, String, String);

/// Reads alarm states; share one per controller.
pub struct CloudWatchAlarms {
    creds: Arc<Credentials>,
    limiter: Arc<Limiter>,
    endpoint_url: Option<String>,
    /// Whether each alarm read so far is a composite alarm, by (account id, region, name):
    /// every `DescribeAlarms` answer fills it, so the kinds a deploy's rollback triggers need
    /// are known from the entry gate's read just before it. An alarm's kind is fixed at its
    /// creation (`PutMetricAlarm` and `PutCompositeAlarm` make different alarms).
    kinds: Mutex<HashMap<AlarmKey, bool>>,
    /// Each composite alarm's [`reports_within`], the longest of its children's, and when it
    /// was read.
    composite_delays: Mutex<HashMap<AlarmKey, (Option<u64>, std::time::Instant)>>,
}

impl CloudWatchAlarms {
    pub fn new(creds: Arc<Credentials>, limiter: Arc<Limiter>) -> CloudWatchAlarms {
        CloudWatchAlarms {
            creds,
            limiter,
            endpoint_url: None,
            kinds: Mutex::new(HashMap::new()),
            composite_delays: Mutex::new(HashMap::new()),
        }
    }

    /// Sends CloudWatch calls here instead of the regional endpoint (a VPC endpoint, or a
    /// loopback stub in tests); credentials still come from [`Credentials`]. Without it, the
    /// SDK's own settings apply (`AWS_ENDPOINT_URL_CLOUDWATCH`, then `AWS_ENDPOINT_URL`).
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> CloudWatchAlarms {
        self.endpoint_url = Some(url.into());
        self
    }

    async fn client(&self, account: &Account, region: &str) -> PortResult<Client> {
        let config = self.creds.config_for(account, region, SESSION_NAME).await?;
        let mut builder =
            aws_sdk_cloudwatch::config::Builder::from(&config).interceptor(CallMetrics);
        if let Some(url) = &self.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        Ok(Client::from_conf(builder.build()))
    }

    /// Each alarm among `names` that exists: its state and what it watches.
    async fn states(
        &self,
        client: &Client,
        account: &str,
        names: &[String],
    ) -> PortResult<BTreeMap<String, Watched>> {
        let mut states = BTreeMap::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .limiter
                .call(account, "DescribeAlarms", || {
                    let request = client
                        .describe_alarms()
                        .set_alarm_names(Some(names.to_vec()));
                    let request = request
                        .alarm_types(AlarmType::MetricAlarm)
                        .alarm_types(AlarmType::CompositeAlarm);
                    sdk(request
                        .max_records(NAMES_PER_CALL as i32)
                        .set_next_token(token.clone())
                        .send())
                })
                .await?;
            for a in page.metric_alarms() {
                if let (Some(n), Some(s)) = (a.alarm_name(), a.state_value()) {
                    let watched = Watched {
                        state: s.clone(),
                        composite: false,
                        metric: watched_metric(a),
                        reports_within: reports_within(a),
                    };
                    states.insert(n.to_string(), watched);
                }
            }
            for a in page.composite_alarms() {
                if let (Some(n), Some(s)) = (a.alarm_name(), a.state_value()) {
                    let watched = Watched {
                        state: s.clone(),
                        composite: true,
                        metric: None,
                        reports_within: None,
                    };
                    states.insert(n.to_string(), watched);
                }
            }
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(states);
            }
        }
        Err(PortError::Failed(format!(
            "DescribeAlarms returned more than {MAX_PAGES} pages"
        )))
    }

    /// Every alarm among `names` that exists, read in chunks of 100 names.
    async fn describe(
        &self,
        client: &Client,
        account: &Account,
        names: &[String],
    ) -> PortResult<BTreeMap<String, Watched>> {
        let mut states = BTreeMap::new();
        for chunk in names.chunks(NAMES_PER_CALL) {
            states.extend(self.states(client, &account.id, chunk).await?);
        }
        Ok(states)
    }

    /// Data points per alarm in `window`, for the alarms that watch a metric.
    async fn count(
        &self,
        client: &Client,
        account: &str,
        watched: &BTreeMap<String, Watched>,
        window: (DateTime<Utc>, DateTime<Utc>),
    ) -> PortResult<BTreeMap<String, u32>> {
        let mut counts = BTreeMap::new();
        let mut single: Vec<(String, MetricDataQuery)> = Vec::new();
        for (name, w) in watched {
            match &w.metric {
                Some(Watch::Single(stat)) => {
                    let id = format!("a{}", single.len());
                    let q = MetricDataQuery::builder()
                        .id(&id)
                        .metric_stat(stat.clone())
                        .return_data(true)
                        .build();
                    single.push((name.clone(), q));
                }
                Some(Watch::Math(queries)) => {
                    let returned = returned_id(queries);
                    let found = self.datapoints(client, account, queries, window).await?;
                    let n = returned.and_then(|id| found.get(&id)).copied().unwrap_or(0);
                    counts.insert(name.clone(), n);
                }
                None => {}
            }
        }
        for chunk in single.chunks(QUERIES_PER_CALL) {
            let queries: Vec<MetricDataQuery> = chunk.iter().map(|(_, q)| q.clone()).collect();
            let found = self.datapoints(client, account, &queries, window).await?;
            for (name, q) in chunk {
                let n = q.id().and_then(|id| found.get(id)).copied().unwrap_or(0);
                counts.insert(name.clone(), n);
            }
        }
        Ok(counts)
    }

    /// One `GetMetricData` request, all its pages: data points at or after the window's start,
    /// per query id.
    async fn datapoints(
        &self,
        client: &Client,
        account: &str,
        queries: &[MetricDataQuery],
        (from, until): (DateTime<Utc>, DateTime<Utc>),
    ) -> PortResult<BTreeMap<String, u32>> {
        let from_ms = from.timestamp_millis();
        // EndTime must be after StartTime (a `ValidationError` otherwise).
        let until_ms = until.timestamp_millis().max(from_ms + 1000);
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .limiter
                .call(account, "GetMetricData", || {
                    sdk(client
                        .get_metric_data()
                        .set_metric_data_queries(Some(queries.to_vec()))
                        .start_time(AwsTime::from_millis(from_ms))
                        .end_time(AwsTime::from_millis(until_ms))
                        .scan_by(ScanBy::TimestampAscending)
                        .set_next_token(token.clone())
                        .send())
                })
                .await?;
            for r in page.metric_data_results() {
                if let Some(StatusCode::InternalError | StatusCode::Forbidden) = r.status_code() {
                    let why = r
                        .messages()
                        .iter()
                        .filter_map(|m| m.value())
                        .collect::<Vec<_>>();
                    return Err(PortError::Failed(format!(
                        "GetMetricData could not read query {}: {}",
                        r.id().unwrap_or_default(),
                        why.join("; ")
                    )));
                }
                let since = r
                    .timestamps()
                    .iter()
                    .filter(|t| t.to_millis().is_ok_and(|ms| ms >= from_ms))
                    .count();
                let id = r.id().unwrap_or_default().to_string();
                let n = counts.entry(id).or_default();
                *n = n.saturating_add(u32::try_from(since).unwrap_or(u32::MAX));
            }
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(counts);
            }
        }
        Err(PortError::Failed(format!(
            "GetMetricData returned more than {MAX_PAGES} pages"
        )))
    }
}

/// An alarm as `DescribeAlarms` describes it: its state, and the metric it watches.
#[derive(Debug, Clone)]
struct Watched {
    state: StateValue,
    composite: bool,
    /// `None` for a composite alarm (it watches other alarms, not a metric).
    metric: Option<Watch>,
    /// See [`reports_within`]; for a composite alarm, filled in from its children by a bake
    /// read that asks for it ([`CloudWatchAlarms::composite_delay`]).
    reports_within: Option<u64>,
}

#[derive(Debug, Clone)]
enum Watch {
    /// One metric with one statistic over one period.
    Single(MetricStat),
    /// A metric-math alarm's own queries.
    Math(Vec<MetricDataQuery>),
}

/// How long, in seconds, CloudWatch may take from the start of a breach to putting a metric
/// alarm in `ALARM`: `(DatapointsToAlarm + 1) × Period + 60 s`. The alarm goes to `ALARM` once
/// `DatapointsToAlarm` of its last `EvaluationPeriods` data points breach ("Evaluating an
/// alarm", CloudWatch User Guide; `DatapointsToAlarm` defaults to `EvaluationPeriods`), and a
/// data point exists once its `Period` is over; the period the breach begins in may not breach
/// as a whole (one more period), and alarms are evaluated about once a minute (60 s). A
/// metric published later than that still arrives after it (`alarm_delay` can be set longer).
/// A metric-math alarm has no `Period` of its own: its queries' longest is used. `None` when
/// the alarm gives no period.
fn reports_within(a: &MetricAlarm) -> Option<u64> {
    let query_period =
        |q: &MetricDataQuery| q.period().or(q.metric_stat().and_then(|m| m.period()));
    let period = a
        .period()
        .or_else(|| a.metrics().iter().filter_map(query_period).max())?;
    let points = a
        .datapoints_to_alarm()
        .or(a.evaluation_periods())
        .unwrap_or(1);
    let periods = i64::from(points.max(1)) + 1;
    let secs = i64::from(period.max(0)) * periods + EVALUATION_EVERY_SECS;
    u64::try_from(secs).ok()
}

/// What a metric alarm watches, as `GetMetricData` asks for it.
fn watched_metric(a: &MetricAlarm) -> Option<Watch> {
    if !a.metrics().is_empty() {
        return Some(Watch::Math(a.metrics().to_vec()));
    }
    let stat = a
        .statistic()
        .map(|s| s.as_str().to_string())
        .or_else(|| a.extended_statistic().map(str::to_string))?;
    let metric = Metric::builder()
        .set_namespace(a.namespace().map(str::to_string))
        .set_metric_name(a.metric_name().map(str::to_string))
        .set_dimensions(Some(a.dimensions().to_vec()))
        .build();
    let stat = MetricStat::builder()
        .metric(metric)
        .set_period(a.period())
        .stat(stat)
        .set_unit(a.unit().cloned())
        .build();
    Some(Watch::Single(stat))
}

/// The id of the query whose result the alarm evaluates (`ReturnData` true; the one query
/// when there is only one).
fn returned_id(queries: &[MetricDataQuery]) -> Option<String> {
    let returned = queries.iter().find(|q| q.return_data() == Some(true));
    let only = (queries.len() == 1).then(|| &queries[0]);
    returned.or(only).and_then(|q| q.id()).map(str::to_string)
}

impl CloudWatchAlarms {
    /// The client for `account` in `region`, what `DescribeAlarms` says of `names`, and their
    /// states; errors carry `what`.
    async fn described(
        &self,
        account: &Account,
        region: &str,
        names: &[String],
        what: &str,
    ) -> PortResult<(
        Client,
        BTreeMap<String, Watched>,
        BTreeMap<String, StateValue>,
    )> {
        let client = self
            .client(account, region)
            .await
            .map_err(|e| context(e, what))?;
        let watched = self
            .describe(&client, account, names)
            .await
            .map_err(|e| context(e, what))?;
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        for (name, w) in &watched {
            let key = (account.id.to_string(), region.to_string(), name.clone());
            kinds.insert(key, w.composite);
        }
        drop(kinds);
        let states = watched
            .iter()
            .map(|(n, w)| (n.clone(), w.state.clone()))
            .collect();
        Ok((client, watched, states))
    }
}

#[async_trait]
impl Alarms for CloudWatchAlarms {
    async fn in_alarm(
        &self,
        account: &Account,
        region: &str,
        names: &[String],
    ) -> PortResult<Vec<String>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let what = format!(
            "reading alarms in account {} ({}) {region}",
            account.name, account.id
        );
        let (_, _, states) = self.described(account, region, names, &what).await?;
        firing(names, &states).map_err(|e| context(e, &what))
    }

    /// From the kinds already read; only a name not read before costs a `DescribeAlarms`.
    async fn composite(
        &self,
        account: &Account,
        region: &str,
        names: &[String],
    ) -> PortResult<Vec<String>> {
        let known = |kinds: &HashMap<AlarmKey, bool>, name: &String| {
            let key = (account.id.to_string(), region.to_string(), name.clone());
            kinds.get(&key).copied()
        };
        let unknown: Vec<String> = {
            let kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
            names
                .iter()
                .filter(|n| known(&kinds, n).is_none())
                .cloned()
                .collect()
        };
        if !unknown.is_empty() {
            let what = format!(
                "reading the kinds of alarms in account {} ({}) {region}",
                account.name, account.id
            );
            let (_, _, states) = self.described(account, region, &unknown, &what).await?;
            firing(&unknown, &states).map_err(|e| context(e, &what))?;
        }
        let kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        Ok(names
            .iter()
            .filter(|n| known(&kinds, n) == Some(true))
            .cloned()
            .collect())
    }

    async fn read(
        &self,
        account: &Account,
        region: &str,
        names: &[String],
        asked: BakeRead,
    ) -> PortResult<Vec<AlarmReading>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let what = format!(
            "reading alarms and their data points in account {} ({}) {region}",
            account.name, account.id
        );
        let (client, mut watched, states) = self.described(account, region, names, &what).await?;
        firing(names, &states).map_err(|e| context(e, &what))?;
        // The states are read: a failure to read what is under a composite alarm costs only
        // its part of the hold, never the reading (an alarm in ALARM must still roll back).
        // Only `alarm_delay = "auto"` uses a composite's delay, and it costs calls of its own.
        let composites = watched.iter_mut().filter(|(_, w)| w.composite);
        for (name, w) in composites.take_while(|_| asked.composite_delays) {
            match self.composite_delay(&client, account, region, name).await {
                Ok(delay) => w.reports_within = delay,
                Err(e) => {
                    tracing::warn!(alarm = %name, error = %e, "could not read the alarms under a composite alarm; the bake hold counts nothing for it this time");
                }
            }
        }
        let counts = match asked.window {
            Some(w) => self
                .count(&client, &account.id, &watched, (w.from, w.until))
                .await
                .map_err(|e| context(e, &what))?,
            None => BTreeMap::new(),
        };
        Ok(readings(names, &watched, &counts))
    }
}

impl CloudWatchAlarms {
    /// How long a composite alarm may take to report a breach: the longest [`reports_within`]
    /// of the metric alarms under it (a composite alarm is evaluated when one of its children
    /// changes state, "Create a composite alarm", CloudWatch User Guide), nested composites
    /// followed to [`MAX_NESTING`] levels. Its children are read with `DescribeAlarms`
    /// `ChildrenOfAlarmName`, which gives their names only, then described by name, once per
    /// [`COMPOSITE_DELAY_TTL`]. `None` when no metric alarm under it gives a period.
    async fn composite_delay(
        &self,
        client: &Client,
        account: &Account,
        region: &str,
        name: &str,
    ) -> PortResult<Option<u64>> {
        let key = (account.id.to_string(), region.to_string(), name.to_string());
        let cached = {
            let delays = self
                .composite_delays
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            delays.get(&key).copied()
        };
        if let Some((delay, _)) = cached.filter(|(_, at)| at.elapsed() < COMPOSITE_DELAY_TTL) {
            return Ok(delay);
        }
        let mut delay: Option<u64> = None;
        let mut seen: std::collections::HashSet<String> = [name.to_string()].into();
        let mut parents = vec![name.to_string()];
        for _ in 0..MAX_NESTING {
            let mut children = Vec::new();
            for parent in &parents {
                for child in self.children(client, &account.id, parent).await? {
                    if seen.insert(child.clone()) {
                        children.push(child);
                    }
                }
            }
            if children.is_empty() {
                break;
            }
            parents.clear();
            for (child, w) in self.describe(client, account, &children).await? {
                if w.composite {
                    parents.push(child);
                } else {
                    delay = delay.max(w.reports_within);
                }
            }
        }
        let mut delays = self
            .composite_delays
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        delays.insert(key, (delay, std::time::Instant::now()));
        Ok(delay)
    }

    /// The names of the alarms a composite alarm's rule names (`DescribeAlarms`
    /// `ChildrenOfAlarmName`; no other parameter but `MaxRecords` and `NextToken` may go with
    /// it).
    async fn children(
        &self,
        client: &Client,
        account: &str,
        parent: &str,
    ) -> PortResult<Vec<String>> {
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .limiter
                .call(account, "DescribeAlarms", || {
                    sdk(client
                        .describe_alarms()
                        .children_of_alarm_name(parent)
                        .max_records(NAMES_PER_CALL as i32)
                        .set_next_token(token.clone())
                        .send())
                })
                .await
                .map_err(|e| context(e, &format!("reading the alarms under `{parent}`")))?;
            let metric = page.metric_alarms().iter().filter_map(|a| a.alarm_name());
            let composite = page
                .composite_alarms()
                .iter()
                .filter_map(|a| a.alarm_name());
            names.extend(metric.chain(composite).map(str::to_string));
            token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(names);
            }
        }
        Err(PortError::Failed(format!(
            "DescribeAlarms returned more than {MAX_PAGES} pages of the alarms under `{parent}`"
        )))
    }
}

/// One reading per name asked, in order, once each.
fn readings(
    names: &[String],
    watched: &BTreeMap<String, Watched>,
    counts: &BTreeMap<String, u32>,
) -> Vec<AlarmReading> {
    let mut out: Vec<AlarmReading> = Vec::new();
    for name in names {
        if out.iter().any(|r| &r.alarm == name) {
            continue;
        }
        let state = match watched.get(name).map(|w| &w.state) {
            Some(StateValue::Ok) => AlarmState::Ok,
            Some(StateValue::Alarm) => AlarmState::Alarm,
            // INSUFFICIENT_DATA, and any state this SDK does not know: not clean.
            _ => AlarmState::InsufficientData,
        };
        out.push(AlarmReading {
            alarm: name.clone(),
            state,
            datapoints: counts.get(name).copied(),
            reports_within_secs: watched.get(name).and_then(|w| w.reports_within),
        });
    }
    out
}

/// The names in `ALARM`, in the order asked, once each; an error naming every missing alarm.
fn firing(names: &[String], states: &BTreeMap<String, StateValue>) -> PortResult<Vec<String>> {
    let mut missing: Vec<&str> = names
        .iter()
        .filter(|n| !states.contains_key(*n))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        missing.dedup();
        let list = missing
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(PortError::NotFound(format!(
            "no CloudWatch alarm named {list}"
        )));
    }
    let mut firing: Vec<String> = Vec::new();
    for name in names {
        if states.get(name) == Some(&StateValue::Alarm) && !firing.contains(name) {
            firing.push(name.clone());
        }
    }
    Ok(firing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(pairs: &[(&str, StateValue)]) -> BTreeMap<String, StateValue> {
        pairs
            .iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn only_alarms_in_alarm_are_firing() {
        let s = states(&[
            ("a", StateValue::Alarm),
            ("b", StateValue::Ok),
            ("c", StateValue::InsufficientData),
        ]);
        assert_eq!(firing(&names(&["c", "a", "b", "a"]), &s), Ok(names(&["a"])));
    }

    #[test]
    fn a_missing_alarm_is_not_found_and_named() {
        let s = states(&[("a", StateValue::Ok)]);
        let err = firing(&names(&["a", "typo"]), &s).unwrap_err();
        assert!(
            matches!(&err, PortError::NotFound(m) if m.contains("`typo`")),
            "{err}"
        );
    }
}
