//! Stack notifications on `POST /webhooks/sns`: a verified notification from an account's
//! `stack_events_topic` whose message is a CloudFormation stack event wakes the waiter of
//! that stack ([`StackWaiters`]).
//!
//! CloudFormation publishes each event of a stack that names the topic in `NotificationARNs`
//! as one SNS message whose body is lines `Key='value'` (`StackId`, `StackName`,
//! `LogicalResourceId`, `ResourceType`, `ResourceStatus`, `Timestamp`, …; "Setting AWS
//! CloudFormation stack options", Notification options, and the `NotificationARNs` parameter
//! of CreateChangeSet in the API reference). [`parse`] turns it into a [`StackEvent`] at the
//! edge.
//!
//! | case | answer |
//! |---|---|
//! | not a stack event (a field missing, a line not `Key='value'`, a `StackId` that is not a stack ARN or names another stack) | 202 `ignored`, logged, nothing woken |
//! | a stack in another account or region than the topic's account and region | 202 `ignored`, logged, nothing woken |
//! | an event of a resource, or of the stack still in progress | 202 `heard` when the stack has a waiter (it now knows pushes arrive and keeps only backstop looks), else 202 `ignored`; nothing woken |
//! | the stack's own event in a final state, with no waiter | 202 `ignored` |
//! | the same with a waiter | 200 `woken` |
//!
//! # Guarantees
//! - Reached only after the route verified the message (signature, freshness, topic allowed).
//! - Records nothing: a wake-up is a hint; the waiter reads the stack with `DescribeStacks`
//!   before believing anything, and polls on as the backstop.
//!
//! Must never: log the message body beyond the parsed fields.

use axum::http::StatusCode;

use super::reply::Reply;
use super::sns::SnsState;
use super::sns_verify::SnsMessage;
use crate::config::{Config, values};
use crate::domain::StackKey;

pub use crate::aws::stack_waiters::StackWaiters;

/// The resource type of a stack's own events.
const STACK_TYPE: &str = "AWS::CloudFormation::Stack";
/// At most this many characters of an unparsable line are quoted in the log.
const EXCERPT: usize = 60;

/// A CloudFormation stack event, as its SNS notification carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackEvent {
    /// From `StackId` (`arn:aws:cloudformation:REGION:ACCOUNT:stack/NAME/ID`).
    pub stack: StackKey,
    pub logical_resource_id: String,
    pub resource_type: String,
    pub resource_status: String,
}

impl StackEvent {
    /// The stack itself reached a state a waiter waits for (not `*_IN_PROGRESS`).
    pub fn ends_an_operation(&self) -> bool {
        self.resource_type == STACK_TYPE
            && self.logical_resource_id == self.stack.stack
            && !self.resource_status.ends_with("_IN_PROGRESS")
    }
}

/// Parses a stack event notification's `Message`.
pub fn parse(message: &str) -> Result<StackEvent, String> {
    let mut fields: Vec<(&str, String)> = Vec::new();
    for line in message.lines().filter(|l| !l.trim().is_empty()) {
        match line.split_once("='") {
            Some((key, value))
                if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                fields.push((key, value.to_string()));
            }
            // A value spanning lines (`ResourceProperties` holds JSON).
            _ => match fields.last_mut() {
                Some((_, value)) => {
                    value.push('\n');
                    value.push_str(line);
                }
                None => {
                    let start: String = line.chars().take(EXCERPT).collect();
                    return Err(format!(
                        "line `{}` is not Key='value'",
                        start.escape_debug()
                    ));
                }
            },
        }
    }
    let field = |name: &str| -> Result<&str, String> {
        let (_, value) = fields
            .iter()
            .find(|(k, _)| *k == name)
            .ok_or_else(|| format!("no {name}"))?;
        value
            .strip_suffix('\'')
            .ok_or_else(|| format!("{name} is not quoted"))
    };
    let name = field("StackName")?;
    let stack = stack_key(field("StackId")?, name)?;
    let status = field("ResourceStatus")?;
    if status.is_empty() || !status.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return Err("ResourceStatus is not a status".into());
    }
    Ok(StackEvent {
        stack,
        logical_resource_id: field("LogicalResourceId")?.to_string(),
        resource_type: field("ResourceType")?.to_string(),
        resource_status: status.to_string(),
    })
}

/// `arn:aws:cloudformation:REGION:ACCOUNT:stack/NAME/ID`, naming `name`.
fn stack_key(stack_id: &str, name: &str) -> Result<StackKey, String> {
    let arn = values::arn(stack_id, "cloudformation").map_err(|_| "StackId is not a stack ARN")?;
    let named = arn
        .resource
        .strip_prefix("stack/")
        .and_then(|r| r.split_once('/'));
    match named {
        Some((n, id)) if n == name && !id.is_empty() && values::region(arn.region).is_ok() => {
            Ok(StackKey {
                account: arn.account.to_string(),
                region: arn.region.to_string(),
                stack: name.to_string(),
            })
        }
        _ => Err("StackId does not name the stack StackName names".into()),
    }
}

/// Is `topic` an account's stack-events topic?
pub fn is_stack_events_topic(config: &Config, topic: &str) -> bool {
    let named = |a: &crate::config::Account| a.stack_events_topic.as_deref() == Some(topic);
    config.accounts.values().any(named)
}

/// Wakes the waiter of the stack a verified notification from a stack-events topic is about.
pub(super) fn notification(state: &SnsState, msg: &SnsMessage) -> Reply {
    let (id, topic) = (&msg.message_id, &msg.topic_arn);
    let event = match parse(&msg.message) {
        Ok(event) => event,
        Err(reason) => {
            tracing::warn!(message = %id, %topic, %reason, "notification on a stack events topic is not a stack event; ignored");
            return ignored(format!("not a stack event: {reason}"));
        }
    };
    let config = state.engine.config();
    if !from_its_account(&config, topic, &event.stack) {
        let s = &event.stack;
        tracing::warn!(message = %id, %topic, account = %s.account, region = %s.region, stack = %s.stack, "stack event from another account or region than its topic's; ignored");
        return ignored(format!(
            "stack {} is in {}/{}, not in the account and region of topic {topic}",
            s.stack, s.account, s.region
        ));
    }
    if !event.ends_an_operation() {
        let detail = format!(
            "{} {} of stack {} ends no operation",
            event.logical_resource_id, event.resource_status, event.stack.stack
        );
        if state.waiters.hear(&event.stack) > 0 {
            // Pushes about the stack arrive: its waiter keeps only backstop looks.
            return Reply::new(StatusCode::ACCEPTED, "heard", detail);
        }
        return ignored(detail);
    }
    let woken = state.waiters.wake(&event.stack);
    tracing::info!(message = %id, stack = %event.stack.stack, account = %event.stack.account, status = %event.resource_status, woken, "stack notification");
    if woken == 0 {
        return ignored(format!("nothing waits on stack {}", event.stack.stack));
    }
    let detail = format!(
        "stack {} is {}: its waiter looks now",
        event.stack.stack, event.resource_status
    );
    Reply::new(StatusCode::OK, "woken", detail)
}

/// The topic is the stack-events topic of the stack's account, in the stack's region.
fn from_its_account(config: &Config, topic: &str, stack: &StackKey) -> bool {
    let same_region = values::topic_arn(topic).is_ok_and(|a| a.region == stack.region);
    let account = config
        .accounts
        .values()
        .find(|a| a.id.as_str() == stack.account);
    same_region && account.is_some_and(|a| a.stack_events_topic.as_deref() == Some(topic))
}

fn ignored(detail: String) -> Reply {
    Reply::new(StatusCode::ACCEPTED, "ignored", detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:cloudformation:us-east-1:222222222222:stack/app/51af3dc0-da77-11e4-872e-1234567db123";

    fn message(stack_id: &str, logical: &str, kind: &str, status: &str) -> String {
        format!(
            "StackId='{stack_id}'\nTimestamp='2026-12-03T10:00:00.000Z'\nEventId='e-1'\n\
             LogicalResourceId='{logical}'\nNamespace='222222222222'\n\
             ResourceProperties='{{\"Name\":\n\"x\"}}'\nResourceStatus='{status}'\n\
             ResourceStatusReason=''\nResourceType='{kind}'\nStackName='app'\n\
             ClientRequestToken='tollgate-shop-r1-beta'\n"
        )
    }

    #[test]
    fn a_stack_event_is_parsed_into_its_stack_and_status() {
        let event = parse(&message(ARN, "app", STACK_TYPE, "UPDATE_COMPLETE")).unwrap();
        assert_eq!(
            event.stack,
            StackKey {
                account: "222222222222".into(),
                region: "us-east-1".into(),
                stack: "app".into()
            }
        );
        assert_eq!(event.resource_status, "UPDATE_COMPLETE");
        assert!(event.ends_an_operation());
    }

    #[test]
    fn only_the_stacks_own_final_states_end_an_operation() {
        let resource = parse(&message(
            ARN,
            "Service",
            "AWS::ECS::Service",
            "UPDATE_COMPLETE",
        ));
        assert!(!resource.unwrap().ends_an_operation());
        for status in ["UPDATE_IN_PROGRESS", "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS"] {
            let event = parse(&message(ARN, "app", STACK_TYPE, status)).unwrap();
            assert!(!event.ends_an_operation(), "{status}");
        }
        let rolled = parse(&message(ARN, "app", STACK_TYPE, "UPDATE_ROLLBACK_COMPLETE"));
        assert!(rolled.unwrap().ends_an_operation());
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let alarm = r#"{"AlarmName":"api-5xx","NewStateValue":"ALARM"}"#;
        assert!(parse(alarm).unwrap_err().contains("not Key='value'"));
        let other = "arn:aws:cloudformation:us-east-1:222222222222:stack/other/51af3dc0";
        let err = parse(&message(other, "app", STACK_TYPE, "UPDATE_COMPLETE")).unwrap_err();
        assert!(err.contains("does not name the stack"), "{err}");
        let err = parse(&message(
            "arn:aws:sns:us-east-1:222222222222:t",
            "app",
            STACK_TYPE,
            "X",
        ));
        assert!(err.unwrap_err().contains("not a stack ARN"));
        let err = parse(&message(ARN, "app", STACK_TYPE, "done; rm -rf")).unwrap_err();
        assert!(err.contains("not a status"), "{err}");
        let missing =
            message(ARN, "app", STACK_TYPE, "UPDATE_COMPLETE").replace("ResourceType=", "Type=");
        assert_eq!(parse(&missing).unwrap_err(), "no ResourceType");
    }
}
