//! Deploys and rolls back one CloudFormation stack through a change set.
//!
//! Owns the stack half of [`crate::engine::ports::Deployer`] for `Deploy::CloudFormation`:
//! wait until the stack is not busy, create (or, after a crash, reuse) the change set named
//! after the idempotency key, execute it with a `ClientRequestToken` derived from the same key,
//! wait, read the stack back, and report the outputs and exactly what was applied (template,
//! parameters, capabilities, role), or the first failing resource. Rollback is the same flow
//! with the recorded spec of the last known-good deploy (or, for a deploy recorded before specs
//! were kept, today's configuration with its image), after cancelling an update in flight or
//! finishing a failed rollback, and with no rollback triggers.
//!
//! Must never deploy twice under one key: the change set name and the execute
//! `ClientRequestToken` come from the key (a repeated `CreateChangeSet`, after a restart, finds
//! the change set by its name: `AlreadyExistsException`), and an executed change set is not
//! executed again. `CreateChangeSet`'s `ClientToken` is new for each request and shared only by
//! that request's retries (a lost reply): a change set that went obsolete is deleted and made
//! again under the same name with other parameters, and what CloudFormation answers to a
//! token reused for another request after a delete is not documented.
//!
//! A failure's reason (the first resource that failed) and, after a wait that saw the end on a
//! long step, the update's duration come from the stack's events: `DescribeStackEvents` pages
//! (newest first) back to the first event of this attempt's token, at most
//! 10 pages (`MAX_EVENT_PAGES`), usually one.
//!
//! Waits are shaped by the stack's recent timings (`DeployRequest::history`), and the adapter
//! reports what this attempt measured (`DeployResult::timing`) for the store to keep: it
//! never reads or writes the store itself. With the account's `stack_events_topic` (in the
//! stack's region), change sets name it in `NotificationARNs` and the update's wait registers
//! in the [`StackWaiters`] the SNS intake wakes.
//!
//! # Guarantees
//! - "Deployed" means the stack, read back (`DescribeStacks` parameters), runs the requested
//!   image. `ExecuteChangeSet` refused with `InvalidChangeSetStatus` is not taken as success:
//!   CloudFormation also returns it for an obsolete change set or while someone else's update
//!   runs (API_ExecuteChangeSet). A stack that runs another image is `PortError::Drift`; one
//!   that runs ours after the refusal is our own change set that already ran (a lost reply or a
//!   repeat after a crash) and a success.
//! - A stack's parameters missing from the configuration keep their value. An update's change
//!   set names each parameter the stack has, that the new template declares and that the spec
//!   does not set, with `UsePreviousValue` (as `aws cloudformation deploy` does); left out,
//!   CloudFormation would reset it to the template's default. The same holds for a rollback.
//!   The record kept for a rollback (`Applied`) holds the configured parameters only.
//! - A rollback's change set carries an empty list of rollback triggers. CloudFormation rolls
//!   an operation back when a trigger's alarm is in `ALARM` during it, and keeps a stack's
//!   triggers for later operations unless a change set names new ones (an empty list removes
//!   them): with the stage's alarms as triggers, the alarm that caused the rollback would undo
//!   it and leave the bad release running.
//!
//! # Caveats
//! - At most five alarms become rollback triggers (CloudFormation's limit); the controller
//!   watches every alarm of the stage during the bake anyway.
//! - Stacks in `ROLLBACK_COMPLETE` (a failed first creation) are not deleted automatically:
//!   the deploy fails and says so.
//! - An operation with more events than 10 pages of `DescribeStackEvents` hold is read from
//!   its newest events only: the failure reported is then the earliest among them, which may
//!   be a resource cancelled after the first one failed.
//! - The template's `Parameters` are read here (module `template`): from a template that
//!   cannot be read (not JSON, or YAML this parser refuses) no parameter is kept, with a
//!   warning, and the stack's parameters missing from the configuration take the template's
//!   defaults.

pub(crate) mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudformation::Client;
use aws_sdk_cloudformation::operation::describe_change_set::DescribeChangeSetOutput;
use aws_sdk_cloudformation::types::{
    Capability, ChangeSetType, Parameter, RollbackConfiguration, RollbackTrigger, Stack, StackEvent,
};
use sha2::{Digest, Sha256};

use super::errors::{classify, context, has_code, sdk, sdk_done_unless};
use super::observe::CallMetrics;
use super::retry::{Limiter, PollSettings};
use super::stack_waiters::StackWaiters;
use super::sts::Credentials;
use crate::backoff::{DENSE, Expected, Push, Waited};
use crate::config::Deploy;
use crate::domain::{AppliedSpec, Arn, StackHistory, StackKey, StackTiming};
use crate::engine::ports::{Applied, DeployRequest, DeployResult, PortError, PortResult};

/// CloudFormation allows at most this many rollback triggers.
const MAX_TRIGGERS: usize = 5;
/// Largest template CloudFormation accepts inline (`TemplateBody`).
const MAX_TEMPLATE_BODY: usize = 51_200;

/// Deploys stacks; share one per controller.
pub struct CloudFormationDeployer {
    creds: Arc<Credentials>,
    limiter: Arc<Limiter>,
    poll: PollSettings,
    /// Where stack notifications find the waits in flight.
    waiters: Arc<StackWaiters>,
}

/// What the stack should become: from the stage's `deploy` and the request, or for a
/// rollback exactly what the known-good release's deploy applied.
struct Spec {
    template: String,
    parameters: BTreeMap<String, String>,
    /// The parameter holding the image: what is read back to confirm the stack runs it.
    image_parameter: String,
    capabilities: Vec<String>,
    role: Option<String>,
    rollback: RollbackConfiguration,
    /// The recorded spec was used (false: today's configuration with the image).
    restored: bool,
    /// The parameters `template` declares, or why it could not be read here.
    declared: Result<BTreeSet<String>, String>,
    /// Parameters never kept at the stack's value: in a rollback, those today's configuration
    /// sets that the known-good deploy neither set nor recorded a value of (they take the
    /// template's default, as they did before the configuration set them).
    reset: BTreeSet<String>,
}

impl Spec {
    fn image(&self) -> &str {
        self.parameters
            .get(&self.image_parameter)
            .map_or("", String::as_str)
    }

    /// A change set's `Parameters`: the spec's values, and `UsePreviousValue` for each of
    /// `kept` (see [`kept_parameters`]). API_Parameter, `UsePreviousValue`: "During a stack
    /// update, use the existing parameter value that the stack is using for a given parameter
    /// key. If you specify true, do not specify a parameter value."
    fn sdk_parameters(&self, kept: &[String]) -> Vec<Parameter> {
        let param = |(k, v): (&String, &String)| {
            Parameter::builder()
                .parameter_key(k)
                .parameter_value(v)
                .build()
        };
        let previous = |k: &String| {
            Parameter::builder()
                .parameter_key(k)
                .use_previous_value(true)
                .build()
        };
        let values = self.parameters.iter().map(param);
        values.chain(kept.iter().map(previous)).collect()
    }

    /// The record a rollback to this deploy applies again, with the parameter values of the
    /// stack as it is after the deploy (`done`).
    fn applied(&self, stack: &str, done: Option<&Stack>) -> Applied {
        let observed = done
            .map(|s| s.parameters())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| Some((p.parameter_key()?, p.parameter_value()?)))
            .filter(|(_, v)| *v != NO_ECHO_MASK)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Applied {
            spec: AppliedSpec::CloudFormation {
                stack: stack.to_string(),
                template_sha256: template_sha256(&self.template),
                parameters: self.parameters.clone(),
                image_parameter: self.image_parameter.clone(),
                capabilities: self.capabilities.clone(),
                execution_role: self.role.clone(),
                observed,
            },
            template_body: Some(self.template.clone()),
        }
    }
}

/// The hex sha256 of a template body: its key in the store.
pub fn template_sha256(body: &str) -> String {
    hex::encode(Sha256::digest(body.as_bytes()))
}

/// One stack in one account and region, with the names of this attempt.
struct StackRef {
    client: Client,
    account: String,
    name: String,
    /// Change set name and `ClientRequestToken`, both from the idempotency key.
    token: String,
    key: StackKey,
    /// How long this stack's recent change sets and updates took.
    history: StackHistory,
    /// The account's stack-events topic, added to the stack's `NotificationARNs`.
    topic: Option<String>,
    /// What this attempt measured.
    measured: Mutex<Measured>,
}

/// How long this attempt's change set and update took, at least (see [`Waited`]).
#[derive(Debug, Default, Clone, Copy)]
struct Measured {
    change_set: Option<Duration>,
    update: Option<Duration>,
}

impl StackRef {
    fn measured(&self) -> std::sync::MutexGuard<'_, Measured> {
        self.measured.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to keep for the next deploy of this stack (`None`: nothing was waited on).
    fn timing(&self) -> Option<StackTiming> {
        let m = *self.measured();
        let any = m.change_set.is_some() || m.update.is_some();
        any.then(|| StackTiming::new(self.key.clone(), m.change_set, m.update))
    }
}

/// Where a change set stands.
enum ChangeSet {
    /// Created and ready to execute.
    Ready,
    /// Empty: the stack already is what was asked for.
    Empty,
    /// Already executed (a repeat after a crash).
    Executed,
    /// Made against a stack that changed since; deleted, so a new one can be made.
    Obsolete,
}

/// What a look at the change set found. The deletes it calls for come after the wait, never
/// in a look: a look may be made again after a temporary failure, and a change set already
/// deleted would then be `NotFound`.
enum Found {
    Ready,
    /// Failed for having no changes: deleted after the wait, then [`ChangeSet::Empty`].
    NoChanges,
    Executed,
    /// Made against a stack that changed since: deleted after the wait.
    Obsolete,
}

/// What one `CreateChangeSet` sends beside the spec's template, capabilities, role and
/// triggers.
struct Request {
    kind: ChangeSetType,
    /// `NotificationARNs` (see [`notification_arns`]).
    topics: Option<Vec<String>>,
    parameters: Vec<Parameter>,
}

/// What is left to do once the change set is settled.
enum Next {
    /// Nothing: the stack (as last described) already is what was asked for.
    Nothing(Option<Box<Stack>>),
    /// Execute the change set, then wait.
    Execute,
    /// It was executed before (a repeat after a crash): only wait.
    Wait,
}

impl CloudFormationDeployer {
    pub fn new(creds: Arc<Credentials>, poll: PollSettings) -> CloudFormationDeployer {
        let limiter = creds.limiter().clone();
        CloudFormationDeployer {
            creds,
            limiter,
            poll,
            waiters: StackWaiters::new(),
        }
    }

    /// The same deployer, registering its waits in `waiters` (the SNS intake's registry, so
    /// stack notifications wake them).
    pub fn with_waiters(self, waiters: Arc<StackWaiters>) -> CloudFormationDeployer {
        CloudFormationDeployer { waiters, ..self }
    }

    /// Deploys `req.image_uri`; `alarms` (names or ARNs) become rollback triggers.
    pub async fn deploy_stack(
        &self,
        req: &DeployRequest,
        alarms: &[Trigger],
    ) -> PortResult<DeployResult> {
        let spec = spec(req, alarms).await?;
        let stack = self.open(req).await?;
        let current = self.settle(&stack, false).await?;
        usable(&stack, current.as_ref(), false)?;
        self.apply(&stack, &spec, current).await
    }

    /// Returns the stack to the last known-good release: exactly what its deploy applied
    /// (`req.restore`), or else the stage's configuration with `req.image_uri`; with no rollback
    /// triggers (an empty list, which also removes the ones the stack kept).
    pub async fn rollback_stack(&self, req: &DeployRequest) -> PortResult<DeployResult> {
        let spec = spec(req, &[]).await?;
        let stack = self.open(req).await?;
        let current = self.unstick(&stack).await?;
        usable(&stack, current.as_ref(), true)?;
        self.apply(&stack, &spec, current).await
    }

    async fn open(&self, req: &DeployRequest) -> PortResult<StackRef> {
        let Deploy::CloudFormation { stack, .. } = &req.deploy else {
            return Err(PortError::Invalid("not a CloudFormation deploy".into()));
        };
        let config = self
            .creds
            .config_for(&req.account, &req.target.region, &req.session_name)
            .await?;
        let conf = aws_sdk_cloudformation::config::Builder::from(&config).interceptor(CallMetrics);
        let key = StackKey {
            account: req.account.id.to_string(),
            region: req.target.region.clone(),
            stack: stack.clone(),
        };
        let topic = req.account.stack_events_topic_for(&req.target.region);
        Ok(StackRef {
            client: Client::from_conf(conf.build()),
            account: req.account.id.to_string(),
            name: stack.clone(),
            token: request_token(&req.key),
            key,
            history: req.history.clone(),
            topic: topic.map(Arn::to_string),
            measured: Mutex::default(),
        })
    }

    /// Creates or reuses the change set, executes it unless empty, waits, reads the stack
    /// back and reports. Success only when the stack, read back, runs the requested image.
    async fn apply(
        &self,
        st: &StackRef,
        spec: &Spec,
        current: Option<Stack>,
    ) -> PortResult<DeployResult> {
        // Registered before the execute, so a notification of an update that ends at once
        // still finds the waiter.
        let registration = self.waiters.register(st.key.clone());
        let refused = match self.prepare(st, spec, current).await? {
            Next::Nothing(current) => {
                read_back(st, spec, current.as_deref())?;
                return Ok(result(st, spec, current.as_deref(), "no changes"));
            }
            Next::Execute => !self.execute(st).await?,
            Next::Wait => false,
        };
        let expected = Expected::from_past(&st.history.update);
        let waited = self
            .wait_stack(st, true, expected, Some(registration.push()))
            .await?;
        drop(registration);
        let mut lasted = waited.lasted;
        if waited.uncertainty() > DENSE * 2 {
            // Seen on a long back-off step: the stack's own events say exactly how long it took.
            let took = self.operation_took(st).await;
            let plausible = |d: &Duration| *d + DENSE >= waited.lasted && *d <= waited.seen + DENSE;
            lasted = took.filter(plausible).unwrap_or(lasted);
        }
        st.measured().update = Some(lasted);
        let done = waited.value;
        let done =
            done.ok_or_else(|| PortError::Failed(format!("stack {} disappeared", st.name)))?;
        // Refused, it may never have run (obsolete, someone else's update): only the read-back
        // below tells; a stack that rolled back is a failure either way.
        let what = if refused {
            "deployed (ExecuteChangeSet was refused with InvalidChangeSetStatus; the stack, read \
             back, runs the requested image: this change set had already run)"
        } else {
            "deployed"
        };
        match status(&done) {
            "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE" => {
                read_back(st, spec, Some(&done))?;
                Ok(result(st, spec, Some(&done), what))
            }
            other => Err(PortError::Failed(format!(
                "stack {} is {other}: {}",
                st.name,
                self.failure(st).await
            ))),
        }
    }

    /// A change set to execute (or none needed). One that went obsolete because the stack
    /// changed meanwhile was deleted; a new one is made against the stack as it is now, after
    /// a jittered backoff, a bounded number of times.
    async fn prepare(
        &self,
        st: &StackRef,
        spec: &Spec,
        mut current: Option<Stack>,
    ) -> PortResult<Next> {
        let backoff = self.limiter.backoff();
        for attempt in 1.. {
            let request = change_set_request(st, spec, current.as_ref())?;
            match self.change_set(st, spec, request).await? {
                ChangeSet::Empty => return Ok(Next::Nothing(current.map(Box::new))),
                ChangeSet::Ready => return Ok(Next::Execute),
                ChangeSet::Executed => return Ok(Next::Wait),
                ChangeSet::Obsolete if attempt < backoff.max_attempts => {
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    current = self.settle(st, false).await?;
                }
                ChangeSet::Obsolete => break,
            }
        }
        Err(PortError::Retryable(format!(
            "change set {} went obsolete {} times (the stack kept changing under it)",
            st.token, backoff.max_attempts
        )))
    }

    async fn change_set(
        &self,
        st: &StackRef,
        spec: &Spec,
        request: Request,
    ) -> PortResult<ChangeSet> {
        match self.create_change_set(st, spec, request).await {
            Err(e) if no_changes(&e.to_string()) => return Ok(ChangeSet::Empty),
            other => other?,
        }
        let expected = Expected::from_past(&st.history.change_set);
        let found = self
            .poll
            .poll_expecting(expected, None, || self.change_set_state(st))
            .await?;
        let found = found.ok_or_else(|| {
            PortError::Failed(format!(
                "change set {} was not ready in {:?}",
                st.token, self.poll.timeout
            ))
        })?;
        st.measured().change_set = Some(found.lasted);
        match found.value {
            Found::Ready => Ok(ChangeSet::Ready),
            Found::Executed => Ok(ChangeSet::Executed),
            Found::NoChanges => {
                self.delete_change_set(st).await?;
                Ok(ChangeSet::Empty)
            }
            Found::Obsolete => {
                self.delete_change_set(st).await?;
                tracing::info!(stack = %st.name, change_set = %st.token, "change set obsolete (the stack changed since); deleted it");
                Ok(ChangeSet::Obsolete)
            }
        }
    }

    /// `CreateChangeSet`; one that already exists under this name (a repeat) is reused. Its
    /// `ClientToken` is this request's own, the same for its retries only (see the module's
    /// guarantees): a retry after a lost reply is known as one, whatever the change set's type.
    async fn create_change_set(
        &self,
        st: &StackRef,
        spec: &Spec,
        request: Request,
    ) -> PortResult<()> {
        let client_token = format!("tollgate-{:032x}", rand::random::<u128>());
        self.limiter
            .call(&st.account, "CreateChangeSet", || {
                let request = st
                    .client
                    .create_change_set()
                    .stack_name(&st.name)
                    .change_set_name(&st.token)
                    .client_token(&client_token)
                    .change_set_type(request.kind.clone())
                    .template_body(&spec.template)
                    .set_parameters(Some(request.parameters.clone()))
                    .set_capabilities(Some(
                        spec.capabilities
                            .iter()
                            .map(|c| Capability::from(c.as_str()))
                            .collect(),
                    ))
                    .set_role_arn(spec.role.clone())
                    .set_notification_arns(request.topics.clone())
                    .rollback_configuration(spec.rollback.clone());
                sdk_done_unless(request.send(), "AlreadyExistsException")
            })
            .await
    }

    /// One look at the change set: `None` while it is still being made.
    async fn change_set_state(&self, st: &StackRef) -> PortResult<Option<Found>> {
        let cs = self.describe_change_set(st).await?;
        let reason = cs.status_reason().unwrap_or_default();
        let status = cs.status().map(|s| s.as_str()).unwrap_or_default();
        let execution = cs
            .execution_status()
            .map(|s| s.as_str())
            .unwrap_or_default();
        match (status, execution) {
            ("FAILED", _) if no_changes(reason) => Ok(Some(Found::NoChanges)),
            ("FAILED", _) => Err(PortError::Invalid(format!(
                "change set {} failed: {reason}",
                st.token
            ))),
            ("CREATE_COMPLETE", "AVAILABLE") => Ok(Some(Found::Ready)),
            ("CREATE_COMPLETE", "OBSOLETE") => Ok(Some(Found::Obsolete)),
            ("CREATE_COMPLETE", "EXECUTE_IN_PROGRESS" | "EXECUTE_COMPLETE" | "EXECUTE_FAILED") => {
                Ok(Some(Found::Executed))
            }
            _ => Ok(None),
        }
    }

    /// `DescribeChangeSet` of this attempt's change set.
    async fn describe_change_set(&self, st: &StackRef) -> PortResult<DescribeChangeSetOutput> {
        self.limiter
            .call(&st.account, "DescribeChangeSet", || {
                sdk(st
                    .client
                    .describe_change_set()
                    .stack_name(&st.name)
                    .change_set_name(&st.token)
                    .send())
            })
            .await
    }

    async fn delete_change_set(&self, st: &StackRef) -> PortResult<()> {
        let deleted = self
            .limiter
            .call(&st.account, "DeleteChangeSet", || {
                sdk(st
                    .client
                    .delete_change_set()
                    .stack_name(&st.name)
                    .change_set_name(&st.token)
                    .send())
            })
            .await;
        match deleted {
            Ok(_) | Err(PortError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `ExecuteChangeSet`: true when accepted. False when refused with
    /// `InvalidChangeSetStatus`, which CloudFormation returns for a change set already executed
    /// (a repeat of ours) but also for an obsolete one or while someone else's update is in
    /// progress (API_ExecuteChangeSet): the caller reads the stack back before believing it.
    async fn execute(&self, st: &StackRef) -> PortResult<bool> {
        let accepted = self
            .limiter
            .call(&st.account, "ExecuteChangeSet", || {
                let request = st
                    .client
                    .execute_change_set()
                    .stack_name(&st.name)
                    .change_set_name(&st.token)
                    .client_request_token(&st.token);
                async move {
                    match request.send().await {
                        Ok(_) => Ok(true),
                        Err(e) if has_code(&e, "InvalidChangeSetStatus") => Ok(false),
                        Err(e) => Err(classify(&e)),
                    }
                }
            })
            .await?;
        if !accepted {
            tracing::warn!(stack = %st.name, change_set = %st.token, "ExecuteChangeSet refused (InvalidChangeSetStatus); reading the stack back");
        }
        Ok(accepted)
    }

    /// The stack now (`None`: it does not exist).
    async fn describe(&self, st: &StackRef) -> PortResult<Option<Stack>> {
        let found = self
            .limiter
            .call(&st.account, "DescribeStacks", || {
                sdk(st.client.describe_stacks().stack_name(&st.name).send())
            })
            .await;
        match found {
            Ok(out) => Ok(out.stacks().first().cloned()),
            Err(PortError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The stack once it is no longer busy. `executing`: a change set was just executed, so
    /// `REVIEW_IN_PROGRESS` means "not started yet" rather than "waiting for a change set".
    async fn settle(&self, st: &StackRef, executing: bool) -> PortResult<Option<Stack>> {
        let waited = self.wait_stack(st, executing, None, None).await?;
        Ok(waited.value)
    }

    /// [`Self::settle`] on a schedule shaped by `expected` and by `push`; also
    /// says how long the stack was busy at least.
    async fn wait_stack(
        &self,
        st: &StackRef,
        executing: bool,
        expected: Option<Expected>,
        push: Option<Push<'_>>,
    ) -> PortResult<Waited<Option<Stack>>> {
        let last = std::sync::Mutex::new(String::new());
        let settled = self
            .poll
            .poll_expecting(expected, push, || async {
                let now = self.describe(st).await?;
                if let Some(s) = &now {
                    *last.lock().unwrap_or_else(|e| e.into_inner()) = status(s).to_string();
                }
                Ok((!now.as_ref().is_some_and(|s| busy(status(s), executing))).then_some(now))
            })
            .await?;
        settled.ok_or_else(|| {
            let last = last.into_inner().unwrap_or_else(|e| e.into_inner());
            let last = if last.is_empty() {
                String::new()
            } else {
                format!(" ({last})")
            };
            PortError::Failed(format!(
                "stack {} was still busy after {:?}{last}",
                st.name, self.poll.timeout
            ))
        })
    }

    /// Before a rollback: cancel an update in flight, finish a failed rollback, then settle.
    ///
    /// An update in flight that this rollback's own change set started (the same rollback run
    /// again under its key: after a crash, by a new leader, or past its deadline) is waited for,
    /// never cancelled: cancelling it would return the stack to the release being rolled back.
    async fn unstick(&self, st: &StackRef) -> PortResult<Option<Stack>> {
        let mut current = self.describe(st).await?;
        if current
            .as_ref()
            .is_some_and(|s| status(s) == "UPDATE_IN_PROGRESS")
        {
            if self.own_change_set_executing(st).await? {
                tracing::info!(stack = %st.name, change_set = %st.token, "the update in flight is this rollback's own change set; waiting for it");
            } else {
                self.stack_action(st, "CancelUpdateStack").await?;
            }
        }
        current = self.settle(st, false).await?;
        if current
            .as_ref()
            .is_some_and(|s| status(s) == "UPDATE_ROLLBACK_FAILED")
        {
            self.stack_action(st, "ContinueUpdateRollback").await?;
            current = self.settle(st, true).await?;
        }
        Ok(current)
    }

    /// Whether this attempt's change set is executing now (`EXECUTE_IN_PROGRESS`); false when
    /// there is none.
    async fn own_change_set_executing(&self, st: &StackRef) -> PortResult<bool> {
        match self.describe_change_set(st).await {
            Ok(cs) => Ok(cs
                .execution_status()
                .is_some_and(|e| e.as_str() == "EXECUTE_IN_PROGRESS")),
            Err(PortError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `CancelUpdateStack` or `ContinueUpdateRollback`. A refusal because the stack already
    /// moved on (`ValidationError` about its state) is not an error: the settle that follows
    /// sees where it went.
    async fn stack_action(&self, st: &StackRef, action: &'static str) -> PortResult<()> {
        let token = format!(
            "{}-{}",
            truncate(&st.token, 100),
            action.to_ascii_lowercase()
        );
        let done = self
            .limiter
            .call(&st.account, action, || {
                let c = &st.client;
                let name = &st.name;
                let cancel = (action == "CancelUpdateStack")
                    .then(|| c.cancel_update_stack().stack_name(name));
                let resume = c
                    .continue_update_rollback()
                    .stack_name(name)
                    .client_request_token(&token);
                async move {
                    match cancel {
                        Some(request) => sdk(request.send()).await.map(drop),
                        None => sdk(resume.send()).await.map(drop),
                    }
                }
            })
            .await;
        tracing::info!(stack = %st.name, account = %st.account, action, ok = done.is_ok(), "unsticking stack");
        match done {
            Err(PortError::Invalid(_)) | Ok(()) => Ok(()),
            Err(e) => Err(context(e, &format!("{action} on stack {}", st.name))),
        }
    }

    /// How long this attempt's operation took by the stack's own events (see
    /// [`operation_span`]); `None` when they cannot be read or are not all there.
    async fn operation_took(&self, st: &StackRef) -> Option<Duration> {
        let events = self.attempt_events(st).await.ok()?;
        operation_span(&events, &st.name, &st.token)
    }

    /// The first resource that failed in this attempt and why, from the stack's events.
    async fn failure(&self, st: &StackRef) -> String {
        match self.attempt_events(st).await {
            Ok(events) => first_failure(&events, &st.token)
                .unwrap_or_else(|| "no failed resource in the stack events".to_string()),
            Err(e) => format!("the stack events could not be read ({e})"),
        }
    }

    /// The stack's events back to this attempt's start, newest first: `DescribeStackEvents`
    /// pages until one reaches past it (see [`past_start`]) or there is no next page, at most
    /// [`MAX_EVENT_PAGES`]. Usually one page. A page after the first that cannot be read ends
    /// the reading with what was read, with a warning.
    async fn attempt_events(&self, st: &StackRef) -> PortResult<Vec<StackEvent>> {
        let mut events = Vec::new();
        let mut next: Option<String> = None;
        for page in 1..=MAX_EVENT_PAGES {
            let read = self
                .limiter
                .call(&st.account, "DescribeStackEvents", || {
                    let request = st.client.describe_stack_events().stack_name(&st.name);
                    sdk(request.set_next_token(next.clone()).send())
                })
                .await;
            let out = match read {
                Ok(out) => out,
                Err(e) if page == 1 => return Err(e),
                Err(e) => {
                    tracing::warn!(stack = %st.name, account = %st.account, page, error = %e, "stack events: a later page could not be read; using the pages read");
                    break;
                }
            };
            events.extend_from_slice(out.stack_events());
            next = out.next_token().map(str::to_string);
            if next.is_none() || past_start(&events, &st.token) {
                break;
            }
        }
        Ok(events)
    }
}

/// The change set's inputs: the recorded spec of a rollback's target, or else the stage's
/// template and parameters with the image; and the rollback triggers.
async fn spec(req: &DeployRequest, alarms: &[Trigger]) -> PortResult<Spec> {
    if let Some(Applied {
        spec:
            AppliedSpec::CloudFormation {
                parameters,
                image_parameter,
                capabilities,
                execution_role,
                observed,
                ..
            },
        template_body: Some(body),
    }) = &req.restore
    {
        let today: Vec<&String> = match &req.deploy {
            Deploy::CloudFormation { parameters, .. } => parameters.keys().collect(),
            Deploy::CodePipeline { .. } => Vec::new(),
        };
        let (parameters, reset) = restored_parameters(parameters, observed, today);
        return Ok(Spec {
            template: body.clone(),
            parameters,
            image_parameter: image_parameter.clone(),
            capabilities: capabilities.clone(),
            role: execution_role.clone(),
            rollback: rollback_configuration(req, alarms),
            restored: true,
            declared: template::declared_parameters(body),
            reset,
        });
    }
    let Deploy::CloudFormation {
        template,
        parameters,
        image_parameter,
        capabilities,
        execution_role,
        ..
    } = &req.deploy
    else {
        return Err(PortError::Invalid("not a CloudFormation deploy".into()));
    };
    let body = tokio::fs::read_to_string(template).await.map_err(|e| {
        PortError::Invalid(format!(
            "cannot read the template {}: {e}",
            template.display()
        ))
    })?;
    if body.len() > MAX_TEMPLATE_BODY {
        return Err(PortError::Invalid(format!(
            "template {} is {} bytes; CloudFormation takes at most {MAX_TEMPLATE_BODY} inline",
            template.display(),
            body.len()
        )));
    }
    let mut values = parameters.clone();
    values.insert(image_parameter.clone(), req.image_uri.clone());
    Ok(Spec {
        reset: BTreeSet::new(),
        declared: template::declared_parameters(&body),
        template: body,
        parameters: values,
        image_parameter: image_parameter.clone(),
        capabilities: capabilities.clone(),
        role: execution_role.as_ref().map(Arn::to_string),
        rollback: rollback_configuration(req, alarms),
        restored: false,
    })
}

/// The triggers, always as a list: without one CloudFormation reuses the triggers the stack
/// kept from its last operation, and an empty list is what removes them.
fn rollback_configuration(req: &DeployRequest, alarms: &[Trigger]) -> RollbackConfiguration {
    if alarms.len() > MAX_TRIGGERS {
        tracing::warn!(stage = %req.stage, count = alarms.len(), "only the first {MAX_TRIGGERS} alarms become rollback triggers");
    }
    let triggers = alarms.iter().take(MAX_TRIGGERS).map(|t| {
        let arn = alarm_arn(&t.alarm, &req.target.region, &req.account.id);
        RollbackTrigger::builder().arn(arn).r#type(t.kind()).build()
    });
    RollbackConfiguration::builder()
        .set_rollback_triggers(Some(triggers.collect()))
        .build()
}

/// A stage alarm that becomes a rollback trigger, and whether it is a composite alarm: the
/// trigger's `Type` must say which (API_RollbackTrigger: "Specify either
/// AWS::CloudWatch::Alarm or AWS::CloudWatch::CompositeAlarm"; "If a specified trigger is
/// missing, the entire stack operation fails and is rolled back").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub alarm: String,
    pub composite: bool,
}

impl Trigger {
    /// A metric alarm (one metric, or metric math).
    pub fn metric(alarm: impl Into<String>) -> Trigger {
        Trigger {
            alarm: alarm.into(),
            composite: false,
        }
    }

    /// A composite alarm.
    pub fn composite(alarm: impl Into<String>) -> Trigger {
        Trigger {
            alarm: alarm.into(),
            composite: true,
        }
    }

    /// The trigger's `Type`.
    pub fn kind(&self) -> &'static str {
        if self.composite {
            "AWS::CloudWatch::CompositeAlarm"
        } else {
            "AWS::CloudWatch::Alarm"
        }
    }
}

/// `arn:aws:cloudwatch:REGION:ACCOUNT:alarm:NAME`; an ARN is kept as it is.
pub fn alarm_arn(name: &str, region: &str, account: &str) -> String {
    if name.starts_with("arn:") {
        return name.to_string();
    }
    format!("arn:aws:cloudwatch:{region}:{account}:alarm:{name}")
}

/// A valid change set name and request token from an idempotency key: letters, digits and
/// `-`, starting with a letter, at most 128 characters (a hash keeps long keys distinct).
pub fn request_token(key: &str) -> String {
    let clean: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let token = format!("tollgate-{clean}");
    if token.len() <= 128 {
        return token;
    }
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    format!("{}-{}", truncate(&token, 111), &hash[..16])
}

fn truncate(s: &str, max: usize) -> &str {
    &s[..s.len().min(max)]
}

/// The change set to make against the stack as it is now (`None`: there is none): `CREATE`
/// for a new stack (or one a change set made and nobody executed), else `UPDATE`.
fn change_set_request(st: &StackRef, spec: &Spec, current: Option<&Stack>) -> PortResult<Request> {
    let update = current.filter(|s| status(s) != "REVIEW_IN_PROGRESS");
    let kind = match update {
        Some(_) => ChangeSetType::Update,
        None => ChangeSetType::Create,
    };
    // `UsePreviousValue` is refused on a CREATE change set (there is no previous value).
    let kept = update.map_or_else(Vec::new, |s| kept(st, spec, s));
    Ok(Request {
        kind,
        topics: notification_arns(st, current)?,
        parameters: spec.sdk_parameters(&kept),
    })
}

/// For an update, the stack's parameters that keep their value (see [`kept_parameters`]).
/// With a template that cannot be read here none are kept, with a warning: CloudFormation then
/// gives the stack's parameters missing from the configuration the template's defaults (or
/// fails on one without).
fn kept(st: &StackRef, spec: &Spec, current: &Stack) -> Vec<String> {
    let on_stack = current
        .parameters()
        .iter()
        .filter_map(|p| p.parameter_key());
    let declared = match &spec.declared {
        Ok(declared) => declared,
        Err(why) => {
            let unset: Vec<&str> = on_stack
                .filter(|k| !spec.parameters.contains_key(*k))
                .collect();
            if !unset.is_empty() {
                tracing::warn!(stack = %st.name, account = %st.account, parameters = ?unset, "cannot read the template's Parameters here ({why}): the stack's parameters missing from the configuration are not kept and take the template's defaults");
            }
            return Vec::new();
        }
    };
    let on_stack = on_stack.filter(|k| !spec.reset.contains(*k));
    let kept = kept_parameters(&spec.parameters, declared, on_stack);
    if !kept.is_empty() {
        tracing::info!(stack = %st.name, account = %st.account, parameters = ?kept, "keeping the stack's values of parameters missing from the configuration");
    }
    kept
}

/// The parameters an update keeps at the stack's value (`UsePreviousValue`), as
/// `aws cloudformation deploy` does: each one the stack has now (`on_stack`) that the new
/// template declares and `set` does not give. Left out, CloudFormation would give it the
/// template's default (API_Parameter, `ParameterKey`: "If you don't specify a key and value
/// for a particular parameter, CloudFormation uses the default value that's specified in your
/// template"), undoing a value set by hand or by another tool. Only those: `UsePreviousValue`
/// is refused for a parameter the stack does not have ("Cannot specify usePreviousValue as
/// true for a parameter key not in the previous template") and for one the new template does
/// not declare ("Parameters: [KEY] do not exist in the template"), and together with a
/// `ParameterValue` ("Cannot specify usePreviousValue as true and non empty value for a
/// parameter").
fn kept_parameters<'a>(
    set: &BTreeMap<String, String>,
    declared: &BTreeSet<String>,
    on_stack: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let kept: BTreeSet<&str> = on_stack
        .into_iter()
        .filter(|k| declared.contains(*k) && !set.contains_key(*k))
        .collect();
    kept.into_iter().map(str::to_string).collect()
}

/// What `DescribeStacks` answers for the value of a `NoEcho` parameter.
const NO_ECHO_MASK: &str = "****";

/// A rollback's parameters: those the known-good deploy set (`recorded`), and each one
/// today's configuration sets (`today`) that it did not, at the value the stack had after it
/// (`observed`). Without that, a parameter the configuration set since (with the bad release)
/// would keep the bad release's value through the rollback (`UsePreviousValue`). The second
/// set: those of `today` with no recorded value (NoEcho, or a record from before values were
/// kept), which are not kept either and take the template's default.
fn restored_parameters<'a>(
    recorded: &BTreeMap<String, String>,
    observed: &BTreeMap<String, String>,
    today: impl IntoIterator<Item = &'a String>,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut parameters = recorded.clone();
    let mut reset = BTreeSet::new();
    for key in today {
        if parameters.contains_key(key) {
            continue;
        }
        match observed.get(key) {
            Some(value) => {
                parameters.insert(key.clone(), value.clone());
            }
            None => {
                reset.insert(key.clone());
            }
        }
    }
    (parameters, reset)
}

/// The most `NotificationARNs` a stack takes (CreateChangeSet, `NotificationARNs`: "Maximum
/// number of 5 items").
const MAX_NOTIFICATION_ARNS: usize = 5;

/// The `NotificationARNs` a change set sends: none without the account's stack-events topic
/// (the stack keeps its own), else the stack's own topics with that one added.
/// CloudFormation replaces the stack's topics with the list a change set gives, so sending
/// ours alone would drop every topic someone else subscribed the stack to.
fn notification_arns(st: &StackRef, current: Option<&Stack>) -> PortResult<Option<Vec<String>>> {
    let Some(topic) = &st.topic else {
        return Ok(None);
    };
    let mut topics: Vec<String> = current
        .map(|s| s.notification_arns().to_vec())
        .unwrap_or_default();
    if !topics.contains(topic) {
        topics.push(topic.clone());
    }
    if topics.len() > MAX_NOTIFICATION_ARNS {
        return Err(PortError::Invalid(format!(
            "stack {} already publishes to {} topics ({}); CloudFormation takes at most \
             {MAX_NOTIFICATION_ARNS}, so the account's stack_events_topic {topic} cannot be added: \
             remove one of them or the account's stack_events_topic",
            st.name,
            topics.len() - 1,
            topics[..topics.len() - 1].join(", ")
        )));
    }
    Ok(Some(topics))
}

/// Is the stack busy (wait before touching it)?
fn busy(status: &str, executing: bool) -> bool {
    match status {
        "REVIEW_IN_PROGRESS" => executing,
        s => s.ends_with("_IN_PROGRESS"),
    }
}

/// Refuses stacks no change set can fix. `rollback`: `UPDATE_ROLLBACK_FAILED` was already
/// handled (and is still failed).
fn usable(st: &StackRef, current: Option<&Stack>, rollback: bool) -> PortResult<()> {
    let Some(s) = current else { return Ok(()) };
    let advice = match status(s) {
        "ROLLBACK_COMPLETE" | "ROLLBACK_FAILED" => {
            "its creation failed; delete the stack, then deploy again"
        }
        "DELETE_FAILED" => "its deletion failed; finish deleting it, then deploy again",
        "UPDATE_ROLLBACK_FAILED" if rollback => {
            "ContinueUpdateRollback did not finish; skip the stuck resources by hand"
        }
        "UPDATE_ROLLBACK_FAILED" => {
            "its last rollback failed; roll the stage back, or continue the rollback by hand"
        }
        _ => return Ok(()),
    };
    Err(PortError::Failed(format!(
        "stack {} is {}: {advice}",
        st.name,
        status(s)
    )))
}

fn status(stack: &Stack) -> &str {
    stack.stack_status().map(|s| s.as_str()).unwrap_or_default()
}

/// What CloudFormation says about an empty change set (moto: at create; AWS: as its reason).
fn no_changes(message: &str) -> bool {
    message.contains("No updates are to be performed") || message.contains("didn't contain changes")
}

/// `Drift` unless the stack's image parameter, read back, is the one asked for.
fn read_back(st: &StackRef, spec: &Spec, stack: Option<&Stack>) -> PortResult<()> {
    let found = stack
        .map(|s| s.parameters())
        .unwrap_or_default()
        .iter()
        .find(|p| p.parameter_key() == Some(spec.image_parameter.as_str()))
        .and_then(|p| p.parameter_value())
        .unwrap_or_default();
    if found == spec.image() {
        return Ok(());
    }
    tracing::error!(stack = %st.name, account = %st.account, expected = spec.image(), found, "drift: the stack does not run the requested image");
    Err(PortError::Drift {
        expected: spec.image().to_string(),
        found: found.to_string(),
    })
}

fn result(st: &StackRef, spec: &Spec, stack: Option<&Stack>, what: &str) -> DeployResult {
    let outputs: BTreeMap<String, String> = stack
        .map(|s| s.outputs())
        .unwrap_or_default()
        .iter()
        .filter_map(|o| Some((o.output_key()?.to_string(), o.output_value()?.to_string())))
        .collect();
    let state = stack.map(status).unwrap_or("absent");
    let from = if spec.restored {
        "; applied the recorded template and parameters of the known-good deploy"
    } else {
        ""
    };
    let summary = format!(
        "stack {} in {}: {what} ({state}){from}",
        st.name, st.account
    );
    DeployResult {
        outputs,
        summary,
        applied: Some(spec.applied(&st.name, stack)),
        timing: st.timing(),
    }
}

/// At most this many pages of `DescribeStackEvents` are read for one look at an attempt's
/// events, so a stack's long history is never read whole.
const MAX_EVENT_PAGES: usize = 10;

/// Whether `events` (newest first) reach past the start of the attempt with `token`: an
/// older event of another token (or of none) follows this token's events. Every event of an
/// operation carries the `ClientRequestToken` it was started with (API_StackEvent).
fn past_start(events: &[StackEvent], token: &str) -> bool {
    let ours = |e: &StackEvent| e.client_request_token() == Some(token);
    events
        .iter()
        .position(ours)
        .is_some_and(|first| events[first..].iter().any(|e| !ours(e)))
}

/// From the "User Initiated" `*_IN_PROGRESS` event of the stack `name` itself under `token`
/// (its operation's start) to its last event that is not in progress; `None` without both.
fn operation_span(events: &[StackEvent], name: &str, token: &str) -> Option<Duration> {
    let ms = |e: &&StackEvent| e.timestamp().and_then(|t| t.to_millis().ok());
    let own: Vec<&StackEvent> = events
        .iter()
        .filter(|e| e.client_request_token() == Some(token))
        .filter(|e| e.logical_resource_id() == Some(name))
        .filter(|e| e.resource_type() == Some("AWS::CloudFormation::Stack"))
        .collect();
    let progress = |e: &&&StackEvent| {
        e.resource_status()
            .is_some_and(|s| s.as_str().ends_with("_IN_PROGRESS"))
    };
    let started =
        |e: &&&StackEvent| progress(e) && e.resource_status_reason() == Some("User Initiated");
    let start = own.iter().filter(started).filter_map(ms).min()?;
    let end = own.iter().filter(|e| !progress(e)).filter_map(ms).max()?;
    let span = u64::try_from(end - start).ok()?;
    Some(Duration::from_millis(span))
}

/// The earliest `*_FAILED` event of the attempt with `token` (events come newest first), or
/// else the reason the stack itself gave for rolling back (a rollback trigger's alarm).
/// Without any event carrying a token (moto), the attempt is the events since the latest
/// "User Initiated" one.
fn first_failure(events: &[StackEvent], token: &str) -> Option<String> {
    let tokened = events.iter().any(|e| e.client_request_token().is_some());
    let attempt: Vec<&StackEvent> = if tokened {
        events
            .iter()
            .filter(|e| e.client_request_token() == Some(token))
            .collect()
    } else {
        let end = events
            .iter()
            .position(|e| e.resource_status_reason() == Some("User Initiated"));
        events[..end.map_or(events.len(), |i| i + 1)]
            .iter()
            .collect()
    };
    let earliest = |end: &str| {
        attempt.iter().rev().copied().find(|e| {
            e.resource_status()
                .is_some_and(|s| s.as_str().ends_with(end))
        })
    };
    let failed = earliest("_FAILED").or_else(|| earliest("ROLLBACK_IN_PROGRESS"))?;
    Some(format!(
        "{} ({}) {}: {}",
        failed.logical_resource_id().unwrap_or("?"),
        failed.resource_type().unwrap_or("?"),
        failed
            .resource_status()
            .map(|s| s.as_str())
            .unwrap_or_default(),
        failed.resource_status_reason().unwrap_or("no reason given")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_sets_what_todays_configuration_added_to_its_value_after_the_known_good_deploy() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let recorded = map(&[("Env", "beta"), ("ImageUri", "old")]);
        let observed = map(&[("Env", "beta"), ("Flag", "off"), ("Size", "3")]);
        let today = ["Env".to_string(), "Flag".to_string(), "Secret".to_string()];
        let (parameters, reset) = restored_parameters(&recorded, &observed, &today);
        assert_eq!(
            parameters,
            map(&[("Env", "beta"), ("Flag", "off"), ("ImageUri", "old")]),
            "Size is not configured today: it is left to UsePreviousValue"
        );
        assert_eq!(reset, BTreeSet::from(["Secret".to_string()]));
    }
    use aws_sdk_cloudformation::types::ResourceStatus;

    fn event(id: &str, status: &str, reason: &str, token: Option<&str>) -> StackEvent {
        StackEvent::builder()
            .logical_resource_id(id)
            .resource_type("AWS::ECS::Service")
            .resource_status(ResourceStatus::from(status))
            .resource_status_reason(reason)
            .set_client_request_token(token.map(str::to_string))
            .build()
    }

    #[test]
    fn tokens_are_valid_names_and_distinct() {
        assert_eq!(
            request_token("backend/r12/prod/1/deploy-0"),
            "tollgate-backend-r12-prod-1-deploy-0"
        );
        let long = "x".repeat(300);
        let a = request_token(&long);
        let b = request_token(&format!("{long}y"));
        assert!(a.len() <= 128 && b.len() <= 128);
        assert_ne!(a, b);
    }

    #[test]
    fn alarm_names_become_arns() {
        assert_eq!(
            alarm_arn("api-5xx", "eu-west-1", "222222222222"),
            "arn:aws:cloudwatch:eu-west-1:222222222222:alarm:api-5xx"
        );
        let arn = "arn:aws:cloudwatch:us-east-1:1:alarm:x";
        assert_eq!(alarm_arn(arn, "eu-west-1", "2"), arn);
    }

    #[test]
    fn the_earliest_failure_of_this_attempt_is_reported() {
        let events = [
            event(
                "Stack",
                "UPDATE_ROLLBACK_IN_PROGRESS",
                "The following resource(s) failed",
                Some("t2"),
            ),
            event(
                "Other",
                "UPDATE_FAILED",
                "Resource update cancelled",
                Some("t2"),
            ),
            event("Service", "UPDATE_FAILED", "Invalid image", Some("t2")),
            event("Old", "UPDATE_FAILED", "an earlier attempt", Some("t1")),
        ];
        assert_eq!(
            first_failure(&events, "t2").unwrap(),
            "Service (AWS::ECS::Service) UPDATE_FAILED: Invalid image"
        );
        assert_eq!(first_failure(&events, "t3"), None);
    }

    #[test]
    fn without_tokens_the_attempt_starts_at_user_initiated() {
        let events = [
            event("Service", "CREATE_FAILED", "bad", None),
            event("Stack", "CREATE_IN_PROGRESS", "User Initiated", None),
            event("Old", "UPDATE_FAILED", "older", None),
        ];
        assert_eq!(
            first_failure(&events, "t").unwrap(),
            "Service (AWS::ECS::Service) CREATE_FAILED: bad"
        );
    }

    #[test]
    fn without_a_failed_resource_the_stacks_rollback_reason_is_reported() {
        let events = [
            event("Stack", "UPDATE_ROLLBACK_COMPLETE", "", Some("t")),
            event(
                "Stack",
                "UPDATE_ROLLBACK_IN_PROGRESS",
                "alarm api-5xx",
                Some("t"),
            ),
            event("Service", "UPDATE_COMPLETE", "", Some("t")),
        ];
        assert_eq!(
            first_failure(&events, "t").unwrap(),
            "Stack (AWS::ECS::Service) UPDATE_ROLLBACK_IN_PROGRESS: alarm api-5xx"
        );
    }

    #[test]
    fn an_operation_lasts_from_its_first_event_to_its_end_by_the_stack_itself() {
        let at = |ms: i64| aws_sdk_cloudformation::primitives::DateTime::from_millis(ms);
        let stack = |status: &str, ms: i64, token: &str| {
            let reason = if status.ends_with("CLEANUP_IN_PROGRESS") {
                ""
            } else {
                "User Initiated"
            };
            StackEvent::builder()
                .logical_resource_id("app")
                .resource_type("AWS::CloudFormation::Stack")
                .resource_status(ResourceStatus::from(status))
                .resource_status_reason(reason)
                .client_request_token(token)
                .timestamp(at(ms))
                .build()
        };
        let events = [
            stack("UPDATE_COMPLETE", 181_500, "t2"),
            stack("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", 181_000, "t2"),
            event("Service", "UPDATE_COMPLETE", "", Some("t2")),
            stack("UPDATE_IN_PROGRESS", 1_000, "t2"),
            stack("UPDATE_COMPLETE", 500, "t1"),
            stack("UPDATE_IN_PROGRESS", 0, "t1"),
        ];
        let span = operation_span(&events, "app", "t2");
        assert_eq!(span, Some(Duration::from_millis(180_500)));
        assert_eq!(
            operation_span(&events, "app", "t1"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(operation_span(&events, "app", "t3"), None);
        assert_eq!(operation_span(&events[..3], "app", "t2"), None, "no start");
    }

    #[test]
    fn an_update_keeps_only_parameters_on_the_stack_declared_and_not_configured() {
        let set = BTreeMap::from([
            ("ImageUri".to_string(), "new".to_string()),
            ("Env".to_string(), "beta".to_string()),
        ]);
        let declared: BTreeSet<String> = ["ImageUri", "Env", "ByHand", "Added"]
            .map(String::from)
            .into();
        let on_stack = ["ImageUri", "Env", "ByHand", "Dropped", "ByHand"];
        assert_eq!(kept_parameters(&set, &declared, on_stack), ["ByHand"]);
        assert!(kept_parameters(&set, &declared, []).is_empty());
    }

    #[test]
    fn the_events_reach_past_an_attempts_start_at_an_older_event_of_another_token() {
        let e = |token: Option<&str>| event("Service", "UPDATE_COMPLETE", "", token);
        let newer = [e(Some("t3")), e(Some("t2")), e(Some("t2"))];
        assert!(
            !past_start(&newer, "t2"),
            "its start may be on the next page"
        );
        assert!(!past_start(&newer[..1], "t2"), "not reached yet");
        assert!(past_start(&[e(Some("t2")), e(Some("t1"))], "t2"));
        assert!(past_start(&[e(Some("t2")), e(None)], "t2"));
        assert!(!past_start(&[e(Some("t1")), e(None)], "t2"), "never seen");
        assert!(!past_start(&[], "t2"));
    }

    #[test]
    fn busy_states() {
        assert!(busy("UPDATE_IN_PROGRESS", false));
        assert!(busy("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", false));
        assert!(!busy("REVIEW_IN_PROGRESS", false));
        assert!(busy("REVIEW_IN_PROGRESS", true));
        assert!(!busy("UPDATE_ROLLBACK_FAILED", true));
    }
}
