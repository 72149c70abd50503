//! Parsers for the scalar values of the configuration: durations, account ids, regions, ARNs,
//! names, clock times and weekdays. Each returns a message that says what was expected.

use std::time::Duration;

use chrono::{NaiveDate, NaiveTime, Weekday};

/// `90s`, `10m`, `24h`, `1h30m`, `500ms`, `2d`.
pub fn duration(text: &str) -> Result<Duration, String> {
    let expected = "expected a duration such as `30s`, `10m`, `1h30m` or `500ms`";
    let s = text.trim();
    if s.is_empty() {
        return Err(format!("empty duration; {expected}"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("`{text}` is not a duration; {expected}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}` is too large; {expected}"))?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(format!("`{text}` has a number without a unit; {expected}")),
            other => {
                return Err(format!(
                    "`{other}` is not a unit (ms, s, m, h, d); {expected}"
                ));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Renders a duration the way the configuration writes it.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 && secs < 60 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// A 12-digit AWS account id.
pub fn account_id(text: &str) -> Result<(), String> {
    if text.len() == 12 && text.chars().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "`{text}` is not an AWS account id (exactly 12 digits)"
        ))
    }
}

/// An AWS region such as `eu-west-1`, `us-gov-west-1`, `cn-north-1`.
pub fn region(text: &str) -> Result<(), String> {
    let parts: Vec<&str> = text.split('-').collect();
    let ok = parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].chars().all(|c| c.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok();
    if ok {
        Ok(())
    } else {
        Err(format!("`{text}` is not an AWS region (like `eu-west-1`)"))
    }
}

/// The parts of an ARN: partition, service, region, account, resource.
#[derive(Debug, PartialEq, Eq)]
pub struct Arn<'a> {
    pub partition: &'a str,
    pub service: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    pub resource: &'a str,
}

/// Parses `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE` and checks the service.
pub fn arn<'a>(text: &'a str, service: &str) -> Result<Arn<'a>, String> {
    let mut it = text.splitn(6, ':');
    let parts: Vec<&str> = (0..6).filter_map(|_| it.next()).collect();
    let bad = || format!("`{text}` is not a valid {service} ARN");
    if parts.len() != 6 || parts[0] != "arn" {
        return Err(bad());
    }
    let arn = Arn {
        partition: parts[1],
        service: parts[2],
        region: parts[3],
        account: parts[4],
        resource: parts[5],
    };
    if !matches!(arn.partition, "aws" | "aws-cn" | "aws-us-gov") || arn.service != service {
        return Err(bad());
    }
    account_id(arn.account).map_err(|_| bad())?;
    if arn.resource.is_empty() {
        return Err(bad());
    }
    Ok(arn)
}

/// An IAM role ARN: `arn:aws:iam::123456789012:role/name`.
pub fn role_arn(text: &str) -> Result<Arn<'_>, String> {
    let a = arn(text, "iam")?;
    if !a.region.is_empty() || !a.resource.starts_with("role/") || a.resource.len() <= 5 {
        return Err(format!(
            "`{text}` is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"
        ));
    }
    Ok(a)
}

/// A standard SNS topic's ARN: `arn:aws:sns:eu-west-1:123456789012:name`. Every topic
/// tollgate uses is standard: a FIFO topic (its name ends in `.fifo`) delivers only to SQS
/// queues, never by email or to an HTTPS endpoint, and refuses a `Publish` without a
/// `MessageGroupId` (SNS Developer Guide, "FIFO topics"; API_Publish).
pub fn topic_arn(text: &str) -> Result<Arn<'_>, String> {
    let a = arn(text, "sns")?;
    if region(a.region).is_err() || a.resource.contains(['/', ':']) {
        return Err(format!(
            "`{text}` is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"
        ));
    }
    if a.resource.ends_with(".fifo") {
        return Err(format!(
            "`{text}` is a FIFO topic: SNS delivers its messages only to SQS queues (no email, \
             no HTTPS) and refuses a publish without a message group; use a standard topic"
        ));
    }
    Ok(a)
}

/// A name used as an identifier: letters, digits, `-`, `_`, 1 to 64 characters.
pub fn name(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{text}` is not a valid name (1-64 letters, digits, `-` or `_`)"
        ))
    }
}

/// A CodePipeline stage name, as the API takes it: 1-100 of letters, digits, `.`, `@`, `-`, `_`
/// (`StageName` in the CodePipeline API reference, e.g. `RollbackStage`'s `stageName`).
pub fn pipeline_stage(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= 100
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '@' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{text}` is not a valid CodePipeline stage name (1-100 letters, digits, `.`, `@`, `-` or `_`)"
        ))
    }
}

/// `owner/name` of a GitHub repository.
pub fn repository(text: &str) -> Result<(), String> {
    let valid = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match text.split_once('/') {
        Some((owner, repo)) if valid(owner) && valid(repo) => Ok(()),
        _ => Err(format!(
            "`{text}` is not a GitHub repository (`owner/name`)"
        )),
    }
}

/// `HH:MM`, 24-hour clock; `24:00` means the end of the day.
pub fn clock(text: &str) -> Result<NaiveTime, String> {
    if text == "24:00" {
        return Ok(NaiveTime::from_hms_nano_opt(23, 59, 59, 999_999_999).expect("valid time"));
    }
    NaiveTime::parse_from_str(text, "%H:%M")
        .map_err(|_| format!("`{text}` is not a time of day (`HH:MM`, 24-hour clock)"))
}

/// `mon` … `sun` (or the full English name).
pub fn weekday(text: &str) -> Result<Weekday, String> {
    text.parse::<Weekday>()
        .map_err(|_| format!("`{text}` is not a weekday (mon, tue, wed, thu, fri, sat, sun)"))
}

/// `YYYY-MM-DD`.
pub fn date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| format!("`{text}` is not a date (`YYYY-MM-DD`)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "10", "m", "10x", "1.5h", "-1s", "10 m"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn ids_regions_arns() {
        assert!(account_id("123456789012").is_ok());
        assert!(account_id("12345678901").is_err());
        assert!(account_id("12345678901a").is_err());
        assert!(region("eu-west-1").is_ok());
        assert!(region("us-gov-west-1").is_ok());
        assert!(region("euwest1").is_err());
        assert!(region("EU-west-1").is_err());
        assert!(role_arn("arn:aws:iam::123456789012:role/deploy").is_ok());
        assert!(role_arn("arn:aws:iam::123456789012:user/deploy").is_err());
        assert!(role_arn("arn:aws:iam:eu-west-1:123456789012:role/x").is_err());
        assert!(topic_arn("arn:aws:sns:eu-west-1:123456789012:alarms").is_ok());
        assert!(topic_arn("arn:aws:sqs:eu-west-1:123456789012:alarms").is_err());
        assert!(topic_arn("arn:aws:sns:eu-west-1:1234:alarms").is_err());
        let fifo = topic_arn("arn:aws:sns:eu-west-1:123456789012:approvals.fifo").unwrap_err();
        assert!(fifo.contains("is a FIFO topic"), "{fifo}");
    }

    #[test]
    fn clock_days_dates() {
        assert!(clock("09:00").is_ok());
        assert!(clock("24:00").is_ok());
        assert!(clock("25:00").is_err());
        assert_eq!(weekday("mon"), Ok(Weekday::Mon));
        assert!(weekday("funday").is_err());
        assert!(date("2026-12-24").is_ok());
        assert!(date("2026-13-01").is_err());
        assert!(repository("acme/backend").is_ok());
        assert!(repository("acme").is_err());
    }
}
