"""The IAM policies in the stack templates cannot be used to escalate.

Fails on:
  - a CloudFormation stack ARN with a wildcard in the stack's name: a role that may create and
    execute change sets on `<app>-*` may deploy any template as any such stack, the stack that
    makes the release roles included (issue 15);
  - an Allow of iam:CreateRole, iam:AttachRolePolicy, iam:PutRolePolicy or
    iam:PutRolePermissionsBoundary (by name or wildcard) without a condition on
    iam:PermissionsBoundary: a role made or changed without the boundary can be given anything;
  - an Allow on `Resource: "*"` that is not in ALLOWED below with its reason, and an ALLOWED
    entry that no longer matches a statement (a stale exemption hides the next one).
Trust policies (AssumeRolePolicyDocument) are not judged here.

Run by scripts/check-templates with the checks venv: python scripts/check-policies.py
"""

from __future__ import annotations

import fnmatch
import pathlib
import re
import sys

from cfnlint.decode import decode

ROOT = pathlib.Path(__file__).resolve().parent.parent

# (template, resource, statement Sid or "*" for every statement of the resource): why a
# statement may name every resource.
ALLOWED = {
    ("ci-role.yaml", "StacksRole", "Network"): (
        "EC2 has no ARN for a VPC, subnet or gateway before it exists, and CloudFormation's "
        "handlers do not all tag on create; Describe* has no resource type"
    ),
    ("ci-role.yaml", "StacksRole", "SecretsKeyCreate"): (
        "kms:CreateKey has no resource before the key exists: conditioned on its release:app tag"
    ),
    ("ci-role.yaml", "StacksRole", "NeverWithoutTheBoundary"): "a Deny, not an Allow",
    ("ci-role.yaml", "ReleaseRights", "LoadBalancerLookup"): (
        "elasticloadbalancing:DescribeLoadBalancers, DescribeTargetGroups and DescribeTargetHealth "
        "support no resource-level permissions (IAM Service Authorization Reference); they only read"
    ),
    ("ci-role.yaml", "StacksRole", "EdgeVpcOriginLookups"): (
        "elasticloadbalancing:DescribeLoadBalancers supports no resource-level permissions; the "
        "VPC origin's CloudFormation handler calls it"
    ),
    ("ci-role.yaml", "ReleaseRights", "EnhancedScanFindings"): (
        "inspector2:ListFindings and ListCoverage are list actions with no resource type "
        "(IAM Service Authorization Reference); they only read, for image.scan_gate"
    ),
    ("ci-role.yaml", "ReleaseRights", "NoImports"): "a Deny, not an Allow",
    ("ci-role.yaml", "ReleaseRights", "BakeAlarms"): (
        "cloudwatch:DescribeAlarms returns composite alarms only when allowed on every resource "
        "(CloudWatch API Reference, DescribeAlarms); GetMetricData has no resource type (IAM "
        "Service Authorization Reference); both only read, for analysis.alarms and "
        "analysis.max_edge_error_rate"
    ),
    ("ci-role.yaml", "ReleaseRights", "RegistryLogin"): (
        "ecr:GetAuthorizationToken has no resource type (IAM Service Authorization Reference)"
    ),
    ("ci-role.yaml", "Boundary", "*"): (
        "a permissions boundary grants nothing: it caps the cluster's roles, whose own policies "
        "scope what they write"
    ),
    ("cluster.yaml", "LoadBalancerControllerPolicy", "*"): (
        "the AWS Load Balancer Controller's published policy (v3.5.0), as upstream: its writes on "
        "existing resources are conditioned on the elbv2.k8s.aws/cluster tag"
    ),
    ("cluster.yaml", "SecretsKey", "*"): (
        "a key policy's Resource is the key itself (KMS: \"*\" in a key policy means this key)"
    ),
}

ESCALATING = [
    "iam:CreateRole",
    "iam:AttachRolePolicy",
    "iam:PutRolePolicy",
    "iam:PutRolePermissionsBoundary",
]


def text(value) -> str:
    """A policy string as written: a plain string, or the template of an Fn::Sub."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub if isinstance(sub, str) else str(sub[0])
    return str(value)


def listed(value) -> list:
    return value if isinstance(value, list) else [value]


def documents(name: str, template: dict):
    """(resource, document) for every permission policy in the template."""
    for rid, res in (template.get("Resources") or {}).items():
        props = res.get("Properties") or {}
        kind = res.get("Type")
        if kind == "AWS::IAM::Role":
            for p in props.get("Policies") or []:
                yield rid, p.get("PolicyDocument") or {}
        elif kind == "AWS::IAM::ManagedPolicy":
            yield rid, props.get("PolicyDocument") or {}
        elif kind == "AWS::KMS::Key":
            yield rid, props.get("KeyPolicy") or {}


def check(files: list[pathlib.Path]) -> list[str]:
    problems = []
    used = set()
    for path in files:
        template, matches = decode(str(path))
        if template is None:
            problems.append(f"{path.name}: does not parse: {matches}")
            continue
        for rid, doc in documents(path.name, template):
            statements = listed(doc.get("Statement") or [])
            # A document that allows change sets must deny import ones: an import puts a
            # resource the app does not own under its stacks, in reach of the stacks role.
            creates = any(
                st.get("Effect") == "Allow"
                and any(
                    fnmatch.fnmatchcase("cloudformation:CreateChangeSet", text(a))
                    for a in listed(st.get("Action") or [])
                )
                for st in statements
            )
            denies_import = any(
                st.get("Effect") == "Deny"
                and any(
                    "cloudformation:ImportResourceTypes" in (keys or {})
                    for keys in (st.get("Condition") or {}).values()
                )
                for st in statements
            )
            if creates and not denies_import:
                problems.append(
                    f"{path.name} {rid}: allows cloudformation:CreateChangeSet without denying "
                    "import change sets (cloudformation:ImportResourceTypes)"
                )
            for st in statements:
                sid = st.get("Sid", "?")
                where = f"{path.name} {rid} {sid}"
                allow = st.get("Effect") == "Allow"
                actions = [text(a) for a in listed(st.get("Action") or [])]
                resources = [text(r) for r in listed(st.get("Resource") or [])]
                for r in resources:
                    if re.search(r":stack/[^/]*\*", r):
                        problems.append(f"{where}: a wildcard in a stack's name: {r}")
                condition = st.get("Condition") or {}
                bounded = any(
                    "iam:PermissionsBoundary" in (keys or {}) for keys in condition.values()
                )
                if allow and not bounded:
                    for a in actions:
                        hit = [e for e in ESCALATING if fnmatch.fnmatchcase(e, a)]
                        if hit:
                            problems.append(
                                f"{where}: {a} ({', '.join(hit)}) without an "
                                "iam:PermissionsBoundary condition"
                            )
                if "*" in resources:
                    key = next(
                        (k for k in [(path.name, rid, sid), (path.name, rid, "*")] if k in ALLOWED),
                        None,
                    )
                    if key is None:
                        problems.append(
                            f'{where}: Resource "*" is not in ALLOWED (scripts/check-policies.py); '
                            "scope it by ARN or tag, or add it with its reason"
                        )
                    else:
                        used.add(key)
    for key in sorted(set(ALLOWED) - used):
        problems.append(f"ALLOWED {key} matches no statement: remove it")
    return problems


# What the CI role could do before issue 15: change sets on any `<app>-*` stack, and a stacks
# role that makes and changes roles with no boundary. The check must find each.
ESCALATION = """
Resources:
  Ci:
    Type: AWS::IAM::Role
    Properties:
      AssumeRolePolicyDocument: {}
      Policies:
        - PolicyName: p
          PolicyDocument:
            Statement:
              - Sid: AppStacks
                Effect: Allow
                Action: [cloudformation:CreateChangeSet, cloudformation:ExecuteChangeSet]
                Resource: !Sub "arn:aws:cloudformation:r:1:stack/${AppName}-*/*"
              - Sid: Roles
                Effect: Allow
                Action: iam:Put*
                Resource: !Sub "arn:aws:iam::1:role/${AppName}-*"
              - Sid: Anything
                Effect: Allow
                Action: ec2:*
                Resource: "*"
"""


def self_test() -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "escalation.yaml"
        path.write_text(ESCALATION)
        found = [p for p in check([path]) if not p.startswith("ALLOWED")]
    wanted = ["a wildcard in a stack's name", "iam:PutRolePolicy", "iam:PutRolePermissionsBoundary", 'Resource "*"', "import change sets"]
    missed = [w for w in wanted if not any(w in p for p in found)]
    if missed:
        print(f"check-policies --self-test: missed {missed} in {found}", file=sys.stderr)
        return 1
    print(f"check-policies --self-test: the escalating template's {len(found)} problems found")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    files = sorted((ROOT / "cloudformation").glob("*.yaml"))
    problems = check(files)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} policy problems", file=sys.stderr)
        return 1
    print(
        f"policies: no stack-name wildcard, no role made or changed without the boundary, every "
        f'Resource "*" with its reason ({len(files)} templates)'
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
