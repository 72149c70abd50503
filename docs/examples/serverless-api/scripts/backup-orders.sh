#!/bin/sh
# `backup-orders`, the `before` test of the prod stage: an on-demand backup of the orders table,
# taken before the release can touch it. The deploy starts only once the backup is AVAILABLE;
# if it cannot be made, the release stops here.
#
# tollgate gives a command test the stage's variables (TOLLGATE_RELEASE, COMMIT_SHA,
# AWS_REGION, ...) and the test's own env from stages.toml: TABLE_NAME and AWS_PROFILE. It
# passes on no credentials of its own: the AWS CLI takes them from the profile AWS_PROFILE of
# the controller's ~/.aws/config, which assumes a role in the Prod account allowed to back up
# the table (see the README).
#
# On-demand backups are kept until deleted; expire them with AWS Backup or by hand.
set -eu

: "${TABLE_NAME:?set TABLE_NAME in the test's env in stages.toml}"
: "${TOLLGATE_RELEASE:?not run by tollgate: TOLLGATE_RELEASE is not set}"
region="${AWS_REGION:?not run by tollgate: AWS_REGION is not set}"
sha="$(printf '%s' "${COMMIT_SHA:-unknown}" | cut -c1-12)"
name="tollgate-${TOLLGATE_RELEASE}-${sha}-$(date -u +%Y%m%dT%H%M%SZ)"

arn=$(aws dynamodb create-backup --region "$region" \
  --table-name "$TABLE_NAME" --backup-name "$name" \
  --query BackupDetails.BackupArn --output text)
echo "backing up $TABLE_NAME as $name: $arn"

while :; do
  status=$(aws dynamodb describe-backup --region "$region" --backup-arn "$arn" \
    --query BackupDescription.BackupDetails.BackupStatus --output text)
  case "$status" in
    AVAILABLE) echo "backup $name is available"; exit 0 ;;
    CREATING) sleep 10 ;;
    *) echo "backup $name is $status" >&2; exit 1 ;;
  esac
done
