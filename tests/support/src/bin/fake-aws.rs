//! `fake-aws --object NAME (--size BYTES [--seed N] | --file PATH) [--rate BYTES_PER_S] --dir DIR`:
//! serve an object and its `.md5` in bucket `amazon-ecs-agent` from the fake S3 on 127.0.0.1
//! (see `ecs_test_support::fake_aws`; `Range` requests answered with 206, each connection
//! capped at `--rate` bytes per second when given), for tests/bench.sh. Writes `DIR/ca.pem` (the
//! CA to trust) and then `DIR/endpoints` (`S3_URL=…`, `IMDS_URL=…`, `MD5=…`, `BYTES=…`; written
//! last, so its presence means ready), and serves until killed. Runs in the caller's network
//! namespace.
use ecs_test_support::fake_aws::{md5_hex, pseudo_random, FakeAws, Imds};
use std::path::PathBuf;

fn usage() -> ! {
    eprintln!("usage: fake-aws --object NAME (--size BYTES [--seed N] | --file PATH) [--rate BYTES_PER_S] --dir DIR");
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let (Some(object), Some(dir)) = (value("--object"), value("--dir").map(PathBuf::from)) else {
        usage()
    };
    let body = match (value("--size"), value("--file")) {
        (Some(size), None) => {
            let size: usize = size.parse().unwrap_or_else(|_| usage());
            let seed = value("--seed").and_then(|s| s.parse().ok()).unwrap_or(1);
            pseudo_random(size, seed)
        }
        (None, Some(file)) => std::fs::read(&file).unwrap_or_else(|e| {
            eprintln!("fake-aws: reading {file}: {e}");
            std::process::exit(255)
        }),
        _ => usage(),
    };
    let server = FakeAws::start(Imds::V2 {
        region: "us-east-1".into(),
    });
    let md5 = md5_hex(&body);
    let bytes = body.len();
    server.put_agent("amazon-ecs-agent", &object, body);
    if let Some(rate) = value("--rate") {
        server.cap_rate(rate.parse().unwrap_or_else(|_| usage()));
    }
    let write = |name: &str, text: &str| {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, dir.join(name)))
            .unwrap_or_else(|e| {
                eprintln!("fake-aws: writing {}: {e}", dir.join(name).display());
                std::process::exit(255)
            });
    };
    write("ca.pem", &server.ca_pem);
    write(
        "endpoints",
        &format!(
            "S3_URL={}\nIMDS_URL={}\nMD5={md5}\nBYTES={bytes}\n",
            server.s3_url, server.imds_url
        ),
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
