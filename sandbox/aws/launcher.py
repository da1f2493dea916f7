"""The sandbox's AWS stand-in: moto's server plus what `release` needs that moto lacks.

Started by the `sandbox` binary (sandbox/src/main.rs), never by hand. It listens on 127.0.0.1 only
and prints one JSON line, {"aws_port": N, "edge_port": M}, once both servers accept connections.

On top of moto 5.2 (pinned in requirements.txt) it adds:
- CloudFormation models for AWS::EKS::Cluster, AWS::EKS::FargateProfile and
  AWS::CloudFront::Distribution, delegating to moto's own EKS and CloudFront backends;
- CloudFront: If-Match checked against a fresh ETag per change, InProgress -> Deployed after the
  propagation delay, and an edge proxy (the distribution's public URL) that follows the deployed origin
  (while a change propagates, each request meets the old or the new configuration);
- ECR: image digest = sha256 of the manifest bytes, layer bytes kept, GetDownloadUrlForLayer;
- EKS: a cluster's endpoint and CA are the sandbox cluster's;
- CloudFormation: a resource that fails leaves the stack in ROLLBACK_COMPLETE (or
  UPDATE_ROLLBACK_COMPLETE), with a *_FAILED event naming the resource and the reason;
- fault injection (throttling and 5xx answers per service), off unless asked for.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import fnmatch
import hashlib
import http.client
import ipaddress
import itertools
import json
import os
import random
import re
import sys
import tarfile
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from werkzeug.serving import make_server

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.core.common_models import CloudFormationModel
from moto.core.exceptions import ServiceException
from moto.cloudformation import models as cfn_models
from moto.cloudformation import parsing as cfn_parsing
from moto.cloudformation.exceptions import UnformattedGetAttTemplateException
from moto.cloudformation.exceptions import ValidationError as CfnValidationError
from moto.cloudfront import models as cf_models
from moto.cloudfront.models import cloudfront_backends
from moto.ecr import models as ecr_models
import moto.core as moto_core
from moto.iam import models as iam_models
from moto.ecr import responses as ecr_responses
from moto.eks import models as eks_models
from moto.eks.models import eks_backends
from moto.elbv2.models import elbv2_backends
from moto.core.responses import ActionResult

CONFIG: dict[str, Any] = {
    "cluster_endpoint": "https://127.0.0.1:1",
    "cluster_ca_b64": "",
    "edge_delay": 0.0,
    "layer_dir": "/nonexistent",
    "aws_url": "http://127.0.0.1:1",
}

# ---------------------------------------------------------------------------------------------
# CloudFormation property shapes -> API shapes


def cfn_tags_to_dict(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}


def camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def camel_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {camel(k): camel_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camel_keys(v) for v in value]
    return value


# CloudFormation writes CloudFront lists as plain lists; the API wraps them in {Quantity, Items}.
# Some names differ too (left: CloudFormation, right: API).
CF_RENAMES = {
    "OriginCustomHeaders": "CustomHeaders",
    "OriginSSLProtocols": "OriginSslProtocols",
    "IPV6Enabled": "IsIPV6Enabled",
}
CF_WRAPPED = {
    "Aliases",
    "Origins",
    "CustomHeaders",
    "OriginSslProtocols",
    "AllowedMethods",
    "CachedMethods",
    "Headers",
    "CacheBehaviors",
    "CustomErrorResponses",
    "QueryStringCacheKeys",
    "WhitelistedNames",
    "LambdaFunctionAssociations",
    "FunctionAssociations",
    "TrustedSigners",
    "TrustedKeyGroups",
    "Locations",
}


def cf_config_from_cfn(value: Any, key: str | None = None) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = CF_RENAMES.get(k, k)
            out[name] = cf_config_from_cfn(v, name)
        # CachedMethods sits inside AllowedMethods in the API.
        if key == "DefaultCacheBehavior" or key == "CacheBehaviors":
            if "CachedMethods" in out and "AllowedMethods" in out:
                out["AllowedMethods"]["CachedMethods"] = out.pop("CachedMethods")
        if key == "CustomOriginConfig":
            # CloudFormation's defaults; the API requires all of them.
            out.setdefault("HTTPPort", 80)
            out.setdefault("HTTPSPort", 443)
            out.setdefault("OriginSslProtocols", {"Quantity": 2, "Items": ["TLSv1", "SSLv3"]})
        if "GeoRestriction" in out and "Locations" in out["GeoRestriction"]:
            geo = out["GeoRestriction"]
            geo.update(geo.pop("Locations"))
        return out
    if isinstance(value, list):
        items = [cf_config_from_cfn(v, key if key == "CacheBehaviors" else None) for v in value]
        if key in CF_WRAPPED:
            return {"Quantity": len(items), "Items": items}
        return items
    return value


# ---------------------------------------------------------------------------------------------
# AWS::EKS::Cluster


def sandbox_cluster_fields(cluster: Any) -> None:
    cluster.endpoint = CONFIG["cluster_endpoint"]
    cluster.certificate_authority = {"data": CONFIG["cluster_ca_b64"]}


_original_create_cluster = eks_models.EKSBackend.create_cluster


def create_cluster(self: Any, *args: Any, **kwargs: Any) -> Any:
    cluster = _original_create_cluster(self, *args, **kwargs)
    sandbox_cluster_fields(cluster)
    return cluster


eks_models.EKSBackend.create_cluster = create_cluster  # type: ignore[method-assign]

# Properties whose change makes CloudFormation replace the resource rather than update it.
EKS_CLUSTER_REPLACE = ("Name", "RoleArn", "EncryptionConfig", "KubernetesNetworkConfig")


def control_plane_log_group(account_id: str, region: str, cluster: str, logging: Any) -> None:
    """A cluster with control-plane logging writes to /aws/eks/<cluster>/cluster, and EKS makes
    that group itself when it is missing (no retention, in no stack: it outlives the cluster); an
    existing group is used as it is (EKS User Guide, "Send control plane logs to CloudWatch Logs")."""
    from moto.logs.models import logs_backends

    if not (logging or {}).get("ClusterLogging", {}).get("EnabledTypes"):
        return
    logs = logs_backends[account_id][region]
    name = f"/aws/eks/{cluster}/cluster"
    if name not in logs.groups:
        logs.create_log_group(name, tags={})


class EksCluster(CloudFormationModel):
    # moto files models by the service named in the module path.
    __module__ = "moto.eks.sandbox"

    def __init__(self, name: str, account_id: str, region: str):
        self.name = name
        self.account_id = account_id
        self.region = region

    @property
    def cluster(self) -> Any:
        return eks_backends[self.account_id][self.region].describe_cluster(self.name)

    @property
    def physical_resource_id(self) -> str:
        return self.name

    @staticmethod
    def cloudformation_name_type() -> str:
        return "Name"

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::EKS::Cluster"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in (
            "Arn",
            "Endpoint",
            "CertificateAuthorityData",
            "OpenIdConnectIssuerUrl",
            "ClusterSecurityGroupId",
        )

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        c = self.cluster
        if attribute_name == "Arn":
            return c.arn
        if attribute_name == "Endpoint":
            return c.endpoint
        if attribute_name == "CertificateAuthorityData":
            return c.certificate_authority["data"]
        if attribute_name == "OpenIdConnectIssuerUrl":
            return c.identity["oidc"]["issuer"]
        if attribute_name == "ClusterSecurityGroupId":
            return f"sg-{hashlib.sha256(c.arn.encode()).hexdigest()[:17]}"
        raise UnformattedGetAttTemplateException()

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> "EksCluster":
        p = cloudformation_json["Properties"]
        eks_backends[account_id][region_name].create_cluster(
            name=resource_name,
            role_arn=p["RoleArn"],
            resources_vpc_config=camel_keys(p.get("ResourcesVpcConfig", {})),
            version=p.get("Version"),
            kubernetes_network_config=camel_keys(p.get("KubernetesNetworkConfig")),
            logging=camel_keys(p.get("Logging")),
            tags=cfn_tags_to_dict(p.get("Tags")),
            encryption_config=camel_keys(p.get("EncryptionConfig")),
        )
        control_plane_log_group(account_id, region_name, resource_name, p.get("Logging"))
        return cls(resource_name, account_id, region_name)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[override]
        cls, original_resource: Any, new_resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> "EksCluster":
        p = cloudformation_json["Properties"]
        c = original_resource.cluster
        old_subnets = (c.resources_vpc_config or {}).get("subnetIds")
        new_vpc = camel_keys(p.get("ResourcesVpcConfig", {}))
        replace = (
            new_resource_name != original_resource.name
            or p.get("RoleArn") != c.role_arn
            or new_vpc.get("subnetIds") != old_subnets
            or camel_keys(p.get("EncryptionConfig")) not in (None, c.encryption_config)
        )
        if replace:
            original_resource.delete(account_id, region_name)
            return cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)
        if p.get("Version"):
            c.version = p["Version"]
        if p.get("Logging"):
            c.logging = camel_keys(p["Logging"])
        c.resources_vpc_config = new_vpc
        c.tags = cfn_tags_to_dict(p.get("Tags"))
        return original_resource

    def delete(self, account_id: str, region_name: str) -> None:
        backend = eks_backends[account_id][region_name]
        if self.name in backend.clusters:
            backend.delete_cluster(self.name)

    @classmethod
    def delete_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> None:
        cls(resource_name, account_id, region_name).delete(account_id, region_name)




# ---------------------------------------------------------------------------------------------
# AWS::EKS::FargateProfile


class EksFargateProfile(CloudFormationModel):
    # moto files models by the service named in the module path.
    __module__ = "moto.eks.sandbox"

    def __init__(self, cluster_name: str, name: str, arn: str):
        self.cluster_name = cluster_name
        self.name = name
        self.arn = arn

    @property
    def physical_resource_id(self) -> str:
        return f"{self.cluster_name}|{self.name}"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "FargateProfileName"

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::EKS::FargateProfile"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr == "Arn"

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        if attribute_name == "Arn":
            return self.arn
        raise UnformattedGetAttTemplateException()

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> "EksFargateProfile":
        p = cloudformation_json["Properties"]
        selectors = [
            {"namespace": s["Namespace"], **({"labels": cfn_tags_to_dict(s["Labels"])} if s.get("Labels") else {})}
            for s in p.get("Selectors", [])
        ]
        profile = eks_backends[account_id][region_name].create_fargate_profile(
            fargate_profile_name=resource_name,
            cluster_name=p["ClusterName"],
            selectors=selectors,
            pod_execution_role_arn=p["PodExecutionRoleArn"],
            subnets=p.get("Subnets"),
            client_request_token=None,
            tags=cfn_tags_to_dict(p.get("Tags")),
        )
        return cls(p["ClusterName"], resource_name, profile.fargate_profile_arn)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[override]
        cls, original_resource: Any, new_resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> "EksFargateProfile":
        # Every property but Tags needs replacement, as in AWS.
        original_resource.delete(account_id, region_name)
        return cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)

    def delete(self, account_id: str, region_name: str) -> None:
        backend = eks_backends[account_id][region_name]
        cluster = backend.clusters.get(self.cluster_name)
        if cluster is not None and self.name in cluster.fargate_profiles:
            backend.delete_fargate_profile(cluster_name=self.cluster_name, fargate_profile_name=self.name)




# ---------------------------------------------------------------------------------------------
# AWS::EKS::Addon (moto has no add-ons). The cluster stand-in reads them (GET /_sandbox/eks/addons)
# and configures kube-system as EKS does: CoreDNS with computeType Fargate loses the annotation
# that keeps it off Fargate.

# (account, region, cluster, add-on name) -> its ConfigurationValues (a JSON string, or "").
ADDONS: dict[tuple[str, str, str, str], str] = {}


class EksAddon(CloudFormationModel):
    __module__ = "moto.eks.sandbox"

    def __init__(self, account: str, region: str, cluster_name: str, name: str):
        self.key = (account, region, cluster_name, name)
        self.arn = f"arn:aws:eks:{region}:{account}:addon/{cluster_name}/{name}/sandbox"

    @property
    def physical_resource_id(self) -> str:
        return f"{self.key[2]}|{self.key[3]}"

    @staticmethod
    def cloudformation_name_type() -> str:
        return "AddonName"

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::EKS::Addon"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr == "Arn"

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        if attribute_name == "Arn":
            return self.arn
        raise UnformattedGetAttTemplateException()

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> "EksAddon":
        p = cloudformation_json["Properties"]
        cluster = p["ClusterName"]
        if cluster not in eks_backends[account_id][region_name].clusters:
            raise ValueError(f"ResourceNotFoundException: No cluster found for name: {cluster}.")
        values = p.get("ConfigurationValues") or ""
        if values:
            try:
                json.loads(values)
            except ValueError as e:
                raise ValueError(f"InvalidParameterException: ConfigurationValue provided in request is not supported: {e}") from e
        addon = cls(account_id, region_name, cluster, p["AddonName"])
        ADDONS[addon.key] = values
        return addon

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[override]
        cls, original_resource: Any, new_resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> "EksAddon":
        original_resource.delete(account_id, region_name)
        return cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)

    def delete(self, account_id: str, region_name: str) -> None:
        ADDONS.pop(self.key, None)


class IamOidcProvider(CloudFormationModel):
    """AWS::IAM::OIDCProvider, which moto's CloudFormation lacks (it made nothing, so no role
    could trust the cluster's issuer). Ref is the provider's ARN, as in AWS."""

    __module__ = "moto.iam.sandbox"

    def __init__(self, account: str, arn: str):
        self.account = account
        self.arn = arn

    @property
    def physical_resource_id(self) -> str:
        return self.arn

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::IAM::OIDCProvider"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr == "Arn"

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        if attribute_name == "Arn":
            return self.arn
        raise UnformattedGetAttTemplateException()

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> "IamOidcProvider":
        from moto.iam.models import iam_backends

        p = cloudformation_json["Properties"]
        provider = iam_backends[account_id]["aws"].create_open_id_connect_provider(
            url=p["Url"], thumbprint_list=p.get("ThumbprintList") or [], client_id_list=p.get("ClientIdList") or [], tags=p.get("Tags") or []
        )
        return cls(account_id, provider.arn)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[override]
        cls, original_resource: Any, new_resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> "IamOidcProvider":
        original_resource.delete(account_id, region_name)
        return cls.create_from_cloudformation_json(new_resource_name, cloudformation_json, account_id, region_name)

    def delete(self, account_id: str, region_name: str) -> None:
        from moto.iam.models import iam_backends

        iam_backends[self.account]["aws"].delete_open_id_connect_provider(self.arn)


def managed_policy_delete(self: Any, account_id: str, region_name: str) -> None:
    """Deleting an AWS::IAM::ManagedPolicy with its stack: CloudFormation detaches it from the
    roles, users and groups it is attached to, then deletes it (IAM's DeletePolicy refuses an
    attached policy: "you must first detach the policy from all users, groups, and roles"); the
    policy's `Roles: [!Ref Role]` makes it depend on the role, so it goes first. moto had no delete
    for it: the policy stayed attached, and deleting its role then failed with DeleteConflict."""
    from moto.iam.models import iam_backends

    backend = iam_backends[account_id]["aws"]
    for entity in [*backend.roles.values(), *backend.users.values(), *backend.groups.values()]:
        if self.arn in entity.managed_policies:
            self.detach_from(entity)
    backend.managed_policies.pop(self.arn, None)


iam_models.ManagedPolicy.delete = managed_policy_delete  # type: ignore[attr-defined]


_create_role = iam_models.IAMBackend.create_role


def create_role_within_an_existing_boundary(
    self: Any, role_name: str, assume_role_policy_document: str, path: str,
    permissions_boundary: str | None, *args: Any, **kwargs: Any,
) -> Any:
    """IAM refuses a role whose permissions boundary names no policy (CreateRole:
    "NoSuchEntity: Scope ARN ... does not exist or is not attachable"; IAM API Reference,
    CreateRole, PermissionsBoundary); moto checked only the ARN's form, so a stack naming a
    boundary nobody made created its roles anyway."""
    from moto.iam.exceptions import NoSuchEntity

    known = permissions_boundary in self.managed_policies or any(
        p.arn == permissions_boundary for p in self.aws_managed_policies
    )
    if permissions_boundary and not known:
        raise NoSuchEntity(
            f"Scope ARN: {permissions_boundary} does not exist or is not attachable."
        )
    return _create_role(
        self, role_name, assume_role_policy_document, path, permissions_boundary, *args, **kwargs
    )


iam_models.IAMBackend.create_role = create_role_within_an_existing_boundary  # type: ignore[method-assign]


from moto.kms import models as kms_models  # noqa: E402

_kms_key_from_cfn = kms_models.Key.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]


def kms_key_from_cfn(cls: Any, resource_name: str, cloudformation_json: Any, *args: Any, **kwargs: Any) -> Any:
    """An AWS::KMS::Key's Tags are `Key`/`Value` in CloudFormation (its resource schema), as for
    every other type; KMS's own API calls them `TagKey`/`TagValue`. moto passed the template's
    tags to KMS as they were, and failed on the first with KeyError 'TagKey'."""
    props = cloudformation_json.get("Properties") or {}
    if props.get("Tags"):
        props = {
            **props,
            "Tags": [
                {"TagKey": t.get("Key", t.get("TagKey")), "TagValue": t.get("Value", t.get("TagValue"))}
                for t in props["Tags"]
            ],
        }
        cloudformation_json = {**cloudformation_json, "Properties": props}
    return _kms_key_from_cfn(cls, resource_name, cloudformation_json, *args, **kwargs)


kms_models.Key.create_from_cloudformation_json = classmethod(kms_key_from_cfn)  # type: ignore[method-assign]


_ecr_repo_from_cfn = ecr_models.Repository.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]
_ecr_repo_update_from_cfn = ecr_models.Repository.update_from_cloudformation_json.__func__  # type: ignore[attr-defined]


def ecr_policy_of(cloudformation_json: Any) -> str | None:
    policy = ((cloudformation_json.get("Properties") or {}).get("LifecyclePolicy") or {}).get("LifecyclePolicyText")
    if policy is not None:
        ecr_models.EcrLifecyclePolicyValidator(policy).validate()
    return policy


def ecr_repo_from_cfn(cls: Any, resource_name: str, cloudformation_json: Any, *args: Any, **kwargs: Any) -> Any:
    """An AWS::ECR::Repository's LifecyclePolicy is the repository's lifecycle policy, as in AWS;
    moto dropped it."""
    repo = _ecr_repo_from_cfn(cls, resource_name, cloudformation_json, *args, **kwargs)
    repo.lifecycle_policy = ecr_policy_of(cloudformation_json)
    return repo


def ecr_repo_update_from_cfn(cls: Any, original: Any, new_name: str, cloudformation_json: Any, *args: Any, **kwargs: Any) -> Any:
    repo = _ecr_repo_update_from_cfn(cls, original, new_name, cloudformation_json, *args, **kwargs)
    repo.lifecycle_policy = ecr_policy_of(cloudformation_json)
    return repo


ecr_models.Repository.create_from_cloudformation_json = classmethod(ecr_repo_from_cfn)  # type: ignore[method-assign]
ecr_models.Repository.update_from_cloudformation_json = classmethod(ecr_repo_update_from_cfn)  # type: ignore[method-assign]


def ecr_lifecycle(account: str, region: str, repository: str, days_later: float) -> list[str]:
    """Expire what `repository`'s lifecycle policy expires `days_later` days from now, as ECR's
    daily evaluation does (ECR User Guide, "Lifecycle policy evaluation rules"): rules in
    priority order; an image that matches a rule's tag selection cannot be expired by a rule of
    lower priority, though later rules still count it; imageCountMoreThan keeps the newest by
    push time, sinceImagePushed expires the older; `tagPrefixList` matches an image when each
    prefix starts one of its tags. moto stores the policy and never applies it. Returns the
    expired digests."""
    repo = ecr_models.ecr_backends[account][region].repositories[repository]
    policy = json.loads(repo.lifecycle_policy or '{"rules": []}')
    now = time.time() + days_later * 86400
    taken: set[int] = set()
    doomed: list[Any] = []
    for rule in sorted(policy["rules"], key=lambda r: r["rulePriority"]):
        sel = rule["selection"]

        def selects(img: Any) -> bool:
            if sel["tagStatus"] == "untagged":
                return not img.image_tags
            if sel["tagStatus"] == "tagged":
                return bool(img.image_tags) and all(any(t.startswith(p) for t in img.image_tags) for p in sel.get("tagPrefixList", []))
            return True

        chosen = sorted((img for img in repo.images if selects(img)), key=lambda img: img.image_pushed_at, reverse=True)
        if sel["countType"] == "imageCountMoreThan":
            over = chosen[sel["countNumber"] :]
        else:
            over = [img for img in chosen if now - img.image_pushed_at > sel["countNumber"] * 86400]
        doomed.extend(img for img in over if id(img) not in taken and img not in doomed)
        taken.update(id(img) for img in chosen)
    for img in doomed:
        repo.images.remove(img)
    return [img.get_image_digest() for img in doomed]


# What the sandbox's vulnerability database knows of each repository's images (a test's to set,
# through /_sandbox/ecr/findings): severity counts by (account, region, repository, digest or "*").
SCAN_FINDINGS: dict[tuple[str, str, str, str], dict[str, int]] = {}
# Seconds a scan stays IN_PROGRESS after the push (ECR: "usually completes within minutes").
SCAN_SECONDS = 1.0
# What basic scanning reads: an operating system's package database (ECR User Guide, "Scan
# images for OS vulnerabilities": basic scanning covers OS packages only).
OS_PACKAGE_DATABASES = ("var/lib/dpkg/status", "lib/apk/db/installed", "var/lib/rpm/", "usr/lib/sysimage/rpm/")


def has_os_packages(image: Any) -> bool:
    """Whether one of the image's layers holds an OS package database."""
    manifest = json.loads(image.image_manifest)
    for layer in manifest.get("layers", []):
        path = os.path.join(CONFIG["layer_dir"], layer["digest"].replace(":", "-"))
        try:
            with tarfile.open(path, "r:*") as tar:
                for name in tar.getnames():
                    name = name.lstrip("./")
                    if any(name == db or (db.endswith("/") and name.startswith(db)) for db in OS_PACKAGE_DATABASES):
                        return True
        except (OSError, tarfile.TarError):
            continue
    return False


def describe_image_scan_findings(self: Any, registry_id: str, repository_name: str, image_id: dict[str, Any]) -> dict[str, Any]:
    """ECR's scan of an image, as ECR reports it (API reference, DescribeImageScanFindings and
    ImageScanStatus), where moto answers every image with one fake HIGH finding: no scan unless
    the repository scans on push or the registry's scanning is enhanced (ScanNotFoundException);
    IN_PROGRESS for a moment after the push; basic scanning answers an image without an OS
    package database UNSUPPORTED_IMAGE, and COMPLETE otherwise; enhanced scanning (Amazon
    Inspector, which also reads programming-language packages) ACTIVE. The findings are what the
    sandbox's vulnerability database holds for the image (none unless a test says otherwise)."""
    repo = self._get_repository(repository_name, registry_id)
    image = repo._get_image(image_id.get("imageTag"), image_id.get("imageDigest"))
    config = repo.image_scanning_configuration or {}
    on_push = bool(config.get("scanOnPush") or config.get("ScanOnPush"))
    enhanced = self.registry_scanning_configuration.get("scanType") == "ENHANCED"
    digest = image.get_image_digest()
    if not (on_push or enhanced):
        raise ecr_models.ScanNotFoundException(
            image_id=f"{{imageDigest:'{digest}', imageTag:'null'}}",
            repository_name=repository_name,
            registry_id=repo.registry_id,
        )
    out: dict[str, Any] = {
        "registryId": repo.registry_id,
        "repositoryName": repository_name,
        "imageId": {"imageDigest": digest},
    }
    if time.time() - float(image.image_pushed_at) < SCAN_SECONDS:
        out["imageScanStatus"] = {"status": "PENDING" if enhanced else "IN_PROGRESS", "description": "The scan is in progress."}
        return out
    if not enhanced and not has_os_packages(image):
        out["imageScanStatus"] = {
            "status": "UNSUPPORTED_IMAGE",
            "description": "UnsupportedImageError: The operating system and/or package manager are not supported.",
        }
        return out
    key = (repo.registry_id, self.region_name, repository_name)
    counts = SCAN_FINDINGS.get((*key, digest), SCAN_FINDINGS.get((*key, "*"), {}))
    out["imageScanStatus"] = (
        {"status": "ACTIVE", "description": "Continuous scan is selected for image."}
        if enhanced
        else {"status": "COMPLETE", "description": "The scan was completed successfully."}
    )
    out["imageScanFindings"] = {"findingSeverityCounts": dict(counts), "findings": [], "enhancedFindings": []}
    return out


ecr_models.ECRBackend.describe_image_scan_findings = describe_image_scan_findings  # type: ignore[method-assign]


def lb_controller_check(query: dict[str, str]) -> dict[str, Any]:
    """What the AWS Load Balancer Controller meets when it starts with this role, service-account
    subject and VPC (`start`: why it cannot, or None) and when it makes a load balancer
    (`reconcile`). The role must trust an OIDC provider that exists for that subject
    (sts:AssumeRoleWithWebIdentity) and allow elasticloadbalancing:CreateLoadBalancer."""

    from moto.iam.models import iam_backends

    role_arn, sub, vpc_id = query.get("role", ""), query.get("sub", ""), query.get("vpc", "")
    denied = f"WebIdentityErr: failed to retrieve credentials\ncaused by: AccessDenied: Not authorized to perform sts:AssumeRoleWithWebIdentity ({role_arn or 'no role'})"
    account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else ""
    iam = iam_backends[account]["aws"] if account else None
    role = next((r for r in iam.roles.values() if r.arn == role_arn), None) if iam else None
    if role is None:
        return {"start": denied, "reconcile": None}
    try:
        trust = json.loads(role.assume_role_policy_document)
    except (TypeError, ValueError):
        return {"start": denied, "reconcile": None}
    providers = {p.arn for p in iam.open_id_providers.values()}
    trusted = False
    for st in trust.get("Statement", []):
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        federated = (st.get("Principal") or {}).get("Federated", "")
        if st.get("Effect") != "Allow" or "sts:AssumeRoleWithWebIdentity" not in actions or federated not in providers:
            continue
        issuer = federated.split(":oidc-provider/", 1)[-1]
        for op, conditions in (st.get("Condition") or {}).items():
            want = conditions.get(f"{issuer}:sub")
            if want is not None:
                wants = [want] if isinstance(want, str) else want
                if any(w == sub or (op == "StringLike" and fnmatch.fnmatchcase(sub, w)) for w in wants):
                    trusted = True
    if not trusted:
        return {"start": denied, "reconcile": None}
    region = query.get("region", "")
    vpcs = ec2_backends[account][region].vpcs if region else {}
    if vpc_id not in vpcs:
        return {"start": f"unable to initialize AWS cloud: failed to find VPC {vpc_id!r} in {region or 'no region'}: InvalidVpcID.NotFound", "reconcile": None}
    documents: list[Any] = list(role.policies.values())
    for managed in role.managed_policies.values():
        documents += [v.document for v in managed.versions if v.is_default]
    allowed = False
    for doc in documents:
        try:
            parsed = json.loads(doc) if isinstance(doc, str) else doc
        except ValueError:
            continue
        for st in parsed.get("Statement", []):
            actions = st.get("Action", [])
            actions = [actions] if isinstance(actions, str) else actions
            if st.get("Effect") == "Allow" and any(fnmatch.fnmatchcase("elasticloadbalancing:CreateLoadBalancer", a) for a in actions):
                allowed = True
    reconcile = None if allowed else (
        f"AccessDenied: User: {role_arn} is not authorized to perform: elasticloadbalancing:CreateLoadBalancer"
    )
    return {"start": None, "reconcile": reconcile}


# ---------------------------------------------------------------------------------------------
# AWS::CloudFront::Distribution, If-Match/ETag, deployment delay and the edge


def now() -> float:
    return time.monotonic()


def origin_snapshot(dist: Any) -> dict[str, Any]:
    config = dist.distribution_config
    origins = {}
    for o in config.Origins["Items"]:
        custom = getattr(o, "custom_origin_config", None)
        origins[o.id] = {
            "vpc_origin": (getattr(o, "vpc_origin_config", None) or {}).get("VpcOriginId"),
            "domain": o.domain_name,
            "path": o.origin_path or "",
            "http_port": int(custom.http_port or 80) if custom else 80,
            "headers": [(h["HeaderName"], h["HeaderValue"]) for h in (o.custom_headers.get("Items") or [])],
        }
    target = config.DefaultCacheBehavior.target_origin_id
    return {
        "origin": origins.get(target),
        "enabled": bool(config.Enabled),
        "staging": is_staging(config),
        "policy": getattr(config, "ContinuousDeploymentPolicyId", "") or "",
    }


def record_version(dist: Any) -> None:
    dist.etag = cf_models.random_id()
    versions = getattr(dist, "_sandbox_versions", [])
    versions.append((now(), origin_snapshot(dist)))
    dist._sandbox_versions = versions[-8:]


def deployed_version(versions: list[tuple[float, dict[str, Any]]]) -> dict[str, Any] | None:
    """The newest version older than the edge delay: what every edge location has."""
    ready = [v for (t, v) in versions if now() - t >= CONFIG["edge_delay"]]
    return ready[-1] if ready else None


def deployed_snapshot(dist: Any) -> dict[str, Any] | None:
    return deployed_version(getattr(dist, "_sandbox_versions", []))


def serving_version(versions: list[tuple[float, dict[str, Any]]]) -> dict[str, Any] | None:
    """Of a configuration's versions (time of the change, the configuration), the one a request
    through the edge meets. While a change propagates (InProgress) it is the deployed one or the
    new one, at random: CloudFront's edge locations take a change at different times and serve
    the previous configuration until they have it (CloudFront Developer Guide, "Update a
    distribution"). So an origin flip sends some requests to each colour for a while, and a
    changed origin header arrives with either value."""
    deployed = deployed_version(versions)
    if deployed is None or now() - versions[-1][0] >= CONFIG["edge_delay"]:
        return deployed
    return random.choice([deployed, versions[-1][1]])


def serving_snapshot(dist: Any) -> dict[str, Any] | None:
    """The distribution's configuration one request meets."""
    return serving_version(getattr(dist, "_sandbox_versions", []))


def dist_status(self: Any) -> str:
    versions = getattr(self, "_sandbox_versions", [])
    if versions and now() - versions[-1][0] < CONFIG["edge_delay"]:
        return "InProgress"
    return "Deployed"


cf_models.Distribution.status = property(dist_status, lambda self, value: None)  # type: ignore[assignment]


class PreconditionFailed(ServiceException):
    # moto serialises an error with the model of the service its module names.
    __module__ = "moto.cloudfront.exceptions"
    code = "PreconditionFailed"
    message = "The precondition given in one or more of the request-header fields evaluated to false."


_original_create_dist = cf_models.CloudFrontBackend.create_distribution_with_tags
_original_update_dist = cf_models.CloudFrontBackend.update_distribution
_original_delete_dist = cf_models.CloudFrontBackend.delete_distribution


def create_distribution_with_tags(self: Any, config: Any, tags: Any) -> Any:
    check_distribution_config(config, None)
    dist, location, _ = _original_create_dist(self, config, tags)
    record_version(dist)
    return dist, location, dist.etag


def check_if_match(self: Any, dist_id: str, if_match: Any) -> None:
    dist = self.distributions.get(dist_id)
    if dist is not None and if_match and if_match != dist.etag:
        raise PreconditionFailed()


def update_distribution(self: Any, dist_config: Any, _id: str, if_match: Any) -> Any:
    check_if_match(self, _id, if_match)
    check_distribution_config(dist_config, _id)
    held = self.distributions.get(_id)
    if held is not None and is_staging(held.distribution_config) != is_staging(dist_config):
        raise CloudFrontError("IllegalUpdate", "a distribution's Staging cannot be changed")
    dist, location, _ = _original_update_dist(self, dist_config, _id, if_match)
    record_version(dist)
    return dist, location, dist.etag


def delete_distribution(self: Any, distribution_id: str, if_match: Any) -> None:
    check_if_match(self, distribution_id, if_match)
    dist = self.distributions.get(distribution_id)
    policy = staging_in_use(dist) if dist is not None else None
    if policy is not None:
        raise CloudFrontError("StagingDistributionInUse", f"the staging distribution {distribution_id} is used by the continuous deployment policy {policy}; update the policy first")
    _original_delete_dist(self, distribution_id, if_match)


cf_models.CloudFrontBackend.create_distribution_with_tags = create_distribution_with_tags  # type: ignore[method-assign]
cf_models.CloudFrontBackend.update_distribution = update_distribution  # type: ignore[method-assign]
cf_models.CloudFrontBackend.delete_distribution = delete_distribution  # type: ignore[method-assign]


def all_distributions() -> list[Any]:
    found = []
    for account_backends in list(cloudfront_backends.values()):
        for backend in list(account_backends.values()):
            found.extend(backend.distributions.values())
    return found


class CloudFrontDistribution(CloudFormationModel):
    # moto files models by the service named in the module path.
    __module__ = "moto.cloudfront.sandbox"

    def __init__(self, dist_id: str, account_id: str):
        self.dist_id = dist_id
        self.account_id = account_id

    @staticmethod
    def backend(account_id: str) -> Any:
        return cloudfront_backends[account_id]["aws"]

    @property
    def physical_resource_id(self) -> str:
        return self.dist_id

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::CloudFront::Distribution"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in ("Id", "DomainName")

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        dist = self.backend(self.account_id).distributions[self.dist_id]
        if attribute_name == "Id":
            return dist.distribution_id
        if attribute_name == "DomainName":
            return dist.domain_name
        raise UnformattedGetAttTemplateException()

    @staticmethod
    def api_config(properties: dict[str, Any], caller_reference: str) -> dict[str, Any]:
        config = cf_config_from_cfn(properties["DistributionConfig"])
        config["CallerReference"] = caller_reference
        config.setdefault("Comment", "")
        return config

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> "CloudFrontDistribution":
        p = cloudformation_json["Properties"]
        config = cls.api_config(p, str(uuid.uuid4()))
        tags = p.get("Tags") or []
        dist, _, _ = cls.backend(account_id).create_distribution(config, tags)
        return cls(dist.distribution_id, account_id)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[override]
        cls, original_resource: Any, new_resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> "CloudFrontDistribution":
        backend = cls.backend(account_id)
        dist = backend.distributions[original_resource.dist_id]
        config = cls.api_config(cloudformation_json["Properties"], dist.distribution_config.caller_reference)
        backend.update_distribution(config, dist.distribution_id, dist.etag)
        return original_resource

    def delete(self, account_id: str, region_name: str) -> None:
        backend = self.backend(account_id)
        dist = backend.distributions.get(self.dist_id)
        if dist is not None:
            backend.delete_distribution(self.dist_id, dist.etag)


# CloudFront VPC origins (moto has none): an origin reached from inside a VPC, through network
# interfaces CloudFront puts there, to a load balancer named by its ARN; the distribution's origin
# names it in VpcOriginConfig. A VPC origin that a distribution uses cannot be updated or deleted
# (409 CannotUpdateEntityWhileInUse / CannotDeleteEntityWhileInUse: UpdateVpcOrigin and
# DeleteVpcOrigin in the CloudFront API reference), so each origin a distribution may switch to
# needs its own.
VPC_ORIGINS: dict[str, dict[str, Any]] = {}
_original_origin_init = cf_models.Origin.__init__


def origin_init(self: Any, origin: dict[str, Any]) -> None:
    _original_origin_init(self, origin)
    config = origin.get("VpcOriginConfig")
    self.vpc_origin_config = dict(config) if config else None


cf_models.Origin.__init__ = origin_init  # type: ignore[method-assign]


class CannotChangeEntityWhileInUse(Exception):
    pass


def vpc_origin_in_use(vpc_origin_id: str) -> list[str]:
    """The distributions whose origins name this VPC origin."""
    users = []
    for dist in all_distributions():
        for o in dist.distribution_config.Origins["Items"]:
            if (getattr(o, "vpc_origin_config", None) or {}).get("VpcOriginId") == vpc_origin_id:
                users.append(dist.distribution_id)
    return users


class CloudFrontVpcOrigin(CloudFormationModel):
    __module__ = "moto.cloudfront.sandbox"

    def __init__(self, vpc_origin_id: str, account_id: str):
        self.vpc_origin_id = vpc_origin_id
        self.account_id = account_id

    @property
    def physical_resource_id(self) -> str:
        return self.vpc_origin_id

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::CloudFront::VpcOrigin"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in ("Id", "Arn", "Status")

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        held = VPC_ORIGINS[self.vpc_origin_id]
        if attribute_name == "Id":
            return self.vpc_origin_id
        if attribute_name == "Arn":
            return held["arn"]
        if attribute_name == "Status":
            return vpc_origin_status(held)
        raise UnformattedGetAttTemplateException()

    @staticmethod
    def endpoint(cloudformation_json: Any) -> dict[str, Any]:
        config = dict(cloudformation_json["Properties"]["VpcOriginEndpointConfig"])
        for key in ("Name", "Arn"):
            if not config.get(key):
                raise ValueError(f"VpcOriginEndpointConfig.{key} is required")
        if ":loadbalancer/" not in config["Arn"] and ":instance/" not in config["Arn"]:
            raise ValueError(f"{config['Arn']} is not a load balancer or an instance ARN")
        config.setdefault("HTTPPort", 80)
        config.setdefault("HTTPSPort", 443)
        return config

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> "CloudFrontVpcOrigin":
        vpc_origin_id = "vo_" + cf_models.random_id(length=22)
        VPC_ORIGINS[vpc_origin_id] = {
            "arn": f"arn:aws:cloudfront::{account_id}:vpcorigin/{vpc_origin_id}",
            "endpoint": cls.endpoint(cloudformation_json),
            "changed": now(),
        }
        return cls(vpc_origin_id, account_id)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[override]
        cls, original_resource: Any, new_resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> "CloudFrontVpcOrigin":
        held = VPC_ORIGINS[original_resource.vpc_origin_id]
        endpoint = cls.endpoint(cloudformation_json)
        if endpoint != held["endpoint"]:
            users = vpc_origin_in_use(original_resource.vpc_origin_id)
            if users:
                raise CannotChangeEntityWhileInUse(
                    f"CannotUpdateEntityWhileInUse: the VPC origin {original_resource.vpc_origin_id} is associated with "
                    f"distribution(s) {', '.join(users)}; disassociate it before updating it"
                )
            held["endpoint"] = endpoint
            held["changed"] = now()
        return original_resource

    def delete(self, account_id: str, region_name: str) -> None:
        users = vpc_origin_in_use(self.vpc_origin_id)
        if users:
            raise CannotChangeEntityWhileInUse(
                f"CannotDeleteEntityWhileInUse: the VPC origin {self.vpc_origin_id} is associated with distribution(s) {', '.join(users)}"
            )
        VPC_ORIGINS.pop(self.vpc_origin_id, None)


def vpc_origin_status(held: dict[str, Any]) -> str:
    """Deploying for as long as a distribution change takes (the edge delay), then Deployed."""
    return "Deploying" if now() - held["changed"] < CONFIG["edge_delay"] else "Deployed"


def vpc_origin_target(vpc_origin_id: str) -> tuple[str, int] | str:
    """Where a VPC origin sends requests: its load balancer's address (the DNS name ELBv2 shows)
    and port, or why it cannot."""
    held = VPC_ORIGINS.get(vpc_origin_id)
    if held is None:
        return f"no VPC origin {vpc_origin_id}"
    if vpc_origin_status(held) != "Deployed":
        return f"the VPC origin {vpc_origin_id} is still Deploying"
    arn = held["endpoint"]["Arn"]
    for regions in elbv2_backends.values():
        for backend in regions.values():
            lb = backend.load_balancers.get(arn)
            if lb is not None:
                return lb.dns_name, int(held["endpoint"]["HTTPPort"])
    return f"no load balancer {arn}"


# The source address of the VPC origins' network interfaces: inside the VPC, where internal load
# balancers answer (sandbox/src/lb.rs, from_vpc).
VPC_SOURCE = ("127.30.0.1", 0)


# ---------------------------------------------------------------------------------------------
# CloudFront continuous deployment (moto has none): staging distributions
# (`DistributionConfig.Staging`), `AWS::CloudFront::ContinuousDeploymentPolicy`, a primary's
# `ContinuousDeploymentPolicyId`, and the edge routing by header or by weight with stickiness.
# Sources: CloudFront Developer Guide, "Understanding continuous deployment" and "Quotas and other
# considerations for continuous deployment"; the CloudFormation resource reference of
# AWS::CloudFront::ContinuousDeploymentPolicy; the CloudFront API's errors
# (StagingDistributionInUse, ContinuousDeploymentPolicyInUse, IllegalUpdate).

CD_POLICIES: dict[str, dict[str, Any]] = {}
CD_HEADER_PREFIX = "aws-cf-cd-"
# AWS does not document the name of the cookie that keeps a viewer's session on one distribution;
# this one is the sandbox's own. Clients should keep whatever cookies the edge sets.
CD_STICKY_COOKIE = "aws-cf-cd-sandbox-session"
CD_SESSIONS: dict[str, dict[str, Any]] = {}


class CloudFrontError(ServiceException):
    __module__ = "moto.cloudfront.exceptions"

    def __init__(self, code: str, message: str):
        super().__init__(code, message)


def truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def is_staging(config: Any) -> bool:
    return truthy(getattr(config, "Staging", None) if not isinstance(config, dict) else config.get("Staging"))


def check_distribution_config(config: dict[str, Any], dist_id: str | None) -> None:
    """What CloudFront refuses in a distribution's configuration about continuous deployment."""
    policy_id = config.get("ContinuousDeploymentPolicyId") or ""
    http = str(config.get("HttpVersion") or "http2")
    if is_staging(config) and "http3" in http:
        # "You cannot use continuous deployment with a distribution that supports HTTP/3."
        raise CloudFrontError("InvalidArgument", "a staging distribution cannot support HTTP/3 (HttpVersion http2and3 or http3)")
    if not policy_id:
        return
    if dist_id is None:
        # A policy is attached to a primary by an update, never when it is created (the policy
        # names a staging distribution the primary's create could not have been deployed with;
        # Terraform's aws_cloudfront_distribution documents the same).
        raise CloudFrontError("IllegalUpdate", "a continuous deployment policy cannot be attached when a distribution is created; attach it with UpdateDistribution")
    if is_staging(config):
        raise CloudFrontError("InvalidArgument", "a staging distribution cannot have a continuous deployment policy")
    if "http3" in http:
        raise CloudFrontError("InvalidArgument", "continuous deployment cannot be used with a distribution that supports HTTP/3 (HttpVersion http2and3 or http3)")
    if policy_id not in CD_POLICIES:
        raise CloudFrontError("NoSuchContinuousDeploymentPolicy", f"no continuous deployment policy {policy_id}")
    for other in all_distributions():
        if other.distribution_id != dist_id and (getattr(other.distribution_config, "ContinuousDeploymentPolicyId", "") or "") == policy_id:
            raise CloudFrontError("ContinuousDeploymentPolicyInUse", f"the continuous deployment policy {policy_id} is attached to {other.distribution_id}")


def staging_in_use(dist: Any) -> str | None:
    """The policy that names this staging distribution, if one does."""
    for policy_id, held in CD_POLICIES.items():
        if dist.domain_name in held["config"]["StagingDistributionDnsNames"]:
            return policy_id
    return None


def check_policy_config(config: dict[str, Any], policy_id: str | None) -> dict[str, Any]:
    """A ContinuousDeploymentPolicyConfig as CloudFront takes it, or the error it answers."""
    if "Enabled" not in config:
        raise CloudFrontError("InvalidArgument", "ContinuousDeploymentPolicyConfig.Enabled is required")
    names = config.get("StagingDistributionDnsNames") or []
    if isinstance(names, dict):
        names = names.get("Items") or []
    if not names or len(set(names)) != len(names):
        raise CloudFrontError("InvalidArgument", "StagingDistributionDnsNames needs one name or more, without duplicates")
    by_domain = {d.domain_name: d for d in all_distributions()}
    for name in names:
        dist = by_domain.get(name)
        if dist is None or not is_staging(dist.distribution_config):
            raise CloudFrontError("InvalidArgument", f"{name} is not the domain name of a staging distribution")
        for other_id, held in CD_POLICIES.items():
            if other_id != policy_id and name in held["config"]["StagingDistributionDnsNames"]:
                raise CloudFrontError("StagingDistributionInUse", f"a continuous deployment policy for the staging distribution {name} already exists ({other_id})")
    traffic = config.get("TrafficConfig") or {}
    kind = traffic.get("Type")
    if kind == "SingleHeader":
        header = traffic.get("SingleHeaderConfig") or {}
        name, value = str(header.get("Header") or ""), str(header.get("Value") or "")
        if not name.lower().startswith(CD_HEADER_PREFIX) or not 1 <= len(name) <= 256 or not 1 <= len(value) <= 1783:
            raise CloudFrontError("InvalidArgument", f"SingleHeaderConfig: the header must start with {CD_HEADER_PREFIX} and both header and value be given")
    elif kind == "SingleWeight":
        weight_config = traffic.get("SingleWeightConfig") or {}
        weight = float(weight_config.get("Weight", -1))
        # Quotas: "the maximum percentage of traffic ... to a staging distribution is 15%".
        if not 0 <= weight <= 0.15:
            raise CloudFrontError("InvalidArgument", f"SingleWeightConfig.Weight {weight} is not within 0 and 0.15")
        sticky = weight_config.get("SessionStickinessConfig")
        if sticky is not None:
            idle, maximum = int(sticky.get("IdleTTL", 0)), int(sticky.get("MaximumTTL", 0))
            if not (300 <= idle <= 3600 and 300 <= maximum <= 3600 and idle <= maximum):
                raise CloudFrontError("InvalidArgument", "SessionStickinessConfig: IdleTTL and MaximumTTL lie within 300 and 3600 s, IdleTTL at most MaximumTTL")
    elif traffic:
        raise CloudFrontError("InvalidArgument", f"TrafficConfig.Type {kind!r} is not SingleHeader or SingleWeight")
    return {"Enabled": truthy(config["Enabled"]), "StagingDistributionDnsNames": list(names), "TrafficConfig": traffic}


def policy_users(policy_id: str) -> list[Any]:
    return [d for d in all_distributions() if (getattr(d.distribution_config, "ContinuousDeploymentPolicyId", "") or "") == policy_id]


class CloudFrontContinuousDeploymentPolicy(CloudFormationModel):
    __module__ = "moto.cloudfront.sandbox"

    def __init__(self, policy_id: str):
        self.policy_id = policy_id

    @property
    def physical_resource_id(self) -> str:
        return self.policy_id

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::CloudFront::ContinuousDeploymentPolicy"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return attr in ("Id", "LastModifiedTime")

    def get_cfn_attribute(self, attribute_name: str) -> Any:
        if attribute_name == "Id":
            return self.policy_id
        if attribute_name == "LastModifiedTime":
            return CD_POLICIES[self.policy_id]["modified"]
        raise UnformattedGetAttTemplateException()

    @staticmethod
    def record(policy_id: str, config: dict[str, Any]) -> None:
        held = CD_POLICIES.setdefault(policy_id, {"versions": []})
        # Enabling or disabling the policy, or changing its stickiness, ends every session
        # ("Understanding continuous deployment", session stickiness).
        before = held.get("config")
        sticky = lambda c: (c or {}).get("TrafficConfig", {}).get("SingleWeightConfig", {}).get("SessionStickinessConfig")  # noqa: E731
        if before is None or before["Enabled"] != config["Enabled"] or sticky(before) != sticky(config):
            held["generation"] = cf_models.random_id()
        held["config"] = config
        held["modified"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        held["versions"] = (held["versions"] + [(now(), dict(config, generation=held["generation"]))])[-8:]
        # The primaries that use it deploy the change as any of their own.
        for dist in policy_users(policy_id):
            record_version(dist)

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
    ) -> "CloudFrontContinuousDeploymentPolicy":
        policy_id = str(uuid.uuid4())
        config = check_policy_config(cloudformation_json["Properties"]["ContinuousDeploymentPolicyConfig"], None)
        cls.record(policy_id, config)
        return cls(policy_id)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[override]
        cls, original_resource: Any, new_resource_name: str, cloudformation_json: Any, account_id: str, region_name: str
    ) -> "CloudFrontContinuousDeploymentPolicy":
        config = check_policy_config(cloudformation_json["Properties"]["ContinuousDeploymentPolicyConfig"], original_resource.policy_id)
        cls.record(original_resource.policy_id, config)
        return original_resource

    def delete(self, account_id: str, region_name: str) -> None:
        users = policy_users(self.policy_id)
        if users:
            raise CloudFrontError(
                "ContinuousDeploymentPolicyInUse",
                f"the continuous deployment policy {self.policy_id} is associated with the primary distribution {users[0].distribution_id}",
            )
        CD_POLICIES.pop(self.policy_id, None)


def serving_policy(policy_id: str) -> dict[str, Any] | None:
    """The policy as one request meets it: deployed after the edge delay, the old or the new one
    at random while a change propagates (as distributions)."""
    held = CD_POLICIES.get(policy_id)
    return serving_version(held["versions"]) if held is not None else None


def staging_for(primary: dict[str, Any], headers: Any, cookies: dict[str, str]) -> tuple[Any | None, str | None]:
    """Whether a request to a primary goes to its staging distribution: the staging distribution
    (or None), and a Set-Cookie value for a new sticky session."""
    policy = serving_policy(primary.get("policy") or "")
    if policy is None or not policy["Enabled"]:
        return None, None
    by_domain = {d.domain_name: d for d in all_distributions()}
    staging = next((by_domain[n] for n in policy["StagingDistributionDnsNames"] if n in by_domain), None)
    if staging is None:
        return None, None
    traffic = policy.get("TrafficConfig") or {}
    if traffic.get("Type") == "SingleHeader":
        header = traffic["SingleHeaderConfig"]
        return (staging if headers.get(header["Header"]) == header["Value"] else None), None
    if traffic.get("Type") != "SingleWeight":
        return None, None
    weight = float(traffic["SingleWeightConfig"]["Weight"])
    sticky = traffic["SingleWeightConfig"].get("SessionStickinessConfig")
    if sticky is None:
        return (staging if random.random() < weight else None), None
    t = time.time()
    session = CD_SESSIONS.get(cookies.get(CD_STICKY_COOKIE, ""))
    if (
        session is not None
        and session["generation"] == policy["generation"]
        and t - session["last"] <= int(sticky["IdleTTL"])
        and t - session["start"] <= int(sticky["MaximumTTL"])
    ):
        session["last"] = t
        return (staging if session["staging"] else None), None
    key = uuid.uuid4().hex
    to_staging = random.random() < weight
    if len(CD_SESSIONS) > 10000:
        # Sessions older than the longest stickiness CloudFront allows are over anyway.
        for old in [k for k, v in list(CD_SESSIONS.items()) if t - v["start"] > 3600]:
            CD_SESSIONS.pop(old, None)
    CD_SESSIONS[key] = {"staging": to_staging, "start": t, "last": t, "generation": policy["generation"]}
    return (staging if to_staging else None), f"{CD_STICKY_COOKIE}={key}; Path=/; Secure; HttpOnly"


cfn_parsing.get_model_list.cache_clear()
cfn_parsing.get_model_map.cache_clear()
cfn_parsing.get_name_type_map.cache_clear()


# Origins the edge cannot reach (PUT $SANDBOX_CONTROL_URL/edge {"unreachable": [...]}): a fault to
# make a flip's verification through the public URL fail.
UNREACHABLE_ORIGINS: set[str] = set()


# CloudFront's own metrics of each request the edge answers, as CloudWatch has them: namespace
# AWS/CloudFront, dimensions DistributionId and Region=Global, in us-east-1 only ("Getting metrics
# using the CloudWatch API": "you must use the US East (N. Virginia) Region"), whatever region
# the distribution's stack is in. Each request is one datum (Requests 1; 5xxErrorRate and
# TotalErrorRate 100 or 0, Percent), so that a minute's Average is that minute's share, as
# CloudFront reports it. Unlike CloudFront, the datum is there at once (CloudFront's arrive
# minutes late; docs/sandbox.md).
from moto.cloudwatch.models import CloudWatchBackend, cloudwatch_backends  # noqa: E402
from moto.core.utils import utcnow as moto_utcnow  # noqa: E402

# The edge's threads take turns adding (moto's reads copy the list they scan).
CLOUDFRONT_METRICS_LOCK = threading.Lock()


def publish_edge_request(distribution: Any, status: int) -> None:
    if distribution is None:
        return
    dims = [{"Name": "DistributionId", "Value": distribution.distribution_id}, {"Name": "Region", "Value": "Global"}]
    datum = lambda name, value, unit: {"MetricName": name, "Value": value, "Unit": unit, "Dimensions": dims}  # noqa: E731
    data = [
        datum("Requests", 1.0, "None"),
        datum("5xxErrorRate", 100.0 if status >= 500 else 0.0, "Percent"),
        datum("TotalErrorRate", 100.0 if status >= 400 else 0.0, "Percent"),
    ]
    with CLOUDFRONT_METRICS_LOCK:
        # arn:aws:cloudfront::<account>:distribution/<id> (moto's distributions keep no account_id).
        account = distribution.arn.split(":")[4]
        cloudwatch_backends[account]["us-east-1"].put_metric_data("AWS/CloudFront", data)


_original_get_metric_data = CloudWatchBackend.get_metric_data


def get_metric_data_rounded(self: Any, queries: Any, start_time: Any, end_time: Any, scan_by: str = "TimestampAscending") -> Any:
    """GetMetricData rounds a StartTime under 15 days old down to the whole minute (API reference,
    GetMetricData `StartTime`): a query that starts mid-minute gets that minute's datapoint whole,
    requests from before its start included. moto starts its periods at StartTime exactly."""
    now = moto_utcnow() if start_time.tzinfo is None else datetime.datetime.now(datetime.timezone.utc)
    if now - start_time < datetime.timedelta(days=15):
        start_time = start_time.replace(second=0, microsecond=0)
    return _original_get_metric_data(self, queries, start_time, end_time, scan_by)


CloudWatchBackend.get_metric_data = get_metric_data_rounded  # type: ignore[method-assign]


class EdgeHandler(BaseHTTPRequestHandler):
    """Plays the distribution's public URL: forwards to the deployed origin with its custom headers."""

    protocol_version = "HTTP/1.1"
    hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "proxy-connection"}

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def pick(self) -> tuple[dict[str, Any] | None, str, str | None]:
        """The configuration that serves this request, why none does, and a sticky session's
        Set-Cookie. A staging distribution serves only the requests its primary's continuous
        deployment policy sends it (or ones naming it in Host)."""
        host = (self.headers.get("Host") or "").split(":")[0]
        dists = [d for d in all_distributions()]
        named = [d for d in dists if d.domain_name == host]
        if named:
            dists = named
        live = [(d, serving_snapshot(d)) for d in dists]
        # A staging distribution serves only what its primary's policy sends it, never a request
        # of its own ("Understanding continuous deployment": viewers reach it through the
        # primary's domain), so its domain name in Host is not served either.
        live = [(d, s) for (d, s) in live if s and s["enabled"] and not s["staging"]]
        if not live:
            return None, "no deployed, enabled CloudFront distribution", None
        if len(live) > 1:
            return None, "several distributions are deployed; send Host: <distribution domain name>", None
        snapshot = live[0][1]
        cookies = {}
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            cookies[name] = value
        staging, set_cookie = staging_for(snapshot, self.headers, cookies)
        if staging is not None:
            staged = serving_snapshot(staging)
            if staged is None or not staged["enabled"]:
                return None, f"the staging distribution {staging.distribution_id} is not deployed", set_cookie
            self.serving = staging
            return staged, "", set_cookie
        self.serving = live[0][0]
        return snapshot, "", set_cookie

    def send_response(self, code: int, message: str | None = None) -> None:
        # Every answer, the edge's own errors included, counts in the serving distribution's
        # metrics; once (a later error on the same connection is not this request's).
        serving, self.serving = getattr(self, "serving", None), None
        try:
            publish_edge_request(serving, code)
        except Exception as e:  # noqa: BLE001 - the viewer gets its answer whatever the metrics do
            print(f"sandbox edge: CloudFront metrics not published: {e!r}", file=sys.stderr)
        super().send_response(code, message)

    def reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Cache", "Error from cloudfront")
        if getattr(self, "set_cookie", None):
            self.send_header("Set-Cookie", self.set_cookie)
        self.end_headers()
        self.wfile.write(body)

    def forward(self) -> None:
        self.serving = None
        snapshot, why, self.set_cookie = self.pick()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if snapshot is None or snapshot["origin"] is None:
            self.reply(503, json.dumps({"error": "edge_not_configured", "detail": why}).encode())
            return
        origin = snapshot["origin"]
        if origin["domain"] in UNREACHABLE_ORIGINS:
            # As CloudFront does when a security group or NACL keeps it from the origin.
            self.reply(502, json.dumps({"error": "origin_unreachable", "detail": "blocked by the sandbox's control"}).encode())
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in self.hop_by_hop}
        headers["Host"] = origin["domain"]
        headers["Via"] = "1.1 sandbox-edge (CloudFront)"
        for name, value in origin["headers"]:
            headers[name] = value
        host, port, source = origin["domain"], origin["http_port"], None
        if origin.get("vpc_origin"):
            # Through the VPC origin: to its load balancer, from inside the VPC.
            target = vpc_origin_target(origin["vpc_origin"])
            if isinstance(target, str):
                self.reply(502, json.dumps({"error": "origin_unreachable", "detail": target}).encode())
                return
            (host, port), source = target, VPC_SOURCE
        try:
            conn = http.client.HTTPConnection(host, port, timeout=30, source_address=source)
            conn.request(self.command, origin["path"] + self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
        except OSError as e:
            # CloudFront answers 502 when it cannot reach the origin.
            self.reply(502, json.dumps({"error": "origin_unreachable", "detail": str(e)}).encode())
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in self.hop_by_hop and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Cache", "Miss from cloudfront")
        if self.set_cookie:
            self.send_header("Set-Cookie", self.set_cookie)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = forward


# ---------------------------------------------------------------------------------------------
# ECR: digest of the manifest bytes, layer bytes kept, GetDownloadUrlForLayer


class LayersNotFoundException(ServiceException):
    __module__ = "moto.ecr.exceptions"
    code = "LayersNotFoundException"


class InvalidLayerException(ServiceException):
    __module__ = "moto.ecr.exceptions"
    code = "InvalidLayerException"


def manifest_digest(self: Any) -> None:
    self._image_digest = "sha256:" + hashlib.sha256(self.image_manifest.encode("utf-8")).hexdigest()


ecr_models.Image._create_digest = manifest_digest  # type: ignore[method-assign]

_original_complete_layer = ecr_models.ECRBackend.complete_layer_upload


def complete_layer_upload(self: Any, repository_name: str, upload_id: str, layer_digests: list[str], registry_id: Any = None) -> Any:
    repository = self._get_repository(repository_name, registry_id)
    upload = repository.uploads.get(upload_id)
    data = bytes(upload.layer_parts) if upload is not None else b""
    result = _original_complete_layer(self, repository_name, upload_id, layer_digests, registry_id)
    digest = result["layerDigest"]
    if layer_digests and digest not in layer_digests:
        raise InvalidLayerException(f"The layer digest {layer_digests[0]} does not match the uploaded bytes ({digest})")
    path = os.path.join(CONFIG["layer_dir"], digest.replace(":", "-"))
    if not os.path.exists(path):
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    return result


ecr_models.ECRBackend.complete_layer_upload = complete_layer_upload  # type: ignore[method-assign]


def get_download_url_for_layer(self: Any) -> ActionResult:
    repository_name = self._get_param("repositoryName")
    digest = self._get_param("layerDigest")
    repository = self.ecr_backend._get_repository(repository_name, self._get_param("registryId"))
    if digest not in repository.layers:
        raise LayersNotFoundException(f"The layer {digest} does not exist in repository {repository_name}")
    url = f"{CONFIG['aws_url']}/_sandbox/ecr/layers/{digest}"
    return ActionResult({"downloadUrl": url, "layerDigest": digest})


ecr_responses.ECRResponse.get_download_url_for_layer = get_download_url_for_layer  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------
# CloudFormation: failures leave the stack in a failed state, with the failing resource named


class ResourceFailed(Exception):
    def __init__(self, logical_id: str, resource_type: str, reason: str):
        super().__init__(reason)
        self.logical_id = logical_id
        self.resource_type = resource_type
        self.reason = reason


_original_clean_json = cfn_parsing.clean_json


def clean_json(resource_json: Any, resources_map: Any) -> Any:
    """moto's intrinsic functions, plus Fn::Cidr (which moto lacks)."""
    if isinstance(resource_json, dict) and "Fn::Cidr" in resource_json:
        block, count, bits = (clean_json(v, resources_map) for v in resource_json["Fn::Cidr"])
        network = ipaddress.ip_network(str(block), strict=False)
        prefix = network.max_prefixlen - int(bits)
        return [str(n) for n in itertools.islice(network.subnets(new_prefix=prefix), int(count))]
    return _original_clean_json(resource_json, resources_map)


cfn_parsing.clean_json = clean_json

_original_parse_and_create = cfn_parsing.parse_and_create_resource
_original_parse_and_update = cfn_parsing.parse_and_update_resource


def failure_reason(e: Exception) -> str:
    """The message a service error carries (moto's JSON errors wrap it in their description)."""
    message = getattr(e, "message", None)
    if message:
        return str(message)
    description = getattr(e, "description", None)
    if isinstance(description, str):
        try:
            return str(json.loads(description).get("message") or description)
        except ValueError:
            return description
    return str(e) or type(e).__name__


def wrap_resource_step(original: Any) -> Any:
    def step(logical_id: str, resource_json: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return original(logical_id, resource_json, *args, **kwargs)
        except ResourceFailed:
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes a stack failure, as in AWS
            reason = failure_reason(e)
            raise ResourceFailed(logical_id, resource_json.get("Type", "?"), reason) from e

    return step


cfn_parsing.parse_and_create_resource = wrap_resource_step(_original_parse_and_create)
cfn_parsing.parse_and_update_resource = wrap_resource_step(_original_parse_and_update)


def resource_event(stack: Any, failure: ResourceFailed, status: str) -> None:
    stack.events.append(
        cfn_models.Event(
            stack_id=stack.stack_id,
            stack_name=stack.name,
            logical_resource_id=failure.logical_id,
            physical_resource_id="",
            resource_type=failure.resource_type,
            resource_status=status,
            resource_status_reason=failure.reason,
            resource_properties=None,
        )
    )


_original_resource_map_delete = cfn_parsing.ResourceMap.delete


def resource_map_delete(self: Any, rolling_back_create: bool = False) -> None:
    """DeletionPolicy as AWS applies it (CloudFormation User Guide, "DeletionPolicy attribute"):
    `Retain` keeps the resource when the stack is deleted and when a failed create rolls back;
    `RetainExceptOnCreate` keeps it when the stack is deleted, but a failed create's rollback
    deletes it. moto knows only `Retain`, and deletes a `RetainExceptOnCreate` resource always."""
    saved = {}
    for key, value in list(self._resource_json_map.items()):
        if isinstance(value, dict) and value.get("DeletionPolicy") == "RetainExceptOnCreate":
            saved[key] = value
            self._resource_json_map[key] = {**value, "DeletionPolicy": "Delete" if rolling_back_create else "Retain"}
    try:
        _original_resource_map_delete(self)
    finally:
        self._resource_json_map.update(saved)


cfn_parsing.ResourceMap.delete = resource_map_delete  # type: ignore[method-assign]


def fail_stack(stack: Any, failure: ResourceFailed, creating: bool, template: dict[str, Any] | None = None) -> None:
    if creating:
        create_independent_resources(stack, template if template is not None else stack.template_dict, failure.logical_id)
        resource_event(stack, failure, "CREATE_FAILED")
        stack._add_stack_event("ROLLBACK_IN_PROGRESS", resource_status_reason=f"The following resource(s) failed to create: [{failure.logical_id}]. Rollback requested by user.")
        try:
            stack.resource_map.delete(rolling_back_create=True)
        except Exception:  # noqa: BLE001 - a rollback that leaves something behind is still a failed create
            pass
        stack._add_stack_event("ROLLBACK_COMPLETE")
        stack.status = "ROLLBACK_COMPLETE"
    else:
        resource_event(stack, failure, "UPDATE_FAILED")
        stack._add_stack_event("UPDATE_ROLLBACK_IN_PROGRESS", resource_status_reason=f"The following resource(s) failed to update: [{failure.logical_id}].")
        stack._add_stack_event("UPDATE_ROLLBACK_COMPLETE")
        stack.status = "UPDATE_ROLLBACK_COMPLETE"


_original_create_resources = cfn_models.Stack.create_resources
_original_stack_update = cfn_models.Stack.update


def references(value: Any) -> set[str]:
    """The logical ids a resource's properties point at (Ref, Fn::GetAtt, ${X} in Fn::Sub)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Ref" and isinstance(v, str):
                found.add(v)
            elif k == "Fn::GetAtt":
                found.add((v[0] if isinstance(v, list) else str(v).split(".")[0]))
            elif k == "Fn::Sub":
                text = v[0] if isinstance(v, list) else v
                found.update(m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", str(text)))
                if isinstance(v, list) and len(v) > 1:
                    found.update(references(v[1]))
            else:
                found.update(references(v))
    elif isinstance(value, list):
        for v in value:
            found.update(references(v))
    return found


def check_fargate_profile_order(template: dict[str, Any]) -> None:
    """EKS creates (and deletes) one Fargate profile of a cluster at a time: a second
    CreateFargateProfile while one is CREATING fails with ResourceInUseException (seen in
    hashicorp/terraform-provider-aws#13372, aws/aws-cdk#6084, eksctl-io/eksctl#1628). CloudFormation
    creates resources that do not depend on each other in parallel, so two profiles of one cluster
    must be ordered (DependsOn, or a reference); the sandbox creates resources one by one, so it
    refuses unordered profiles instead, as the second would fail on AWS."""
    resources = template.get("Resources", {}) or {}
    deps: dict[str, set[str]] = {}
    for name, r in resources.items():
        depends = r.get("DependsOn", [])
        deps[name] = (set([depends] if isinstance(depends, str) else depends) | references(r.get("Properties", {}))) & set(resources)

    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            n = todo.pop()
            if n == b:
                return True
            if n not in seen:
                seen.add(n)
                todo.extend(deps.get(n, ()))
        return False

    profiles = [(n, r) for n, r in resources.items() if r.get("Type") == "AWS::EKS::FargateProfile"]
    for i, (a, ra) in enumerate(profiles):
        for b, rb in profiles[i + 1:]:
            cluster = json.dumps(ra.get("Properties", {}).get("ClusterName"), sort_keys=True)
            if cluster != json.dumps(rb.get("Properties", {}).get("ClusterName"), sort_keys=True):
                continue
            if not (reaches(a, b) or reaches(b, a)):
                raise ResourceFailed(
                    b,
                    "AWS::EKS::FargateProfile",
                    f"Resource handler returned message: \"Cannot create Fargate Profile {b} because cluster currently has Fargate profile {a} in status CREATING (Service: Eks, Status Code: 409)\" (ResourceInUseException)",
                )


def create_independent_resources(stack: Any, template: dict[str, Any], failed: str) -> None:
    """CloudFormation creates resources that do not depend on each other in parallel, so by the
    time one fails, others are created or being created, and the rollback finds them (and keeps
    a `Retain` one). moto creates them one by one in template order and stops at the failure. As
    AWS at worst: first create every resource that depends neither on the failed one nor on one
    that does, then roll back."""
    resources = template.get("Resources", {}) or {}

    def depends_on(body: Any) -> set[str]:
        listed = body.get("DependsOn", []) if isinstance(body, dict) else []
        listed = [listed] if isinstance(listed, str) else list(listed)
        return references(body.get("Properties", {}) if isinstance(body, dict) else {}) | set(listed)

    needs = {k: depends_on(v) for k, v in resources.items()}
    blocked = {failed}
    grew = True
    while grew:
        grew = False
        for k in resources:
            if k not in blocked and needs[k] & blocked:
                blocked.add(k)
                grew = True
    for k in resources:
        if k in blocked or k in stack.resource_map._parsed_resources:
            continue
        try:
            stack.resource_map[k]
        except Exception:  # noqa: BLE001 - a second failure changes nothing: the stack rolls back
            pass


def create_resources(self: Any) -> None:
    try:
        check_fargate_profile_order(self.template_dict)
        _original_create_resources(self)
    except ResourceFailed as failure:
        fail_stack(self, failure, creating=True)


def stack_update(self: Any, *args: Any, **kwargs: Any) -> None:
    try:
        template = args[0] if args else kwargs.get("template")
        if isinstance(template, str):
            check_fargate_profile_order(cfn_models.Stack.parse_template(template))
        _original_stack_update(self, *args, **kwargs)
    except ResourceFailed as failure:
        fail_stack(self, failure, creating=False)


cfn_models.Stack.create_resources = create_resources  # type: ignore[method-assign]
cfn_models.Stack.update = stack_update  # type: ignore[method-assign]

# `!Condition Name` is the short form of {"Condition": "Name"} (CloudFormation User Guide,
# "Condition functions"); moto's YAML loader made it {"Fn::Condition": ...}, which its condition
# parser does not know, so a condition built from others (Fn::And of !Condition) was false.
_moto_yaml_tag_constructor = cfn_models.yaml_tag_constructor


def yaml_tag_constructor(loader: Any, tag: Any, node: Any) -> Any:
    if tag == "!Condition":
        return {"Condition": loader.construct_scalar(node)}
    return _moto_yaml_tag_constructor(loader, tag, node)


cfn_models.yaml_tag_constructor = yaml_tag_constructor

_original_build_resource_diff = cfn_parsing.ResourceMap.build_resource_diff


def conditions_used(value: Any) -> set[str]:
    """The conditions a resource's body decides on (its Fn::If's)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "Fn::If" and isinstance(v, list) and v and isinstance(v[0], str):
                found.add(v[0])
            found |= conditions_used(v)
    elif isinstance(value, list):
        for v in value:
            found |= conditions_used(v)
    return found


def build_resource_diff(self: Any, other_template: dict[str, Any], parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """An update follows the resources' conditions under the new parameters, as CloudFormation
    does: a resource whose condition turns false is deleted, one whose condition turns true is
    created, one whose condition stays false is left alone, and one whose properties decide on a
    condition that changes (`Fn::If`) is modified. moto diffed the template text and the
    parameters a resource names directly, so it "updated" a resource that was never created,
    kept one whose condition had turned false, and missed a property that an `Fn::If` changes
    (a distribution gaining its continuous-deployment policy). A change set's preview
    (CreateChangeSet) computes the same and leaves the stack's parameters as they were."""
    diff = _original_build_resource_diff(self, other_template, parameters)
    if not other_template.get("Conditions"):
        return diff
    updating = getattr(self, "_sandbox_updating", False)
    if not updating and not getattr(self, "_sandbox_previewing", False):
        return diff
    before = {c: bool(self.lazy_condition_map[c]) for c in (self._template.get("Conditions") or {})}
    saved = (
        self._template,
        self.input_parameters,
        dict(self.resolved_parameters),
        dict(self._parsed_resources),
        self.lazy_condition_map,
        list(getattr(self, "no_echo_parameter_keys", [])),
    )
    try:
        return diff_under_new_conditions(self, diff, other_template, parameters, before, updating)
    finally:
        if not updating:
            restore_resource_map(self, saved)


def restore_resource_map(self: Any, saved: tuple[Any, ...]) -> None:
    """Put back what a change set's preview loaded (the template, parameters, conditions)."""
    (self._template, self.input_parameters, resolved, parsed, self.lazy_condition_map, no_echo) = saved
    # In place: the restored conditions read these very dicts.
    self.resolved_parameters.clear()
    self.resolved_parameters.update(resolved)
    self._parsed_resources.clear()
    self._parsed_resources.update(parsed)
    self.no_echo_parameter_keys = no_echo


def diff_under_new_conditions(
    self: Any,
    diff: dict[str, Any],
    other_template: dict[str, Any],
    parameters: dict[str, Any] | None,
    before: dict[str, bool],
    updating: bool,
) -> dict[str, Any]:
    late: list[str] = []
    self._template = other_template
    if parameters:
        self.input_parameters = parameters
    self.load_mapping()
    self.load_parameters()
    self.load_conditions()
    after = {c: bool(self.lazy_condition_map[c]) for c in other_template["Conditions"]}
    turned = {c for c in after if before.get(c) != after[c]}
    for name, resource in other_template["Resources"].items():
        if not isinstance(resource, dict):
            continue
        condition = resource.get("Condition")
        exists = self._parsed_resources.get(name) is not None
        wanted = condition is None or bool(self.lazy_condition_map[condition])
        changed = name in diff["Modify"] or name in diff["Add"] or bool(conditions_used(resource) & turned)
        if condition is None and not changed:
            continue
        for action in ("Add", "Modify", "Remove"):
            if name in diff[action]:
                diff[action].remove(name)
        if wanted and not exists:
            diff["Add"].append(name)
        elif wanted and changed:
            diff["Modify"].append(name)
        elif not wanted and exists:
            # Deleted in the clean-up after every update, as CloudFormation does: a resource
            # that another one stops using in this same update is still in use until then.
            late.append(name)
    if updating:
        self._sandbox_late_removals = late
    else:
        diff["Remove"].extend(late)
    # Modified in dependency order (what a resource names by Ref or GetAtt first), as
    # CloudFormation does; moto took the list's order and retried failures blindly.
    diff["Modify"] = dependency_order(diff["Modify"], other_template["Resources"])
    return diff


def dependency_order(names: list[str], resources: dict[str, Any]) -> list[str]:
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in ordered or name in path:
            return
        for dep in sorted(references(resources.get(name, {}))):
            if dep in names:
                visit(dep, path + (name,))
        ordered.append(name)

    for name in names:
        visit(name, ())
    return ordered


cfn_parsing.ResourceMap.build_resource_diff = build_resource_diff  # type: ignore[method-assign]


def ordered_update(self: Any, template: dict[str, Any], parameters: dict[str, Any] | None = None) -> None:
    """moto's ResourceMap.update, with the added and the modified resources taken together in
    dependency order, as CloudFormation does (moto made every added resource before modifying
    any: a staging distribution added on a VPC origin changed in the same update met the old one,
    which CloudFront then refused to change while in use)."""
    diff = self.build_resource_diff(template, parameters)
    attempts = cfn_parsing.MAX_UPDATE_ATTEMPTS
    last: Exception | None = None
    tries = 1
    while diff["Remove"] and tries < attempts:
        for name in diff["Remove"].copy():
            try:
                if name in self._parsed_resources:
                    self._delete_resource(self._parsed_resources[name], self._resource_json_map[name])
            except Exception as e:  # noqa: BLE001 - a dependency: tried again in the next pass, as moto does
                last = e
            else:
                diff["Remove"].remove(name)
        tries += 1
    if diff["Remove"] and last is not None:
        raise last
    self._template = template
    if parameters:
        self.input_parameters = parameters
    self.load_mapping()
    self.load_parameters()
    self.load_conditions()
    self._resource_json_map = template["Resources"]
    added = set(diff["Add"])
    pending = dependency_order(diff["Add"] + diff["Modify"], template["Resources"])
    tries = 1
    while pending and tries < attempts:
        for name in pending.copy():
            if name in added:
                # Made on first access (moto's way); a failure fails the update at once.
                _ = self[name]
                pending.remove(name)
                continue
            try:
                changed = cfn_parsing.parse_and_update_resource(
                    name, self._resource_json_map[name], self, account_id=self._account_id, region_name=self._region_name
                )
            except Exception as e:  # noqa: BLE001 - tried again in the next pass, as moto does
                last = e
            else:
                self._parsed_resources[name] = changed
                pending.remove(name)
        tries += 1
    if pending and last is not None:
        raise last


def resource_map_update(self: Any, template: dict[str, Any], parameters: dict[str, Any] | None = None) -> None:
    self._sandbox_updating = True
    self._sandbox_late_removals = []
    try:
        ordered_update(self, template, parameters)
    finally:
        self._sandbox_updating = False
    # In reverse dependency order, as CloudFormation deletes: a resource that names another (by
    # Ref or GetAtt) goes first, so a continuous-deployment policy goes before the staging
    # distribution it names (CloudFront refuses the other order: StagingDistributionInUse).
    late = self._sandbox_late_removals
    for name in reversed(dependency_order(late, {n: self._resource_json_map.get(n, {}) for n in late})):
        resource = self._parsed_resources.get(name)
        if resource is not None:
            self._delete_resource(resource, self._resource_json_map[name])
            self._parsed_resources.pop(name, None)


cfn_parsing.ResourceMap.update = resource_map_update  # type: ignore[method-assign]

# Deleting a stack deletes its EC2 network resources, as CloudFormation does. moto's EC2 models
# have no CloudFormation delete for NAT gateways, EIPs, gateway attachments, routes, route tables,
# subnet associations, internet gateways or subnets, so the VPC's deletion failed with
# DependencyViolation and left them behind. Each is removed through moto's own EC2 backend; one
# already gone counts as deleted, so a retried deletion finishes.
from moto.ec2.models import ec2_backends  # noqa: E402


class DependencyViolation(Exception):
    """EC2's DependencyViolation, as the reason of a failed stack deletion."""


# The network interfaces of the cluster's load balancers, by Service uid (set by the cluster's
# load-balancer controller through /_sandbox/load-balancers/<uid>).
LOAD_BALANCER_ENIS: dict[str, tuple[str, str, str]] = {}
# The Elastic Load Balancing v2 record of each of those NLBs, by Service uid: account, region, ARN.
LOAD_BALANCERS: dict[str, tuple[str, str, str]] = {}
# The health of each sandbox NLB target group's targets, by target group ARN, then target id:
# `initial` while the target registers and is first checked, then `healthy` (the cluster side's
# load-balancer controller decides and reports it; moto calls every registered target healthy).
TARGET_HEALTH: dict[str, dict[str, str]] = {}

from moto.elbv2 import models as elbv2_models  # noqa: E402

moto_health_for = elbv2_models.FakeTargetGroup.health_for


def sandbox_health_for(self: Any, target: dict[str, Any], ec2_backend: Any) -> Any:
    """A target's health as the sandbox NLB sees it: `initial` (Elb.RegistrationInProgress) until
    its registration and first health checks are over (ELB user guide, target group health
    checks: "It can take a few minutes for the registration process to complete"), then
    moto's answer."""
    state = TARGET_HEALTH.get(self.arn, {}).get(target["Id"])
    held = self.targets.get(target["Id"])
    if state == "initial" and held is not None:
        return elbv2_models.FakeHealthStatus(
            held["Id"], held["Port"], self.health_check_port, "initial",
            "Elb.RegistrationInProgress", "Target registration is in progress",
        )
    return moto_health_for(self, target, ec2_backend)


elbv2_models.FakeTargetGroup.health_for = sandbox_health_for


def load_balancer_name(cluster: str, uid: str, namespace: str, service: str, scheme: str) -> str:
    """The name the AWS Load Balancer Controller gives a Service's NLB: k8s-<namespace, 8>-<name,
    8>-<10 hex of a hash of the cluster, the Service's uid and the scheme>
    (pkg/service/model_build_load_balancer.go)."""
    digest = hashlib.sha256(f"{cluster}{uid}{scheme}".encode()).hexdigest()[:10]
    return f"k8s-{namespace[:8]}-{service[:8]}-{digest}"


def upsert_load_balancer(uid: str, account: str, region: str, cluster: Any, subnets: list[str], info: dict[str, Any]) -> None:
    """The NLB as ELBv2 describes it: type network, the Service's scheme, the controller's name and
    tags, its DNS name the address in the Service's status, active. A changed scheme is a new NLB
    (a scheme cannot be modified), as the controller replaces it."""
    backend = elbv2_backends[account][region]
    scheme = info.get("scheme") or "internal"
    held = LOAD_BALANCERS.get(uid)
    if held is not None:
        lb = backend.load_balancers.get(held[2])
        if lb is not None and lb.scheme == scheme:
            lb.dns_name = info["address"]
            sync_targets(backend, lb, subnet_vpc(account, region, subnets), info)
            return
        drop_target_groups(backend, held[2])
        backend.delete_load_balancer(held[2])
    name = load_balancer_name(cluster.name, uid, info["namespace"], info["service"], scheme)
    tags = [
        {"Key": "elbv2.k8s.aws/cluster", "Value": cluster.name},
        {"Key": "service.k8s.aws/stack", "Value": f"{info['namespace']}/{info['service']}"},
        {"Key": "service.k8s.aws/resource", "Value": "LoadBalancer"},
    ]
    lb = backend.create_load_balancer(name, [], subnets, scheme=scheme, loadbalancer_type="network", tags=tags)
    # An NLB's ARN says net/ (moto writes app/ for every type).
    net_arn = lb.arn.replace(":loadbalancer/app/", ":loadbalancer/net/")
    backend.load_balancers[net_arn] = backend.load_balancers.pop(lb.arn)
    backend.tagging_service.tag_resource(net_arn, tags)
    lb.arn = net_arn
    lb.dns_name = info["address"]
    lb.state = "active"
    LOAD_BALANCERS[uid] = (account, region, lb.arn)
    sync_targets(backend, lb, subnet_vpc(account, region, subnets), info)


def drop_target_groups(backend: Any, lb_arn: str) -> None:
    """The controller deletes an NLB's target groups with it."""
    for tg in [t for t in backend.target_groups.values() if lb_arn in t.load_balancer_arns]:
        TARGET_HEALTH.pop(tg.arn, None)
        backend.target_groups.pop(tg.arn, None)


def subnet_vpc(account: str, region: str, subnets: list[str]) -> str:
    return ec2_backends[account][region].get_subnet(subnets[0]).vpc_id


def sync_targets(backend: Any, lb: Any, vpc: str, info: dict[str, Any]) -> None:
    """The NLB's IP target group (the controller's name for it) with the pods it registered and
    their health, as DescribeTargetGroups and DescribeTargetHealth show them."""
    name = info.get("target_group")
    if not name:
        return
    tg = next((t for t in backend.target_groups.values() if lb.arn in t.load_balancer_arns), None)
    if tg is None:
        tg = backend.create_target_group(name, protocol="TCP", port=80, target_type="ip", vpc_id=vpc)
        tg.load_balancer_arns.append(lb.arn)
    targets = info.get("targets") or []
    wanted = {t["id"]: t for t in targets}
    for gone in [i for i in tg.targets if i not in wanted]:
        tg.deregister([{"Id": gone}])
    port = lambda t: t["port"] if isinstance(t.get("port"), int) else 80  # noqa: E731
    tg.register([{"Id": i, "Port": port(t)} for i, t in wanted.items()])
    TARGET_HEALTH[tg.arn] = {i: t.get("state", "healthy") for i, t in wanted.items()}


def load_balancer_eni(uid: str, present: bool, info: dict[str, Any] | None = None) -> bool:
    """Make (or delete) a load balancer's network interface in a subnet of the EKS cluster's VPC,
    and its ELBv2 record when `info` describes it (namespace, service, scheme, address); False
    when there is no cluster to put it in."""

    if not present:
        held = LOAD_BALANCER_ENIS.pop(uid, None)
        if held is not None:
            account, region, eni = held
            ec2_backends[account][region].enis.pop(eni, None)
        record = LOAD_BALANCERS.pop(uid, None)
        if record is not None:
            backend = elbv2_backends[record[0]][record[1]]
            drop_target_groups(backend, record[2])
            backend.delete_load_balancer(record[2])
        return True
    for account, regions in list(eks_backends.items()):
        for region, backend in list(regions.items()):
            for cluster in list(backend.clusters.values()):
                vpc = cluster.resources_vpc_config or {}
                subnets = vpc.get("subnetIds") or vpc.get("SubnetIds") or []
                if not subnets:
                    continue
                ec2 = ec2_backends[account][region]
                try:
                    subnet = ec2.get_subnet(subnets[0])
                except Exception:  # noqa: BLE001 - a cluster whose subnets are gone holds nothing
                    continue
                if uid not in LOAD_BALANCER_ENIS:
                    eni = ec2.create_network_interface(subnet, None, description=f"ELB net/k8s-{uid[:8]}")
                    LOAD_BALANCER_ENIS[uid] = (account, region, eni.id)
                if info:
                    upsert_load_balancer(uid, account, region, cluster, list(subnets), info)
                return True
    return False


_original_stack_delete = cfn_models.Stack.delete


def stack_delete(self: Any) -> None:
    """A deletion that cannot finish ends in DELETE_FAILED with its reason, as in AWS; moto let the
    exception out of DeleteStack."""
    try:
        _original_stack_delete(self)
    except Exception as e:  # noqa: BLE001 - every failure becomes a stack failure, as in AWS
        reason = str(e) or type(e).__name__
        # As AWS: an event for the resource that could not be deleted, then the stack's.
        blocked = getattr(e, "logical_id", None)
        if blocked is not None:
            resource_event(self, ResourceFailed(blocked, getattr(e, "resource_type", "?"), reason), "DELETE_FAILED")
        self._add_stack_event("DELETE_FAILED", resource_status_reason=f"The following resource(s) failed to delete: [{blocked or '?'}]. {reason}")
        self.status = "DELETE_FAILED"


cfn_models.Stack.delete = stack_delete  # type: ignore[method-assign]

_original_backend_delete_stack = cfn_models.CloudFormationBackend.delete_stack


def backend_delete_stack(self: Any, name_or_stack_id: str) -> None:
    """A stack whose deletion failed stays, in DELETE_FAILED, to be described and deleted again;
    moto moved it to its deleted stacks whatever happened."""
    _original_backend_delete_stack(self, name_or_stack_id)
    for stack_id, stack in list(self.deleted_stacks.items()):
        if stack.status == "DELETE_FAILED":
            del self.deleted_stacks[stack_id]
            self.stacks[stack_id] = stack


cfn_models.CloudFormationBackend.delete_stack = backend_delete_stack  # type: ignore[method-assign]


def delete_ec2_resource(kind: str, resource: Any, account_id: str, region: str) -> bool:
    ec2 = ec2_backends[account_id][region]
    if kind == "AWS::EC2::NatGateway":
        ec2.nat_gateways.pop(resource.id, None)
    elif kind == "AWS::EC2::EIP":
        ec2.addresses[:] = [a for a in ec2.addresses if a.allocation_id != resource.allocation_id]
    elif kind == "AWS::EC2::VPCGatewayAttachment":
        igw = ec2.internet_gateways.get(resource.gateway_id)
        if igw is not None and igw.vpc is not None and igw.vpc.id == resource.vpc_id:
            ec2.detach_internet_gateway(resource.gateway_id, resource.vpc_id)
    elif kind == "AWS::EC2::InternetGateway":
        ec2.internet_gateways.pop(resource.id, None)
    elif kind == "AWS::EC2::Route":
        resource.route_table._routes.pop(resource.id, None)
    elif kind == "AWS::EC2::SubnetRouteTableAssociation":
        table = ec2.route_tables.get(resource.route_table_id)
        if table is not None:
            for association, subnet in list(table._associations.items()):
                if subnet == resource.subnet_id:
                    del table._associations[association]
    elif kind == "AWS::EC2::RouteTable":
        ec2.route_tables.pop(resource.id, None)
    elif kind == "AWS::EC2::Subnet":
        # A subnet that still has network interfaces (an NLB's, left by a cluster deleted before
        # its Services) cannot be deleted (EC2 API reference, DeleteSubnet: "You must terminate
        # all running instances in the subnet before you can delete the subnet"; ELB leaves its
        # ENIs until the load balancer is gone). moto deleted it anyway.
        held = [eni for (_, _, eni) in LOAD_BALANCER_ENIS.values() if eni in ec2.enis]
        in_use = [e for e in held if getattr(ec2.enis[e].subnet, "id", None) == resource.id]
        if in_use:
            raise DependencyViolation(f"The subnet '{resource.id}' has dependencies and cannot be deleted: network interfaces {', '.join(in_use)} (a load balancer's)")
        for subnets in ec2.subnets.values():
            subnets.pop(resource.id, None)
    else:
        return False
    return True


_original_delete_resource = cfn_parsing.ResourceMap._delete_resource


def delete_resource(self: Any, parsed_resource: Any, resource_json: dict[str, Any]) -> None:
    try:
        if not delete_ec2_resource(resource_json["Type"], parsed_resource, self._account_id, self._region_name):
            _original_delete_resource(self, parsed_resource, resource_json)
    except Exception as e:
        # Which resource failed, for the stack's DELETE_FAILED events (stack_delete).
        e.logical_id = getattr(parsed_resource, "logical_resource_id", None)  # type: ignore[attr-defined]
        e.resource_type = resource_json.get("Type", "?")  # type: ignore[attr-defined]
        raise


cfn_parsing.ResourceMap._delete_resource = delete_resource  # type: ignore[method-assign]

# Change sets, as CloudFormation has them: creating one that changes nothing succeeds with status
# FAILED and the "didn't contain changes" reason (moto raises instead); a parameter change lists the
# resources that use the parameter; executing one updates the stack's template, parameters and
# outputs (moto keeps the old outputs).
from moto.cloudformation import responses as cfn_responses  # noqa: E402

cfn_responses.yaml_tag_constructor = yaml_tag_constructor

_original_validate_update = cfn_responses.CloudFormationResponse._validate_different_update
_original_create_change_set = cfn_responses.CloudFormationResponse.create_change_set


def validate_different_update(self: Any, *args: Any, **kwargs: Any) -> None:
    if getattr(self, "_sandbox_in_change_set", False):
        return
    _original_validate_update(self, *args, **kwargs)


def check_parameter_constraints(self: Any) -> None:
    """CreateChangeSet checks every parameter against its constraints (MinLength, MaxLength,
    AllowedPattern, AllowedValues) and fails with a ValidationError, as AWS does
    (docs: AWS CloudFormation User Guide, "Parameters" section, "Parameter properties"); moto
    checks none. A `UsePreviousValue` parameter is checked with the stack's real, unmasked value."""
    body = self._get_param("TemplateBody")
    if not body:
        return
    slots = cfn_models.Stack.parse_template(body).get("Parameters", {}) or {}
    stack_name = self._get_param("StackName")
    stack = next(
        (s for s in self.cloudformation_backend.stacks.values() if s.name == stack_name and s.status != "DELETE_COMPLETE"),
        None,
    )
    previous = stack.stack_parameters if stack is not None else {}
    for param in self._get_param("Parameters", []):
        key = param.get("ParameterKey")
        slot = slots.get(key)
        if slot is None or slot.get("Type", "String") != "String":
            continue
        if param.get("UsePreviousValue"):
            if key not in previous:
                raise CfnValidationError(message=f"Parameter {key} has no previous value to use")
            value = str(previous[key])
        else:
            value = str(param.get("ParameterValue", ""))
        if "MinLength" in slot and len(value) < int(slot["MinLength"]):
            raise CfnValidationError(message=f"Parameter '{key}' must contain at least {slot['MinLength']} characters")
        if "MaxLength" in slot and len(value) > int(slot["MaxLength"]):
            raise CfnValidationError(message=f"Parameter '{key}' must contain at most {slot['MaxLength']} characters")
        if "AllowedPattern" in slot and not re.fullmatch(slot["AllowedPattern"], value):
            raise CfnValidationError(message=f"Parameter '{key}' must match pattern {slot['AllowedPattern']}")
        if "AllowedValues" in slot and value not in [str(v) for v in slot["AllowedValues"]]:
            raise CfnValidationError(message=f"Parameter '{key}' must be one of AllowedValues")


def create_change_set_response(self: Any) -> Any:
    check_parameter_constraints(self)
    self._sandbox_in_change_set = True
    try:
        return _original_create_change_set(self)
    finally:
        self._sandbox_in_change_set = False


def masked_parameter_list(self: Any) -> list[dict[str, Any]]:
    """DescribeStacks returns a NoEcho parameter's value as asterisks (AWS CloudFormation User
    Guide, "Parameters": NoEcho "masks the parameter value as asterisks (*****) for any calls that
    describe the stack"). moto compares the value, not the key, with its NoEcho keys, so it never
    masks. A list parameter (`List<AWS::EC2::Subnet::Id>`, `CommaDelimitedList`) comes back as the
    comma-delimited string it was given (API reference: `Parameter.ParameterValue` is a String);
    moto keeps the list it split and prints Python's repr of it (`['subnet-a', 'subnet-b']`)."""
    no_echo = set(self.resource_map.no_echo_parameter_keys)

    def shown(k: str, v: Any) -> Any:
        if k in no_echo:
            return "****"
        return ",".join(str(x) for x in v) if isinstance(v, list) else v

    return [
        {"ParameterKey": k, "ParameterValue": shown(k, v)}
        for k, v in self.resource_map.resolved_parameters.items()
    ]


cfn_models.Stack.parameter_list = property(masked_parameter_list)  # type: ignore[assignment,method-assign]


cfn_responses.CloudFormationResponse._validate_different_update = validate_different_update  # type: ignore[method-assign]
cfn_responses.CloudFormationResponse.create_change_set = create_change_set_response  # type: ignore[method-assign]


def change_set_diff(self: Any) -> list[Any]:
    # An UPDATE change set lists what the update will do (a CREATE one: every resource it makes).
    resource_map = self.stack.resource_map
    resource_map._sandbox_previewing = self.change_set_type == "UPDATE"
    try:
        names = resource_map.build_resource_diff(self.template_dict, self.parameters)
    finally:
        resource_map._sandbox_previewing = False
    old = self.stack.resource_map._resource_json_map or {}
    new = self.template_dict.get("Resources", {})
    changes = []
    for action, logical_ids in names.items():
        for logical_id in logical_ids:
            resource_type = (new.get(logical_id) or old.get(logical_id) or {}).get("Type", "")
            changes.append(cfn_models.Change(action=action, logical_resource_id=logical_id, resource_type=resource_type))
    return changes


cfn_models.ChangeSet.diff = change_set_diff  # type: ignore[method-assign]

_original_execute_change_set = cfn_models.CloudFormationBackend.execute_change_set


def execute_change_set(self: Any, change_set_name: str, stack_name: str | None = None) -> None:
    change_set = self.change_sets.get(change_set_name) or next(
        (cs for cs in self.change_sets.values() if cs.change_set_name == change_set_name), None
    )
    try:
        if change_set is not None:
            check_fargate_profile_order(change_set.template_dict)
        _original_execute_change_set(self, change_set_name, stack_name)
        if change_set is not None:
            stack = self.stacks[change_set.stack_id]
            stack.template = change_set.template
            stack._parse_template()
            stack.parameters = change_set.parameters
            stack.output_map = stack._create_output_map()
    except ResourceFailed as failure:
        stack = self.stacks[change_set.stack_id]
        fail_stack(stack, failure, creating=change_set.change_set_type == "CREATE", template=change_set.template_dict)
        change_set.execution_status = "EXECUTE_FAILED"


cfn_models.CloudFormationBackend.execute_change_set = execute_change_set  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------
# Fault injection and the /_sandbox control routes


class Faults:
    """Per service: {"throttle": rate, "error": rate}; rates in [0, 1]. Off by default."""

    def __init__(self) -> None:
        self.rates: dict[str, dict[str, float]] = {}
        self.injected: dict[str, int] = {}
        self.rng = random.Random(int(os.environ.get("SANDBOX_FAULT_SEED", "0")) or None)
        self.lock = threading.Lock()

    def set(self, rates: dict[str, dict[str, float]]) -> None:
        for service, kinds in rates.items():
            for kind, rate in kinds.items():
                if kind not in ("throttle", "error") or not 0 <= float(rate) <= 1:
                    raise ValueError(f"fault {service}.{kind}={rate}: kinds are throttle and error, rates 0..1")
        with self.lock:
            self.rates = {s: {k: float(r) for k, r in kinds.items()} for s, kinds in rates.items()}

    def pick(self, service: str) -> str | None:
        with self.lock:
            rates = self.rates.get(service) or self.rates.get("*") or {}
            roll = self.rng.random()
            for kind in ("throttle", "error"):
                rate = rates.get(kind, 0.0)
                if roll < rate:
                    key = f"{service}.{kind}"
                    self.injected[key] = self.injected.get(key, 0) + 1
                    return kind
                roll -= rate
        return None


FAULTS = Faults()
S3_WRITES = threading.Lock()
JSON_SERVICES = {"ecr", "eks"}
SCOPE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/aws4_request")


def service_of(environ: dict[str, Any]) -> str:
    m = SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    return m.group(1) if m else "unknown"


def fault_response(service: str, kind: str) -> tuple[str, list[tuple[str, str]], bytes]:
    request_id = str(uuid.uuid4())
    if service == "s3":
        code, status = ("SlowDown", "503 Slow Down") if kind == "throttle" else ("InternalError", "500 Internal Server Error")
        body = f"<Error><Code>{code}</Code><Message>injected by the sandbox</Message><RequestId>{request_id}</RequestId></Error>"
        return status, [("Content-Type", "application/xml")], body.encode()
    if service in JSON_SERVICES:
        code, status = ("ThrottlingException", "400 Bad Request") if kind == "throttle" else ("ServerException", "500 Internal Server Error")
        body = json.dumps({"__type": code, "message": "injected by the sandbox"})
        return status, [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", code), ("x-amzn-RequestId", request_id)], body.encode()
    code, status = ("Throttling", "400 Bad Request") if kind == "throttle" else ("InternalFailure", "500 Internal Server Error")
    body = (
        f"<ErrorResponse><Error><Type>{'Sender' if kind == 'throttle' else 'Receiver'}</Type><Code>{code}</Code>"
        f"<Message>injected by the sandbox</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], body.encode()


# Bucket names another AWS account owns (PUT /_sandbox/taken-buckets ["name", ...]): S3 names are
# global. As S3 answers a caller that is not the owner: HeadBucket 403, CreateBucket (and a
# CloudFormation bucket of that name) BucketAlreadyExists. moto answers every account alike.
TAKEN_BUCKETS: set[str] = set()
OTHER_ACCOUNT = "210987654321"


def take_bucket(name: str) -> None:
    from moto.s3.models import s3_backends

    if name not in s3_backends.bucket_accounts:
        s3_backends[OTHER_ACCOUNT]["aws"].create_bucket(name, "us-east-1")
    TAKEN_BUCKETS.add(name)


def taken_bucket_of(environ: dict[str, Any]) -> str | None:
    """The bucket a path-style S3 request names, when another account owns it."""
    if service_of(environ) != "s3":
        return None
    name = environ.get("PATH_INFO", "").lstrip("/").split("/", 1)[0]
    return name if name in TAKEN_BUCKETS else None


def wrong_owner(environ: dict[str, Any]) -> bool:
    """A path-style S3 request whose x-amz-expected-bucket-owner is not the bucket's account."""
    expected = environ.get("HTTP_X_AMZ_EXPECTED_BUCKET_OWNER")
    if not expected or service_of(environ) != "s3":
        return False
    from moto.s3.models import s3_backends

    name = environ.get("PATH_INFO", "").lstrip("/").split("/", 1)[0]
    owner = s3_backends.bucket_accounts.get(name)  # (partition, account)
    return owner is not None and owner[1] != expected


# ---------------------------------------------------------------------------------------------
# Smithy RPC v2 CBOR (moto has none): the AWS SDKs now call CloudWatch with it (the service
# model's first protocol is smithy-rpc-v2-cbor; `release` reads alarms through aws-sdk-cloudwatch).
# A request `POST /service/<service>/operation/<operation>` with `smithy-protocol: rpc-v2-cbor`
# is turned into the same operation in the query protocol (botocore's own serializer and the
# service's model), answered by moto, and its answer turned back into CBOR (botocore's query
# parser; timestamps as tag 1, errors as `__type` and `message` with the status moto gave).
# Smithy spec: "RPC v2 CBOR protocol" (smithy.io/2.0/additional-specs/protocols/smithy-rpc-v2.html).
import io  # noqa: E402

import botocore.parsers  # noqa: E402
import botocore.serialize  # noqa: E402
import botocore.session  # noqa: E402
import cbor2  # noqa: E402

RPC_V2_PATH = re.compile(r"^/service/([^/]+)/operation/([^/]+)$")
# The services `release` calls by CBOR, by their Smithy service name.
CBOR_SERVICES = {"GraniteServiceVersion20100801": "cloudwatch"}
_BOTOCORE = botocore.session.get_session()


def cbor_timestamps(value: Any) -> Any:
    """Datetimes as tag 1 with a float, always: cbor2 writes a whole second as an integer, which
    the Rust SDK's CBOR decoder (aws-smithy-cbor, `f64` for a timestamp) refuses."""
    if isinstance(value, datetime.datetime):
        return cbor2.CBORTag(1, float(value.timestamp()))
    if isinstance(value, dict):
        return {k: cbor_timestamps(v) for k, v in value.items()}
    if isinstance(value, list):
        return [cbor_timestamps(v) for v in value]
    return value


def cbor_reply(start_response: Any, status: str, body: dict[str, Any]) -> list[bytes]:
    data = cbor2.dumps(cbor_timestamps(body))
    start_response(status, [("Content-Type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor"), ("Content-Length", str(len(data)))])
    return [data]


def rpc_v2_cbor(inner: Any, environ: dict[str, Any], start_response: Any, service: str, operation: str) -> list[bytes]:
    model = _BOTOCORE.get_service_model(service)
    try:
        op = model.operation_model(operation)
    except Exception:  # noqa: BLE001 - an unknown operation is the caller's error
        return cbor_reply(start_response, "404 Not Found", {"__type": "UnknownOperationException", "message": operation})
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    params = cbor2.loads(raw) if raw else {}
    query = botocore.serialize.create_serializer("query").serialize_to_request(params, op)
    body = urllib.parse.urlencode(query["body"], doseq=True).encode()
    forwarded = dict(environ)
    forwarded.update(
        {
            "PATH_INFO": "/",
            "QUERY_STRING": "",
            "CONTENT_TYPE": "application/x-www-form-urlencoded; charset=utf-8",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        }
    )
    forwarded.pop("HTTP_SMITHY_PROTOCOL", None)
    answer: dict[str, Any] = {}

    def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        answer["status"], answer["headers"] = status, headers
        return lambda _data: None

    xml = b"".join(inner(forwarded, capture))
    code = int(answer["status"].split()[0])
    parsed = botocore.parsers.create_parser("query").parse(
        {"body": xml, "headers": dict(answer["headers"]), "status_code": code}, op.output_shape
    )
    if code >= 300:
        error = parsed.get("Error", {})
        return cbor_reply(start_response, answer["status"], {"__type": error.get("Code", "InternalFailure"), "message": error.get("Message", "")})
    parsed.pop("ResponseMetadata", None)
    return cbor_reply(start_response, "200 OK", parsed)


class SandboxApp:
    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_sandbox/"):
            status, headers, body = self.control(environ, path[len("/_sandbox/") :])
            start_response(status, headers + [("Content-Length", str(len(body)))])
            return [body]
        taken = taken_bucket_of(environ)
        if taken is not None and environ.get("REQUEST_METHOD") == "PUT" and environ.get("PATH_INFO", "").strip("/") == taken and not environ.get("QUERY_STRING"):
            body = f"<Error><Code>BucketAlreadyExists</Code><Message>The requested bucket name is not available.</Message><BucketName>{taken}</BucketName></Error>".encode()
            start_response("409 Conflict", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        if taken is not None:
            # Not the owner: no access to any of it (S3 says 403 to HEAD with no body).
            body = b"" if environ.get("REQUEST_METHOD") == "HEAD" else f"<Error><Code>AccessDenied</Code><Message>Access Denied</Message><BucketName>{taken}</BucketName></Error>".encode()
            start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        if wrong_owner(environ):
            # S3 refuses a request whose ExpectedBucketOwner is not the bucket's account (S3 User
            # Guide, "Verifying bucket ownership with bucket owner condition": 403 Access Denied).
            body = b"" if environ.get("REQUEST_METHOD") == "HEAD" else b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        service = service_of(environ)
        kind = FAULTS.pick(service)
        rpc = RPC_V2_PATH.match(path) if environ.get("HTTP_SMITHY_PROTOCOL") == "rpc-v2-cbor" else None
        if rpc is not None and rpc.group(1) in CBOR_SERVICES:
            if kind is not None:
                code, status = ("ThrottlingException", "400 Bad Request") if kind == "throttle" else ("InternalServiceFault", "500 Internal Server Error")
                return cbor_reply(start_response, status, {"__type": code, "message": "injected by the sandbox"})
            return rpc_v2_cbor(self.inner, environ, start_response, CBOR_SERVICES[rpc.group(1)], rpc.group(2))
        if kind is not None:
            status, headers, body = fault_response(service, kind)
            start_response(status, headers + [("Content-Length", str(len(body)))])
            return [body]
        if service == "s3" and environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE"):
            # S3 checks If-Match / If-None-Match and writes atomically; moto's threads do not, so
            # S3 writes take turns (two `release` runs racing for the lock must see one winner).
            with S3_WRITES:
                return list(self.inner(environ, start_response))
        return self.inner(environ, start_response)

    def control(self, environ: dict[str, Any], route: str) -> tuple[str, list[tuple[str, str]], bytes]:
        as_json = [("Content-Type", "application/json")]
        if route == "health":
            return "200 OK", as_json, b'{"ok":true}'
        if route == "faults":
            if environ["REQUEST_METHOD"] == "PUT":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                try:
                    FAULTS.set(json.loads(environ["wsgi.input"].read(length) or b"{}"))
                except (ValueError, AttributeError, TypeError) as e:
                    return "400 Bad Request", as_json, json.dumps({"error": str(e)}).encode()
            with FAULTS.lock:
                return "200 OK", as_json, json.dumps({"rates": FAULTS.rates, "injected": FAULTS.injected}).encode()
        if route == "edge":
            if environ["REQUEST_METHOD"] == "PUT":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                try:
                    wanted = json.loads(environ["wsgi.input"].read(length) or b"{}").get("unreachable", [])
                    if not isinstance(wanted, list) or not all(isinstance(w, str) for w in wanted):
                        raise ValueError("unreachable: a list of origin domains")
                except (ValueError, AttributeError) as e:
                    return "400 Bad Request", as_json, json.dumps({"error": str(e)}).encode()
                UNREACHABLE_ORIGINS.clear()
                UNREACHABLE_ORIGINS.update(wanted)
            out = []
            for d in all_distributions():
                snap = deployed_snapshot(d)
                out.append({"id": d.distribution_id, "domain_name": d.domain_name, "status": d.status, "deployed": snap})
            return "200 OK", as_json, json.dumps(out).encode()
        if route == "taken-buckets" and environ["REQUEST_METHOD"] == "PUT":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                names = json.loads(environ["wsgi.input"].read(length) or b"[]")
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise ValueError("a list of bucket names")
            except (ValueError, AttributeError) as e:
                return "400 Bad Request", as_json, json.dumps({"error": str(e)}).encode()
            for n in names:
                take_bucket(n)
            return "200 OK", as_json, json.dumps(sorted(TAKEN_BUCKETS)).encode()
        if route == "eks/addons":
            out = [{"account": a, "region": r, "cluster": c, "name": n, "configurationValues": v} for (a, r, c, n), v in ADDONS.items()]
            return "200 OK", as_json, json.dumps(out).encode()
        if route == "lb-controller":
            query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
            return "200 OK", as_json, json.dumps(lb_controller_check(query)).encode()
        m = re.fullmatch(r"load-balancers/([0-9a-f-]+)", route)
        if m:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                info = json.loads(environ["wsgi.input"].read(length) or b"{}") if length else None
            except ValueError as e:
                return "400 Bad Request", as_json, json.dumps({"error": repr(e)}).encode()
            made = load_balancer_eni(m.group(1), environ["REQUEST_METHOD"] != "DELETE", info)
            return ("200 OK" if made else "404 Not Found"), as_json, json.dumps({"held": made}).encode()
        if route == "ecr/lifecycle" and environ["REQUEST_METHOD"] == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                ask = json.loads(environ["wsgi.input"].read(length) or b"{}")
                expired = ecr_lifecycle(ask.get("account", moto_core.DEFAULT_ACCOUNT_ID), ask["region"], ask["repository"], float(ask.get("days_later", 0)))
            except (ValueError, KeyError, AttributeError, TypeError) as e:
                return "400 Bad Request", as_json, json.dumps({"error": repr(e)}).encode()
            return "200 OK", as_json, json.dumps({"expired": expired}).encode()
        if route == "ecr/findings" and environ["REQUEST_METHOD"] == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                ask = json.loads(environ["wsgi.input"].read(length) or b"{}")
                key = (ask.get("account", moto_core.DEFAULT_ACCOUNT_ID), ask["region"], ask["repository"], ask.get("digest", "*"))
                SCAN_FINDINGS[key] = {str(k): int(v) for k, v in ask["counts"].items()}
            except (ValueError, KeyError, AttributeError, TypeError) as e:
                return "400 Bad Request", as_json, json.dumps({"error": repr(e)}).encode()
            return "200 OK", as_json, json.dumps({"set": list(key)}).encode()
        m = re.fullmatch(r"ecr/layers/(sha256:[0-9a-f]{64})", route)
        if m:
            path = os.path.join(CONFIG["layer_dir"], m.group(1).replace(":", "-"))
            if os.path.exists(path):
                with open(path, "rb") as f:
                    return "200 OK", [("Content-Type", "application/octet-stream")], f.read()
        return "404 Not Found", as_json, b'{"error":"not found"}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, help="directory for layer bytes")
    parser.add_argument("--cluster-endpoint", required=True)
    parser.add_argument("--cluster-ca", required=True, help="PEM file of the sandbox cluster's CA")
    parser.add_argument("--edge-delay", type=float, default=0.0, help="seconds a distribution change takes to deploy")
    parser.add_argument("--faults", default="{}", help='JSON, e.g. {"s3": {"throttle": 0.05, "error": 0.02}}')
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--edge-port", type=int, default=0)
    args = parser.parse_args()

    os.makedirs(os.path.join(args.state, "layers"), exist_ok=True)
    with open(args.cluster_ca, "rb") as f:
        CONFIG["cluster_ca_b64"] = base64.b64encode(f.read()).decode()
    CONFIG["cluster_endpoint"] = args.cluster_endpoint
    CONFIG["edge_delay"] = args.edge_delay
    CONFIG["layer_dir"] = os.path.join(args.state, "layers")
    FAULTS.set(json.loads(args.faults))

    app = SandboxApp(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", args.port, app, threaded=True, request_handler=MotoRequestHandler)
    port = server.server_address[1]
    CONFIG["aws_url"] = f"http://127.0.0.1:{port}"
    edge = ThreadingHTTPServer(("127.0.0.1", args.edge_port), EdgeHandler)
    edge.daemon_threads = True
    threading.Thread(target=edge.serve_forever, daemon=True).start()
    print(json.dumps({"aws_port": port, "edge_port": edge.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
