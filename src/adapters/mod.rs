//! The adapters: each talks to one outside system and knows nothing of the commands. AWS:
//! `endpoint` (the clients), `stacks` (CloudFormation), `store` (S3: the ledger and the lock),
//! `image` (OCI images, ECR), `eks` (the cluster's endpoint and token). Kubernetes: `colour` (a
//! colour's objects), `addons` (the load balancer controller). HTTP: `smoke`. Elastic Load
//! Balancing: `balancer` (a colour's NLB, for its ARN). CloudWatch: `alarms` (what a bake
//! watches). The notification webhook: `notify`.

pub mod addons;
pub mod alarms;
pub mod balancer;
pub mod colour;
pub mod eks;
pub mod endpoint;
pub mod image;
pub mod notify;
pub mod smoke;
pub mod stacks;
pub mod store;
