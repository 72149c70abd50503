//! `[controller]`, `[controller.http]` and `[controller.sns]`: the controller's own settings.
//!
//! Checks them and fills in the defaults ([`HttpSettings::default`], [`SnsSettings::default`]).
//! Every problem is a located diagnostic naming the key; nothing here reads the network.

use std::net::IpAddr;
use std::time::Duration;

use super::model::{ApiSettings, ControllerSettings, HttpSettings, RetentionSettings, SnsSettings};
use super::raw::{RawApi, RawController, RawHttp, RawRetention, RawSns};
use super::validate::Ctx;
use super::values;
use crate::cfg_path;

/// The smallest body budget: GitHub's largest delivery (25 MiB) must fit.
const MIN_BODY_MIB: i64 = 25;
/// The largest body budget (the budget is counted in a `u32` of bytes).
const MAX_BODY_MIB: i64 = 4095;

pub(crate) fn settings(raw: &RawController, cx: &mut Ctx) -> ControllerSettings {
    let public_url = raw
        .public_url
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    if let Err((message, help)) = check_public_url(&public_url) {
        cx.error(cfg_path!["controller", "public_url"], message, help);
    }
    if let Some(r) = &raw.config_repository {
        if let Err(m) = values::repository(r) {
            cx.error(
                cfg_path!["controller", "config_repository"],
                m,
                "write `owner/name`",
            );
        }
    }
    ControllerSettings {
        public_url: public_url.trim_end_matches('/').to_string(),
        config_repository: raw.config_repository.clone(),
        config_branch: raw.config_branch.clone().unwrap_or_else(|| "main".into()),
        config_path: raw
            .config_path
            .clone()
            .unwrap_or_else(|| "stages.toml".into()),
        http: http(&raw.http, cx),
        sns: sns(&raw.sns, cx),
        api: api(&raw.api, cx),
        retention: retention(&raw.retention, cx),
    }
}

fn retention(raw: &RawRetention, cx: &mut Ctx) -> RetentionSettings {
    let d = RetentionSettings::default();
    let mut keep = |key: &str, text: Option<&str>, default: Duration| {
        positive_duration(cx, &["retention", key], text, default)
    };
    let events = keep("events", raw.events.as_deref(), d.events);
    let deliveries = keep("deliveries", raw.deliveries.as_deref(), d.deliveries);
    let approval_tokens = keep(
        "approval_tokens",
        raw.approval_tokens.as_deref(),
        d.approval_tokens,
    );
    let archive_dir = match raw.archive_dir.as_deref().map(str::trim) {
        Some("") => {
            cx.error(
                cfg_path!["controller", "retention", "archive_dir"],
                "`archive_dir` is empty".into(),
                "name a directory, or leave the key out to prune without archiving",
            );
            None
        }
        other => other.map(std::path::PathBuf::from),
    };
    RetentionSettings {
        events,
        deliveries,
        approval_tokens,
        archive_dir,
    }
}

fn api(raw: &RawApi, cx: &mut Ctx) -> ApiSettings {
    let d = ApiSettings::default();
    let mut rate = |key: &str, value: Option<i64>, default: u32| {
        let help = "a number of requests from 1 to 1000000";
        count(
            cx,
            &["api", key],
            value,
            (1, 1_000_000),
            default.into(),
            help,
        )
    };
    ApiSettings {
        per_key_per_minute: rate(
            "per_key_per_minute",
            raw.per_key_per_minute,
            d.per_key_per_minute,
        ),
        per_key_burst: rate("per_key_burst", raw.per_key_burst, d.per_key_burst),
        per_address_per_minute: rate(
            "per_address_per_minute",
            raw.per_address_per_minute,
            d.per_address_per_minute,
        ),
        per_address_burst: rate(
            "per_address_burst",
            raw.per_address_burst,
            d.per_address_burst,
        ),
    }
}

/// `public_url` is an http(s) URL, and https unless its host is a loopback address: approval
/// links carry tokens.
fn check_public_url(url: &str) -> Result<(), (String, &'static str)> {
    let parsed = url::Url::parse(url);
    let Ok(parsed) = parsed.as_ref().map_err(|_| ()) else {
        return Err((
            format!("`{url}` is not an http(s) URL"),
            "write the address approvers use, e.g. `https://tollgate.example.com`",
        ));
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if parsed.host().is_some_and(|h| is_loopback(&h)) => Ok(()),
        "http" => Err((
            format!(
                "`{url}` is plain http: approval links carry tokens and must travel over https"
            ),
            "use an https URL (http is accepted only for a loopback host such as 127.0.0.1 or localhost)",
        )),
        _ => Err((
            format!("`{url}` is not an http(s) URL"),
            "write the address approvers use, e.g. `https://tollgate.example.com`",
        )),
    }
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

fn http(raw: &RawHttp, cx: &mut Ctx) -> HttpSettings {
    let d = HttpSettings::default();
    let mut duration = |key: &str, text: &Option<String>, default: Duration| {
        positive_duration(cx, &["http", key], text.as_deref(), default)
    };
    let header_read_timeout = duration(
        "header_read_timeout",
        &raw.header_read_timeout,
        d.header_read_timeout,
    );
    let request_timeout = duration("request_timeout", &raw.request_timeout, d.request_timeout);
    let idle_timeout = duration("idle_timeout", &raw.idle_timeout, d.idle_timeout);
    let shutdown_grace = duration("shutdown_grace", &raw.shutdown_grace, d.shutdown_grace);
    let default_mib = i64::from(d.max_unauthenticated_body_bytes / (1024 * 1024));
    let body_mib = count(
        cx,
        &["http", "max_unauthenticated_body_mib"],
        raw.max_unauthenticated_body_mib,
        (MIN_BODY_MIB, MAX_BODY_MIB),
        default_mib,
        "GitHub's largest delivery is 25 MiB, so at least 25; at most 4095",
    );
    HttpSettings {
        header_read_timeout,
        request_timeout,
        idle_timeout,
        shutdown_grace,
        max_concurrent_requests: count(
            cx,
            &["http", "max_concurrent_requests"],
            raw.max_concurrent_requests,
            (1, 100_000),
            d.max_concurrent_requests.into(),
            "a number of requests from 1 to 100000",
        ),
        max_unauthenticated_body_bytes: body_mib * 1024 * 1024,
        rate_limit_per_minute: count(
            cx,
            &["http", "rate_limit_per_minute"],
            raw.rate_limit_per_minute,
            (1, 1_000_000),
            d.rate_limit_per_minute.into(),
            "a number of requests per minute from 1 to 1000000",
        ),
        rate_limit_burst: count(
            cx,
            &["http", "rate_limit_burst"],
            raw.rate_limit_burst,
            (1, 1_000_000),
            d.rate_limit_burst.into(),
            "a number of requests from 1 to 1000000",
        ),
        trusted_proxies: trusted_proxies(raw.trusted_proxies.as_deref().unwrap_or(&[]), cx),
    }
}

/// `trusted_proxies`: each an IP address or a CIDR block (`10.0.0.0/8`, `fd00::/8`).
fn trusted_proxies(raw: &[String], cx: &mut Ctx) -> Vec<(IpAddr, u8)> {
    let mut out = Vec::new();
    for text in raw {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text.as_str(), None),
        };
        let parsed = addr.trim().parse::<IpAddr>().ok().and_then(|ip| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match len {
                None => Some((ip, max)),
                Some(l) => l
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .map(|l| (ip, l)),
            }
        });
        match parsed {
            Some(block) => out.push(block),
            None => cx.error(
                crate::cfg_path!["controller", "http", "trusted_proxies"],
                format!("`{text}` is not an IP address or a CIDR block"),
                "write addresses such as `10.0.0.5`, or blocks such as `10.0.0.0/8` or `fd00::/8`",
            ),
        }
    }
    out
}

fn sns(raw: &RawSns, cx: &mut Ctx) -> SnsSettings {
    let d = SnsSettings::default();
    let mut duration = |key: &str, text: &Option<String>, default: Duration| {
        positive_duration(cx, &["sns", key], text.as_deref(), default)
    };
    let max_message_age = duration("max_message_age", &raw.max_message_age, d.max_message_age);
    let clock_skew = duration("clock_skew", &raw.clock_skew, d.clock_skew);
    let cert_failure_ttl = duration(
        "cert_failure_ttl",
        &raw.cert_failure_ttl,
        d.cert_failure_ttl,
    );
    SnsSettings {
        max_message_age,
        clock_skew,
        require_signature_v2: raw.require_signature_v2.unwrap_or(d.require_signature_v2),
        cert_failure_ttl,
        cert_fetches_per_minute: count(
            cx,
            &["sns", "cert_fetches_per_minute"],
            raw.cert_fetches_per_minute,
            (1, 10_000),
            d.cert_fetches_per_minute.into(),
            "a number of fetches per minute from 1 to 10000",
        ),
    }
}

/// A duration above zero under `[controller.<table>]`.
fn positive_duration(
    cx: &mut Ctx,
    key: &[&str; 2],
    text: Option<&str>,
    default: Duration,
) -> Duration {
    let path = || cfg_path!["controller", key[0], key[1]];
    let value = cx.duration(path(), text, default);
    if value.is_zero() {
        cx.error(
            path(),
            format!("`{}` must be longer than zero", key[1]),
            "write it like `30s`, `10m` or `1h30m`",
        );
        return default;
    }
    value
}

/// An integer in `range` under `[controller.<table>]`.
fn count(
    cx: &mut Ctx,
    key: &[&str; 2],
    value: Option<i64>,
    (low, high): (i64, i64),
    default: i64,
    help: &str,
) -> u32 {
    let value = value.unwrap_or(default);
    if (low..=high).contains(&value) {
        return u32::try_from(value).unwrap_or(u32::MAX);
    }
    cx.error(
        cfg_path!["controller", key[0], key[1]],
        format!("`{}` is {value}, outside {low}..={high}", key[1]),
        help,
    );
    u32::try_from(default).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {

    #[test]
    fn trusted_proxies_are_addresses_or_cidr_blocks() {
        let ok =
            "[controller.http]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"fd00::/8\"]";
        let http = load_with(ok).unwrap().config.controller.http;
        assert_eq!(http.trusted_proxies.len(), 3);
        assert!(http.is_trusted_proxy("10.200.3.4".parse().unwrap()));
        assert!(http.is_trusted_proxy("192.0.2.7".parse().unwrap()));
        assert!(!http.is_trusted_proxy("192.0.2.8".parse().unwrap()));
        assert!(http.is_trusted_proxy("fd12::1".parse().unwrap()));
        assert!(!http.is_trusted_proxy("11.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "proxy.internal", "10.0.0/8", "::/129"] {
            let text = format!("[controller.http]\ntrusted_proxies = [\"{bad}\"]");
            let Err(ConfigError::Invalid(diags)) = load_with(&text) else {
                panic!("{bad} accepted");
            };
            let err: Vec<String> = diags.iter().map(ToString::to_string).collect();
            let err = err.join("\n");
            assert!(
                err.contains(&format!("`{bad}` is not an IP address or a CIDR block")),
                "{bad}: {err}"
            );
        }
    }

    use super::*;
    use crate::config::{ConfigError, load_str};
    use std::path::{Path, PathBuf};

    /// The fixture configuration with `extra` after its first line, as `load_str` sees it.
    fn load_with(extra: &str) -> Result<crate::config::Loaded, ConfigError> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
        let text = std::fs::read_to_string(dir.join("stages.toml")).unwrap();
        let text = text.replacen(
            "accounts = \"accounts.toml\"",
            &format!("accounts = \"accounts.toml\"\n{extra}"),
            1,
        );
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| ConfigError::Unreadable {
                path: p.into(),
                source,
            })
        };
        load_str(&dir.join("stages.toml"), &text, &dir, &read)
    }

    #[test]
    fn http_and_sns_settings_have_defaults_and_are_checked() {
        let loaded = load_with("").unwrap().config.controller;
        assert_eq!(loaded.http, HttpSettings::default());
        assert_eq!(loaded.sns, SnsSettings::default());
        assert_eq!(loaded.api, ApiSettings::default());
        let set = "[controller.api]\nper_key_per_minute = 30\nper_address_burst = 5";
        let api = load_with(set).unwrap().config.controller.api;
        assert_eq!((api.per_key_per_minute, api.per_address_burst), (30, 5));
        assert_eq!(api.per_key_burst, ApiSettings::default().per_key_burst);
        let Err(ConfigError::Invalid(diags)) = load_with("[controller.api]\nper_key_burst = 0")
        else {
            panic!("a zero burst accepted");
        };
        assert!(
            diags
                .iter()
                .any(|d| d.to_string().contains("per_key_burst"))
        );

        let set = "[controller.http]\nheader_read_timeout = \"5s\"\nmax_unauthenticated_body_mib = 100\n[controller.sns]\nrequire_signature_v2 = true\nmax_message_age = \"15m\"";
        let loaded = load_with(set).unwrap().config.controller;
        assert_eq!(loaded.http.header_read_timeout, Duration::from_secs(5));
        assert_eq!(
            loaded.http.max_unauthenticated_body_bytes,
            100 * 1024 * 1024
        );
        assert!(loaded.sns.require_signature_v2);
        assert_eq!(loaded.sns.max_message_age, Duration::from_secs(900));

        let bad = "[controller.http]\nheader_read_timeout = \"0s\"\nmax_unauthenticated_body_mib = 10\nrate_limit_burst = 0\n[controller.sns]\nclock_skew = \"soon\"";
        let Err(ConfigError::Invalid(diags)) = load_with(bad) else {
            panic!("accepted");
        };
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        let text = text.join("\n");
        for key in [
            "header_read_timeout",
            "max_unauthenticated_body_mib",
            "rate_limit_burst",
        ] {
            assert!(text.contains(key), "{key} not named:\n{text}");
        }
        assert!(text.contains("25 MiB"), "{text}");
        // A malformed duration is located at its line (9: `clock_skew`) with the text quoted.
        assert!(
            text.contains("stages.toml:9:") && text.contains("`soon` is not a duration"),
            "{text}"
        );
    }

    #[test]
    fn public_url_must_be_https_unless_loopback() {
        for ok in [
            "https://tollgate.example.com",
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://[::1]:9000/",
            "http://localhost:8080",
        ] {
            assert!(check_public_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://tollgate.example.com",
            "http://10.0.0.1:8080",
            "http://localhost.example.com",
            "ftp://tollgate.example.com",
            "tollgate.example.com",
        ] {
            assert!(check_public_url(bad).is_err(), "{bad}");
        }
        let (message, help) = check_public_url("http://tollgate.example.com").unwrap_err();
        assert!(message.contains("https"), "{message}");
        assert!(help.contains("loopback"), "{help}");
    }

    #[test]
    fn retention_has_defaults_and_refuses_zero_and_an_empty_archive_dir() {
        let loaded = load_with("").unwrap().config.controller.retention;
        assert_eq!(loaded, RetentionSettings::default());
        assert_eq!(loaded.events, Duration::from_secs(90 * 86_400));
        let set = "[controller.retention]\nevents = \"400d\"\narchive_dir = \"/var/lib/tollgate/archive\"";
        let r = load_with(set).unwrap().config.controller.retention;
        assert_eq!(r.events, Duration::from_secs(400 * 86_400));
        assert_eq!(r.deliveries, RetentionSettings::default().deliveries);
        assert_eq!(
            r.archive_dir.as_deref(),
            Some(Path::new("/var/lib/tollgate/archive"))
        );
        let bad = "[controller.retention]\ndeliveries = \"0d\"\narchive_dir = \" \"\napproval_tokens = \"soon\"";
        let Err(ConfigError::Invalid(diags)) = load_with(bad) else {
            panic!("bad retention accepted");
        };
        let text: Vec<String> = diags.iter().map(ToString::to_string).collect();
        let text = text.join("\n");
        for said in [
            "`deliveries` must be longer than zero",
            "`archive_dir` is empty",
            "`soon` is not a duration",
        ] {
            assert!(text.contains(said), "{said}: {text}");
        }
    }
}
