#!/bin/sh
# `invalidate-cdn`, an `after` test of the shop-web stages: invalidates the stage's CloudFront
# distribution so that the files the deploy just published are served, and waits until the
# invalidation has completed (the smoke suite runs next).
#
# tollgate gives a command test the stage's variables, among them:
#   STACK_DISTRIBUTION_ID   the stack output DistributionId
#   TOLLGATE_STAGE          beta, gamma or prod
#   TOLLGATE_RELEASE        e.g. r42
#   COMMIT_SHA
# It passes on no credentials of its own: the AWS CLI takes them from the profile
# "$AWS_PROFILE_PREFIX$TOLLGATE_STAGE" (e.g. shop-gamma) of the controller's ~/.aws/config,
# which assumes a role in the stage's account allowed to invalidate (see the README).
set -eu

: "${STACK_DISTRIBUTION_ID:?the stack reported no DistributionId output}"
: "${TOLLGATE_STAGE:?not run by tollgate: TOLLGATE_STAGE is not set}"
export AWS_PROFILE="${AWS_PROFILE_PREFIX:-shop-}${TOLLGATE_STAGE}"

id=$(aws cloudfront create-invalidation \
  --distribution-id "$STACK_DISTRIBUTION_ID" \
  --paths '/*' \
  --query Invalidation.Id --output text)
echo "invalidating $STACK_DISTRIBUTION_ID for ${TOLLGATE_RELEASE:-?} (${COMMIT_SHA:-?}): $id"

# Polls every 20 s, for up to 10 minutes; the test's timeout in stages.toml is longer.
aws cloudfront wait invalidation-completed \
  --distribution-id "$STACK_DISTRIBUTION_ID" --id "$id"
echo "invalidation $id completed"
