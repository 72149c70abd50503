"""CloudFormation custom resource that publishes the app baked into this image.

On Create and Update (every new ImageUri: a release or a rollback) it uploads every file under
SITE_DIR to the bucket named in the resource's properties. Hashed assets are cached for a year;
index.html and version.json must always be revalidated. Old files are left in place so that
open browser tabs can still load the bundles they reference; the bucket's lifecycle rule
expires replaced versions. Delete does nothing: the bucket is retained.
"""

import json
import mimetypes
import os
import urllib.request

import boto3

S3 = boto3.client("s3")
SITE_DIR = os.environ.get("SITE_DIR", "/var/task/site")
NO_CACHE = {"index.html", "version.json"}


def handler(event, context):
    status, reason, data = "SUCCESS", "", {}
    try:
        if event["RequestType"] in ("Create", "Update"):
            data["Files"] = str(publish(event["ResourceProperties"]["Bucket"]))
    except Exception as error:  # report every failure, or CloudFormation waits for an hour
        status, reason = "FAILED", f"{type(error).__name__}: {error}"
    respond(event, context, status, reason, data)


def publish(bucket):
    count = 0
    for root, _dirs, files in os.walk(SITE_DIR):
        for name in files:
            path = os.path.join(root, name)
            key = os.path.relpath(path, SITE_DIR)
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
            cache = "no-cache" if key in NO_CACHE else "public, max-age=31536000, immutable"
            S3.upload_file(
                path,
                bucket,
                key,
                ExtraArgs={"ContentType": content_type, "CacheControl": cache},
            )
            count += 1
    return count


def respond(event, context, status, reason, data):
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason or f"see {context.log_stream_name}",
            "PhysicalResourceId": event.get("PhysicalResourceId", event["LogicalResourceId"]),
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "Data": data,
        }
    ).encode()
    request = urllib.request.Request(
        event["ResponseURL"], data=body, method="PUT", headers={"Content-Type": ""}
    )
    urllib.request.urlopen(request, timeout=30)
