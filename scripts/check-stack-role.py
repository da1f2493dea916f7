"""The CloudFormation service role (ci-role.yaml's StacksRole) allows what the stacks need.

CloudFormation creates, updates, reads and deletes each resource with the rights of the service
role it is given, and each resource type's registry schema lists the IAM actions its handlers call
(`handlers.{create,read,update,delete}.permissions`; the CloudFormation CLI's "Resource type
schema" reference). cfn-lint ships those schemas; this script reads them for every resource type in
the stack templates and fails on any action the role's policies do not allow (by action name and
its wildcards; resource scoping is not judged here). Handlers list every action any property could
need, so an action only a create or update handler lists, for a property the templates do not set,
may be left out: NOT_NEEDED, with its reason.

Run by scripts/check-templates with the checks venv: python scripts/check-stack-role.py
"""

from __future__ import annotations

import fnmatch
import json
import pathlib
import sys

import cfnlint
from cfnlint.decode import decode

ROOT = pathlib.Path(__file__).resolve().parent.parent
STACKS = ["network", "registry", "cluster", "edge"]
REGION = "us-east-1"
SCHEMAS = pathlib.Path(cfnlint.__file__).parent / "data" / "schemas"

# Actions only the create or update handlers list, for properties these templates do not set:
# left out, each pattern with why. An action a read or delete handler lists cannot be left out
# (CloudFormation reads every resource after it writes it, and deletes it on rollback).
NOT_NEEDED = [
    # API names that are not IAM actions (cfn-lint's W3037 refuses them in a policy): IAM
    # authorizes them with another action, which the role has.
    ("s3:DeleteBucketEncryption", "not an IAM action: authorized by s3:PutEncryptionConfiguration"),
    ("s3:DeleteBucketLifecycle", "not an IAM action: authorized by s3:PutLifecycleConfiguration"),
    ("cloudfront:CreateDistributionWithTags", "not an IAM action: CreateDistribution and TagResource"),
    ("iam:*InstanceProfile*", "EKS Auto Mode's node roles (no ComputeConfig in cluster.yaml)"),
    ("iam:DeleteRolePermissionsBoundary", "a role's boundary is never removed (the stacks role denies it)"),
    ("iam:PutRolePolicy", "no inline Policies on the cluster stack's roles: their rights come from attached policies under the boundary (denied)"),
    ("eks:[CU]*PodIdentityAssociation", "no PodIdentityAssociations on the add-on (Pod Identity does not run on Fargate)"),
    ("iam:Attach*Policy", "no Groups or Users on the managed policy (it names its one role)"),
    ("eks:ActivateCertificateAuthority", "no custom certificate authority on the cluster"),
    ("cloudfront:*ConnectionGroup", "no CloudFront connection group (Anycast static IPs)"),
    ("cloudfront:GetVpcOrigin", "no VPC origin yet (issue 15)"),
    ("cloudfront:UpdateDistributionWithStagingConfig", "no continuous deployment yet (issue 16)"),
    ("ec2:AttachVpnGateway", "the attachment is an internet gateway's, not a VPN gateway's"),
    ("firehose:TagDeliveryStream", "no log delivery to Firehose"),
    ("logs:CreateLogDelivery", "no log delivery"),
    ("s3:REST.PUT.OBJECT", "no log delivery to S3"),
    ("logs:*KmsKey", "no KmsKeyId on the log group (checkov CKV_AWS_158 skip says why)"),
    ("logs:*IndexPolicy", "no FieldIndexPolicies"),
    ("logs:*ResourcePolicy", "no ResourcePolicyDocument"),
    ("logs:PutDataProtectionPolicy", "no DataProtectionPolicy"),
    ("logs:PutBearerTokenAuthentication", "no BearerTokenAuthenticationEnabled"),
    ("logs:PutLogGroupDeletionProtection", "no DeletionProtectionEnabled"),
    ("s3:*BucketMetadata*", "no MetadataTableConfiguration"),
    ("s3tables:*", "no MetadataTableConfiguration (S3 Tables)"),
    ("s3:*Analytics*", "no AnalyticsConfigurations"),
    ("s3:*Metrics*", "no MetricsConfigurations"),
    ("s3:*Inventory*", "no InventoryConfigurations"),
    ("s3:*IntelligentTiering*", "no IntelligentTieringConfigurations"),
    ("s3:*Replication*", "no ReplicationConfiguration"),
    ("s3:*Accelerate*", "no AccelerateConfiguration"),
    ("s3:PutObjectLockConfiguration", "no ObjectLockConfiguration"),
    ("s3:DeleteBucketCors", "no CorsConfiguration"),
    ("s3:DeleteBucketWebsite", "no WebsiteConfiguration"),
    (
        "s3:*Object*",
        "object rights would let the stacks role rewrite the ledger; the bucket's create sets no "
        "feature that writes objects (unverified on AWS itself: check the first real create)",
    ),
]


def left_out(action: str) -> str | None:
    """Why `action` may be left out, if it may."""
    for pattern, why in NOT_NEEDED:
        if fnmatch.fnmatchcase(action.lower(), pattern.lower()):
            return why
    return None


def schema(type_name: str) -> dict:
    """The registry schema of a resource type, as cfn-lint bundles it."""
    index = json.loads((SCHEMAS / "providers" / f"{REGION}.json").read_text())
    if type_name not in index:
        sys.exit(f"cfn-lint has no registry schema for {type_name} in {REGION}: upgrade cfn-lint (scripts/checks-requirements.txt)")
    return json.loads((SCHEMAS / "resources" / f"{index[type_name]}.json").read_text())


def needed() -> dict[str, set[str]]:
    """Every action a handler of a resource in the stacks calls, with the handlers that call it
    (`Type:handler`)."""
    out: dict[str, set[str]] = {}
    for stack in STACKS:
        template, matches = decode(str(ROOT / "cloudformation" / f"{stack}.yaml"))
        if matches:
            sys.exit(f"{stack}.yaml does not parse: {matches}")
        for body in template.get("Resources", {}).values():
            t = body["Type"]
            handlers = schema(t).get("handlers", {})
            for h in ("create", "read", "update", "delete"):
                for action in handlers.get(h, {}).get("permissions", []):
                    out.setdefault(action, set()).add(f"{t}:{h}")
    return out


def allowed() -> list[str]:
    """The Allow actions of StacksRole's policies, denies left out (none deny today)."""
    template, matches = decode(str(ROOT / "cloudformation" / "ci-role.yaml"))
    if matches:
        sys.exit(f"ci-role.yaml does not parse: {matches}")
    role = template["Resources"]["StacksRole"]["Properties"]
    actions: list[str] = []
    for policy in role.get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if statement.get("Effect") != "Allow":
                continue
            a = statement.get("Action", [])
            actions.extend([a] if isinstance(a, str) else a)
    return actions


def main() -> None:
    rights = [a.lower() for a in allowed()]
    problems = []
    exempt = 0
    for action, users in sorted(needed().items()):
        if any(fnmatch.fnmatchcase(action.lower(), r) for r in rights):
            continue
        why = left_out(action)
        always = sorted(u for u in users if u.endswith((":read", ":delete")))
        if why is not None and not always:
            exempt += 1
            continue
        if why is not None:
            problems.append(f"{action} is left out ({why}) but {', '.join(always)} calls it: allow it")
        else:
            problems.append(f"StacksRole lacks {action} (called by {', '.join(sorted(users))})")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(f"{len(problems)} actions the stacks' resource handlers call are not allowed; add them to StacksRole")
    print(
        "StacksRole: every action the stacks' resource handlers call is allowed, "
        f"but {exempt} create/update-only ones for properties not set (NOT_NEEDED says why)"
    )


if __name__ == "__main__":
    main()
