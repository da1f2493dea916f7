//! The checks of a parsed configuration that need no AWS: names, values, and the files it
//! points at.

use super::*;

impl Config {
    /// Checks that need no AWS: names, values, and the files the config points at (relative
    /// paths are relative to `base`, the config file's directory).
    pub fn validate(&self, file: &str, base: &Path) -> Result<(), ConfigError> {
        self.check_identity(file)?;
        self.check_stacks(file, base)?;
        self.check_deploy(file, base)
    }

    /// The app's name, the state bucket and lease, the image's tag and source.
    fn check_identity(&self, file: &str) -> Result<(), ConfigError> {
        if !is_dns_label(&self.app, 32) {
            return Err(err(
                file,
                "app",
                format!(
                    "{:?} is not a DNS label of at most 32 characters (lowercase letters, digits and '-', starting with a letter)",
                    self.app
                ),
            ));
        }
        if let Some(b) = &self.state.bucket {
            let ok = (3..=63).contains(&b.len())
                && b.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !ok {
                return Err(err(
                    file,
                    "state.bucket",
                    format!(
                        "{b:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, '-', '.')"
                    ),
                ));
            }
        }
        if let Some(owner) = &self.state.bucket_owner
            && !(owner.len() == 12 && owner.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(err(
                file,
                "state.bucket_owner",
                format!("{owner:?} is not an AWS account id (12 digits)"),
            ));
        }
        // Bounded above too: a lease of hours would leave a dead run's lock in the way for hours,
        // and let a stopped run come back inside its lease.
        if !(30..=3600).contains(&self.state.lease_seconds) {
            return Err(err(
                file,
                "state.lease_seconds",
                "between 30 and 3600 (seconds)",
            ));
        }
        let tag_ok = !self.image.tag.is_empty()
            && self.image.tag.len() <= 128
            && self
                .image
                .tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !tag_ok {
            return Err(err(
                file,
                "image.tag",
                format!(
                    "{:?} is not an image tag (1-128 letters, digits, '_', '.', '-')",
                    self.image.tag
                ),
            ));
        }
        // It reaches an annotation, an environment variable and the ledger as it is.
        crate::state::check_model_version(&self.model.version)
            .map_err(|e| err(file, "model.version", e))?;
        match (&self.image.binary, &self.image.archive) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(err(
                    file,
                    "image",
                    "give exactly one of image.binary (a static model-server to build the image from) or image.archive (an OCI layout, OCI archive or docker save tar)",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The stack templates are there; the VPC block is one the network template takes; the
    /// roles and the boundary are IAM ARNs.
    fn check_stacks(&self, file: &str, base: &Path) -> Result<(), ConfigError> {
        let s = &self.stacks;
        for (field, value, kind) in [
            ("stacks.role_arn", &s.role_arn, ":role/"),
            ("stacks.deployer_role_arn", &s.deployer_role_arn, ":role/"),
            ("stacks.operator_role_arn", &s.operator_role_arn, ":role/"),
            (
                "stacks.permissions_boundary_arn",
                &s.permissions_boundary_arn,
                ":policy/",
            ),
        ] {
            if let Some(v) = value
                && !(v.starts_with("arn:") && v.contains(":iam::") && v.contains(kind))
            {
                return Err(err(
                    file,
                    field,
                    format!(
                        "{v:?} is not an IAM ARN of the form arn:<partition>:iam::<account>{kind}<name> (cloudformation/ci-role.yaml's outputs)"
                    ),
                ));
            }
        }
        let dir = base.join(&self.stacks.templates);
        for t in TEMPLATES {
            exists(file, "stacks.templates", &dir.join(format!("{t}.yaml")))?;
        }
        if !self.stacks.vpc_cidr.ends_with("/16") {
            return Err(err(
                file,
                "stacks.vpc_cidr",
                format!(
                    "{:?}: the network template takes a /16 block, e.g. 10.40.0.0/16",
                    self.stacks.vpc_cidr
                ),
            ));
        }
        Ok(())
    }

    /// The Kubernetes templates and the model are there; the deploy, smoke and edge values.
    fn check_deploy(&self, file: &str, base: &Path) -> Result<(), ConfigError> {
        for t in ["deployment.yaml", "service.yaml", "pdb.yaml"] {
            exists(
                file,
                "deploy.templates",
                &base.join(&self.deploy.templates).join(t),
            )?;
        }
        if !is_dns_label(&self.deploy.namespace, 63) {
            return Err(err(
                file,
                "deploy.namespace",
                format!(
                    "{:?} is not a Kubernetes namespace name",
                    self.deploy.namespace
                ),
            ));
        }
        if self.deploy.replicas == 0 {
            return Err(err(file, "deploy.replicas", "must be at least 1"));
        }
        if let Some(m) = &self.model.path {
            exists(file, "model.path", &base.join(m))?;
        }
        if let Some(f) = self.smoke.compare_live
            && !(0.0..=1.0).contains(&f)
        {
            return Err(err(
                file,
                "smoke.compare_live",
                "a fraction between 0 and 1",
            ));
        }
        if let Some(s) = &self.smoke.shadow {
            if !(s.sample > 0.0 && s.sample <= 1.0) {
                return Err(err(
                    file,
                    "smoke.shadow.sample",
                    "a share above 0 and at most 1 (leave smoke.shadow out to copy nothing)",
                ));
            }
            if !(0.0..=1.0).contains(&s.min_agreement) {
                return Err(err(
                    file,
                    "smoke.shadow.min_agreement",
                    "a fraction between 0 and 1",
                ));
            }
            if s.min_requests == 0 {
                return Err(err(
                    file,
                    "smoke.shadow.min_requests",
                    "must be at least 1: a gate that judges no row cannot fail",
                ));
            }
        }
        let a = &self.analysis;
        if a.min_requests == 0 {
            return Err(err(
                file,
                "analysis.min_requests",
                "must be at least 1: a bake that judges no request cannot fail",
            ));
        }
        // An AWS region name (us-east-1, ap-southeast-2, us-gov-west-1): a typo would be found
        // only at the bake's first look, after the flip, and flip a healthy release back.
        let region_like = |r: &str| {
            let parts: Vec<&str> = r.split('-').collect();
            parts.len() >= 3
                && parts[..parts.len() - 1]
                    .iter()
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
                && !parts[parts.len() - 1].is_empty()
                && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        };
        if let Some(bad) = a
            .alarms
            .iter()
            .filter_map(|x| x.region())
            .find(|r| !region_like(r))
        {
            return Err(err(
                file,
                "analysis.alarms",
                format!("{bad:?} is not an AWS region name (us-east-1, eu-west-1, ...)"),
            ));
        }
        for (field, value) in [
            ("analysis.max_error_rate", Some(a.max_error_rate)),
            (
                "analysis.max_error_rate_increase",
                a.max_error_rate_increase,
            ),
            ("analysis.max_edge_error_rate", a.max_edge_error_rate),
        ] {
            if let Some(v) = value
                && !(0.0..=1.0).contains(&v)
            {
                return Err(err(
                    file,
                    field,
                    "a share between 0 and 1 (0.01: 1 %), not a percentage",
                ));
            }
        }
        if self.edge.verify_timeout_seconds == 0 {
            return Err(err(
                file,
                "edge.verify_timeout_seconds",
                "must be at least 1",
            ));
        }
        if let Some(u) = &self.edge.public_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(err(
                file,
                "edge.public_url",
                format!("{u:?} is not an http(s) URL"),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The image's source exists: checked only by the commands that build or push the image
    /// (`up`, `image build`), so that status, promote, rollback or destroy run where no build is.
    /// The golden cases, for the commands that smoke-test (up, promote, rollback): there and not
    /// empty before they start (a smoke test with no case would check nothing). The others
    /// (status, history, destroy) run with a broken case file, to look at or clean up.
    pub fn check_cases(&self, file: &str, base: &Path) -> Result<(), ConfigError> {
        exists(file, "smoke.cases", &base.join(&self.smoke.cases))?;
        crate::adapters::smoke::load_cases(&base.join(&self.smoke.cases))
            .map(|_| ())
            .map_err(|e| err(file, "smoke.cases", e))
    }

    pub fn check_image(&self, file: &str, base: &Path) -> Result<(), ConfigError> {
        match (&self.image.binary, &self.image.archive) {
            (Some(p), _) => exists(file, "image.binary", &base.join(p)),
            (None, Some(p)) => exists(file, "image.archive", &base.join(p)),
            (None, None) => Ok(()),
        }
    }
}

fn exists(file: &str, field: &str, path: &Path) -> Result<(), ConfigError> {
    if path.exists() {
        Ok(())
    } else {
        Err(err(
            file,
            field,
            format!("{} does not exist", path.display()),
        ))
    }
}
