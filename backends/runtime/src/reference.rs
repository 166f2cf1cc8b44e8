//! Image references, normalised the way Docker does it, for every backend: `docker images`
//! shows the familiar form (`busybox:latest`), containerd stores the full one
//! (`docker.io/library/busybox:latest`), and an untagged reference means `:latest`.

/// Docker's normalisation: `amazon/amazon-ecs-agent` → `docker.io/amazon/amazon-ecs-agent:latest`,
/// `busybox` → `docker.io/library/busybox:latest`; references with a registry stay as they are.
pub fn normalize(reference: &str) -> String {
    let reference = reference.trim();
    // Docker Hub's other names are docker.io.
    let reference = ["index.docker.io/", "registry-1.docker.io/"]
        .iter()
        .find_map(|p| {
            reference
                .strip_prefix(p)
                .map(|rest| format!("docker.io/{rest}"))
        })
        .unwrap_or_else(|| reference.to_string());
    let reference = reference.as_str();
    let (name, suffix) = match reference.split_once('@') {
        Some((n, d)) => (n.to_string(), format!("@{d}")),
        None => match reference.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n.to_string(), format!(":{t}")),
            _ => (reference.to_string(), ":latest".to_string()),
        },
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_domain =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_domain {
        name
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{full}{suffix}")
}

/// The short form Docker shows: `docker.io/library/busybox:latest` → `busybox:latest`,
/// `docker.io/amazon/x:latest` → `amazon/x:latest`.
pub fn familiar(full: &str) -> String {
    match full.strip_prefix("docker.io/") {
        Some(rest) => rest.strip_prefix("library/").unwrap_or(rest).to_string(),
        None => full.to_string(),
    }
}

/// The familiar form of any reference: `docker.io/library/busybox` → `busybox:latest`.
pub fn familiar_reference(reference: &str) -> String {
    familiar(&normalize(reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(
            normalize("amazon/amazon-ecs-agent:latest"),
            "docker.io/amazon/amazon-ecs-agent:latest"
        );
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(
            normalize("public.ecr.aws/ecs/amazon-ecs-agent:v1"),
            "public.ecr.aws/ecs/amazon-ecs-agent:v1"
        );
        assert_eq!(
            normalize("docker.io/amazon/amazon-ecs-agent:latest"),
            "docker.io/amazon/amazon-ecs-agent:latest"
        );
        assert_eq!(
            normalize("index.docker.io/amazon/amazon-ecs-agent"),
            "docker.io/amazon/amazon-ecs-agent:latest"
        );
    }

    #[test]
    fn familiar_names() {
        assert_eq!(
            familiar("docker.io/amazon/amazon-ecs-agent:latest"),
            "amazon/amazon-ecs-agent:latest"
        );
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("public.ecr.aws/x:1"), "public.ecr.aws/x:1");
    }

    #[test]
    fn familiar_references() {
        assert_eq!(familiar_reference("busybox"), "busybox:latest");
        assert_eq!(
            familiar_reference("docker.io/library/busybox"),
            "busybox:latest"
        );
        assert_eq!(
            familiar_reference("amazon/amazon-ecs-agent:latest"),
            "amazon/amazon-ecs-agent:latest"
        );
        assert_eq!(
            familiar_reference("localhost:5000/agent"),
            "localhost:5000/agent:latest"
        );
        assert_eq!(
            familiar_reference("localhost:5000/agent:v1"),
            "localhost:5000/agent:v1"
        );
        assert_eq!(familiar_reference("a@sha256:00"), "a@sha256:00");
        assert_eq!(
            familiar_reference("registry-1.docker.io/library/busybox:1"),
            "busybox:1"
        );
    }
}
