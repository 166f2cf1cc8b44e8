//! Where the agent is published: the partition of a region, its buckets and their URLs.
//!
//! Two buckets, tried in this order (packaging/COMPATIBILITY.md §5): `amazon-ecs-agent` in the
//! partition's main region, then `amazon-ecs-agent-<region>` in the host's region. Requests are
//! anonymous HTTPS GETs of the bucket's virtual-hosted URL, or path-style under
//! `AWS_ENDPOINT_URL_S3` when that is set (a mirror, a test server).

/// An AWS partition: its DNS suffix and the region holding its `amazon-ecs-agent` bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub id: &'static str,
    pub dns_suffix: &'static str,
    pub bucket_region: &'static str,
}

/// The partitions, by region prefix. The first five are the Go tool's table; the Go tool has no
/// bucket region for aws-iso-e and aws-iso-f and would fall back to us-east-1, which cannot be
/// reached from an isolated partition, so we use each one's first region instead. aws-eusc (the
/// European Sovereign Cloud) as the AWS SDKs' partition table defines it: regions
/// `eusc-de-<word>-<n>`, domain `amazonaws.eu`, first region `eusc-de-east-1`.
const PARTITIONS: &[(&str, Partition)] = &[
    (
        "us-gov-",
        Partition {
            id: "aws-us-gov",
            dns_suffix: "amazonaws.com",
            bucket_region: "us-gov-west-1",
        },
    ),
    (
        "us-iso-",
        Partition {
            id: "aws-iso",
            dns_suffix: "c2s.ic.gov",
            bucket_region: "us-iso-east-1",
        },
    ),
    (
        "us-isob-",
        Partition {
            id: "aws-iso-b",
            dns_suffix: "sc2s.sgov.gov",
            bucket_region: "us-isob-east-1",
        },
    ),
    (
        "eu-isoe-",
        Partition {
            id: "aws-iso-e",
            dns_suffix: "cloud.adc-e.uk",
            bucket_region: "eu-isoe-west-1",
        },
    ),
    (
        "us-isof-",
        Partition {
            id: "aws-iso-f",
            dns_suffix: "csp.hci.ic.gov",
            bucket_region: "us-isof-south-1",
        },
    ),
    (
        "eusc-de-",
        Partition {
            id: "aws-eusc",
            dns_suffix: "amazonaws.eu",
            bucket_region: "eusc-de-east-1",
        },
    ),
    (
        "cn-",
        Partition {
            id: "aws-cn",
            dns_suffix: "amazonaws.com.cn",
            bucket_region: "cn-north-1",
        },
    ),
];

/// The commercial partition: also the SDKs' answer for a region matching no pattern.
pub const AWS: Partition = Partition {
    id: "aws",
    dns_suffix: "amazonaws.com",
    bucket_region: "us-east-1",
};

/// The partition of `region` (`<prefix><word>-<digits>`, as the SDKs' partition patterns).
pub fn partition(region: &str) -> Partition {
    let shaped = |rest: &str| {
        rest.rsplit_once('-').is_some_and(|(word, num)| {
            !word.is_empty()
                && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !num.is_empty()
                && num.chars().all(|c| c.is_ascii_digit())
        })
    };
    PARTITIONS
        .iter()
        .find(|(prefix, _)| region.strip_prefix(prefix).is_some_and(shaped))
        .map(|(_, p)| *p)
        .unwrap_or(AWS)
}

/// A region name can go into a host name and a bucket name.
pub fn valid_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 50
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !region.starts_with('-')
        && !region.ends_with('-')
}

pub const BUCKET: &str = "amazon-ecs-agent";

/// One bucket to download from: the tarball and its `.md5`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Source {
    pub bucket: String,
    pub tarball: String,
    pub md5: String,
}

/// S3's endpoint variants, as the AWS SDKs' S3 endpoint rules build the virtual-hosted names
/// (`AWS_USE_FIPS_ENDPOINT`, `AWS_USE_DUALSTACK_ENDPOINT`). An endpoint URL is used as given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Variant {
    pub fips: bool,
    pub dualstack: bool,
}

impl Variant {
    /// `s3`, `s3-fips`, `s3.dualstack` or `s3-fips.dualstack`.
    fn service(self) -> String {
        format!(
            "s3{}{}",
            if self.fips { "-fips" } else { "" },
            if self.dualstack { ".dualstack" } else { "" }
        )
    }
}

/// The buckets for `region`, in the order they are tried.
pub fn sources(
    region: &str,
    object: &str,
    s3_endpoint: Option<&str>,
    variant: Variant,
) -> Vec<Source> {
    let part = partition(region);
    let buckets = [
        (BUCKET.to_string(), part.bucket_region),
        (format!("{BUCKET}-{region}"), region),
    ];
    buckets
        .into_iter()
        .map(|(bucket, bucket_region)| {
            let base = match s3_endpoint {
                Some(endpoint) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
                None => format!(
                    "https://{bucket}.{}.{bucket_region}.{}",
                    variant.service(),
                    part.dns_suffix
                ),
            };
            Source {
                tarball: format!("{base}/{object}"),
                md5: format!("{base}/{object}.md5"),
                bucket,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_by_region() {
        for (region, id, bucket_region) in [
            ("us-east-1", "aws", "us-east-1"),
            ("eu-west-3", "aws", "us-east-1"),
            ("il-central-1", "aws", "us-east-1"),
            ("cn-northwest-1", "aws-cn", "cn-north-1"),
            ("us-gov-east-1", "aws-us-gov", "us-gov-west-1"),
            ("us-iso-west-1", "aws-iso", "us-iso-east-1"),
            ("us-isob-east-1", "aws-iso-b", "us-isob-east-1"),
            ("eu-isoe-west-1", "aws-iso-e", "eu-isoe-west-1"),
            ("us-isof-east-1", "aws-iso-f", "us-isof-south-1"),
            ("eusc-de-east-1", "aws-eusc", "eusc-de-east-1"),
            ("eusc-de-west-2", "aws-eusc", "eusc-de-east-1"),
            // Only `eusc-de-…` is the sovereign cloud, as the SDKs' pattern says.
            ("eusc-fr-east-1", "aws", "us-east-1"),
            // Unknown shapes: the SDKs' default partition.
            ("moon-base-1", "aws", "us-east-1"),
            ("cn-", "aws", "us-east-1"),
        ] {
            let p = partition(region);
            assert_eq!((p.id, p.bucket_region), (id, bucket_region), "{region}");
        }
    }

    #[test]
    fn urls_per_partition() {
        let obj = "ecs-agent-v1.2.3.tar";
        let s = sources("eu-west-1", obj, None, Variant::default());
        assert_eq!(
            s[0].tarball,
            "https://amazon-ecs-agent.s3.us-east-1.amazonaws.com/ecs-agent-v1.2.3.tar"
        );
        assert_eq!(
            s[0].md5,
            "https://amazon-ecs-agent.s3.us-east-1.amazonaws.com/ecs-agent-v1.2.3.tar.md5"
        );
        assert_eq!(s[1].bucket, "amazon-ecs-agent-eu-west-1");
        assert_eq!(
            s[1].tarball,
            "https://amazon-ecs-agent-eu-west-1.s3.eu-west-1.amazonaws.com/ecs-agent-v1.2.3.tar"
        );
        let cn = sources("cn-northwest-1", obj, None, Variant::default());
        assert_eq!(
            cn[0].tarball,
            "https://amazon-ecs-agent.s3.cn-north-1.amazonaws.com.cn/ecs-agent-v1.2.3.tar"
        );
        assert_eq!(
            cn[1].tarball,
            "https://amazon-ecs-agent-cn-northwest-1.s3.cn-northwest-1.amazonaws.com.cn/ecs-agent-v1.2.3.tar"
        );
        let iso = sources("us-iso-west-1", obj, None, Variant::default());
        assert_eq!(
            iso[0].tarball,
            "https://amazon-ecs-agent.s3.us-iso-east-1.c2s.ic.gov/ecs-agent-v1.2.3.tar"
        );
        let gov = sources("us-gov-east-1", obj, None, Variant::default());
        assert_eq!(
            gov[0].tarball,
            "https://amazon-ecs-agent.s3.us-gov-west-1.amazonaws.com/ecs-agent-v1.2.3.tar"
        );
    }

    #[test]
    fn sovereign_cloud_fips_and_dualstack_hosts() {
        let obj = "o.tar";
        let v = |fips, dualstack| Variant { fips, dualstack };
        let eusc = sources("eusc-de-east-1", obj, None, v(false, false));
        assert_eq!(
            eusc[0].tarball,
            "https://amazon-ecs-agent.s3.eusc-de-east-1.amazonaws.eu/o.tar"
        );
        assert_eq!(
            eusc[1].tarball,
            "https://amazon-ecs-agent-eusc-de-east-1.s3.eusc-de-east-1.amazonaws.eu/o.tar"
        );
        let hosts = |fips, dualstack| {
            sources("us-west-2", obj, None, v(fips, dualstack))[1]
                .tarball
                .clone()
        };
        assert_eq!(
            hosts(true, false),
            "https://amazon-ecs-agent-us-west-2.s3-fips.us-west-2.amazonaws.com/o.tar"
        );
        assert_eq!(
            hosts(false, true),
            "https://amazon-ecs-agent-us-west-2.s3.dualstack.us-west-2.amazonaws.com/o.tar"
        );
        assert_eq!(
            hosts(true, true),
            "https://amazon-ecs-agent-us-west-2.s3-fips.dualstack.us-west-2.amazonaws.com/o.tar"
        );
    }

    /// An endpoint URL is used as given (path-style), FIPS and dual-stack or not.
    #[test]
    fn custom_endpoint_is_path_style() {
        let s = sources(
            "ap-south-1",
            "ecs-agent-v1.tar",
            Some("https://mirror.internal:8443/s3/"),
            Variant {
                fips: true,
                dualstack: true,
            },
        );
        assert_eq!(
            s[0].tarball,
            "https://mirror.internal:8443/s3/amazon-ecs-agent/ecs-agent-v1.tar"
        );
        assert_eq!(
            s[1].md5,
            "https://mirror.internal:8443/s3/amazon-ecs-agent-ap-south-1/ecs-agent-v1.tar.md5"
        );
    }

    #[test]
    fn region_names() {
        assert!(valid_region("us-east-1") && valid_region("us-isob-east-1"));
        for bad in [
            "",
            "US-EAST-1",
            "us east 1",
            "eu-west-1.",
            "-x",
            "a/b",
            "x-",
        ] {
            assert!(!valid_region(bad), "{bad:?}");
        }
    }
}
