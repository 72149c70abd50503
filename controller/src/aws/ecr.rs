//! ECR: resolves a build's tag to its digest and makes that digest available to a stage.
//!
//! Owns [`EcrArtifacts`], the real [`Artifacts`] port: `resolve` waits (bounded by the
//! artifact's `wait`) for the tag to appear in the build account's repository and returns its
//! `sha256:…` digest; `promote` either tags the digest for the stage in the build repository
//! ([`Promote::Retag`]) or puts the same manifest into the stage account's repository of the
//! same name ([`Promote::Copy`]). Both push the manifest bytes unchanged, so the digest — what
//! every stage deploys — stays the same.
//!
//! Must never deploy or return a tag: the URI handed on is always `…/REPO@sha256:…`.
//!
//! # Caveats
//! - `PutImage` copies only the manifest. Real ECR accepts it only when the layers are already
//!   in the target registry: for `Copy`, set up ECR replication (or a registry policy and a
//!   layer copy) between the build and stage accounts. Replication is asynchronous, so a
//!   `Copy` puts the manifest again while ECR answers that the layers are missing, for at most
//!   the artifact's `wait`. moto does not check layers.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ecr::Client;
use aws_sdk_ecr::types::{Image, ImageIdentifier};

use super::errors::{classify, has_code, sdk, sdk_done_unless};
use super::observe::CallMetrics;
use super::retry::{Limiter, PollSettings};
use super::sts::Credentials;
use crate::config::{Account, Artifact, Promote};
use crate::engine::ports::{Artifacts, PortError, PortResult, PromoteRequest};

/// Manifest types asked for, so ECR returns the manifest as pushed instead of converting it.
const MEDIA_TYPES: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v1+json",
];

/// The real artifacts port; share one per controller.
pub struct EcrArtifacts {
    creds: Arc<Credentials>,
    limiter: Arc<Limiter>,
    /// Poll intervals while a tag is awaited; the timeout is each artifact's `wait`.
    wait: PollSettings,
}

/// What `PutImage` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Put {
    /// The tag holds the image now (put, or already there).
    Done,
    /// The repository's tags are immutable and the tag is already taken, by this image or
    /// another.
    TagTaken,
    /// The registry does not have the image's layers (or, for an index, its images) yet.
    LayersMissing,
}

/// Where a manifest put ended: in place, or waiting for its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    Done,
    /// `LayersNotFoundException` or `ReferencedImagesNotFoundException`: ECR takes a manifest
    /// only when what it references is already in the registry (PutImage, API reference).
    LayersMissing,
}

/// One repository in one account and region.
struct Repo {
    client: Client,
    account: String,
    region: String,
    name: String,
}

impl Repo {
    fn uri(&self, digest: &str) -> String {
        format!(
            "{}.dkr.ecr.{}.amazonaws.com/{}@{digest}",
            self.account, self.region, self.name
        )
    }
}

impl EcrArtifacts {
    pub fn new(creds: Arc<Credentials>, wait: PollSettings) -> EcrArtifacts {
        let limiter = creds.limiter().clone();
        EcrArtifacts {
            creds,
            limiter,
            wait,
        }
    }

    async fn repo(
        &self,
        account: &Account,
        region: &str,
        name: &str,
        session: &str,
    ) -> PortResult<Repo> {
        let config = self.creds.config_for(account, region, session).await?;
        let conf = aws_sdk_ecr::config::Builder::from(&config).interceptor(CallMetrics);
        Ok(Repo {
            client: Client::from_conf(conf.build()),
            account: account.id.to_string(),
            region: region.to_string(),
            name: name.to_string(),
        })
    }

    /// The digest the tag points at now; `None` while the image is not there.
    async fn digest_of(&self, repo: &Repo, tag: &str) -> PortResult<Option<String>> {
        self.limiter
            .call(&repo.account, "DescribeImages", || {
                let id = ImageIdentifier::builder().image_tag(tag).build();
                let request = repo
                    .client
                    .describe_images()
                    .registry_id(&repo.account)
                    .repository_name(&repo.name)
                    .image_ids(id);
                async move {
                    match request.send().await {
                        Ok(out) => Ok(out
                            .image_details()
                            .first()
                            .and_then(|d| d.image_digest())
                            .map(str::to_string)),
                        Err(e) if has_code(&e, "ImageNotFoundException") => Ok(None),
                        Err(e) => Err(classify(&e)),
                    }
                }
            })
            .await
    }

    /// The manifest of `digest` as pushed.
    async fn manifest(&self, repo: &Repo, digest: &str) -> PortResult<Image> {
        let out = self
            .limiter
            .call(&repo.account, "BatchGetImage", || {
                let id = ImageIdentifier::builder().image_digest(digest).build();
                let types = MEDIA_TYPES.iter().map(|t| t.to_string()).collect();
                sdk(repo
                    .client
                    .batch_get_image()
                    .registry_id(&repo.account)
                    .repository_name(&repo.name)
                    .image_ids(id)
                    .set_accepted_media_types(Some(types))
                    .send())
            })
            .await?;
        if let Some(image) = out.images().first() {
            return Ok(image.clone());
        }
        let reason = out
            .failures()
            .first()
            .and_then(|f| f.failure_reason())
            .unwrap_or("no image returned");
        Err(PortError::NotFound(format!(
            "{}@{digest} in {}: {reason}",
            repo.name, repo.account
        )))
    }

    /// Puts `image`'s manifest under `tag`; the tag already on this image is success.
    ///
    /// ECR says the tag is already there in two ways: `ImageAlreadyExistsException` when the
    /// same image was put with the same tag (a mutable repository), and
    /// `ImageTagAlreadyExistsException` when the repository's tags are immutable, whichever
    /// image holds the tag (the same one included, so a second wave, a retried attempt and a
    /// rollback to an earlier release all meet it). The second is success only when the tag
    /// holds `digest`; another image under it is an error naming both.
    async fn put(&self, repo: &Repo, image: &Image, digest: &str, tag: &str) -> PortResult<Placed> {
        let manifest = image.image_manifest().unwrap_or_default();
        let media_type = image.image_manifest_media_type().map(str::to_string);
        let put = self
            .limiter
            .call(&repo.account, "PutImage", || {
                let request = repo
                    .client
                    .put_image()
                    .registry_id(&repo.account)
                    .repository_name(&repo.name)
                    .image_manifest(manifest)
                    .set_image_manifest_media_type(media_type.clone())
                    .image_tag(tag)
                    .image_digest(digest);
                async move {
                    match request.send().await {
                        Ok(_) => Ok(Put::Done),
                        Err(e) if has_code(&e, "ImageAlreadyExistsException") => Ok(Put::Done),
                        Err(e) if has_code(&e, "ImageTagAlreadyExistsException") => {
                            Ok(Put::TagTaken)
                        }
                        Err(e)
                            if has_code(&e, "LayersNotFoundException")
                                || has_code(&e, "ReferencedImagesNotFoundException") =>
                        {
                            Ok(Put::LayersMissing)
                        }
                        Err(e) => Err(classify(&e)),
                    }
                }
            })
            .await?;
        match put {
            Put::Done => return Ok(Placed::Done),
            Put::LayersMissing => return Ok(Placed::LayersMissing),
            Put::TagTaken => {}
        }
        match self.digest_of(repo, tag).await? {
            Some(held) if held == digest => Ok(Placed::Done),
            Some(held) => Err(PortError::Failed(format!(
                "{}:{tag} in {} holds {held}, not {digest}, and the repository's tags are immutable",
                repo.name, repo.account
            ))),
            // Deleted between the two calls: putting it again may work.
            None => Err(PortError::Retryable(format!(
                "{}:{tag} in {} was taken, then held no image",
                repo.name, repo.account
            ))),
        }
    }

    /// Creates the repository when it does not exist yet.
    async fn ensure_repository(&self, repo: &Repo) -> PortResult<()> {
        let found = self
            .limiter
            .call(&repo.account, "DescribeRepositories", || {
                sdk(repo
                    .client
                    .describe_repositories()
                    .registry_id(&repo.account)
                    .repository_names(&repo.name)
                    .send())
            })
            .await;
        match found {
            Err(PortError::NotFound(_)) => self.create_repository(repo).await,
            other => other.map(drop),
        }
    }

    async fn create_repository(&self, repo: &Repo) -> PortResult<()> {
        tracing::info!(account = %repo.account, repository = %repo.name, "creating the stage's ECR repository");
        self.limiter
            .call(&repo.account, "CreateRepository", || {
                let request = repo
                    .client
                    .create_repository()
                    .registry_id(&repo.account)
                    .repository_name(&repo.name);
                sdk_done_unless(request.send(), "RepositoryAlreadyExistsException")
            })
            .await
    }
}

#[async_trait::async_trait]
impl Artifacts for EcrArtifacts {
    async fn resolve(
        &self,
        artifact: &Artifact,
        account: &Account,
        tag: &str,
    ) -> PortResult<String> {
        let repo = self
            .repo(
                account,
                &artifact.region,
                &artifact.repository,
                "tollgate-resolve",
            )
            .await?;
        let waited = self
            .wait
            .with_timeout(artifact.wait)
            .poll(|| self.digest_of(&repo, tag))
            .await?;
        waited.ok_or_else(|| {
            PortError::NotFound(format!(
                "image {}:{tag} in {} ({}) did not appear within {}",
                repo.name,
                account.name,
                account.id,
                seconds(artifact.wait)
            ))
        })
    }

    async fn promote(&self, req: &PromoteRequest) -> PortResult<String> {
        let session = format!("tollgate-promote-{}", req.stage);
        let a = &req.artifact;
        let build = self
            .repo(&req.build_account, &a.region, &a.repository, &session)
            .await?;
        let image = self.manifest(&build, &req.digest).await?;
        let tag = stage_tag(&req.stage, &req.digest);
        match req.mode {
            Promote::Retag => match self.put(&build, &image, &req.digest, &tag).await? {
                Placed::Done => Ok(build.uri(&req.digest)),
                // In the repository the image was pushed to: not a wait, a broken image.
                Placed::LayersMissing => Err(PortError::Failed(format!(
                    "ECR refused to tag {}@{} in {}: its layers are not in the repository",
                    build.name, req.digest, build.account
                ))),
            },
            Promote::Copy => {
                let stage = self
                    .repo(
                        &req.target_account,
                        &req.target.region,
                        &a.repository,
                        &session,
                    )
                    .await?;
                self.ensure_repository(&stage).await?;
                // Replication copies the layers asynchronously: the manifest is put again on
                // the artifact's wait schedule until they are there.
                let placed = self
                    .wait
                    .with_timeout(a.wait)
                    .poll(|| async {
                        let placed = self.put(&stage, &image, &req.digest, &tag).await?;
                        Ok((placed == Placed::Done).then_some(()))
                    })
                    .await?;
                placed.ok_or_else(|| {
                    PortError::Failed(format!(
                        "the layers of {}@{} did not reach {} ({}) within {}: ECR takes a \
                         manifest only when its layers are in the registry; set up replication \
                         from the build account",
                        a.repository,
                        req.digest,
                        req.target_account.name,
                        stage.account,
                        seconds(a.wait)
                    ))
                })?;
                Ok(stage.uri(&req.digest))
            }
        }
    }
}

/// `<stage>-<first 12 hex digits of the digest>`, e.g. `prod-3f2a…`.
pub fn stage_tag(stage: &str, digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("{stage}-{}", &hex[..hex.len().min(12)])
}

fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_tags_carry_the_digest_prefix() {
        assert_eq!(
            stage_tag("prod", "sha256:0123456789abcdef0123"),
            "prod-0123456789ab"
        );
        assert_eq!(stage_tag("beta", "short"), "beta-short");
    }
}
