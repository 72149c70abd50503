//! The real [`Deployer`]: routes each stage's `deploy` to CloudFormation or CodePipeline.
//!
//! Owns choosing the adapter and handing CloudFormation the stage's alarms, which become the
//! change set's rollback triggers. The deploy request does not carry them, so [`AwsDeployer`]
//! asks an [`AlarmLookup`] (pipeline, stage → alarm names) for them at every call: built from
//! the live configuration with [`alarms_from_config`], a reload takes effect at the next deploy.
//!
//! # Guarantees
//! - A rollback carries no rollback triggers (see [`CloudFormationDeployer::rollback_stack`]).
//! - A deploy under an alarm override (`tollgate override --alarms`) leaves out the triggers
//!   whose alarms are in `ALARM` when it starts, read through the [`Alarms`] port, and its
//!   summary names them: CloudFormation would otherwise roll the overriding deploy back at
//!   once. The other alarms stay triggers.
//! - Each trigger has the type of its alarm (metric or composite), asked of the [`Alarms`]
//!   port, which answers from the alarms it has read (the entry gate's read just before the
//!   deploy) and reads only those it has not.
//!
//! Must never decide anything about the release: it deploys what it is asked to.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::cloudformation::{CloudFormationDeployer, Trigger};
use super::codepipeline::CodePipelineDeployer;
use crate::config::{Config, Deploy};
use crate::engine::ports::{Alarms, DeployRequest, DeployResult, Deployer, PortResult};

/// (pipeline, stage) → the stage's alarm names (empty when unknown).
pub type AlarmLookup = Arc<dyn Fn(&str, &str) -> Vec<String> + Send + Sync>;

/// Deploys through CloudFormation or CodePipeline, as each stage says.
pub struct AwsDeployer {
    cloudformation: CloudFormationDeployer,
    codepipeline: CodePipelineDeployer,
    alarms: AlarmLookup,
    /// Alarm states, for a deploy under an alarm override.
    states: Arc<dyn Alarms>,
}

impl AwsDeployer {
    pub fn new(
        cloudformation: CloudFormationDeployer,
        codepipeline: CodePipelineDeployer,
        alarms: AlarmLookup,
        states: Arc<dyn Alarms>,
    ) -> AwsDeployer {
        AwsDeployer {
            cloudformation,
            codepipeline,
            alarms,
            states,
        }
    }

    fn alarms_of(&self, req: &DeployRequest) -> Vec<String> {
        (self.alarms)(&req.pipeline, &req.stage)
    }

    /// The stage's alarms as triggers, each with its kind (read through the [`Alarms`] port,
    /// which knows it from the entry gate's read just before), less those in ALARM now when
    /// the release overrides them.
    async fn deploy_stack(&self, req: &DeployRequest) -> PortResult<DeployResult> {
        let mut alarms = self.alarms_of(req);
        let region = &req.target.region;
        let firing = if req.alarm_override {
            self.states.in_alarm(&req.account, region, &alarms).await?
        } else {
            Vec::new()
        };
        alarms.retain(|a| !firing.contains(a));
        let composite = if alarms.is_empty() {
            Vec::new()
        } else {
            self.states.composite(&req.account, region, &alarms).await?
        };
        let triggers: Vec<Trigger> = alarms
            .into_iter()
            .map(|a| Trigger {
                composite: composite.contains(&a),
                alarm: a,
            })
            .collect();
        let mut result = self.cloudformation.deploy_stack(req, &triggers).await?;
        if !firing.is_empty() {
            result.summary = format!(
                "{}; alarm override: left out the rollback triggers in ALARM: {}",
                result.summary,
                firing.join(", ")
            );
        }
        Ok(result)
    }
}

/// Reads the stage's alarms from a configuration that may be replaced while running.
pub fn alarms_from_config(config: Arc<RwLock<Arc<Config>>>) -> AlarmLookup {
    Arc::new(move |pipeline: &str, stage: &str| {
        let config = config.read().unwrap_or_else(|e| e.into_inner()).clone();
        let stage = config.pipeline(pipeline).and_then(|p| p.stage(stage));
        stage.map(|s| s.alarms.clone()).unwrap_or_default()
    })
}

#[async_trait]
impl Deployer for AwsDeployer {
    async fn deploy(&self, req: &DeployRequest) -> PortResult<DeployResult> {
        match &req.deploy {
            Deploy::CloudFormation { .. } => self.deploy_stack(req).await,
            Deploy::CodePipeline { .. } => self.codepipeline.deploy(req).await,
        }
    }

    async fn rollback(&self, req: &DeployRequest) -> PortResult<DeployResult> {
        match &req.deploy {
            Deploy::CloudFormation { .. } => self.cloudformation.rollback_stack(req).await,
            Deploy::CodePipeline { .. } => self.codepipeline.rollback(req).await,
        }
    }
}
