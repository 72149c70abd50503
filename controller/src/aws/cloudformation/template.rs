//! Reads which parameters a CloudFormation template declares (its top-level `Parameters`
//! keys), and which of its Lambda functions run a container image, from a JSON or YAML
//! template body.
//!
//! Pure: no I/O, no AWS types. Must never guess: a body it cannot read is an error, and the
//! caller decides what that means.
//!
//! # Caveats
//! - YAML's short-form intrinsic functions (`!Ref`, `!Sub`, …) are custom tags: their values
//!   are read as if untagged, which is all a look at the keys needs.
//! - Only string keys count (CloudFormation's logical ids are alphanumeric; a key YAML reads as
//!   a number, such as `2024`, is left out).

use std::collections::BTreeSet;

use yaml_rust2::{Yaml, YamlLoader};

/// A template's top-level mapping, as read from JSON or YAML.
enum Top {
    Json(serde_json::Map<String, serde_json::Value>),
    Yaml(yaml_rust2::yaml::Hash),
}

/// The template's top-level mapping, or why the body could not be read as a template.
fn top_level(body: &str) -> Result<Top, String> {
    // A byte-order mark (editors on Windows write one) is not whitespace to `trim_start`.
    let body = body.strip_prefix('\u{feff}').unwrap_or(body);
    // JSON may use tabs, which YAML does not allow for indentation.
    if body.trim_start().starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("not valid JSON: {e}"))?;
        return match value {
            serde_json::Value::Object(top) => Ok(Top::Json(top)),
            _ => Err("its top level is not an object".into()),
        };
    }
    let mut docs = YamlLoader::load_from_str(body).map_err(|e| format!("not valid YAML: {e}"))?;
    if docs.len() != 1 {
        return Err(format!("{} YAML documents, not one", docs.len()));
    }
    match docs.pop() {
        Some(Yaml::Hash(top)) => Ok(Top::Yaml(top)),
        _ => Err("its top level is not a mapping".into()),
    }
}

/// The names under the template's top-level `Parameters` (none when it has no such section),
/// or why the body could not be read as a template.
pub fn declared_parameters(body: &str) -> Result<BTreeSet<String>, String> {
    match top_level(body)? {
        Top::Json(top) => match top.get("Parameters") {
            None | Some(serde_json::Value::Null) => Ok(BTreeSet::new()),
            Some(serde_json::Value::Object(parameters)) => Ok(parameters.keys().cloned().collect()),
            Some(_) => Err("its Parameters section is not an object".into()),
        },
        Top::Yaml(top) => match top.get(&Yaml::String("Parameters".into())) {
            None | Some(Yaml::Null) => Ok(BTreeSet::new()),
            Some(Yaml::Hash(parameters)) => Ok(parameters
                .keys()
                .filter_map(Yaml::as_str)
                .map(str::to_string)
                .collect()),
            Some(_) => Err("its Parameters section is not a mapping".into()),
        },
    }
}

/// The logical ids of the template's Lambda functions packaged as a container image: resources
/// of type `AWS::Lambda::Function` or `AWS::Serverless::Function` whose `PackageType` is
/// `Image` (a value written with an intrinsic function is not counted), in the template's order.
pub fn image_functions(body: &str) -> Result<Vec<String>, String> {
    let image = |kind: Option<&str>, package: Option<&str>| {
        let lambda = ["AWS::Lambda::Function", "AWS::Serverless::Function"];
        kind.is_some_and(|k| lambda.contains(&k)) && package == Some("Image")
    };
    Ok(match top_level(body)? {
        Top::Json(top) => top
            .get("Resources")
            .and_then(|r| r.as_object())
            .into_iter()
            .flatten()
            .filter(|(_, r)| {
                let kind = r.get("Type").and_then(|t| t.as_str());
                image(
                    kind,
                    r.pointer("/Properties/PackageType")
                        .and_then(|t| t.as_str()),
                )
            })
            .map(|(id, _)| id.clone())
            .collect(),
        Top::Yaml(top) => match top.get(&Yaml::String("Resources".into())) {
            Some(Yaml::Hash(resources)) => resources
                .iter()
                .filter(|(_, r)| image(r["Type"].as_str(), r["Properties"]["PackageType"].as_str()))
                .filter_map(|(id, _)| id.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_functions_are_found_in_yaml_and_json_and_zip_functions_are_not() {
        let yaml = "Resources:\n  Api:\n    Type: AWS::Lambda::Function\n    Properties:\n      PackageType: Image\n      Code:\n        ImageUri: !Ref ImageUri\n  Zip:\n    Type: AWS::Lambda::Function\n    Properties:\n      Runtime: python3.12\n  Sam:\n    Type: AWS::Serverless::Function\n    Properties:\n      PackageType: Image\n  Bucket:\n    Type: AWS::S3::Bucket\n";
        assert_eq!(image_functions(yaml).unwrap(), ["Api", "Sam"]);
        let json = r#"{"Resources": {"Worker": {"Type": "AWS::Lambda::Function", "Properties": {"PackageType": "Image"}}, "Svc": {"Type": "AWS::ECS::Service", "Properties": {}}}}"#;
        assert_eq!(image_functions(json).unwrap(), ["Worker"]);
        assert!(image_functions("Parameters: {}\n").unwrap().is_empty());
        assert!(image_functions("a: [\n").is_err());
    }

    #[test]
    fn a_json_template_with_a_byte_order_mark_and_tabs_is_read_as_json() {
        let body = "\u{feff}{\n\t\"Parameters\": {\"Env\": {\"Type\": \"String\"}}\n}";
        assert_eq!(
            declared_parameters(body),
            Ok(BTreeSet::from(["Env".to_string()]))
        );
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn yaml_with_short_form_functions() {
        let body = "AWSTemplateFormatVersion: '2010-09-09'\n\
                    Parameters:\n  ImageUri:\n    Type: String\n  \"Env\":\n    Type: String\n    \
                    Default: beta\n\
                    Conditions:\n  Prod: !Equals [!Ref Env, prod]\n\
                    Resources:\n  Image:\n    Type: AWS::SSM::Parameter\n    Properties:\n      \
                    Name: !Sub \"/${AWS::StackName}/image\"\n      Value: !Ref ImageUri\n      \
                    Tier: !If\n        - Prod\n        - Advanced\n        - Standard\n";
        assert_eq!(declared_parameters(body), Ok(names(&["Env", "ImageUri"])));
    }

    #[test]
    fn json_with_tabs() {
        let body = "{\n\t\"Parameters\": {\"A\": {\"Type\": \"String\"}, \"B\": {}},\n\t\"Resources\": {}\n}";
        assert_eq!(declared_parameters(body), Ok(names(&["A", "B"])));
    }

    #[test]
    fn no_parameters_section() {
        assert_eq!(declared_parameters("Resources: {}\n"), Ok(names(&[])));
        assert_eq!(
            declared_parameters("Parameters:\nResources: {}\n"),
            Ok(names(&[]))
        );
        assert_eq!(declared_parameters("{\"Resources\": {}}"), Ok(names(&[])));
    }

    /// The keys indented two spaces under a top-level `Parameters:` line, as the templates
    /// shipped in this repository are written.
    fn by_indentation(body: &str) -> BTreeSet<String> {
        let section = body
            .split_once("\nParameters:\n")
            .map_or("", |(_, rest)| rest);
        section
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#'))
            .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.ends_with(':'))
            .map(|l| l.trim().trim_end_matches(':').to_string())
            .collect()
    }

    #[test]
    fn the_templates_shipped_here_are_read() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut read = 0;
        for dir in ["accounts/bootstrap", "docs/examples"] {
            let mut stack = vec![root.join(dir)];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let body = std::fs::read_to_string(&path).unwrap();
                    let is_template = path.extension().is_some_and(|e| e == "yaml")
                        && body.contains("\nResources:");
                    if !is_template {
                        continue;
                    }
                    let declared = declared_parameters(&body).unwrap();
                    assert!(!declared.is_empty(), "{}", path.display());
                    assert_eq!(declared, by_indentation(&body), "{}", path.display());
                    read += 1;
                }
            }
        }
        assert!(read >= 10, "{read} templates");
    }

    #[test]
    fn what_is_not_a_template_is_an_error() {
        for body in [
            "Parameters: [A, B]\n",
            "- a\n- b\n",
            "Parameters:\n  A: {}\n  A: {}\n",
            "{\"Parameters\": ",
            "a: 1\n---\nb: 2\n",
            "",
        ] {
            assert!(declared_parameters(body).is_err(), "{body:?}");
        }
    }
}
