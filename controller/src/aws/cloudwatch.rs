//! CloudWatch: the pull side of the [`Alarms`] port (the backstop to SNS alarm pushes).
//!
//! Owns asking `DescribeAlarms` which of a stage's alarms are in `ALARM` in the stage's
//! account and region, at most 100 names per call, metric and composite alarms alike.
//!
//! # Guarantees
//! - An alarm name that does not exist is an error ([`PortError::NotFound`] naming it), never
//!   "all clear": a typo in `stages.toml` must not let a bad release bake unwatched.
//! - No names, no call.
//!
//! # Caveats
//! - The current SDK speaks RPCv2 CBOR to CloudWatch; tests use the stub in
//!   `tollgate_testkit::aws_stubs::cloudwatch`, reached through [`CloudWatchAlarms::with_endpoint_url`].

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::types::{AlarmType, StateValue};

use super::errors::{context, sdk};
use super::retry::Limiter;
use super::sts::Credentials;
use crate::config::Account;
use crate::engine::ports::{Alarms, PortError, PortResult};

/// `DescribeAlarms` takes at most 100 names and returns at most 100 records per page.
const NAMES_PER_CALL: usize = 100;
/// Bounds the pages read for one chunk of names (each type pages separately).
const MAX_PAGES: usize = 10;
const SESSION_NAME: &str = "tollgate-alarms";

/// Reads alarm states; share one per controller.
pub struct CloudWatchAlarms {
    creds: Arc<Credentials>,
    limiter: Arc<Limiter>,
    endpoint_url: Option<String>,
}

impl CloudWatchAlarms {
    pub fn new(creds: Arc<Credentials>, limiter: Arc<Limiter>) -> CloudWatchAlarms {
        CloudWatchAlarms {
            creds,
            limiter,
            endpoint_url: None,
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
        let mut builder = aws_sdk_cloudwatch::config::Builder::from(&config);
        if let Some(url) = &self.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        Ok(Client::from_conf(builder.build()))
    }

    /// The state of each alarm among `names` that exists.
    async fn states(
        &self,
        client: &Client,
        account: &str,
        names: &[String],
    ) -> PortResult<BTreeMap<String, StateValue>> {
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
                states.extend(
                    a.alarm_name()
                        .zip(a.state_value())
                        .map(|(n, s)| (n.to_string(), s.clone())),
                );
            }
            for a in page.composite_alarms() {
                states.extend(
                    a.alarm_name()
                        .zip(a.state_value())
                        .map(|(n, s)| (n.to_string(), s.clone())),
                );
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
        let client = self
            .client(account, region)
            .await
            .map_err(|e| context(e, &what))?;
        let mut states = BTreeMap::new();
        for chunk in names.chunks(NAMES_PER_CALL) {
            let found = self
                .states(&client, &account.id, chunk)
                .await
                .map_err(|e| context(e, &what))?;
            states.extend(found);
        }
        firing(names, &states).map_err(|e| context(e, &what))
    }
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
